"""Updates per second of the Cal-QL agent against the machine's own fp32 matmul speed.

Usage::

    .venv/bin/python bench/update_speed.py                                  # AntMaze + Adroit configs, CPU
    .venv/bin/python bench/update_speed.py --updates 50 --repeats 3 --configs antmaze --device cuda

Configurations (random batches of 256, 10 actions per source, importance sampling, max-target backup, Lagrange on):
AntMaze obs 29, action 8, Q 4x256 x2 critics, policy 2x256; Adroit obs 39, action 28, Q 3x256 x2, policy 3x256.
Each repeat times ``--updates`` calls of ``agent.update`` after 5 warm-up updates; the table shows the median.

FLOPs of one update are counted analytically from layer sizes (matrix multiplies only, 2 * in * out per row and
layer; biases, activations, Adam and the logsumexp are ignored):
- critic, trained: C critics x (1 + 3n) B rows (data action + n uniform + n pi(s) + n pi(s')), 3x forward
  (forward, input gradients, weight gradients);
- critic in the actor loss: C x B rows, 2x forward (forward + input gradients; the weights are not trained there);
- target critics: C x n_backup B rows, forward only;
- actor at s: B rows, 3x forward; actor at s': B rows, forward only.
The first critic layer is counted at its full width (features + action) per row, although the implementation
computes the feature part once per state. The reference fp32 rate is a 2048 x 2048 @ 2048 x 2048 matmul loop
(2 * 2048^3 FLOPs per product) measured between the repeats of the same run; "share" is achieved FLOP/s over it.
"cpu" is the process's CPU time over wall time x threads: below 1 means other processes took the cores.
"upd/cpu-s" is updates per CPU second x threads, an estimate of the uncontended rate when the cores are shared
(pessimistic with several threads: time spent waiting for a descheduled sibling thread counts as CPU time), and
"cpu share" the same ratio as "share" computed from CPU time for both the update and the matmul loop.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Sequence

import torch

from calql_robot.agent import build_agent

CONFIGS = {
    "antmaze": {"obs_dim": 29, "action_dim": 8, "critic_hidden": [256] * 4, "actor_hidden": [256] * 2},
    "adroit": {"obs_dim": 39, "action_dim": 28, "critic_hidden": [256] * 3, "actor_hidden": [256] * 3},
}
# Published by the reference notes (docs: /work/shared/reference/calql.md) for the AntMaze / Adroit configs.
REFERENCE = {"antmaze": "CORL 4.6, d3rlpy 7.3, d3rlpy+compile 7.7, limit ~9.7", "adroit": "CORL 9.0, d3rlpy 10.2"}


def mlp_flops(sizes: Sequence[int]) -> int:
    """Matmul FLOPs of one row through layers sizes[0] -> sizes[1] -> ... (2 * in * out per layer)."""
    return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))


def update_flops(obs_dim: int, action_dim: int, critic_hidden: Sequence[int], actor_hidden: Sequence[int],
                 batch: int, n_actions: int, n_critics: int = 2, max_target_backup: bool = True) -> int:
    """Necessary matmul FLOPs of one Cal-QL update (counting rules in the module docstring)."""
    critic_row = mlp_flops([obs_dim + action_dim, *critic_hidden, 1])
    actor_row = mlp_flops([obs_dim, *actor_hidden, 2 * action_dim])
    n_backup = n_actions if max_target_backup else 1
    critic_trained = 3 * n_critics * (1 + 3 * n_actions) * batch * critic_row
    critic_actor_loss = 2 * n_critics * batch * critic_row
    critic_target = n_critics * n_backup * batch * critic_row
    actor = 3 * batch * actor_row + batch * actor_row
    return critic_trained + critic_actor_loss + critic_target + actor


def matmul_rate(device: torch.device, size: int = 2048, seconds: float = 1.0) -> tuple[float, float]:
    """fp32 FLOP/s of a size x size matmul loop on ``device``: per wall second and per CPU second x threads."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    torch.mm(a, b)
    sync(device)
    count, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        sync(device)
        count += 1
    flops = 2 * size**3 * count
    return flops / (time.perf_counter() - start), flops * torch.get_num_threads() / (time.process_time() - cpu_start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batches(obs_dim: int, action_dim: int, batch: int, device: torch.device, count: int = 4) -> list[dict]:
    """``count`` random batches in the agent's batch format (uniform actions, Gaussian obs/reward/MC return)."""
    def one() -> dict:
        return {
            "obs": {"state": torch.randn(batch, obs_dim, device=device)},
            "next_obs": {"state": torch.randn(batch, obs_dim, device=device)},
            "action": torch.rand(batch, action_dim, device=device) * 2 - 1,
            "reward": torch.randn(batch, device=device),
            "terminal": (torch.rand(batch, device=device) < 0.05).float(),
            "mc_return": torch.randn(batch, device=device) * 10,
        }
    return [one() for _ in range(count)]


def bench_config(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Median updates/s over the repeats, with the matmul reference measured between repeats."""
    spec = CONFIGS[name]
    torch.manual_seed(0)
    agent_cfg = {
        "critic_hidden": spec["critic_hidden"], "actor_hidden": spec["actor_hidden"], "cql_n_actions": args.n_actions,
        "cql_importance_sample": True, "cql_max_target_backup": True, "cql_lagrange": True,
    }  # fmt: skip
    obs_spec = {"state": {"shape": [spec["obs_dim"]], "dtype": "float32", "kind": "low_dim"}}
    agent = build_agent(agent_cfg, obs_spec, spec["action_dim"], device)
    batches = random_batches(spec["obs_dim"], spec["action_dim"], args.batch, device)
    for i in range(5):
        agent.update(batches[i % len(batches)])
    rates, peaks, cpu_shares, cpu_rates, cpu_peaks = [], [], [], [], []
    for _ in range(args.repeats):
        peak_wall, peak_cpu = matmul_rate(device)
        peaks.append(peak_wall)
        cpu_peaks.append(peak_cpu)
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(args.updates):
            agent.update(batches[i % len(batches)])
        sync(device)
        wall = time.perf_counter() - start
        rates.append(args.updates / wall)
        cpu_seconds = time.process_time() - cpu_start
        cpu_shares.append(cpu_seconds / (wall * torch.get_num_threads()))
        cpu_rates.append(args.updates * torch.get_num_threads() / cpu_seconds)
    flops = update_flops(spec["obs_dim"], spec["action_dim"], spec["critic_hidden"], spec["actor_hidden"],
                         args.batch, args.n_actions)
    rate, peak = statistics.median(rates), statistics.median(peaks)
    return {"config": name, "rate": rate, "rates": rates, "gflop": flops / 1e9, "achieved": rate * flops,
            "peak": peak, "cpu": statistics.median(cpu_shares), "cpu_rate": statistics.median(cpu_rates),
            "cpu_peak": statistics.median(cpu_peaks)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=200, help="updates per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--n-actions", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"torch {torch.__version__} on {device} ({platform.processor() or platform.machine()}), "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cpus, load average before: {load}")
    rows = [bench_config(name, args, device) for name in args.configs]
    print(f"\n{'config':<8} {'updates/s':>9} {'repeats':>20} {'GFLOP/upd':>9} {'GFLOP/s':>8} "
          f"{'matmul GFLOP/s':>14} {'share':>6} {'cpu':>5} {'upd/cpu-s':>9} {'cpu share':>9}  reference updates/s")
    for r in rows:
        repeats = "/".join(f"{x:.2f}" for x in r["rates"])
        print(f"{r['config']:<8} {r['rate']:>9.2f} {repeats:>20} {r['gflop']:>9.2f} {r['achieved'] / 1e9:>8.1f} "
              f"{r['peak'] / 1e9:>14.1f} {r['achieved'] / r['peak']:>6.0%} {r['cpu']:>5.0%} {r['cpu_rate']:>9.2f} "
              f"{r['cpu_rate'] * r['gflop'] * 1e9 / r['cpu_peak']:>9.0%}  {REFERENCE[r['config']]}")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
