"""threads=auto (the default of every training app): the rule's decisions, explicit overrides, the config checks,
and the line each run prints about its choice (the run itself: tests/test_noise.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from calql_robot.errors import ConfigError, UserError
from calql_robot.training import threads
from calql_robot.training.config_check import THREADS
from calql_robot.training.threads import LARGE_BATCH, apply_threads, choose_threads

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
STATE = {"state": {"shape": [29], "dtype": "float32", "kind": "low_dim"}}
IMAGES = {**STATE, "agentview_rgb": {"shape": [64, 64, 3], "dtype": "uint8", "kind": "rgb"}}
DEFAULT = threads._TORCH_DEFAULT


@pytest.fixture(autouse=True)
def keep_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_auto_rule_decisions():
    assert choose_threads("auto", STATE, "cpu", batch_size=256) == (1, "auto: state-based networks")
    assert choose_threads("auto", IMAGES, "cpu", batch_size=64)[0] == DEFAULT
    assert "image encoder" in choose_threads("auto", IMAGES, "cpu", batch_size=64)[1]
    assert choose_threads("auto", STATE, "cpu", batch_size=LARGE_BATCH)[0] == DEFAULT
    assert choose_threads("auto", STATE, "cpu", batch_size=LARGE_BATCH - 1)[0] == 1
    assert choose_threads("auto", IMAGES, "cpu", acting_only=True) == (1, "auto: acting only")
    assert choose_threads("auto", IMAGES, torch.device("cuda"), batch_size=256) == (1, "auto: networks on the GPU")


def test_explicit_values_win_and_bad_ones_are_refused():
    assert choose_threads(3, IMAGES, "cpu") == (3, "threads=3")
    assert choose_threads(2, STATE, "cuda", acting_only=True) == (2, "threads=2")
    assert choose_threads(None, STATE, "cpu")[0] == DEFAULT
    for bad in (0, -1, "many", True):
        with pytest.raises(UserError, match="threads="):
            choose_threads(bad, STATE, "cpu")


def test_apply_sets_torch_and_prints_the_choice(capsys):
    assert apply_threads("auto", STATE, "cpu", batch_size=128) == 1
    assert torch.get_num_threads() == 1
    assert capsys.readouterr().out == "torch threads: 1 (auto: state-based networks)\n"
    apply_threads(2, STATE, "cpu")
    assert torch.get_num_threads() == 2 and "torch threads: 2 (threads=2)" in capsys.readouterr().out


@pytest.mark.parametrize("app", ["pretrain", "finetune", "evaluate", "deploy"])
def test_every_training_app_defaults_to_auto(app):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=app)
    assert cfg.threads == "auto"


def test_config_rule_accepts_auto_whole_numbers_and_null():
    assert THREADS.allows("auto") and THREADS.allows(1) and THREADS.allows(None) and THREADS.allows(4096)
    assert not THREADS.allows(0) and not THREADS.allows("fast") and not THREADS.allows(1.5)
    from calql_robot.training.config_check import check_pretrain_config

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=["task=pointmaze_umaze", "threads=fast"])
    with pytest.raises(ConfigError, match="threads='fast' is not valid: expected auto, a whole number"):
        check_pretrain_config(cfg)
