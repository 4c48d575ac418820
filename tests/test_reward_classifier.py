"""Learned reward classifier (issue 12, point 2): ``train_reward_classifier`` on a tiny store made here (16 px frames,
success frames bright, the rest dark), its files and held-out scores, the loaded classifier's probabilities, the
consecutive-frames rule, and what bad input does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from calql_robot.datasets.format import DatasetWriter, ZarrDataset
from calql_robot.deployment.reward_classifier import RewardDetector, load_reward_classifier
from calql_robot.errors import UserError
from calql_robot.training.reward_classifier import run_train_reward_classifier
from calql_robot.training.reward_data import IGNORED, NEGATIVE, POSITIVE, label_frames, read_frames
from calql_robot.training.reward_metrics import binary_scores
from calql_robot.training.reward_model import RewardClassifierNet, save_classifier

REPO = Path(__file__).resolve().parent.parent
SPEC = {"front_rgb": {"shape": [16, 16, 3], "dtype": "uint8", "kind": "rgb"},
        "eef": {"shape": [3], "dtype": "float32", "kind": "low_dim"}}
SMALL = ("encoder.conv_layers=2", "encoder.conv_stride2_layers=1", "encoder.conv_channels=8", "batch_size=16",
         "steps=60", "log_every=30", "threads=1", "device=cpu")


@pytest.fixture(autouse=True, scope="module")
def keep_torch_threads():
    """The app sets PyTorch's thread count (threads=1 here); give the rest of the test session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def make_store(path: Path, outcomes: list[bool], spec: dict | None = None, steps: int = 6) -> Path:
    """One episode per outcome: dark frames, and in a successful one a bright final frame and success reward."""
    spec = spec or SPEC
    rng = np.random.default_rng(0)
    with DatasetWriter.create(path, spec, [-1], [1], task="toy", control_freq=10.0, reward_success=1.0,
                              reward_failure=0.0, source={"kind": "test"}) as writer:
        for ok in outcomes:
            obs = {"eef": rng.normal(size=(steps + 1, 3))}
            for key, entry in spec.items():
                if entry["kind"] == "rgb":
                    images = rng.integers(0, 60, (steps + 1, *entry["shape"]), dtype=np.uint8)
                    if ok:
                        images[-1] = rng.integers(200, 256, entry["shape"], dtype=np.uint8)
                    obs[key] = images
            rewards = np.zeros(steps)
            rewards[-1] = 1.0 if ok else 0.0
            ends = np.r_[np.zeros(steps - 1, bool), True]
            writer.add_episode(obs, rng.uniform(-1, 1, (steps, 1)), rewards, ends & ok, ends & (not ok))
    return path


