"""Updates per second of the Cal-QL agent against the machine's own fp32 matmul speed.

Usage::

    .venv/bin/python bench/update_speed.py                                  # AntMaze + Adroit configs, CPU
    .venv/bin/python bench/update_speed.py --updates 50 --repeats 3 --configs antmaze --device cuda
    .venv/bin/python bench/update_speed.py --d3rlpy-python ../d3venv/bin/python   # + d3rlpy side by side

``--compile both`` (the default) times the eager update and the ``torch.compile``d one (``agent.enable_compile``;
on CUDA with ``mode="reduce-overhead"``, i.e. CUDA graphs) built from the same seed, in alternating repeats of the
same process, and prints the compiled/eager ratio and the first compiled update's cost (the one-time compile).
``--d3rlpy-python PATH`` then runs the d3rlpy CalQL harness (``../shared/anchors/bench_d3rlpy_calql.py``, or
``--d3rlpy-harness``) with that interpreter on the same configuration and threads, right after ours, and prints the
ratio ours / d3rlpy for each of our paths.

Configurations (random batches of 256, 10 actions per source, importance sampling, max-target backup): AntMaze
obs 29, action 8, Q 4x256 x2 critics, policy 2x256, Lagrange on; Adroit obs 39, action 28, Q 3x256 x2, policy 3x256,
fixed CQL weight 1 (the d3rlpy harness's settings for each, see its README).
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
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from calql_robot.agent import build_agent

CONFIGS = {
    "antmaze": {"obs_dim": 29, "action_dim": 8, "critic_hidden": [256] * 4, "actor_hidden": [256] * 2,
                "agent": {"cql_lagrange": True}},
    "adroit": {"obs_dim": 39, "action_dim": 28, "critic_hidden": [256] * 3, "actor_hidden": [256] * 3,
               "agent": {"cql_lagrange": False, "cql_alpha": 1.0}},
    # PointMaze's observations and actions with AntMaze's networks: the pretrain app can run this one on a local
    # store, to compare the training loop's updates/s with the update alone (docs/results.md).
    "pointmaze": {"obs_dim": 6, "action_dim": 2, "critic_hidden": [256] * 4, "actor_hidden": [256] * 2,
                  "agent": {"cql_lagrange": True}},
}
# The d3rlpy harness's options for the same configurations (its README).
D3RLPY_ARGS = {
    "antmaze": ["--obs-dim", "29", "--act-dim", "8", "--actor-hidden", "256,256", "--critic-hidden",
                "256,256,256,256"],
    "adroit": ["--obs-dim", "39", "--act-dim", "28", "--actor-hidden", "256,256,256", "--critic-hidden",
               "256,256,256", "--conservative-weight", "1", "--alpha-lr", "0"],
}
DEFAULT_HARNESS = Path(__file__).resolve().parents[1].parent / "shared" / "anchors" / "bench_d3rlpy_calql.py"


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


def build_bench_agent(name: str, args: argparse.Namespace, device: torch.device, compiled: bool):
    """The agent of configuration ``name`` from seed 0; ``compiled`` switches on ``enable_compile``."""
    spec = CONFIGS[name]
    torch.manual_seed(0)
    agent_cfg = {
        "critic_hidden": spec["critic_hidden"], "actor_hidden": spec["actor_hidden"], "cql_n_actions": args.n_actions,
        "cql_importance_sample": True, "cql_max_target_backup": True, **spec["agent"],
    }  # fmt: skip
    obs_spec = {"state": {"shape": [spec["obs_dim"]], "dtype": "float32", "kind": "low_dim"}}
    agent = build_agent(agent_cfg, obs_spec, spec["action_dim"], device)
    if compiled:
        agent.enable_compile("reduce-overhead" if device.type == "cuda" else None)
    return agent


def time_block(agent, batches: list[dict], updates: int, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``updates`` updates."""
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    for i in range(updates):
        agent.update(batches[i % len(batches)])
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def bench_config(name: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    """One row per path (eager, compiled): median updates/s over repeats that alternate between the paths, with the
    matmul reference measured before each repeat."""
    spec = CONFIGS[name]
    paths = {"off": ["eager"], "on": ["compiled"], "both": ["eager", "compiled"]}[args.compile]
    agents, first_update_s = {}, {}
    batches = random_batches(spec["obs_dim"], spec["action_dim"], args.batch, device)
    for path in paths:
        agents[path] = build_bench_agent(name, args, device, compiled=path == "compiled")
        first_update_s[path] = time_block(agents[path], batches[:1], 1, device)[0]
        for i in range(4):
            agents[path].update(batches[i % len(batches)])
    walls: dict[str, list[float]] = {path: [] for path in paths}
    cpus: dict[str, list[float]] = {path: [] for path in paths}
    peaks, cpu_peaks = [], []
    for _ in range(args.repeats):
        peak_wall, peak_cpu = matmul_rate(device)
        peaks.append(peak_wall)
        cpu_peaks.append(peak_cpu)
        for path in paths:
            wall, cpu_seconds = time_block(agents[path], batches, args.updates, device)
            walls[path].append(wall)
            cpus[path].append(cpu_seconds)
    flops = update_flops(spec["obs_dim"], spec["action_dim"], spec["critic_hidden"], spec["actor_hidden"],
                         args.batch, args.n_actions)
    threads = torch.get_num_threads()
    rows = []
    for path in paths:
        rates = [args.updates / wall for wall in walls[path]]
        rate, peak = statistics.median(rates), statistics.median(peaks)
        rows.append({
            "config": name, "path": path, "rate": rate, "rates": rates, "gflop": flops / 1e9,
            "achieved": rate * flops, "peak": peak, "first_update_s": first_update_s[path],
            "cpu": statistics.median(c / (w * threads) for c, w in zip(cpus[path], walls[path])),
            "cpu_rate": statistics.median(args.updates * threads / c for c in cpus[path]),
            "cpu_peak": statistics.median(cpu_peaks),
        })  # fmt: skip
    return rows


def run_d3rlpy(name: str, args: argparse.Namespace) -> dict | None:
    """Run the d3rlpy harness for configuration ``name`` with ``args.d3rlpy_python``; its RESULT_JSON, or None."""
    harness = Path(args.d3rlpy_harness)
    if not harness.is_file():
        print(f"d3rlpy harness {harness} not found (--d3rlpy-harness); skipping the side-by-side run")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "d3rlpy.json"
        command = [args.d3rlpy_python, str(harness), *D3RLPY_ARGS[name], "--threads", str(torch.get_num_threads()),
                   "--repeats", str(args.repeats), "--json-out", str(out)]
        print(f"\nd3rlpy ({name}): {' '.join(command)}", flush=True)
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not out.is_file():
            print(f"d3rlpy harness failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
            return None
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=200, help="updates per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", nargs="+", default=["antmaze", "adroit"], choices=list(CONFIGS))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--n-actions", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--compile", choices=["off", "on", "both"], default="both",
                        help="time the eager update, the compiled one, or both (alternating repeats)")
    parser.add_argument("--d3rlpy-python", default=None, metavar="PATH",
                        help="python of a venv with d3rlpy: run its CalQL harness right after ours and print the ratio")
    parser.add_argument("--d3rlpy-harness", default=str(DEFAULT_HARNESS), metavar="PATH",
                        help="the d3rlpy harness script (default: ../shared/anchors/bench_d3rlpy_calql.py)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"torch {torch.__version__} on {device} ({platform.processor() or platform.machine()}), "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cpus, load average before: {load}")
    rows = [row for name in args.configs for row in bench_config(name, args, device)]
    print(f"\n{'config':<8} {'path':<8} {'updates/s':>9} {'repeats':>20} {'GFLOP/upd':>9} {'GFLOP/s':>8} "
          f"{'matmul GFLOP/s':>14} {'share':>6} {'cpu':>5} {'upd/cpu-s':>9} {'cpu share':>9} {'1st upd s':>9}")
    for r in rows:
        repeats = "/".join(f"{x:.2f}" for x in r["rates"])
        print(f"{r['config']:<8} {r['path']:<8} {r['rate']:>9.2f} {repeats:>20} {r['gflop']:>9.2f} "
              f"{r['achieved'] / 1e9:>8.1f} {r['peak'] / 1e9:>14.1f} {r['achieved'] / r['peak']:>6.0%} "
              f"{r['cpu']:>5.0%} {r['cpu_rate']:>9.2f} {r['cpu_rate'] * r['gflop'] * 1e9 / r['cpu_peak']:>9.0%} "
              f"{r['first_update_s']:>9.1f}")
    by_config: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_config.setdefault(r["config"], {})[r["path"]] = r
    for name, paths in by_config.items():
        if "eager" in paths and "compiled" in paths:
            ratio = paths["compiled"]["rate"] / paths["eager"]["rate"]
            first = paths["compiled"]["first_update_s"]
            print(f"{name}: compiled / eager = {ratio:.2f}; first compiled update {first:.1f} s against "
                  f"{paths['eager']['first_update_s']:.2f} s eager (the one-time compile)")
    if args.d3rlpy_python:
        for name, paths in by_config.items():
            if name not in D3RLPY_ARGS:
                continue
            result = run_d3rlpy(name, args)
            if result is None:
                continue
            theirs = float(result["median_updates_per_s"])
            ratios = ", ".join(f"{path} {row['rate'] / theirs:.2f}" for path, row in paths.items())
            print(f"{name}: d3rlpy {theirs:.2f} updates/s ({float(result.get('fraction_of_peak_nominal', 0)):.0%} of "
                  f"its matmul probe); ours / d3rlpy: {ratios}")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
