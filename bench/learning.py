"""Learning benchmark: Cal-QL against CQL on a small sparse-reward maze, offline pre-training then online fine-tuning.

The paper's claim (Nakamoto et al. 2023): Cal-QL does not fall below its offline performance when fine-tuning
starts, and has lower cumulative regret than CQL. For every method and seed this script runs the real apps as
subprocesses::

    python -m calql_robot.pretrain task=pointmaze_umaze agent=<method> seed=<s> run_dir=OUT/runs/<m>_s<s>/pretrain ...
    python -m calql_robot.finetune task=pointmaze_umaze agent=<method> checkpoint=OUT/runs/<m>_s<s>/pretrain ...

then reads ``finetune/eval.csv`` (step 0 = before fine-tuning) and ``finetune/episode.csv`` and prints, per method,
mean +- std over seeds of: success before fine-tuning, the lowest evaluation success in the first ``--dip-fraction``
of fine-tuning (the dip), final success and regret (mean over online episodes of 1 - success). It writes
``OUT/summary.json``, ``OUT/summary.md`` and ``OUT/learning_curve.png``.

Runs resume: the apps continue from their run directories, so re-running with the same ``--out`` reuses finished runs.
Every subprocess gets ``OMP_NUM_THREADS=1``: on a shared 2-core machine one PyTorch thread per process is many times
faster than two contending ones. ``--jobs`` runs that many (method, seed) pairs at once.

Example (about 20 minutes on a busy 2-core machine)::

    .venv/bin/python bench/learning.py --seeds 0 1 2 --out bench/results/learning
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from learning_report import RunResult, format_table, load_run, plot_curves, summarize  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", default="pointmaze_umaze", help="task config name (configs/task/)")
    p.add_argument("--methods", nargs="+", default=["calql", "cql"], help="agent variants to compare")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--pretrain-steps", type=int, default=3000, help="offline gradient updates")
    p.add_argument("--finetune-steps", type=int, default=3000, help="online environment steps (1 update each)")
    p.add_argument("--eval-every", type=int, default=250, help="online env steps between evaluations")
    p.add_argument("--pretrain-eval-every", type=int, default=500, help="offline updates between evaluations")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--dip-fraction", type=float, default=0.25,
                   help="the dip is the lowest eval success in the first this fraction of fine-tuning")
    p.add_argument("--dataset-episodes", type=int, default=None, help="episodes of the generated offline dataset "
                   "(default: the task config's task.dataset.episodes)")
    p.add_argument("--dataset-seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="(method, seed) runs at once")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "learning")
    p.add_argument("--override", nargs="*", default=[], help="extra hydra overrides for both apps, e.g. "
                   "agent.cql_alpha=1.0")
    p.add_argument("--report-only", action="store_true", help="run nothing: rebuild the table, summary and plot "
                   "from the run directories already under --out")
    args = p.parse_args(argv)
    if args.finetune_steps < 1 or args.pretrain_steps < 1 or args.eval_every < 1 or args.eval_episodes < 1:
        p.error("--pretrain-steps, --finetune-steps, --eval-every and --eval-episodes must be positive")
    if not 0 < args.dip_fraction <= 1:
        p.error("--dip-fraction must be in (0, 1]")
    return args


def make_dataset(args: argparse.Namespace) -> Path:
    """Generate the task's offline dataset once under OUT/data (reused when it exists)."""
    from hydra import compose, initialize_config_dir

    from calql_robot.envs import generate_task_dataset

    path = args.out / "data" / f"{args.task}.zarr"
    if path.exists():
        print(f"offline data: {path} (reused)")
        return path
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="pretrain", overrides=[f"task={args.task}"])
    episodes = args.dataset_episodes or cfg.task.dataset.get("episodes")
    return generate_task_dataset(cfg.task, path, episodes=episodes, seed=args.dataset_seed)