def config(*overrides: str):
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        return compose("train_reward_classifier", overrides=list(overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, dict]:
    """The app's work, in this process, on 12 episodes (6 successful); the command line is tested below."""
    root = tmp_path_factory.mktemp("reward")
    store = make_store(root / "toy.zarr", [i % 2 == 0 for i in range(12)])
    out = root / "classifier"
    metrics = run_train_reward_classifier(config(f"dataset={store}", f"output={out}", "val_fraction=0.34", *SMALL))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    return store, out, saved


def test_app_writes_every_file_and_separates_the_frames(trained) -> None:
    _, out, metrics = trained
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["classifier.safetensors", "classifier.json", "metrics.json", "calibration.csv", "calibration.png",
         "train.csv"])
    assert not list(out.parent.glob("classifier.tmp-*"))
    for key in ("precision", "recall", "accuracy", "f1", "brier", "expected_calibration_error"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["precision"] == 1.0 and metrics["recall"] == 1.0 and metrics["accuracy"] == 1.0
    assert metrics["positive_frames"] == 2 and metrics["frames"] == 4 * 7 - 2 * 2  # 2 ignored frames per success
    assert metrics["episodes"]["agreement"] == 1.0 and metrics["episodes"]["episodes"] == 4
    assert len(metrics["held_out_episodes"]) == 4
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["cameras"] == ["front_rgb"] and meta["obs_spec"] == {"front_rgb": SPEC["front_rgb"]}
    assert meta["threshold"] == 0.5 and meta["consecutive"] == 3 and meta["metrics"]["precision"] == 1.0
    rows = (out / "calibration.csv").read_text().splitlines()
    assert rows[0] == "bin_low,bin_high,count,mean_predicted,fraction_positive" and len(rows) == 11
    assert sum(int(row.split(",")[2]) for row in rows[1:]) == metrics["frames"]
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG"


def test_loaded_classifier_reproduces_the_saved_scores(trained) -> None:
    store, out, metrics = trained
    classifier = load_reward_classifier(out, "cpu")
    frames = read_frames(ZarrDataset(store), ["front_rgb"], 1, 2)
    rows = np.flatnonzero(np.isin(frames.episode, metrics["held_out_episodes"]) & (frames.labels >= 0))
    probs = classifier.probs({"front_rgb": frames.images["front_rgb"][rows]})
    again = binary_scores(probs, frames.labels[rows], classifier.threshold)
    assert {k: again[k] for k in ("tp", "fp", "fn", "tn")} == {k: metrics[k] for k in ("tp", "fp", "fn", "tn")}
    bright, dark = frames.images["front_rgb"][frames.labels == POSITIVE][0], frames.images["front_rgb"][0]
    assert classifier.prob({"front_rgb": bright, "eef": np.zeros(3)}) > 0.5 > classifier.prob({"front_rgb": dark})
    assert classifier.prob({"front_rgb": bright}) == pytest.approx(float(classifier.probs(
        {"front_rgb": bright[None]})[0]), abs=1e-6)


def test_save_and_load_give_identical_probabilities(tmp_path) -> None:
    torch.manual_seed(3)
    spec = {"cam": {"shape": [16, 16, 3], "dtype": "uint8", "kind": "rgb"}}
    net = RewardClassifierNet(spec, {"name": "conv", "conv_layers": 2, "conv_channels": 8}).eval()
    save_classifier(tmp_path, net, {"obs_spec": spec, "cameras": ["cam"], "threshold": 0.3, "consecutive": 3,
                                    "encoder": {"name": "conv", "conv_layers": 2, "conv_channels": 8}})
    images = np.random.default_rng(1).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = torch.sigmoid(net({"cam": torch.from_numpy(images)})).double().numpy()
    for path in (tmp_path, tmp_path / "classifier.json", tmp_path / "classifier.safetensors"):
        loaded = load_reward_classifier(path)
        assert np.array_equal(loaded.probs({"cam": images}), expected)
        assert (loaded.threshold, loaded.consecutive) == (0.3, 3)
    with pytest.raises(UserError, match="camera 'cam'"):
        loaded.prob({"other": images[0]})
    with pytest.raises(UserError, match=r"expects uint8 \(16, 16, 3\)"):
        loaded.prob({"cam": images[0, :8]})


def test_detector_needs_consecutive_frames_and_resets() -> None:
    detector = RewardDetector(threshold=0.5, consecutive=3)
    assert [detector.update(p) for p in (0.9, 0.9, 0.1, 0.6, 0.5)] == [False] * 5
    assert detector.update(0.99) and detector.update(0.0)  # third in a row; then success stays declared
    detector.reset()
    assert not detector.update(0.9) and detector.streak == 1
    assert detector.episode_outcome(np.array([0.9, 0.2, 0.8, 0.8, 0.8, 0.1])) == (True, 4)
    assert detector.episode_outcome(np.array([0.9, 0.9, 0.4, 0.9, 0.9])) == (False, None)
    assert RewardDetector(0.5, 1).episode_outcome(np.array([0.2, 0.5])) == (True, 1)
    for bad in ({"threshold": 1.5}, {"threshold": 0.5, "consecutive": 0}, {"threshold": 0.5, "consecutive": 1.5}):
        with pytest.raises(UserError):
            RewardDetector(**bad)
    with pytest.raises(ValueError):
        RewardDetector(0.5).observe({})


def test_labels_mark_final_frames_positive_and_skip_the_ones_before() -> None:
    rewards = np.array([0, 0, 0, 1.0, 0, 0, 0], dtype=np.float32)  # a 4-step success then a 3-step failure
    labels, episode, success = label_frames(rewards, np.array([4, 7]), 1.0, positive_frames=2, ignore_frames=1)
    pos, neg, skip = POSITIVE, NEGATIVE, IGNORED
    assert labels.tolist() == [neg, neg, skip, pos, pos, neg, neg, neg, neg]
    assert episode.tolist() == [0] * 5 + [1] * 4
    assert success.tolist() == [True, False]


@pytest.mark.parametrize("outcomes, overrides, expected", [
    (None, ("dataset={root}/nosuch.zarr",), "no such store"),
    ([True, False, True, False], ("dataset={store}", "cameras=[wrist_rgb]"), "wrist_rgb"),
    ([True, False, True, False], ("dataset={store}", "cameras=[eef]"), "low_dim key, not an image"),
    ([True, True, True], ("dataset={store}",), "no failed episode"),
    ([False, False, False], ("dataset={store}",), "no successful episode"),
    ([True, False, False], ("dataset={store}",), "at least 2 of each"),
    ([True, False, True, False], ("dataset={store}", "threshold=2"), "threshold=2"),
    ([True, False, True, False], ("dataset={store}", "encoder.name=low_dim"), "low_dim"),
])
def test_bad_input_is_one_paragraph_and_writes_nothing(tmp_path, outcomes, overrides, expected) -> None:
    store = make_store(tmp_path / "toy.zarr", outcomes) if outcomes is not None else tmp_path / "toy.zarr"
    out = tmp_path / "out"
    cfg = config(*(o.format(root=tmp_path, store=store) for o in overrides), f"output={out}", *SMALL)
    with pytest.raises(UserError, match=expected) as err:
        run_train_reward_classifier(cfg)
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["toy.zarr"] if outcomes is not None else [])


