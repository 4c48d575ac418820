"""The deploy viewer: a real rerun recording written, re-read with rerun's dataframe reader; errors; Q of executed
actions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from calql_robot.agent import build_agent
from calql_robot.deployment.viewer import NullViewer, RerunViewer, episode_q_values, episode_returns, make_viewer
from calql_robot.errors import UserError
from calql_robot.training.replay import ReplayBuffer, RewardTransform

rerun = pytest.importorskip("rerun")
from rerun.dataframe import load_recording  # noqa: E402

STEPS = (5, 3)  # two short episodes
ACTION_DIM = 4
INTERVENTION = (1, 2, 3)  # steps of the first episode a human drove
OBS_SPEC = {"state": {"shape": [5], "dtype": "float32", "kind": "low_dim"}}


# archetype:field names the assertions use -> the component each is stored as in a rerun 0.22 dataframe column
COMPONENTS = {"Scalars:scalars": "Scalar", "TextLog:text": "Text", "Image:buffer": "ImageBuffer"}


def read_rrd(path: Path) -> dict[str, pa.Table]:
    """{entity path: pyarrow Table} read with rerun's dataframe API: one row per ``env_step`` value at which the
    entity has data, columns the timelines (``env_step``, ``episode``, ``step``) and the components (``Scalar``...),
    named without the ``<entity>:`` prefix."""
    recording = load_recording(path)
    entities = sorted({c.entity_path for c in recording.schema().component_columns()})
    tables = {e: recording.view(index="env_step", contents=e).select().read_all() for e in entities}
    return {e: t.rename_columns([c.rsplit(":", 1)[-1] for c in t.column_names]) for e, t in tables.items()}


def column(table: pa.Table, name: str) -> list:
    """One column of an entity (a timeline name or a key of ``COMPONENTS``), sorted by env_step."""
    key = COMPONENTS.get(name, name)
    rows = list(zip(table.column("env_step").to_pylist(), table.column(key).to_pylist()))
    values = [v for _, v in sorted(rows, key=lambda r: r[0])]
    return [v[0] if isinstance(v, list) and len(v) == 1 else v for v in values]  # one scalar / text per row


def drive(viewer, q_offset: float = 0.5) -> dict:
    """Two fake episodes through ``viewer``; returns what was sent."""
    rng = np.random.default_rng(0)
    sent_all, interventions = [], []
    for episode, n in enumerate(STEPS):
        viewer.episode_start(episode)
        for t in range(n):
            obs = {"agentview_rgb": rng.integers(0, 255, (16, 16, 3), dtype=np.uint8),
                   "state": rng.standard_normal(3).astype(np.float32)}
            sent = rng.uniform(-1, 1, ACTION_DIM).astype(np.float32)
            intervening = episode == 0 and t in INTERVENTION
            events = [{"kind": "workspace", "message": "clipped x to 0.4", "time": 0.0}] if (episode, t) == (1, 1) \
                else []
            viewer.step(t, obs, sent, sent * 0.5, intervening, events, float(t == n - 1))
            sent_all.append(sent)
            interventions.append(float(intervening))
        g = np.arange(n, dtype=np.float32)[::-1].copy()
        viewer.episode_end(episode, g + q_offset, g, success=episode == 1,
                           intervention_steps=len(INTERVENTION) if episode == 0 else 0)
    viewer.close()
    return {"sent": np.stack(sent_all), "intervention": interventions}


def test_rerun_recording_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "deploy.rrd"
    viewer = make_viewer("rerun", str(path))
    assert isinstance(viewer, RerunViewer)
    sent = drive(viewer)
    viewer.close()  # a second close does nothing
    assert path.exists() and not (tmp_path / "deploy.rrd.partial").exists()
    data = read_rrd(path)
    total = sum(STEPS)
    for entity in ["/camera/agentview_rgb", "/obs/state", "/intervention", "/reward", "/events/safety",
                   "/events/intervention", "/episode/q_executed", "/episode/mc_return", "/episode/success",
                   "/events/episode", *[f"/action/{w}/{i}" for w in ("sent", "policy") for i in range(ACTION_DIM)]]:
        assert entity in data, f"{entity} missing from {sorted(data)}"
    for i in range(ACTION_DIM):
        values = column(data[f"/action/sent/{i}"], "Scalars:scalars")
        assert len(values) == total
        np.testing.assert_allclose(values, sent["sent"][:, i], rtol=1e-6)
        policy = column(data[f"/action/policy/{i}"], "Scalars:scalars")
        np.testing.assert_allclose(policy, sent["sent"][:, i] * 0.5, rtol=1e-6)
    assert column(data["/intervention"], "Scalars:scalars") == sent["intervention"]
    texts = column(data["/events/intervention"], "TextLog:text")
    assert texts == ["intervention started at step 1", "intervention stopped at step 4"]
    assert column(data["/events/safety"], "TextLog:text") == ["[workspace] clipped x to 0.4"]
    assert column(data["/events/safety"], "env_step") == [STEPS[0] + 1]
    assert len(column(data["/camera/agentview_rgb"], "Image:buffer")) == total
    # Q against MC return on the episodes' own steps: same env_step values as the actions, Q = G + 0.5
    q = data["/episode/q_executed"]
    assert column(q, "env_step") == list(range(total))
    g = np.array(column(data["/episode/mc_return"], "Scalars:scalars"))
    np.testing.assert_allclose(column(q, "Scalars:scalars"), g + 0.5)
    assert column(data["/episode/success"], "Scalars:scalars") == [0.0, 1.0]
    assert column(data["/episode/success"], "env_step") == [STEPS[0] - 1, total - 1]
    assert column(q, "episode") == [0] * STEPS[0] + [1] * STEPS[1]
    assert column(q, "step") == [*range(STEPS[0]), *range(STEPS[1])]


def test_null_viewer_writes_nothing(tmp_path: Path) -> None:
    viewer = make_viewer("none", str(tmp_path / "ignored.rrd"))
    assert type(viewer) is NullViewer
    drive(viewer)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["rrun", "", None, 1])
def test_unknown_kind_names_the_key(kind) -> None:
    with pytest.raises(UserError, match=r"deploy\.viewer is .*none\|rerun"):
        make_viewer(kind, None)


@pytest.mark.parametrize("name", ["deploy.mp4", "deploy", 3])
def test_save_path_must_be_rrd(tmp_path: Path, name) -> None:
    save = name if isinstance(name, int) else str(tmp_path / name)
    with pytest.raises(UserError, match=r"deploy\.viewer_save .*\.rrd"):
        make_viewer("rerun", save)
    assert list(tmp_path.iterdir()) == []


def test_save_folder_must_exist(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"deploy\.viewer_save=.*does not exist"):
        make_viewer("rerun", str(tmp_path / "missing" / "x.rrd"))
    assert not (tmp_path / "missing").exists()


def test_window_without_display_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the display check is for Linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(UserError, match=r"no display.*deploy\.viewer_save=PATH\.rrd"):
        make_viewer("rerun", None)


def test_episode_q_values_match_the_critic_and_returns_match_the_buffer() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(1)
    agent = build_agent({"variant": "calql", "actor_hidden": [16], "critic_hidden": [16, 16], "num_critics": 2},
                        OBS_SPEC, 2, "cpu")
    rng = np.random.default_rng(1)
    n = 7
    episode = {"observations": {"state": rng.standard_normal((n + 1, 5)).astype(np.float32)},
               "actions": rng.uniform(-1, 1, (n, 2)).astype(np.float32),
               "rewards": np.r_[np.zeros(n - 1), 1.0].astype(np.float32)}
    agent.encoder.train()
    q = episode_q_values(agent, episode, "cpu")
    assert q.shape == (n,) and q.dtype == np.float32 and np.isfinite(q).all()
    assert agent.encoder.training  # mode restored
    with torch.no_grad():
        feats = agent.encoder({"state": torch.as_tensor(episode["observations"]["state"][:n])})
        direct = agent.critic(feats, torch.as_tensor(episode["actions"])[None])[:, 0].mean(0).numpy()
    np.testing.assert_allclose(q, direct, rtol=1e-5, atol=1e-6)
    assert not np.allclose(q, q[0])  # depends on the step
    transform = RewardTransform(gamma=0.9, scale=10.0, bias=-5.0, sparse=True, failure_reward=0.0)
    buffer = ReplayBuffer(OBS_SPEC, 2, transform)
    expected = buffer.add_episode(episode["observations"], episode["actions"], episode["rewards"], np.zeros(n))
    np.testing.assert_allclose(episode_returns(episode, transform), expected)