def run_app(cmd: list[str], log: Path) -> float:
    """Run one app to completion with its output in ``log``; returns wall seconds; raises on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL",
                                                                                                   "egl")}
    t0 = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{cmd[2]} failed with status {proc.returncode}; log {log}:\n{tail}")
    return time.perf_counter() - t0


def run_one(args: argparse.Namespace, dataset: Path, method: str, seed: int) -> dict[str, float]:
    """Pre-train then fine-tune one (method, seed); returns the wall seconds of each phase."""
    run = args.out / "runs" / f"{method}_s{seed}"
    run.mkdir(parents=True, exist_ok=True)
    common = [f"task={args.task}", f"agent={method}", f"seed={seed}", "device=cpu", "progress=false",
              "eval.video=false", f"eval.episodes={args.eval_episodes}", *args.override]
    py = [sys.executable, "-m"]
    pre = run_app(py + ["calql_robot.pretrain", *common, f"run_dir={run / 'pretrain'}", f"dataset={dataset}",
                        f"pretrain.steps={args.pretrain_steps}", f"eval.every={args.pretrain_eval_every}",
                        f"pretrain.save_every={args.pretrain_steps}"], run / "pretrain.log")
    fine = run_app(py + ["calql_robot.finetune", *common, f"run_dir={run / 'finetune'}",
                         f"checkpoint={run / 'pretrain'}", f"dataset={dataset}",
                         f"finetune.env_steps={args.finetune_steps}", f"eval.every={args.eval_every}",
                         f"finetune.save_every={args.finetune_steps}"], run / "finetune.log")
    return {"pretrain_s": pre, "finetune_s": fine}


def run_all(args: argparse.Namespace, dataset: Path, pairs: list[tuple[str, int]],
            failures: list[str]) -> dict[str, dict[str, float]]:
    """Run every (method, seed) pair, ``args.jobs`` at a time; failed pairs are appended to ``failures``."""
    from tqdm import tqdm

    timings: dict[str, dict[str, float]] = {}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool, tqdm(total=len(pairs), desc="runs") as bar:
        futures = {pool.submit(run_one, args, dataset, m, s): (m, s) for m, s in pairs}
        for fut, (m, s) in futures.items():
            try:
                timings[f"{m}_s{s}"] = fut.result()
            except Exception as err:  # one broken run must not hide the others' results
                failures.append(f"{m} seed {s}: {err}")
                bar.write(f"FAILED {m} seed {s}: {err}")
            bar.update(1)
    return timings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"learning benchmark: {args.task}, methods {args.methods}, seeds {args.seeds}, {args.pretrain_steps} "
          f"offline updates, {args.finetune_steps} online steps; load average at start {load:.1f}")
    pairs = [(m, s) for s in args.seeds for m in args.methods]
    failures: list[str] = []
    if args.report_only:
        dataset = args.out / "data" / f"{args.task}.zarr"
        previous = args.out / "summary.json"
        timings = json.loads(previous.read_text())["meta"]["run_timings_s"] if previous.is_file() else {}
        timings.update({f"{m}_s{s}": timings.get(f"{m}_s{s}", {}) for m, s in pairs})
    else:
        dataset = make_dataset(args)
        timings = run_all(args, dataset, pairs, failures)
    results: list[RunResult] = []
    for m, s in pairs:
        if f"{m}_s{s}" in timings:
            results.append(load_run(args.out / "runs" / f"{m}_s{s}", m, s, args.dip_fraction, args.finetune_steps))
    summary = summarize(results, args.methods)
    table = format_table(summary, args.dip_fraction)
    print(table)
    title = " ".join([args.task, *args.override])
    plot = plot_curves(results, args.methods, args.out / "learning_curve.png", title)
    meta = {"task": args.task, "methods": args.methods, "seeds": args.seeds, "pretrain_steps": args.pretrain_steps,
            "finetune_steps": args.finetune_steps, "eval_every": args.eval_every, "eval_episodes": args.eval_episodes,
            "dip_fraction": args.dip_fraction, "overrides": args.override, "dataset": str(dataset),
            "wall_s": time.perf_counter() - t0, "load_average_start": load, "run_timings_s": timings,
            "failures": failures, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    if args.report_only and (args.out / "summary.json").is_file():  # keep the measuring run's command and timing
        meta = {**json.loads((args.out / "summary.json").read_text())["meta"], "report_command": meta["command"]}
    write_json(args.out / "summary.json", {"meta": meta, "summary": summary,
                                            "runs": [r.as_dict() for r in results]})
    (args.out / "summary.md").write_text(table + "\n")
    print(f"wall time {meta['wall_s'] / 60:.1f} min; summary: {args.out / 'summary.json'}; plot: {plot}")
    for f in failures:
        print(f"failed: {f}", file=sys.stderr)
    return 1 if failures else 0


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
