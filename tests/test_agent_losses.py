"""Loss pieces of the Cal-QL agent against values worked out by hand on tiny batches (C=2 critics, n=2, B=2, A=1)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from calql_robot.agent import losses
from calql_robot.agent.actor import TanhGaussianActor, tanh_gaussian_log_prob
from calql_robot.agent.critic import QEnsemble
from calql_robot.agent.networks import MLP


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny networks: one intra-op thread is faster and immune to other processes on the shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# next_q[c, i, b]: critic c, sample i, state b.  min over critics: sample 0 -> [1, 4], sample 1 -> [0, 6]
NEXT_Q = torch.tensor([[[1.0, 5.0], [3.0, 7.0]], [[2.0, 4.0], [0.0, 6.0]]])
NEXT_LOG_PROB = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
REWARD = torch.tensor([1.0, 2.0])


def test_max_target_backup_is_max_over_samples_of_min_over_critics() -> None:
    target = losses.td_target(REWARD, torch.zeros(2), 0.9, NEXT_Q, NEXT_LOG_PROB, 0.5, True, False)
    # V = max_i min_c: state 0 -> max(1, 0) = 1 (sample 0); state 1 -> max(4, 6) = 6 (sample 1)
    torch.testing.assert_close(target, torch.tensor([1.0 + 0.9 * 1.0, 2.0 + 0.9 * 6.0]))


def test_single_sample_backup_uses_first_sample_and_terminal_cuts_bootstrap() -> None:
    target = losses.td_target(REWARD, torch.tensor([0.0, 1.0]), 0.9, NEXT_Q, NEXT_LOG_PROB, 0.5, False, False)
    torch.testing.assert_close(target, torch.tensor([1.0 + 0.9 * 1.0, 2.0]))


def test_entropy_backup_subtracts_alpha_log_prob_of_the_chosen_sample() -> None:
    target = losses.td_target(REWARD, torch.zeros(2), 0.9, NEXT_Q, NEXT_LOG_PROB, 0.5, True, True)
    # chosen samples: state 0 -> sample 0 (log pi -1), state 1 -> sample 1 (log pi -4)
    expected = torch.tensor([1.0 + 0.9 * (1.0 + 0.5 * 1.0), 2.0 + 0.9 * (6.0 + 0.5 * 4.0)])
    torch.testing.assert_close(target, expected)


def test_td_loss_sums_per_critic_mse() -> None:
    q_data = torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    target = torch.tensor([2.0, 2.0])
    # critic 0: ((1-2)^2 + 0) / 2 = 0.5 ; critic 1: (4 + 4) / 2 = 4
    assert losses.td_loss(q_data, target).item() == pytest.approx(4.5)


def test_calibrate_broadcasts_mc_return_over_critics_and_samples() -> None:
    q_policy = torch.tensor([[[0.0, -3.0], [2.0, -0.5]], [[1.0, -2.0], [-1.0, 0.0]]])
    mc_return = torch.tensor([0.5, -1.0])
    bounded, active = losses.calibrate(q_policy, mc_return)
    expected = torch.tensor([[[0.5, -1.0], [2.0, -0.5]], [[1.0, -1.0], [0.5, 0.0]]])
    torch.testing.assert_close(bounded, expected)
    assert active.tolist() == [[[True, True], [False, False]], [[False, True], [True, False]]]


def _lse(values: list[float]) -> float:
    return math.log(sum(math.exp(v) for v in values))


def _q_all() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(C=2, 1 + 3n = 7, B=2) Q-values in the order [data, rand x2, pi x2, next-pi x2] and log probs (n, B)."""
    gen = torch.Generator().manual_seed(3)
    q_all = torch.randn(2, 7, 2, generator=gen)
    log_prob_policy = torch.tensor([[-0.2, 0.3], [0.1, -0.4]])
    log_prob_next = torch.tensor([[0.5, -0.1], [-0.3, 0.2]])
    return q_all, log_prob_policy, log_prob_next


def _expected_gap(q_all, lp_pi, lp_next, mc_return, calibrated: bool, temperature: float = 1.0) -> list[float]:
    """The importance-sampled CQL gap per critic, written out element by element (A = 1)."""
    gaps = []
    for c in range(2):
        per_state = []
        for b in range(2):
            g = mc_return[b].item()
            bound = (lambda q, g=g: max(q, g)) if calibrated else (lambda q, g=g: q)
            values = [q_all[c, 1 + i, b].item() + math.log(2.0) for i in range(2)]  # -log(0.5^1)
            values += [bound(q_all[c, 5 + i, b].item()) - lp_next[i, b].item() for i in range(2)]
            values += [bound(q_all[c, 3 + i, b].item()) - lp_pi[i, b].item() for i in range(2)]
            lse = temperature * _lse([v / temperature for v in values])
            per_state.append(lse - q_all[c, 0, b].item())
        gaps.append(sum(per_state) / 2)
    return gaps


