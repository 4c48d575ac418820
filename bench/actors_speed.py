"""Env steps/s and learner updates/s of finetune with actors.count = 0 (single process), 1, 2, 4 (issue 13 point 1).

    scripts/run python bench/actors_speed.py [--task pointmaze_umaze] [--steps 2000] [--counts 0 1 2 4] [--utd 1 0]
                                             [--checkpoint RUN_OR_CHECKPOINT]

Makes a tiny pre-trained checkpoint (3 scripted episodes, 2 updates) in a temporary folder, then runs
``python -m calql_robot.finetune`` once per (utd, count) with threads=1, eval off, and prints a table of the rates
each run reports at its end (actor runs: measured from the first received episode, so actor start-up is left out).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SINGLE = re.compile(r"env steps: ([\d.]+)/s overall")
ACTORS = re.compile(r"env steps: ([\d.]+)/s received .*?learner updates: ([\d.]+)/s")


def pretrained(root: Path, task: str, small: list[str]) -> Path:
    data = root / "d.zarr"
    subprocess.run([sys.executable, "-m", "calql_robot.collect", f"task={task}", "episodes=3", f"output={data}"],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "calql_robot.pretrain", f"task={task}", *small, f"dataset={data}",
                    "pretrain.steps=2", "pretrain.batch_size=32", f"run_dir={root / 'pre'}"],
                   check=True, capture_output=True)
    return root / "pre"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="pointmaze_umaze")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--counts", type=int, nargs="+", default=[0, 1, 2, 4])
    parser.add_argument("--utd", type=int, nargs="+", default=[1])
    parser.add_argument("--checkpoint", default=None, help="a pretrain run or checkpoint of --task (default: make one)")
    args = parser.parse_args()
    small = ["device=cpu", "threads=1", "progress=false", "eval.every=0"]
    print(f"uptime: {os.popen('uptime').read().strip()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = Path(args.checkpoint).resolve() if args.checkpoint else pretrained(root, args.task, small)
        table = []
        for utd in args.utd:
            for count in args.counts:
                start = time.perf_counter()
                proc = subprocess.run(
                    [sys.executable, "-m", "calql_robot.finetune", f"task={args.task}", *small, f"checkpoint={ckpt}",
                     f"finetune.env_steps={args.steps}", f"finetune.utd={utd}", f"actors.count={count}",
                     f"run_dir={root / f'ft_{utd}_{count}'}"], capture_output=True, text=True, cwd=ROOT)
                wall = time.perf_counter() - start
                if proc.returncode != 0:
                    raise SystemExit(f"count {count} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
                found = (SINGLE if count == 0 else ACTORS).search(proc.stdout)
                steps_s = float(found.group(1)) if found else float("nan")
                # single process: one loop does both, so its wall-clock update rate is utd * env steps/s
                updates_s = steps_s * utd if count == 0 else (float(found.group(2)) if found else float("nan"))
                table.append((utd, count, steps_s, updates_s, wall))
                print(f"utd {utd} actors {count}: {steps_s:.0f} env steps/s, {updates_s:.0f} updates/s "
                      f"({wall:.0f} s wall)", flush=True)
    after = os.popen('uptime').read().strip()
    print(f"\n{args.task}, {args.steps} env steps per run, threads=1; uptime after: {after}")
    print("| utd | actors.count | env steps/s | learner updates/s | wall s (incl. start-up) |")
    print("|---|---|---|---|---|")
    for utd, count, steps_s, updates_s, wall in table:
        print(f"| {utd} | {count}{' (single process)' if count == 0 else ''} | {steps_s:.0f} | {updates_s:.0f} | "
              f"{wall:.0f} |")


if __name__ == "__main__":
    main()