def test_command_line_refusals_exit_2_with_one_line(tmp_path) -> None:
    store = make_store(tmp_path / "state.zarr", [True, False, True, False], spec={"eef": SPEC["eef"]})
    proc = subprocess.run([sys.executable, "-m", "calql_robot.train_reward_classifier", f"dataset={store}",
                           f"output={tmp_path / 'new'}", *SMALL], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "has no rgb observation" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.zarr"]


def test_existing_output_is_refused_and_kept(tmp_path) -> None:
    store = make_store(tmp_path / "toy.zarr", [True, False, True, False])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        run_train_reward_classifier(config(f"dataset={store}", f"output={out}", *SMALL))
    with pytest.raises(UserError, match="overlaps dataset"):
        run_train_reward_classifier(config(f"dataset={store}", f"output={store}/inside", *SMALL))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "toy.zarr"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    run_train_reward_classifier(config(f"dataset={store}", f"output={out}", "overwrite=true", *SMALL, "steps=2"))
    assert (out / "classifier.json").is_file() and not (out / "keep.txt").exists()


def test_damaged_classifier_files_are_refused(trained, tmp_path) -> None:
    _, out, _ = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "classifier.json").write_text((out / "classifier.json").read_text())
    with pytest.raises(UserError, match="no classifier.safetensors"):
        load_reward_classifier(copy)
    (copy / "classifier.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="unreadable or corrupt"):
        load_reward_classifier(copy)
    (copy / "classifier.safetensors").write_bytes((out / "classifier.safetensors").read_bytes())
    meta = json.loads((out / "classifier.json").read_text())
    (copy / "classifier.json").write_text(json.dumps({**meta, "encoder": {**meta["encoder"], "conv_channels": 16}}))
    with pytest.raises(UserError, match="do not fit the network"):
        load_reward_classifier(copy)
    (copy / "classifier.json").write_text("{")
    with pytest.raises(UserError, match="not readable JSON"):
        load_reward_classifier(copy)
    with pytest.raises(UserError, match="does not exist"):
        load_reward_classifier(tmp_path / "nothing")


@pytest.mark.slow
def test_sim_check_judges_episodes_against_the_simulator(tmp_path) -> None:
    """The pick_place agreement check on the real simulator, with a classifier that never / always fires."""
    from calql_robot.deployment.reward_sim_check import run_sim_check

    spec = {"agentview_rgb": {"shape": [64, 64, 3], "dtype": "uint8", "kind": "rgb"}}
    encoder = {"name": "conv", "conv_layers": 2, "conv_channels": 4, "conv_stride2_layers": 2}
    save_classifier(tmp_path, RewardClassifierNet(spec, encoder), {"obs_spec": spec, "cameras": ["agentview_rgb"],
                                                                   "threshold": 1.0, "consecutive": 1,
                                                                   "encoder": encoder})
    never = run_sim_check(str(tmp_path), episodes=1, horizon=3)  # prob < 1: no success; 3 steps: none in the sim
    assert never["agreement"] == 1.0 and never["successes_by_sim"] == 0 and never["successes_by_classifier"] == 0
    assert never["per_episode"][0]["classifier_step"] is None and never["per_episode"][0]["sim_step"] is None
    always = run_sim_check(str(tmp_path), episodes=1, horizon=3, threshold=0.0)
    assert always["agreement"] == 0.0 and always["false_successes"] == 1
    assert always["per_episode"][0]["classifier_step"] == 0