@pytest.mark.parametrize("calibrated", [False, True])
def test_cql_penalty_importance_sampled_matches_hand_computation(calibrated: bool) -> None:
    q_all, lp_pi, lp_next = _q_all()
    mc_return = torch.tensor([0.3, -0.2])
    gap, _ = losses.cql_penalty(q_all, 2, mc_return, lp_pi, lp_next, 1, calibrated, True, 1.0)
    assert gap.tolist() == pytest.approx(_expected_gap(q_all, lp_pi, lp_next, mc_return, calibrated), rel=1e-5)


def test_cql_temperature_scales_the_logsumexp() -> None:
    q_all, lp_pi, lp_next = _q_all()
    mc_return = torch.tensor([0.3, -0.2])
    gap, _ = losses.cql_penalty(q_all, 2, mc_return, lp_pi, lp_next, 1, True, True, 2.0)
    assert gap.tolist() == pytest.approx(_expected_gap(q_all, lp_pi, lp_next, mc_return, True, 2.0), rel=1e-5)


def test_bound_touches_only_policy_and_next_policy_terms() -> None:
    q_all, lp_pi, lp_next = _q_all()
    huge = torch.tensor([50.0, 60.0])  # G(s) far above every Q: the bound is active on every policy value
    gap_calql, rate = losses.cql_penalty(q_all, 2, huge, lp_pi, lp_next, 1, True, True, 1.0)
    assert rate.item() == 1.0
    # with every policy value replaced by G, the logsumexp depends on the random values and G only
    for c in range(2):
        per_state = []
        for b in range(2):
            g = huge[b].item()
            values = [q_all[c, 1 + i, b].item() + math.log(2.0) for i in range(2)]
            values += [g - lp_next[i, b].item() for i in range(2)] + [g - lp_pi[i, b].item() for i in range(2)]
            per_state.append(_lse(values) - q_all[c, 0, b].item())
        assert gap_calql[c].item() == pytest.approx(sum(per_state) / 2, rel=1e-5)
    # changing a random-action or data value moves the penalty (they are not bounded) ...
    shifted = q_all.clone()
    shifted[:, 1] += 100.0  # a random-action value now dominates the logsumexp
    gap_shifted, _ = losses.cql_penalty(shifted, 2, huge, lp_pi, lp_next, 1, True, True, 1.0)
    assert (gap_shifted > gap_calql + 10.0).all()
    data_up = q_all.clone()
    data_up[:, 0] += 1.0
    gap_data, _ = losses.cql_penalty(data_up, 2, huge, lp_pi, lp_next, 1, True, True, 1.0)
    torch.testing.assert_close(gap_data, gap_calql - 1.0)
    # ... while lowering a bounded policy value does not
    lowered = q_all.clone()
    lowered[:, 3:7] -= 5.0
    gap_lowered, _ = losses.cql_penalty(lowered, 2, huge, lp_pi, lp_next, 1, True, True, 1.0)
    torch.testing.assert_close(gap_lowered, gap_calql)


def test_cql_variant_reports_bound_rate_but_does_not_apply_it() -> None:
    q_all, lp_pi, lp_next = _q_all()
    huge = torch.tensor([50.0, 60.0])
    gap_cql, rate = losses.cql_penalty(q_all, 2, huge, lp_pi, lp_next, 1, False, True, 1.0)
    gap_low_g, _ = losses.cql_penalty(q_all, 2, -huge, lp_pi, lp_next, 1, False, True, 1.0)
    assert rate.item() == 1.0
    torch.testing.assert_close(gap_cql, gap_low_g)


def test_without_importance_sampling_data_value_joins_the_logsumexp() -> None:
    q_all, lp_pi, lp_next = _q_all()
    mc_return = torch.tensor([-100.0, -100.0])
    gap, _ = losses.cql_penalty(q_all, 2, mc_return, lp_pi, lp_next, 1, True, False, 1.0)
    for c in range(2):
        expected = sum(_lse(q_all[c, :, b].tolist()) - q_all[c, 0, b].item() for b in range(2)) / 2
        assert gap[c].item() == pytest.approx(expected, rel=1e-5)


def test_uniform_log_density_uses_action_dim() -> None:
    q = torch.zeros(1, 1, 1)
    no_policy = torch.full((1, 1, 1), -1e9)
    far = torch.full((1, 1), 1e9)  # log pi huge: policy terms vanish from the logsumexp
    lse = losses.cql_logsumexp(q, no_policy, no_policy, far, far, q[:, 0], 3, True, 1.0)
    assert lse.item() == pytest.approx(-3 * math.log(0.5))


