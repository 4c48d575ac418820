"""The compiled update (``agent.enable_compile``) equals the eager one: same losses and parameters from the same
state on the same batches, on CPU here and on CUDA where present (skipped, not failed, without it)."""

from __future__ import annotations

import pytest
import torch

from calql_robot.agent import build_agent

OBS_DIM, ACTION_DIM, BATCH = 5, 2, 16
AGENT_CFG = {"critic_hidden": [32, 32], "actor_hidden": [32], "cql_n_actions": 3, "cql_lagrange": True,
             "policy_ema_tau": 0.01}
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def make_agent(device: str):
    torch.manual_seed(0)
    obs_spec = {"state": {"shape": [OBS_DIM], "dtype": "float32", "kind": "low_dim"}}
    return build_agent(AGENT_CFG, obs_spec, ACTION_DIM, device)


def make_batch(seed: int, device: str) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {
        "obs": {"state": torch.randn(BATCH, OBS_DIM, generator=g)},
        "next_obs": {"state": torch.randn(BATCH, OBS_DIM, generator=g)},
        "action": torch.rand(BATCH, ACTION_DIM, generator=g) * 2 - 1,
        "reward": torch.randn(BATCH, generator=g),
        "terminal": (torch.rand(BATCH, generator=g) < 0.2).float(),
        "mc_return": torch.randn(BATCH, generator=g) * 5,
    }
    return {k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device))
            for k, v in batch.items()}


@pytest.mark.parametrize("device", DEVICES)
def test_compiled_update_matches_eager(device: str) -> None:
    eager, compiled = make_agent(device), make_agent(device)
    compiled.enable_compile("reduce-overhead" if device == "cuda" else None)
    assert compiled.compiled and not eager.compiled
    for step in range(3):
        batch = make_batch(step, device)
        eager_metrics, compiled_metrics = eager.update(batch), compiled.update(batch)
        assert eager_metrics.keys() == compiled_metrics.keys()
        for name, value in eager_metrics.items():
            assert compiled_metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-5), (step, name)
    eager_state, compiled_state = eager.state_dict_tensors(), compiled.state_dict_tensors()
    assert eager_state.keys() == compiled_state.keys()
    for name, tensor in eager_state.items():
        if tensor.is_floating_point():
            torch.testing.assert_close(compiled_state[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert torch.equal(compiled_state[name], tensor), name
    # The networks did move: equality is not the trivial one of two untrained agents.
    start = make_agent(device).state_dict_tensors()
    assert not torch.allclose(start["critic.weights.1"], eager_state["critic.weights.1"])
