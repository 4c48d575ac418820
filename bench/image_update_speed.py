"""Updates per second of the Cal-QL agent on the visual pick-and-place task, against the machine's fp32 matmul speed.

Usage::

    .venv/bin/python bench/image_update_speed.py                          # batch 256 and 64, CPU
    .venv/bin/python bench/image_update_speed.py --batches 256 --updates 20 --repeats 3 --device cuda
    .venv/bin/python bench/image_update_speed.py --batches 64 --set encoder.conv_stride2_layers=1   # DrQ's trunk

Observation spec of ``configs/task/pick_place.yaml``: ``agentview_rgb`` uint8 (64, 64, 3) + ``robot_state`` float32
(5,), 4 actions. Agent settings: configs/agent/calql.yaml overridden by the task's ``agent:`` block (critic and
actor [256, 256], cql_n_actions 4, CQL alpha 5 without Lagrange, importance sampling, max-target backup, critic
value normalisation) and the encoder (``encoder=auto`` -> conv: 4 x 3x3 conv, 32 channels, the first two with stride
2 as the task sets ``conv_stride2_layers: 2``, Linear -> 50 features, LayerNorm, tanh); ``--set KEY=VALUE`` changes
any of these.
Batches are random (uniform uint8 images, uniform actions); each repeat times ``--updates`` calls of
``agent.update`` after 3 warm-up updates and the table shows the median repeat.

FLOPs of one update (what ``CalQLAgent.update`` computes, calql_robot/agent/agent.py):
- encoder: counted with ``calql_robot.encoders.flops.count_flops`` on one forward of B observations (Conv2d and
  Linear layers; the random-shift augmentation, LayerNorm and tanh are not counted). The update encodes ``obs``
  once with gradients (forward + backward = 3x forward: the critic loss trains the encoder) and ``next_obs`` once
  without (1x); the actor and every critic call reuse those features. So encoder FLOPs = 4 x forward(B images).
- MLP parts: ``update_flops`` of bench/update_speed.py with obs_dim = encoder features (50 + 5): trained critics
  on 1 + 3n action sets (3x), critics in the actor loss (2x), target critics on n backup actions (1x), actor at s
  (3x) and at s' (1x). As there, the first critic layer is counted at full width per action set, although
  ``QEnsemble`` computes its feature part once per state (an over-count of 2 * 2 * 50 * 256 * 3n * B FLOPs).
The reference fp32 rate is update_speed.py's 2048^3 matmul loop, measured between the repeats of the same run.
"upd/cpu-s" and "cpu share" are the CPU-time based estimates of update_speed.py (process CPU time, so other
engineers' load on a shared machine matters less).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from calql_robot.agent import build_agent
from calql_robot.encoders.flops import count_flops

ROOT = Path(__file__).resolve().parent.parent
OBS_SPEC = {
    "agentview_rgb": {"shape": [64, 64, 3], "dtype": "uint8", "kind": "rgb"},
    "robot_state": {"shape": [5], "dtype": "float32", "kind": "low_dim"},
}
ACTION_DIM = 4


def load_update_speed() -> Any:
    """bench/update_speed.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("update_speed", ROOT / "bench" / "update_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pick_place_agent_config() -> dict[str, Any]:
    """configs/agent/calql.yaml + the pick_place task's agent block + configs/encoder/auto.yaml, gamma as discount."""
    agent = OmegaConf.load(ROOT / "configs" / "agent" / "calql.yaml")
    task = OmegaConf.load(ROOT / "configs" / "task" / "pick_place.yaml")
    encoder = OmegaConf.load(ROOT / "configs" / "encoder" / "auto.yaml")
    merged = OmegaConf.merge(agent, task.agent, {"encoder": encoder, "discount": task.task.gamma})
    return OmegaConf.to_container(merged, resolve=True)


def random_batches(batch: int, device: torch.device, count: int = 3) -> list[dict[str, Any]]:
    """``count`` random batches in the agent format: images (B, 64, 64, 3) uint8, robot_state (B, 5), action (B, 4)."""
    def obs() -> dict[str, torch.Tensor]:
        return {"agentview_rgb": torch.randint(0, 256, (batch, 64, 64, 3), dtype=torch.uint8, device=device),
                "robot_state": torch.randn(batch, 5, device=device)}

    return [{
        "obs": obs(), "next_obs": obs(),
        "action": torch.rand(batch, ACTION_DIM, device=device) * 2 - 1,
        "reward": (torch.rand(batch, device=device) < 0.02).float(),
        "terminal": (torch.rand(batch, device=device) < 0.02).float(),
        "mc_return": torch.rand(batch, device=device),
    } for _ in range(count)]  # fmt: skip


def flops_per_update(agent: Any, cfg: dict[str, Any], batch: dict[str, Any], update_speed: Any) -> dict[str, int]:
    """Encoder, MLP and total FLOPs of one update on ``batch`` (counting rules in the module docstring)."""
    size = batch["action"].shape[0]
    encoder_forward = count_flops(agent.encoder, lambda: agent.encoder(batch["obs"], augment=False))
    encoder = 4 * encoder_forward
    mlp = update_speed.update_flops(
        int(agent.encoder.out_dim), ACTION_DIM, cfg["critic_hidden"], cfg["actor_hidden"], size,
        cfg["cql_n_actions"], cfg["num_critics"], cfg["cql_max_target_backup"],
    )  # fmt: skip
    return {"encoder_per_image": encoder_forward // size, "encoder": encoder, "mlp": mlp, "total": encoder + mlp}


def bench_batch(batch_size: int, args: argparse.Namespace, device: torch.device, update_speed: Any) -> dict:
    """Median updates/s over the repeats for one batch size, with the matmul reference between repeats."""
    torch.manual_seed(0)
    cfg = OmegaConf.to_container(OmegaConf.merge(pick_place_agent_config(), OmegaConf.from_dotlist(args.set)))
    agent = build_agent(cfg, OBS_SPEC, ACTION_DIM, device)
    batches = random_batches(batch_size, device)
    flops = flops_per_update(agent, cfg, batches[0], update_speed)
    for i in range(3):
        agent.update(batches[i % len(batches)])
    rates, peaks, cpu_peaks, cpu_rates, cpu_shares = [], [], [], [], []
    threads = torch.get_num_threads()
    for _ in range(args.repeats):
        peak_wall, peak_cpu = update_speed.matmul_rate(device)
        peaks.append(peak_wall)
        cpu_peaks.append(peak_cpu)
        update_speed.sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(args.updates):
            agent.update(batches[i % len(batches)])
        update_speed.sync(device)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        rates.append(args.updates / wall)
        cpu_rates.append(args.updates * threads / cpu)
        cpu_shares.append(cpu / (wall * threads))
    return {"batch": batch_size, "rate": statistics.median(rates), "rates": rates, "flops": flops,
            "peak": statistics.median(peaks), "cpu_peak": statistics.median(cpu_peaks),
            "cpu_rate": statistics.median(cpu_rates), "cpu": statistics.median(cpu_shares),
            "variant": cfg["variant"], "n_actions": cfg["cql_n_actions"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 64])
    parser.add_argument("--updates", type=int, default=10, help="updates per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="agent config overrides, e.g. encoder.conv_stride2_layers=1 (DrQ's trunk)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    update_speed = load_update_speed()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"torch {torch.__version__} on {device} ({platform.processor() or platform.machine()}), "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cpus, load average before: {load}")
    rows = [bench_batch(b, args, device, update_speed) for b in args.batches]
    first = rows[0]
    print(f"agent {first['variant']}, cql_n_actions {first['n_actions']}; encoder forward "
          f"{first['flops']['encoder_per_image'] / 1e6:.1f} MFLOP per image")
    print(f"\n{'batch':>5} {'updates/s':>9} {'repeats':>18} {'enc GFLOP':>9} {'MLP GFLOP':>9} {'GFLOP/upd':>9} "
          f"{'GFLOP/s':>8} {'matmul GFLOP/s':>14} {'share':>6} {'cpu':>5} {'upd/cpu-s':>9} {'cpu share':>9}")
    for r in rows:
        f = r["flops"]
        repeats = "/".join(f"{x:.2f}" for x in r["rates"])
        achieved = r["rate"] * f["total"]
        print(f"{r['batch']:>5} {r['rate']:>9.2f} {repeats:>18} {f['encoder'] / 1e9:>9.2f} {f['mlp'] / 1e9:>9.2f} "
              f"{f['total'] / 1e9:>9.2f} {achieved / 1e9:>8.1f} {r['peak'] / 1e9:>14.1f} {achieved / r['peak']:>6.0%} "
              f"{r['cpu']:>5.0%} {r['cpu_rate']:>9.2f} {r['cpu_rate'] * f['total'] / r['cpu_peak']:>9.0%}")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
