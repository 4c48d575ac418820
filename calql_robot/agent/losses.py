"""The loss pieces of Cal-QL / CQL / SAC as small pure functions on tensors (shapes in each docstring).

Shape letters: C critics, n action samples per source, B batch, A action dims.
"""

from __future__ import annotations

import math

import torch


def td_target(
    reward: torch.Tensor,
    terminal: torch.Tensor,
    discount: float,
    next_q: torch.Tensor,
    next_log_prob: torch.Tensor,
    alpha: torch.Tensor | float,
    max_target_backup: bool,
    backup_entropy: bool,
) -> torch.Tensor:
    """Bellman target r + (1 - terminal) * discount * V(s'), shape (B,).

    next_q (C, n, B): target critics at n next-policy samples a' ~ pi(s'); next_log_prob (n, B) their log pi.
    V(s') = min over critics; with ``max_target_backup`` the max over the n samples of that min, otherwise the first
    sample. ``backup_entropy`` subtracts alpha * log pi(a'|s') of the chosen sample (standard SAC).
    """
    min_q = next_q.min(dim=0).values  # (n, B)
    if max_target_backup:
        value, index = min_q.max(dim=0)  # (B,)
        log_prob = next_log_prob.gather(0, index.unsqueeze(0)).squeeze(0)
    else:
        value, log_prob = min_q[0], next_log_prob[0]
    if backup_entropy:
        value = value - alpha * log_prob
    return reward + (1.0 - terminal) * discount * value


def td_loss(q_data: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over critics of the mean squared TD error: q_data (C, B), target (B,) -> scalar."""
    return (q_data - target.unsqueeze(0)).square().mean(dim=1).sum()


def calibrate(q_policy: torch.Tensor, mc_return: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Cal-QL bound max(Q, G(s)) with G broadcast explicitly over critics and samples.

    q_policy (C, n, B) Q-values of policy samples at s; mc_return (B,) -> (bounded (C, n, B), active (C, n, B) bool),
    where ``active`` marks pairs with G(s) > Q.
    """
    reference = mc_return.view(1, 1, -1).expand_as(q_policy)
    return torch.maximum(q_policy, reference), reference > q_policy


def cql_logsumexp(
    q_random: torch.Tensor,
    q_policy: torch.Tensor,
    q_next_policy: torch.Tensor,
    log_prob_policy: torch.Tensor,
    log_prob_next_policy: torch.Tensor,
    q_data: torch.Tensor,
    action_dim: int,
    importance_sample: bool,
    temperature: float,
) -> torch.Tensor:
    """temperature * logsumexp(Q / temperature) over the sampled actions, per critic and state: -> (C, B).

    q_random, q_policy, q_next_policy (C, n, B): Q(s, .) at uniform, pi(s) and pi(s') samples (already bounded for
    Cal-QL); log_prob_policy, log_prob_next_policy (n, B). With ``importance_sample`` the 3n values are
    [Q_rand - log(0.5^A), Q_next - log pi(a'|s'), Q_pi - log pi(a|s)]; without it they are
    [Q_rand, Q_data, Q_next, Q_pi] (3n + 1 values, as in the authors' code). q_data (C, B).
    """
    if importance_sample:
        random_log_density = action_dim * math.log(0.5)
        values = torch.cat(
            [q_random - random_log_density, q_next_policy - log_prob_next_policy, q_policy - log_prob_policy], dim=1
        )
    else:
        values = torch.cat([q_random, q_data.unsqueeze(1), q_next_policy, q_policy], dim=1)
    return temperature * torch.logsumexp(values / temperature, dim=1)


def cql_gap(logsumexp_q: torch.Tensor, q_data: torch.Tensor) -> torch.Tensor:
    """The unweighted CQL penalty per critic: mean over states of logsumexp - Q(s, a_data); (C, B) x2 -> (C,)."""
    return (logsumexp_q - q_data).mean(dim=1)


def lagrange_multiplier(log_alpha_prime: torch.Tensor) -> torch.Tensor:
    """alpha' = clip(exp(log_alpha'), 0, 1e6)."""
    return log_alpha_prime.exp().clamp(0.0, 1e6)


def lagrange_loss(log_alpha_prime: torch.Tensor, gap: torch.Tensor, target_gap: float, weight: float) -> torch.Tensor:
    """Dual loss -alpha' * w * (gap - target_gap), mean over critics; gap (C,) is detached here.

    Gradient descent on it raises alpha' while the penalty exceeds ``target_gap`` and lowers it otherwise.
    """
    return -(lagrange_multiplier(log_alpha_prime) * weight * (gap.detach() - target_gap)).mean()


def actor_loss(log_prob: torch.Tensor, q_min: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """mean(alpha * log pi(a|s) - min_i Q_i(s, a)); log_prob, q_min (B,), alpha detached scalar."""
    return (alpha.detach() * log_prob - q_min).mean()


def temperature_loss(log_alpha: torch.Tensor, log_prob: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """Automatic entropy tuning: -mean(log_alpha * (log pi + target_entropy)), log_prob (B,) detached here."""
    return -(log_alpha * (log_prob.detach() + target_entropy)).mean()


def cql_penalty(
    q_all: torch.Tensor,
    n_actions: int,
    mc_return: torch.Tensor,
    log_prob_policy: torch.Tensor,
    log_prob_next_policy: torch.Tensor,
    action_dim: int,
    calibrated: bool,
    importance_sample: bool,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CQL gap per critic (C,) and the bound rate (scalar) from one critic forward over all action sets.

    q_all (C, 1 + 3n, B): Q(s, .) at [data action, n uniform, n pi(s), n pi(s')] in this order; mc_return (B,);
    log probs (n, B). With ``calibrated`` (Cal-QL) only the pi(s) and pi(s') values are replaced by max(Q, G(s));
    random-action and data values never are. The bound rate (fraction of the C x 2n x B policy values with
    G(s) > Q) is computed either way, so CQL runs log how often Cal-QL's bound would act.
    """
    n = n_actions
    q_data, q_random = q_all[:, 0], q_all[:, 1 : 1 + n]
    q_policy, q_next_policy = q_all[:, 1 + n : 1 + 2 * n], q_all[:, 1 + 2 * n : 1 + 3 * n]
    bounded_policy, active_policy = calibrate(q_policy, mc_return)
    bounded_next, active_next = calibrate(q_next_policy, mc_return)
    bound_rate = torch.cat([active_policy, active_next], dim=1).float().mean()
    if calibrated:
        q_policy, q_next_policy = bounded_policy, bounded_next
    logsumexp_q = cql_logsumexp(
        q_random, q_policy, q_next_policy, log_prob_policy, log_prob_next_policy, q_data,
        action_dim, importance_sample, temperature,
    )  # fmt: skip
    return cql_gap(logsumexp_q, q_data), bound_rate
