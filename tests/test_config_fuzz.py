"""Fuzzing the config surface of pretrain, finetune, evaluate, collect and convert (issue 11, "Fuzzing in CI").

In-process, fast: random wrong (and right) values for each app's keys go through the app's config check, which must
either accept exactly the values an independent oracle below calls valid, or raise a UserError whose message names
the key; never another exception, and nothing is written (the run directory / output stays absent). Then a handful
of real subprocess runs: exit status 2, one paragraph, no traceback, nothing created.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf

from calql_robot.app import CONFIG_DIR
from calql_robot.datasets.converters.options import check_convert_config
from calql_robot.errors import UserError
from calql_robot.training import config_check

REPO = Path(__file__).resolve().parent.parent
SCRATCH = Path(tempfile.mkdtemp(prefix="config_fuzz_"))


def whole(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, float) and math.isfinite(v) and v.is_integer())


def num(v: Any) -> bool:
    return not isinstance(v, bool) and (isinstance(v, int) or (isinstance(v, float) and math.isfinite(v)))


def count(low: int, high: int = 2**53) -> Callable[[Any], bool]:
    return lambda v: whole(v) and low <= v <= high


def path_like(v: Any) -> bool:
    return (isinstance(v, str) and v.strip() != "" and v != "???" and "\x00" not in v and "${" not in v) or (
        isinstance(v, int) and not isinstance(v, bool))


def output_like(v: Any) -> bool:
    if not path_like(v):
        return False
    resolved, cwd = Path(str(v).strip()).expanduser().resolve(), Path.cwd().resolve()
    return Path(str(v).strip()).name not in ("", ".", "..") and resolved != cwd and resolved not in cwd.parents


def optional(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or test(v)


def flag(v: Any) -> bool:
    return isinstance(v, bool)


def device(v: Any) -> bool:
    return isinstance(v, str) and (v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()))


SEED = count(0, 2**32 - 1)
THREADS = optional(lambda v: v == "auto" or count(1, 4096)(v))
AUTO_FLAG = lambda v: str(v).lower() in ("auto", "true", "false")
TRAINING = {
    "run_dir": path_like, "seed": SEED, "device": device, "threads": THREADS,
    "compile": optional(lambda v: str(v).lower() in ("auto", "true", "false")),
    "dataset": optional(path_like), "progress": flag, "progress_every": optional(count(0)),
    "eval.every": count(0), "eval.episodes": count(1, 2**31 - 1),
    "eval.video": flag, "eval.video_episodes": count(0, 2**31 - 1), "data.lazy": flag,
    "data.cache_mb": count(1, 2**24), "task.gamma": lambda v: num(v) and 0 <= v <= 1,
    "data.storage_options": optional(lambda v: isinstance(v, dict)),
}
ORACLES: dict[str, dict[str, Callable[[Any], bool]]] = {
    "pretrain": {**TRAINING, "data.prefetch": AUTO_FLAG, "pretrain.steps": count(1),
                 "pretrain.batch_size": count(1, 2**20), "pretrain.log_every": count(1),
                 "pretrain.save_every": count(1)},
    "finetune": {**TRAINING, "checkpoint": path_like, "finetune.env_steps": count(1),
                 "finetune.mixing_ratio": lambda v: num(v) and (v == -1 or 0 <= v <= 1),
                 "finetune.utd": count(0, 2**20), "finetune.batch_size": count(1, 2**20),
                 "finetune.log_every": count(1), "finetune.save_every": count(1)},
    "evaluate": {"checkpoint": path_like, "output": optional(output_like), "seed": SEED, "device": device,
                 "threads": THREADS, "eval.episodes": count(1, 2**31 - 1), "eval.video": flag,
                 "eval.video_episodes": count(0, 2**31 - 1), "eval.seed": SEED},
    "collect": {"episodes": optional(count(1, 2**31 - 1)), "output": optional(output_like), "seed": SEED,
                "overwrite": flag},
    "convert": {"input": path_like, "output": output_like, "overwrite": flag, "skip_bad": flag, "download": flag,
                "control_freq": optional(lambda v: num(v) and v > 0),
                "image_size": optional(lambda v: (whole(v) and v >= 1) or (
                    isinstance(v, list) and len(v) == 2 and all(whole(x) and x >= 1 for x in v))),
                "reward.rule": lambda v: v in ("sparse_last_step", "column", "task") and isinstance(v, str),
                "reward.success_value": lambda v: num(v) and v > 0.0,   # failure_value stays 0.0
                "reward.failure_value": lambda v: num(v) and v < 1.0,   # success_value stays 1.0
                "reward.unknown_outcome": lambda v: isinstance(v, str) and v in ("error", "success", "failure"),
                "reward.task.op": lambda v: isinstance(v, str) and v in (">=", ">", "<=", "<", "=="),
                "reward.task.index": optional(lambda v: whole(v) and v >= 0),
                "align.method": lambda v: isinstance(v, str) and v in ("nearest", "linear"),
                "align.tolerance_s": optional(lambda v: num(v) and v > 0),
                "robomimic.replay": lambda v: v == "auto" or isinstance(v, bool)},
}
# keys whose values are typed but not fully specified by an oracle here: only "accepted, or a UserError naming it"
LOOSE = {"pretrain": ["agent.actor_lr", "agent.tau", "agent.actor_hidden", "agent.variant", "agent.num_critics",
                      "agent.cql_lagrange", "agent.target_entropy"],
         "convert": ["action_bounds", "keys.obs", "keys.cameras", "keys.action", "reward.column", "align.reference"]}
BASE_OVERRIDES = {"pretrain": [f"run_dir={SCRATCH / 'run'}"],
                  "finetune": [f"run_dir={SCRATCH / 'run'}", "checkpoint=runs/x"],
                  "evaluate": ["checkpoint=runs/x", f"output={SCRATCH / 'eval'}"],
                  "collect": [f"output={SCRATCH / 'c.zarr'}"],
                  "convert": ["source=raw", f"input={SCRATCH / 'logs'}", f"output={SCRATCH / 'o.zarr'}"]}
CHECKS = {"pretrain": config_check.check_pretrain_config, "finetune": config_check.check_finetune_config,
          "evaluate": config_check.check_evaluate_config, "collect": config_check.check_collect_config,
          "convert": check_convert_config}

values = st.one_of(
    st.integers(-(10**7), 10**7), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.none(), st.text(alphabet=st.characters(blacklist_characters="${}\\"), max_size=10),
    st.sampled_from(["abc", "", " ", "often", "tpu", "cuda:1", "auto", "${nope}", "???", "-1", "1e5", "true", ".",
                     "..", "/", "nearest", "column", ">=", "\x00x"]),
    st.lists(st.integers(-3, 300), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def composed() -> Iterator[dict[str, DictConfig]]:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        configs = {app: compose(config_name=app, overrides=overrides) for app, overrides in BASE_OVERRIDES.items()}
    yield configs
    shutil.rmtree(SCRATCH, ignore_errors=True)


def check_one(composed: dict[str, DictConfig], app: str, key: str, value: Any) -> None:
    cfg = copy.deepcopy(composed[app])
    OmegaConf.update(cfg, key, value, merge=False)
    oracle = ORACLES[app].get(key)
    try:
        CHECKS[app](cfg)
    except UserError as err:
        assert key in str(err), f"{app} {key}={value!r}: the message does not name the key: {err}"
        assert "\n" not in str(err)
        if oracle is not None:
            assert not oracle(value), f"{app} {key}={value!r} is valid but was refused: {err}"
    else:
        if oracle is not None:
            assert oracle(value), f"{app} {key}={value!r} was accepted but is not valid"
    assert not any(SCRATCH.iterdir()), f"{app} {key}={value!r}: something was written"


@pytest.mark.parametrize("app", sorted(ORACLES))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_config_surface_fuzz(composed, app, data):
    key = data.draw(st.sampled_from(sorted(ORACLES[app]) + LOOSE.get(app, [])), label="key")
    check_one(composed, app, key, data.draw(values, label="value"))


def test_the_oracles_cover_every_key_of_the_app_tables():
    tables = {"pretrain": config_check.PRETRAIN_RULES, "finetune": config_check.FINETUNE_RULES,
              "evaluate": config_check.EVALUATE_RULES, "collect": config_check.COLLECT_RULES}
    for app, rules in tables.items():
        missing = set(rules) - set(ORACLES[app]) - {"task.dataset.episodes", "task.dataset.path"}
        assert not missing, (app, missing)


def run_app(app: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run([sys.executable, "-m", f"calql_robot.{app}", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize("app, args, key", [
    ("finetune", ["task=antmaze_umaze", "checkpoint=nowhere", "finetune.log_every=0", "run_dir=run"],
     "finetune.log_every"),
    ("evaluate", ["checkpoint=nowhere", "device=tpu", "output=eval"], "device"),
    ("collect", ["task=antmaze_umaze", "seed=abc", "output=c.zarr"], "seed"),
    ("convert", ["source=raw", "input=logs", "output=o.zarr", "control_freq=abc"], "control_freq"),
])
def test_apps_exit_2_and_write_nothing(tmp_path, app, args, key):
    (tmp_path / "logs").mkdir()
    proc = run_app(app, *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: {key}=") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]