@pytest.mark.parametrize("gap_value, grows", [(1.5, True), (0.2, False)])
def test_lagrange_multiplier_grows_when_penalty_exceeds_target(gap_value: float, grows: bool) -> None:
    log_alpha_prime = torch.tensor(1.0, requires_grad=True)
    gap = torch.tensor([gap_value, gap_value], requires_grad=True)
    loss = losses.lagrange_loss(log_alpha_prime, gap, 0.8, 5.0)
    loss.backward()
    assert gap.grad is None or not gap.grad.any()  # the penalty is detached: no second pass through critics
    assert log_alpha_prime.grad.item() == pytest.approx(-math.e * 5.0 * (gap_value - 0.8), rel=1e-5)
    optimizer = torch.optim.SGD([log_alpha_prime], lr=0.01)
    optimizer.step()
    assert (log_alpha_prime.item() > 1.0) == grows


def test_lagrange_multiplier_is_clipped() -> None:
    assert losses.lagrange_multiplier(torch.tensor(30.0)).item() == pytest.approx(1e6)


def test_actor_and_temperature_losses() -> None:
    log_prob = torch.tensor([-1.0, 0.5])
    q_min = torch.tensor([2.0, -1.0])
    log_alpha = torch.tensor(math.log(0.5), requires_grad=True)
    actor = losses.actor_loss(log_prob, q_min, log_alpha.exp())
    assert actor.item() == pytest.approx(((0.5 * -1.0 - 2.0) + (0.5 * 0.5 + 1.0)) / 2)
    temperature = losses.temperature_loss(log_alpha, log_prob, target_entropy=-1.0)
    assert temperature.item() == pytest.approx(-math.log(0.5) * ((-1.0 - 1.0) + (0.5 - 1.0)) / 2)
    temperature.backward()
    # entropy (-mean log pi = 0.25) is above the target (-1): descending the loss lowers alpha
    assert log_alpha.grad.item() > 0


def test_tanh_gaussian_log_prob_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    mean, log_std = torch.randn(5, 3) * 0.5, torch.randn(5, 3) * 0.3 - 0.5
    actions, log_prob = TanhGaussianActor.sample(mean, log_std, 4)
    reference = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform(cache_size=1)])
    torch.testing.assert_close(log_prob, reference.log_prob(actions).sum(-1), rtol=1e-4, atol=1e-4)
    eps = torch.zeros(2, 3)
    assert tanh_gaussian_log_prob(eps, eps, torch.zeros(2, 3)).tolist() == pytest.approx(
        [-1.5 * math.log(2 * math.pi)] * 2
    )


def test_critic_ensemble_matches_a_loop_of_plain_mlps() -> None:
    torch.manual_seed(1)
    critic = QEnsemble(feature_dim=3, action_dim=2, hidden=[8, 8], n_critics=3)
    features, actions = torch.randn(4, 3), torch.randn(5, 4, 2)
    q = critic(features, actions)
    assert q.shape == (3, 5, 4)
    for c in range(3):
        x = torch.cat([features.expand(5, 4, 3), actions], dim=-1)
        for i, (w, b) in enumerate(zip(critic.weights, critic.biases)):
            x = x @ w[c] + b[c, 0]
            x = torch.relu(x) if i < len(critic.weights) - 1 else x
        torch.testing.assert_close(q[c], x.squeeze(-1), rtol=1e-5, atol=1e-6)


def test_critic_detach_params_gives_gradients_only_to_inputs() -> None:
    critic = QEnsemble(feature_dim=3, action_dim=2, hidden=[8], n_critics=2)
    actions = torch.randn(1, 4, 2, requires_grad=True)
    critic(torch.randn(4, 3), actions, detach_params=True).sum().backward()
    assert actions.grad is not None and actions.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())


def test_orthogonal_init_gains() -> None:
    critic = QEnsemble(feature_dim=4, action_dim=2, hidden=[16, 16], n_critics=2)
    hidden = critic.weights[1]  # (2, 16, 16)
    for c in range(2):
        torch.testing.assert_close(hidden[c].T @ hidden[c], 2.0 * torch.eye(16), atol=1e-5, rtol=1e-5)
    assert critic.weights[-1].norm(dim=1).max().item() == pytest.approx(1e-2, rel=1e-4)
    mlp = MLP(4, [16], 6)
    torch.testing.assert_close(mlp.layers[0].weight.T @ mlp.layers[0].weight, 2.0 * torch.eye(4), atol=1e-5, rtol=0)
    assert not any(b.any() for b in critic.biases)
