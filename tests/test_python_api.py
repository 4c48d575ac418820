"""The Python API (calql_robot/api/, docs/python_api.md): load_policy / Policy, export_policy, make_env and the
pretrain / finetune / evaluate entry points, on a tiny PointMaze run made by ``calql_robot.pretrain`` itself and on an
image agent with averaged networks and observation normalisation. The doc's ```python blocks run as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import calql_robot
from calql_robot.agent import build_agent
from calql_robot.errors import ConfigError, UserError
from calql_robot.training import session
from calql_robot.training.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parent.parent
HORIZON = 30
SMALL = ["task=pointmaze_umaze", f"task.horizon={HORIZON}", "pretrain.batch_size=16", "device=cpu", "threads=1",
         "progress=false", "agent.actor_hidden=[32,32]", "agent.critic_hidden=[32,32]", "agent.cql_n_actions=2"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from calql_robot.envs.pointmaze import generate_dataset

    path = tmp_path_factory.mktemp("data") / "pointmaze_tiny.zarr"
    generate_dataset(str(path), episodes=4, seed=0, horizon=HORIZON)
    return path


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory) -> calql_robot.RunResult:
    run_dir = tmp_path_factory.mktemp("pre") / "run"
    result = calql_robot.pretrain([*SMALL, f"dataset={dataset}", "pretrain.steps=4", "eval.every=4",
                                   "eval.episodes=1", "eval.video=false", f"run_dir={run_dir}"])
    assert result.run_dir == run_dir and result.checkpoint is not None and result.checkpoint.parent.parent == run_dir
    return result


def env_observations(n: int = 8) -> list[dict[str, np.ndarray]]:
    """Real PointMaze observations along a random walk."""
    rng = np.random.default_rng(0)
    with calql_robot.make_env("pointmaze_umaze", seed=3) as env:
        obs, _ = env.reset(seed=3)
        observations = [obs]
        for _ in range(n - 1):
            obs, *_ = env.step(rng.uniform(-1, 1, 2).astype(np.float32))
            observations.append(obs)
    return observations


def agent_from_checkpoint(path: Path):
    """The agent as the evaluation app rebuilds it: built from the saved options, restored with restore_agent."""
    tensors, state = load_checkpoint(path)
    meta = state["agent_meta"]
    agent = build_agent(meta["agent_config"], meta["obs_spec"], meta["action_dim"], "cpu")
    session.restore_agent(agent, tensors, state)
    return agent


def test_pretrain_result_and_policy_attributes(run):
    assert run.metrics["update"] == 4 and 0.0 <= run.metrics["success_rate"] <= 1.0
    assert [int(r["update"]) for r in run.csv("train")][-1] == 4 and run.csv("nosuch") == []
    policy = calql_robot.load_policy(run.run_dir, device="cpu")
    assert policy.task == "pointmaze_umaze" and policy.action_dim == 2
    assert policy.obs_spec == {"state": {"shape": [6], "dtype": "float32", "kind": "low_dim"}}
    assert policy.metadata["source_checkpoint"] == str(run.checkpoint.resolve()) and policy.metadata["step"] == 4
    assert policy.metadata["task_config"]["horizon"] == HORIZON and policy.metadata["networks"] == "live"
    for inside in (run.checkpoint, run.checkpoint / "tensors.safetensors"):  # a checkpoint folder or a file in it
        assert calql_robot.load_policy(inside, device="cpu").metadata["source_checkpoint"] == str(run.checkpoint)


def test_act_equals_the_agents_own_act(run):
    policy = calql_robot.load_policy(run.run_dir, device="cpu")
    agent = agent_from_checkpoint(run.run_dir)
    observations = env_observations()
    for obs in observations:
        ours = policy.act(obs)
        assert ours.dtype == np.float32 and ours.shape == (2,)
        assert np.array_equal(ours, agent.act(obs, deterministic=True))
    batch = {"state": np.stack([o["state"] for o in observations])}
    expected = np.stack([agent.act(o, deterministic=True) for o in observations])
    np.testing.assert_allclose(policy.act_batch(batch), expected, rtol=0, atol=1e-6)
    as_tensor = policy.act_batch({"state": torch.as_tensor(batch["state"])})
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.shape == (len(observations), 2)
    sampled = policy.act(observations[0], deterministic=False)
    assert sampled.shape == (2,) and not np.array_equal(sampled, policy.act(observations[0]))
    policy.seed(5)
    first = policy.act_batch(batch, deterministic=False)
    policy.seed(5)
    assert np.array_equal(first, policy.act_batch(batch, deterministic=False))


def image_agent_checkpoint(tmp_path: Path):
    """A checkpoint of an image + low-dim agent with averaged networks and fitted normalisation, after 3 updates."""
    spec = {"cam": {"shape": [32, 32, 3], "dtype": "uint8", "kind": "rgb"},
            "proprio": {"shape": [3], "dtype": "float32", "kind": "low_dim"}}
    cfg = {"actor_hidden": [16, 16], "critic_hidden": [16, 16], "cql_n_actions": 2, "policy_ema_tau": 0.3,
           "encoder": {"name": "conv", "conv_channels": 8, "conv_layers": 2, "feature_dim": 8, "normalize": True}}
    torch.manual_seed(0)
    agent = build_agent(cfg, spec, 2, "cpu")
    agent.encoder.normalizer.fit({"proprio": (np.array([1.0, -2.0, 0.5]), np.array([2.0, 0.5, 3.0]))})
    agent.reset_policy_ema()
    gen = torch.Generator().manual_seed(1)

    def obs(n: int) -> dict[str, torch.Tensor]:
        return {"cam": torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, generator=gen),
                "proprio": torch.randn(n, 3, generator=gen) * 3}

    for _ in range(3):
        agent.update({"obs": obs(8), "next_obs": obs(8), "action": torch.rand(8, 2, generator=gen) * 2 - 1,
                      "reward": torch.randn(8, generator=gen), "terminal": torch.zeros(8),
                      "mc_return": torch.randn(8, generator=gen)})
    state = {"phase": "pretrain", "agent_meta": session.agent_meta(agent), "config": {"task": None}}
    ckpt = save_checkpoint(tmp_path / "img_run", 3, session.checkpoint_tensors(agent), state, counter="update")
    return agent, ckpt, obs


def test_image_agent_uses_averaged_networks_and_normalisation(tmp_path):
    agent, ckpt, obs = image_agent_checkpoint(tmp_path)
    policy = calql_robot.load_policy(ckpt, device="cpu")
    assert policy.metadata["networks"] == "averaged" and policy.task is None
    batch = {k: v.numpy() for k, v in obs(5).items()}
    singles = [{k: v[i] for k, v in batch.items()} for i in range(5)]
    for one in singles:
        assert np.array_equal(policy.act(one), agent.act(one, deterministic=True))
    with torch.no_grad():  # the live actor acts differently: the test would notice the wrong networks
        live = torch.tanh(agent.actor(agent.encoder(obs(5), augment=False))[0])
    assert not np.allclose(policy.act_batch(batch), live.numpy(), atol=1e-4)
    assert bool(policy.encoder.normalizer.fitted) and float(policy.encoder.normalizer.std_0[1]) == 0.5
    out = calql_robot.export_policy(ckpt, tmp_path / "export")
    names = load_file(str(out / "policy.safetensors"))
    assert {n.split(".")[0] for n in names} == {"encoder", "actor"} and "encoder.normalizer.std_0" in names
    exported = calql_robot.load_policy(out, device="cpu")
    assert np.array_equal(exported.act_batch(batch), policy.act_batch(batch))
    with pytest.raises(UserError, match=r"'cam' is an image: expected dtype uint8.*got float32"):
        policy.act({**singles[0], "cam": singles[0]["cam"].astype(np.float32)})


def test_export_round_trip_is_identical_and_smaller(run, tmp_path):
    out = calql_robot.export_policy(run.run_dir, tmp_path / "policy")
    assert sorted(p.name for p in out.iterdir()) == ["policy.json", "policy.safetensors"]
    info = json.loads((out / "policy.json").read_text())
    assert info["format"] == "calql_robot.policy" and info["format_version"] == 1 and info["action_dim"] == 2
    assert info["task"] == "pointmaze_umaze" and info["obs_spec"]["state"]["shape"] == [6]
    assert info["source"]["checkpoint"] == str(run.checkpoint.resolve()) and info["source"]["step"] == 4
    assert info["agent_config"]["actor_hidden"] == [32, 32]
    names = load_file(str(out / "policy.safetensors"))
    assert {n.split(".")[0] for n in names} == {"actor"}  # this low-dim encoder has no weights (no normalisation)
    assert not any("critic" in n or "optim" in n or "rng" in n for n in names)
    checkpoint_size = (run.checkpoint / "tensors.safetensors").stat().st_size
    assert (out / "policy.safetensors").stat().st_size * 3 < checkpoint_size
    exported = calql_robot.load_policy(out, device="cpu")
    original = calql_robot.load_policy(run.run_dir, device="cpu")
    batch = {"state": np.stack([o["state"] for o in env_observations()])}
    assert np.array_equal(exported.act_batch(batch), original.act_batch(batch))
    assert exported.metadata["kind"] == "export" and exported.task == "pointmaze_umaze"
    assert exported.metadata["source_checkpoint"] == original.metadata["source_checkpoint"]
    again = calql_robot.load_policy(calql_robot.export_policy(out, tmp_path / "copy"), device="cpu")  # export of export
    assert np.array_equal(again.act_batch(batch), original.act_batch(batch))


def test_export_refuses_to_overwrite_and_leaves_nothing_half_written(run, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="exists and is not empty.*overwrite=True"):
        calql_robot.export_policy(run.run_dir, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    with pytest.raises(UserError, match="does not exist"):
        calql_robot.export_policy(tmp_path / "missing_run", tmp_path / "new")
    assert not (tmp_path / "new").exists()
    calql_robot.export_policy(run.run_dir, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["policy.json", "policy.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # no temporary or old folder left behind
    (tmp_path / "empty").mkdir()
    assert calql_robot.export_policy(run.run_dir, tmp_path / "empty").is_dir()  # an empty folder is fine


def test_bad_paths_give_user_errors(run, tmp_path):
    with pytest.raises(UserError, match=r"'.*nowhere' does not exist; expected a pretrain/finetune run directory"):
        calql_robot.load_policy(tmp_path / "nowhere")
    with pytest.raises(UserError, match="no checkpoint found"):
        calql_robot.load_policy(tmp_path)
    broken = calql_robot.export_policy(run.run_dir, tmp_path / "broken")
    (broken / "policy.json").write_text('{"format": "something_else"}')
    with pytest.raises(UserError, match="not a calql_robot policy export"):
        calql_robot.load_policy(broken)
    (broken / "policy.json").write_text("{ not json")
    with pytest.raises(UserError, match="policy.json and policy.safetensors"):
        calql_robot.load_policy(broken)


def test_wrong_observations_name_key_expected_and_got(run):
    policy = calql_robot.load_policy(run.run_dir, device="cpu")
    with pytest.raises(UserError, match=r"lacks key\(s\) \['state'\].*'state' float32\[6\].*got keys \['pos'\]"):
        policy.act({"pos": np.zeros(6, np.float32)})
    with pytest.raises(UserError, match=r"key 'state': expected shape \[6\], got \[5\]"):
        policy.act({"state": np.zeros(5, np.float32)})
    with pytest.raises(UserError, match=r"expected shape \[6\], got \[1, 6\].*use act_batch"):
        policy.act({"state": np.zeros((1, 6), np.float32)})
    with pytest.raises(UserError, match=r"batch key 'state': expected shape \[B, 6\], got \[6\]"):
        policy.act_batch({"state": np.zeros(6, np.float32)})
    with pytest.raises(UserError, match="expected a numeric array"):
        policy.act({"state": "ball"})
    with pytest.raises(UserError, match="must be a dict"):
        policy.act(np.zeros(6, np.float32))


def test_raw_load_state_dict_tensors_fails_as_the_doc_says(run):
    """The pitfall docs/python_api.md explains: checkpoint names carry the agent/ prefix."""
    agent = agent_from_checkpoint(run.run_dir)
    with pytest.raises(UserError, match=r"agent state lacks \['log_alpha', 'log_alpha_prime', 'step', 'rng_state'\]"):
        agent.load_state_dict_tensors(load_file(str(run.checkpoint / "tensors.safetensors")))


def test_make_env_builds_the_task_env_and_refuses_unknown_tasks(run):
    policy = calql_robot.load_policy(run.run_dir, device="cpu")
    with calql_robot.make_env(policy, seed=0) as env:  # the saved task config, horizon override included
        assert env.horizon == HORIZON
    with calql_robot.make_env("pointmaze_umaze", seed=1, horizon=7) as env:
        assert env.horizon == 7 and env.observation_space["state"].shape == (6,)
        a, _ = env.reset(seed=1)
    with calql_robot.make_env("pointmaze_umaze", seed=1, horizon=7) as env:
        b, _ = env.reset(seed=1)
    assert np.array_equal(a["state"], b["state"])
    with pytest.raises(UserError, match=r"unknown task 'pointmaze_umze'; expected one of \[.*'pointmaze_umaze'"):
        calql_robot.make_env("pointmaze_umze")
    with pytest.raises(UserError, match=r"could not be built.*horizn"):
        calql_robot.make_env("pointmaze_umaze", horizn=3)


EGL_SCRIPTS = {
    # the with block closes the env although it raises (the atexit safety net is switched off to see that)
    "with": """
