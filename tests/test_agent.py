"""The CalQLAgent as a whole: configs, variants, target updates, state round trip, determinism, learning, CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from calql_robot.agent import build_agent
from calql_robot.errors import UserError

AGENT_CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "agent"
OBS_SPEC = {"state": {"shape": [5], "dtype": "float32", "kind": "low_dim"}}
ACTION_DIM = 2
SMALL = {"actor_hidden": [32, 32], "critic_hidden": [32, 32], "cql_n_actions": 4}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny networks: one intra-op thread is faster and immune to other processes on the shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def agent_cfg(variant: str, **overrides):
    """The real configs/agent/<variant>.yaml (composed by hydra) with small networks and ``overrides``."""
    with initialize_config_dir(config_dir=str(AGENT_CONFIGS), version_base="1.3"):
        cfg = compose(config_name=variant)
    return OmegaConf.merge(cfg, {**SMALL, **overrides})


def make_batch(batch_size: int = 16, seed: int = 0, mc_scale: float = 1.0, device: str = "cpu") -> dict:
    gen = torch.Generator().manual_seed(seed)
    batch = {
        "obs": {"state": torch.randn(batch_size, 5, generator=gen)},
        "next_obs": {"state": torch.randn(batch_size, 5, generator=gen)},
        "action": torch.rand(batch_size, ACTION_DIM, generator=gen) * 2 - 1,
        "reward": torch.randn(batch_size, generator=gen),
        "terminal": (torch.rand(batch_size, generator=gen) < 0.2).float(),
        "mc_return": torch.randn(batch_size, generator=gen) * mc_scale,
    }
    return {k: ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v.to(device))
            for k, v in batch.items()}  # fmt: skip


def build(variant: str = "calql", seed: int = 0, device: str = "cpu", **overrides):
    torch.manual_seed(seed)
    return build_agent(agent_cfg(variant, **overrides), OBS_SPEC, ACTION_DIM, device)


EXPECTED_METRICS = {
    "critic_loss", "actor_loss", "alpha", "cql_alpha", "cql_penalty", "bound_rate", "q_data_mean", "mc_return_mean",
    "td_target_mean", "entropy",
}  # fmt: skip


@pytest.mark.parametrize("variant", ["calql", "cql", "sac"])
def test_every_variant_updates_and_reports_finite_metrics(variant: str) -> None:
    agent = build(variant)
    metrics = agent.update(make_batch())
    assert EXPECTED_METRICS <= set(metrics)
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    assert metrics["mc_return_mean"] == pytest.approx(make_batch()["mc_return"].mean().item())
    assert agent.cfg.variant == variant


def test_variant_configs_differ_only_where_documented() -> None:
    calql, cql, sac = (OmegaConf.to_container(agent_cfg(v)) for v in ("calql", "cql", "sac"))
    assert {k for k in calql if calql[k] != cql[k]} == {"variant"}
    assert {k for k in calql if calql[k] != sac[k]} == {"variant", "cql_max_target_backup", "backup_entropy"}


def test_sac_has_no_cql_term() -> None:
    metrics = build("sac").update(make_batch())
    assert metrics["cql_loss"] == 0.0 and metrics["cql_penalty"] == 0.0 and metrics["bound_rate"] == 0.0
    assert metrics["critic_loss"] == pytest.approx(metrics["td_loss"])


def test_cql_ignores_mc_return_and_calql_uses_it() -> None:
    low, high = make_batch(mc_scale=0.0), make_batch(mc_scale=0.0)
    high["mc_return"] = torch.full_like(high["mc_return"], 100.0)
    cql_low, cql_high = build("cql").update(low), build("cql").update(high)
    assert cql_high["bound_rate"] == 1.0 and cql_low["bound_rate"] < 1.0
    assert cql_high["critic_loss"] == cql_low["critic_loss"]  # computed but not applied
    calql_low, calql_high = build("calql").update(low), build("calql").update(high)
    assert calql_high["bound_rate"] == 1.0
    assert calql_high["cql_penalty"] > calql_low["cql_penalty"] + 50.0  # G = 100 enters the logsumexp


def test_target_critics_follow_polyak_update() -> None:
    agent = build("calql", tau=0.1)
    before = [p.detach().clone() for p in agent.critic_target.parameters()]
    agent.update(make_batch())
    for old, target, online in zip(before, agent.critic_target.parameters(), agent.critic.parameters()):
        torch.testing.assert_close(target, 0.9 * old + 0.1 * online)
    assert not any(torch.equal(t, o) for t, o in zip(agent.critic_target.parameters(), agent.critic.parameters()))


def test_critic_weights_are_stacked_per_critic() -> None:
    agent = build("calql", num_critics=3)
    assert [tuple(w.shape) for w in agent.critic.weights] == [(3, 7, 32), (3, 32, 32), (3, 32, 1)]


def assert_same_state(agent_a, agent_b) -> None:
    state_a, state_b = agent_a.state_dict_tensors(), agent_b.state_dict_tensors()
    assert set(state_a) == set(state_b)
    for key, value in state_a.items():
        assert torch.equal(value, state_b[key]), key


def test_state_round_trip_restores_exactly(tmp_path: Path) -> None:
    agent = build("calql", seed=0, cql_lagrange=True)
    for seed in range(3):
        agent.update(make_batch(seed=seed))
    tensors = agent.state_dict_tensors()
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    assert any(k.startswith("optim.critic.") and k.endswith("exp_avg_sq") for k in tensors)
    assert {"log_alpha", "log_alpha_prime", "step", "rng_state"} <= set(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp_path / "agent.safetensors")
    fresh = build("calql", seed=123, cql_lagrange=True)  # different init and RNG until loaded
    fresh.load_state_dict_tensors(load_file(tmp_path / "agent.safetensors"))
    assert int(fresh.step) == 3 and fresh.state_dict_meta()["step"] == 3
    assert_same_state(agent, fresh)
    next_batch = make_batch(seed=7)
    assert agent.update(next_batch) == fresh.update(next_batch)
    assert_same_state(agent, fresh)


def test_load_rejects_state_of_another_shape() -> None:
    tensors = build("calql").state_dict_tensors()
    with pytest.raises(UserError, match="critic"):
        build("calql", critic_hidden=[16, 16]).load_state_dict_tensors(tensors)


def test_seeded_updates_are_reproducible_on_cpu() -> None:
    runs = []
    for _ in range(2):
        agent = build("calql", seed=5)
        runs.append([agent.update(make_batch(seed=s)) for s in range(3)])
    assert runs[0] == runs[1]
    other = build("calql", seed=6).update(make_batch(seed=0))
    assert other != runs[0][0]


def test_lagrange_multiplier_rises_while_penalty_is_above_gap() -> None:
    agent = build("calql", cql_lagrange=True, cql_target_action_gap=-1000.0)
    first = agent.update(make_batch())
    for _ in range(5):
        last = agent.update(make_batch())
    assert last["cql_alpha_prime"] > first["cql_alpha_prime"]
    assert last["cql_alpha"] == pytest.approx(last["cql_alpha_prime"] * agent.cfg.cql_alpha, rel=1e-5)


def test_act_is_deterministic_tanh_mean_or_sampled() -> None:
    agent = build("calql")
    obs = {"state": np.linspace(-1, 1, 5, dtype=np.float32)}
    action = agent.act(obs, deterministic=True)
    assert action.shape == (ACTION_DIM,) and action.dtype == np.float32
    mean, _ = agent.actor(agent.encoder({"state": torch.from_numpy(obs["state"])[None]}))
    np.testing.assert_allclose(action, torch.tanh(mean)[0].detach().numpy(), rtol=1e-6)
    np.testing.assert_array_equal(action, agent.act(obs, deterministic=True))
    samples = np.stack([agent.act(obs, deterministic=False) for _ in range(5)])
    assert np.all(np.abs(samples) <= 1.0) and samples.std(axis=0).min() > 0
    with pytest.raises(UserError, match="state"):
        agent.act({"other": np.zeros(5, np.float32)}, deterministic=True)


@pytest.mark.parametrize(
    "override, key", [({"variant": "iql"}, "variant"), ({"cql_alphaa": 1.0}, "cql_alphaa"), ({"tau": 0.0}, "tau")]
)
def test_bad_config_raises_user_error_naming_the_key(override: dict, key: str) -> None:
    with pytest.raises(UserError, match=key):
        build_agent({**SMALL, **override}, OBS_SPEC, ACTION_DIM, "cpu")


def test_critic_loss_decreases_on_a_one_step_bandit() -> None:
    """Terminal transitions with reward = -|a - 0.5|: the critic loss must fall, its TD part nearly to zero.

    The CQL part cannot vanish: with importance sampling it stays near log(3n) + A log 2 - E[log pi] for a policy
    that has not collapsed, so the check on the total is relative.
    """
    torch.manual_seed(0)
    agent = build("calql", seed=0, critic_lr=1e-3, cql_alpha=1.0)
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(64, 5, generator=gen)
    action = torch.rand(64, ACTION_DIM, generator=gen) * 2 - 1
    reward = -(action - 0.5).abs().sum(-1)
    batch = {"obs": {"state": obs}, "next_obs": {"state": obs}, "action": action, "reward": reward,
             "terminal": torch.ones(64), "mc_return": reward}  # fmt: skip
    history = [agent.update(batch) for _ in range(200)]
    critic = np.array([m["critic_loss"] for m in history])
    td = np.array([m["td_loss"] for m in history])
    assert critic[-20:].mean() < 0.85 * critic[:20].mean()
    assert td[-20:].mean() < 0.2 * td[:20].mean()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_update_and_round_trip_to_cpu() -> None:
    agent = build("calql", device="cuda", cql_lagrange=True)
    metrics = agent.update(make_batch(device="cuda"))
    assert all(np.isfinite(v) for v in metrics.values())
    assert agent.act({"state": np.zeros(5, np.float32)}, deterministic=True).shape == (ACTION_DIM,)
    cpu_tensors = {k: v.cpu() for k, v in agent.state_dict_tensors().items()}
    fresh = build("calql", device="cuda", cql_lagrange=True, seed=9)
    fresh.load_state_dict_tensors(cpu_tensors)
    assert agent.update(make_batch(seed=3, device="cuda")) == fresh.update(make_batch(seed=3, device="cuda"))


IMAGE_SPEC = {
    "state": {"shape": [3], "dtype": "float32", "kind": "low_dim"},
    "cam": {"shape": [32, 32, 3], "dtype": "uint8", "kind": "rgb"},
}


def test_image_observations_train_the_encoder_through_the_critic() -> None:
    torch.manual_seed(0)
    encoder = {"name": "conv", "feature_dim": 8, "conv_channels": 8, "conv_layers": 2}
    agent = build_agent({**SMALL, "encoder": encoder}, IMAGE_SPEC, ACTION_DIM, "cpu")
    gen = torch.Generator().manual_seed(0)

    def obs() -> dict:
        return {"state": torch.randn(8, 3, generator=gen),
                "cam": torch.randint(0, 256, (8, 32, 32, 3), generator=gen, dtype=torch.uint8)}  # fmt: skip

    batch = {"obs": obs(), "next_obs": obs(), "action": torch.rand(8, ACTION_DIM, generator=gen) * 2 - 1,
             "reward": torch.randn(8, generator=gen), "terminal": torch.zeros(8), "mc_return": torch.zeros(8)}
    before = {k: v.clone() for k, v in agent.encoder.state_dict().items()}
    metrics = agent.update(batch)
    assert np.isfinite(metrics["critic_loss"])
    assert any(not torch.equal(before[k], v) for k, v in agent.encoder.state_dict().items())
    assert any(k.startswith("encoder.") for k in agent.state_dict_tensors())
    action = agent.act({"state": np.zeros(3, np.float32), "cam": np.zeros((32, 32, 3), np.uint8)}, deterministic=True)
    assert action.shape == (ACTION_DIM,)


@pytest.mark.parametrize("variant, sets", [("calql", [1, 13]), ("sac", [1, 1])])
def test_one_batched_critic_forward_per_state_set(variant: str, sets: list[int]) -> None:
    """Critic passes per update: the actor's (1 action set) and one over every set at s; targets: one at s'."""
    agent = build(variant)
    calls: dict[str, list[tuple]] = {"critic": [], "critic_target": []}
    for name in calls:
        getattr(agent, name).register_forward_hook(
            lambda module, args, out, name=name: calls[name].append((args[1].shape[0], tuple(out.shape)))
        )
    agent.update(make_batch(batch_size=16))
    n = agent.cfg.cql_n_actions
    assert [k for k, _ in calls["critic"]] == sets  # 1 + 3n = 13 sets for n = 4
    assert calls["critic"][-1][1] == (2, sets[-1], 16)
    assert [k for k, _ in calls["critic_target"]] == [n if variant == "calql" else 1]


def test_state_from_another_device_type_loads() -> None:
    """A CUDA generator state (16 bytes) differs from a CPU one: loading it on CPU reseeds instead of failing."""
    source = build("calql", seed=1)
    tensors = source.state_dict_tensors()
    tensors["rng_state"] = torch.arange(16, dtype=torch.uint8)  # the size a CUDA generator state has
    target = build("calql", seed=2)
    target.load_state_dict_tensors(tensors)
    for key, value in source.state_dict_tensors().items():
        if key != "rng_state":
            assert torch.equal(value, target.state_dict_tensors()[key]), key
    assert target.act({"state": np.zeros(OBS_SPEC["state"]["shape"], np.float32)}, deterministic=False).shape == (
        ACTION_DIM,)


def test_critic_value_normalization_sets_scale_and_round_trips() -> None:
    torch.manual_seed(0)
    plain = build_agent(agent_cfg("calql"), OBS_SPEC, ACTION_DIM, "cpu")
    torch.manual_seed(0)
    normed = build_agent(agent_cfg("calql", critic_value_norm=True), OBS_SPEC, ACTION_DIM, "cpu")
    assert plain.set_value_normalization(np.array([1.0])) == (0.0, 1.0)  # off: a no-op
    returns = np.array([-500.0, -100.0, 0.0, 5.0])
    shift, scale = normed.set_value_normalization(returns)
    assert shift == pytest.approx(returns.mean()) and scale == pytest.approx(returns.std())
    batch = make_batch()
    actions = batch["action"].unsqueeze(0)
    q_plain = plain.critic(batch["obs"]["state"], actions)
    torch.testing.assert_close(normed.critic(batch["obs"]["state"], actions), q_plain * scale + shift)
    torch.testing.assert_close(normed.critic_target(batch["obs"]["state"], actions), q_plain * scale + shift)
    restored = build_agent(agent_cfg("calql", critic_value_norm=True), OBS_SPEC, ACTION_DIM, "cpu")
    restored.load_state_dict_tensors(normed.state_dict_tensors())
    assert float(restored.critic.value_shift) == pytest.approx(shift)
    assert float(restored.critic_target.value_scale) == pytest.approx(scale)
    with pytest.raises(UserError, match="finite"):
        normed.set_value_normalization(np.array([np.nan]))


def test_policy_ema_averages_the_actor_and_acts_deterministically_with_it() -> None:
    agent = build("calql", policy_ema_tau=0.5)
    live, average = agent.actor, agent.policy_ema["actor_ema"]
    before = [p.detach().clone() for p in average.parameters()]
    agent.update(make_batch())
    for old, avg, new in zip(before, average.parameters(), live.parameters()):
        torch.testing.assert_close(avg, old.lerp(new.detach(), 0.5))  # moved half way to the updated actor
    assert not all(torch.equal(a, b) for a, b in zip(average.parameters(), live.parameters()))
    obs = {"state": np.linspace(-1, 1, 5, dtype=np.float32)}
    with torch.no_grad():
        ema_mean, _ = average(agent.policy_ema["encoder_ema"]({"state": torch.from_numpy(obs["state"])[None]}))
    np.testing.assert_allclose(agent.act(obs, deterministic=True), torch.tanh(ema_mean)[0].numpy(), rtol=1e-6)
    tensors = agent.state_dict_tensors()
    assert any(k.startswith("actor_ema.") for k in tensors)  # (this low-dim encoder has no tensors of its own)
    restored = build("calql", seed=9, policy_ema_tau=0.5)
    restored.load_state_dict_tensors(tensors)
    np.testing.assert_array_equal(restored.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    # A checkpoint written without the average (option off) starts the average from its live actor.
    plain = build("calql")
    plain.update(make_batch())
    upgraded = build("calql", seed=3, policy_ema_tau=0.01)
    upgraded.load_state_dict_tensors(plain.state_dict_tensors())
    np.testing.assert_array_equal(upgraded.act(obs, deterministic=True), plain.act(obs, deterministic=True))
    with pytest.raises(UserError, match="policy_ema_tau"):
        build("calql", policy_ema_tau=1.5)
