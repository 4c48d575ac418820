"""Several learner processes (calql_robot/training/distributed.py): 2 gloo ranks on loopback with torchrun's
environment variables. Updates on 2 ranks x B/2 rows equal updates on B rows in one process; the random streams of
ranks > 0 are re-derived from (seed, rank, update); bad setups are refused. The slow test runs pretrain under the
real torchrun and resumes its checkpoint in a single process.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from calql_robot.errors import UserError
from calql_robot.training import distributed

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).parent / "torchrun"
OBS_SPEC = {"state": {"shape": [5], "dtype": "float32", "kind": "low_dim"}}
BATCH, UPDATES = 8, 2
# calql with a fixed CQL weight; cql with the Lagrange multiplier and max-target backup (every optimiser used)
VARIANTS = {"calql": {}, "cql": {"variant": "cql", "cql_lagrange": True, "cql_max_target_backup": True}}


def make_agent(overrides: dict):
    from calql_robot.agent import build_agent

    torch.manual_seed(0)
    cfg = {"actor_hidden": [16, 16], "critic_hidden": [16, 16], "cql_n_actions": 2, **overrides}
    return build_agent(cfg, OBS_SPEC, 2, "cpu")


def batch(update: int, rows: slice) -> dict:
    """Rows ``rows`` of the full (BATCH-row) batch of update ``update``: the same data in every process."""
    gen = torch.Generator().manual_seed(100 + update)
    full = {"obs": {"state": torch.randn(BATCH, 5, generator=gen)},
            "next_obs": {"state": torch.randn(BATCH, 5, generator=gen)},
            "action": torch.rand(BATCH, 2, generator=gen) * 2 - 1, "reward": torch.randn(BATCH, generator=gen),
            "terminal": (torch.rand(BATCH, generator=gen) < 0.3).float(),
            "mc_return": torch.randn(BATCH, generator=gen)}
    return {k: {kk: vv[rows] for kk, vv in v.items()} if isinstance(v, dict) else v[rows] for k, v in full.items()}


def shard_noise(agent, rank: int, world: int) -> None:
    """Each rank's noise = its columns of the full batch's noise (drawn from identical generators), so the single
    process and the two ranks see the same numbers for the same rows."""
    draw = agent._draw_noise

    def sharded(batch_size: int) -> dict:
        full = draw(batch_size * world)
        return {k: v[:, rank * batch_size : (rank + 1) * batch_size].contiguous() for k, v in full.items()}

    agent._draw_noise = sharded


def run_updates(agent, rank: int, world: int, sync) -> dict[str, torch.Tensor]:
    """UPDATES updates on this rank's shard; returns the final state plus the first update's gradients before
    (``local.i``) and after (``grad.i``) ``sync``."""
    shard_noise(agent, rank, world)
    grads: dict[str, torch.Tensor] = {}

    def record(params):
        if not grads:
            grads.update({f"local.{i}": p.grad.clone() for i, p in enumerate(params) if p.grad is not None})
            sync(params)
            grads.update({f"grad.{i}": p.grad.clone() for i, p in enumerate(params) if p.grad is not None})
        else:
            sync(params)

    agent.grad_sync = record
    half = BATCH // world
    for update in range(UPDATES):
        agent.update(batch(update, slice(rank * half, (rank + 1) * half)))
    state = {k: v for k, v in agent.state_dict_tensors().items() if k != "rng_state"}
    return {**state, **grads}


def worker(rank: int, port: int, out: Path) -> None:
    """One rank, in a forked process, with the environment torchrun would give it."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    world = distributed.from_env(torch.device("cpu"))
    assert world.enabled and world.world_size == 2
    for name, overrides in VARIANTS.items():
        tensors = run_updates(make_agent(overrides), world.rank, world.world_size, world.average_gradients)
        save_file(tensors, str(out / f"{name}_rank{world.rank}.safetensors"))
    world.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    proc = subprocess.run([str(TORCHRUN), "--standalone", f"--nproc-per-node={nproc}", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_two_ranks_of_half_the_batch_equal_one_process_of_the_whole(tmp_path):
    references = {name: run_updates(make_agent(overrides), 0, 1, lambda params: None)
                  for name, overrides in VARIANTS.items()}  # first: the forked ranks inherit a warmed-up torch
    fork, port = multiprocessing.get_context("fork"), free_port()  # forked: no second import of torch
    workers = [fork.Process(target=worker, args=(rank, port, tmp_path)) for rank in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
        if process.is_alive():  # a hung collective: end it rather than leave it behind
            process.kill()
    assert [process.exitcode for process in workers] == [0, 0]
    for name, overrides in VARIANTS.items():
        reference = references[name]
        ranks = [load_file(str(tmp_path / f"{name}_rank{r}.safetensors")) for r in range(2)]
        start = make_agent(overrides).state_dict_tensors()
        grad_keys = [k for k in reference if k.startswith("grad.")]
        assert len(grad_keys) >= 10 and set(grad_keys) == {k for k in ranks[0] if k.startswith("grad.")}
        # each rank's own gradient is of its half only; after the all-reduce both hold the full batch's gradient
        local = [k.replace("grad.", "local.") for k in grad_keys]
        assert any(not torch.allclose(ranks[0][k], ranks[1][k], atol=1e-6) for k in local), name
        for key in grad_keys:
            for rank in ranks:
                torch.testing.assert_close(rank[key], reference[key], atol=1e-5, rtol=1e-4, msg=f"{name} {key}")
        for key, value in reference.items():
            if key.startswith(("grad.", "local.")):
                continue
            for r, rank in enumerate(ranks):
                torch.testing.assert_close(rank[key], value, atol=1e-5, rtol=1e-4, msg=f"{name} rank {r} {key}")
        moved = [k for k in start if k.startswith(("actor.", "critic.")) and not torch.equal(start[k], reference[k])]
        assert len(moved) >= 4, name  # the updates changed the networks being compared


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_pretrain_under_torchrun_writes_from_rank_0_and_resumes_in_one_process(tmp_path):
    from calql_robot.envs.pointmaze import generate_dataset

    data, run_dir = tmp_path / "pm.zarr", tmp_path / "run"
    generate_dataset(data, episodes=4, seed=0, horizon=30)
    common = ["task=pointmaze_umaze", f"dataset={data}", "pretrain.batch_size=16", "pretrain.log_every=2",
              "pretrain.save_every=2", "eval.every=0", "progress=false", "device=cpu", "threads=1",
              "agent.actor_hidden=[16,16]", "agent.critic_hidden=[16,16]", "agent.cql_n_actions=2",
              f"run_dir={run_dir}"]
    out = torchrun("-m", "calql_robot.pretrain", *common, "pretrain.steps=4").stdout
    assert out.count("run directory:") == 1 and "distributed: 2 processes (gloo)" in out
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "update_000000002", "update_000000004"]
    assert json.loads((ckpts / "update_000000004" / "state.json").read_text())["world_size"] == 2
    assert [int(r["update"]) for r in rows(run_dir / "train.csv")] == [2, 4]  # one writer: no duplicate rows

    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    single = subprocess.run([sys.executable, "-m", "calql_robot.pretrain", *common, "pretrain.steps=6"],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    assert "resuming from" in single.stdout and "at update 4" in single.stdout
    assert [int(r["update"]) for r in rows(run_dir / "train.csv")] == [2, 4, 6]
    state = json.loads((ckpts / (ckpts / "latest").read_text().strip() / "state.json").read_text())
    assert state["step"] == 6 and state["world_size"] == 1


def test_ranks_after_0_derive_their_streams_from_seed_rank_and_update():
    torch.manual_seed(7)
    before = torch.get_rng_state()
    generator = torch.Generator().manual_seed(3)
    assert distributed.Distributed(rank=0, world_size=2, enabled=True).rank_streams(0, 50, generator) is None
    assert torch.equal(torch.get_rng_state(), before) and generator.initial_seed() == 3  # rank 0: untouched

    def draws(rank: int, update: int, seed: int = 0) -> tuple:
        rng = distributed.Distributed(rank=rank, world_size=4, enabled=True).rank_streams(seed, update, generator)
        return tuple(rng.integers(0, 10**9, 4)), torch.rand(2, generator=generator).tolist(), torch.rand(2).tolist()

    assert draws(1, 50) == draws(1, 50)  # a resumed rank 1 at update 50 draws what a fresh derivation gives
    others = [draws(2, 50), draws(1, 51), draws(1, 50, seed=1)]
    for other in others:  # another rank, update or seed: different sampler, noise and augmentation streams
        assert all(a != b for a, b in zip(draws(1, 50), other))
    assert not np.array_equal(np.random.rand(3), np.random.rand(3))


def test_single_process_and_bad_setups(monkeypatch):
    for name in distributed.TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    single = distributed.from_env(torch.device("cpu"))
    assert not single.enabled and single.is_main() and single.shard_size(255) == 255
    assert single.mean_metrics({"q": 1.5}) == {"q": 1.5}
    assert distributed.Distributed(rank=1, world_size=4).shard_size(256) == 64
    with pytest.raises(UserError, match="pretrain.batch_size=255 does not split evenly"):
        distributed.Distributed(rank=0, world_size=2).shard_size(255)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="MASTER_ADDR"):
        distributed.from_env(torch.device("cpu"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(UserError, match="device=cuda:1 .* LOCAL_RANK"):
        distributed.from_env(torch.device("cuda", 1))
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(UserError, match="RANK='x'"):
        distributed.from_env(torch.device("cpu"))
    cfg = {"agent": {"encoder": {"resnet_norm": "batch"}}}
    from omegaconf import OmegaConf

    with pytest.raises(UserError, match="resnet_norm=batch"):
        distributed.check_batch_statistics(OmegaConf.create(cfg), distributed.Distributed(world_size=2, enabled=True))
    distributed.check_batch_statistics(OmegaConf.create(cfg), single)  # one process: BatchNorm is exact