import atexit, calql_robot, calql_robot.api.envs
atexit.unregister(calql_robot.api.envs.close_open_envs)
try:
    with calql_robot.make_env("pointmaze_umaze", seed=0, render=True) as env:
        env.render()
        raise RuntimeError("boom")
except RuntimeError:
    pass
""",
    # never closed: the atexit hook closes it before EGL is torn down
    "forgotten": """
import calql_robot
env = calql_robot.make_env("pointmaze_umaze", seed=0, render=True)
env.render()
""",
    # the control: a rendering env left open prints EGL tracebacks at exit, so the checks above can fail
    # (it also shows that `import calql_robot` leaves the API unimported until a name of it is used)
    "raw": """
import sys, calql_robot
print("light" if "calql_robot.api" not in sys.modules else "heavy")
from calql_robot.envs.pointmaze import make_pointmaze_env
env = make_pointmaze_env("umaze", render=True)
env.reset(seed=0)
env.render()
print(calql_robot.load_policy.__module__, callable(calql_robot.pretrain))
""",
}


@pytest.mark.parametrize("case", sorted(EGL_SCRIPTS))
def test_make_env_closes_on_exception_and_scripts_end_without_egl_tracebacks(case, tmp_path):
    proc = subprocess.run([sys.executable, "-c", EGL_SCRIPTS[case]], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "MUJOCO_GL": "egl"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    if case == "raw":
        assert "EGLError" in proc.stderr
        assert proc.stdout.split() == ["light", "calql_robot.api.loading", "True"]
    else:
        assert "EGLError" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr


def test_training_entry_points_raise_user_errors_not_exit(dataset, tmp_path):
    with pytest.raises(ConfigError, match="pretrain.*nosuch"):
        calql_robot.pretrain([*SMALL, "pretrain.nosuch=1", f"run_dir={tmp_path / 'a'}"])
    with pytest.raises(ConfigError, match="overrides must be a list"):
        calql_robot.pretrain("task=pointmaze_umaze")
    with pytest.raises(UserError, match="does not exist"):
        calql_robot.pretrain([*SMALL, f"dataset={tmp_path / 'missing.zarr'}", f"run_dir={tmp_path / 'b'}"])
    with pytest.raises(UserError, match="finetune needs checkpoint"):
        calql_robot.finetune(["task=pointmaze_umaze", "checkpoint=", f"run_dir={tmp_path / 'c'}"])
    assert not any(tmp_path.iterdir())  # refused runs create no run directory


def test_finetune_and_evaluate_from_python(run, dataset, tmp_path):
    fine = calql_robot.finetune([*[o.replace("pretrain.", "finetune.") for o in SMALL], f"checkpoint={run.run_dir}",
                                 "finetune.env_steps=6", "eval.every=0", "agent.policy_ema_tau=0.5",
                                 f"dataset={dataset}", f"run_dir={tmp_path / 'fine'}"])
    assert fine.metrics["env_steps"] == 6 and fine.checkpoint is not None
    policy = calql_robot.load_policy(fine.run_dir, device="cpu")
    # an agent.KEY override wins over the checkpoint's agent options, as on the command line (HydraConfig is set)
    assert policy.metadata["agent_config"]["policy_ema_tau"] == 0.5 and policy.metadata["networks"] == "averaged"
    assert policy.metadata["agent_config"]["actor_hidden"] == [32, 32]  # the rest comes from the checkpoint
    out = tmp_path / "eval"
    result = calql_robot.evaluate([f"checkpoint={fine.run_dir}", "eval.episodes=2", "eval.video=false",
                                   "device=cpu", "threads=1", f"output={out}"])
    assert result.run_dir == out and result.metrics["episodes"] == 2 and result.metrics["task"] == "pointmaze_umaze"
    assert json.loads((out / "summary.json").read_text())["seeds"] == [10000, 10001]
    assert [int(r["seed"]) for r in result.csv("episodes")] == [10000, 10001]


def test_docs_example_runs_as_written(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "python_api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks and "calql_robot.pretrain(" in blocks[0] and "export_policy(" in blocks[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the example's mkdtemp folder goes under tmp_path
    namespace: dict = {"__name__": "__docs__"}
    for block in blocks:
        exec(compile(block, "docs/python_api.md", "exec"), namespace)
    assert namespace["export_bytes"] < namespace["checkpoint_bytes"]
    assert namespace["policy"].task == "pointmaze_umaze" and len(namespace["observations"]) >= 2


def test_unknown_attribute_of_the_package_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        calql_robot.nosuch  # noqa: B018


def test_action_scaling_of_the_checkpoint_is_undone_and_exported(run, tmp_path):
    """A run on a store converted with action_normalize=true: act returns the robot's units, in exports too."""
    import shutil

    run_copy = tmp_path / "scaled_run"
    shutil.copytree(run.run_dir, run_copy)
    scaling = {"low": [-10.0, 0.0], "high": [30.0, 5.0], "source": "data"}
    for state_file in run_copy.glob("checkpoints/*/state.json"):
        state = json.loads(state_file.read_text())
        state["action_scaling"] = scaling
        state_file.write_text(json.dumps(state))
    plain = calql_robot.load_policy(run.run_dir, device="cpu")
    scaled = calql_robot.load_policy(run_copy, device="cpu")
    batch = {"state": np.stack([o["state"] for o in env_observations()])}
    unit = plain.act_batch(batch)
    want = np.array(scaling["low"]) + (unit + 1.0) * 0.5 * (np.array(scaling["high"]) - np.array(scaling["low"]))
    np.testing.assert_allclose(scaled.act_batch(batch), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scaled.act(env_observations()[0]), want[0], rtol=1e-5, atol=1e-5)
    exported = calql_robot.load_policy(calql_robot.export_policy(run_copy, tmp_path / "export"), device="cpu")
    assert json.loads((tmp_path / "export" / "policy.json").read_text())["action_scaling"] == scaling
    np.testing.assert_allclose(exported.act_batch(batch), want, rtol=1e-5, atol=1e-5)
