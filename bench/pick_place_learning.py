"""Learning run on visual pick-and-place: Cal-QL against CQL, offline pre-training then online fine-tuning.

Everything goes through the real apps as subprocesses:

    python -m calql_robot.collect task=pick_place episodes=N output=OUT/data/pick_place.zarr task.env.image_size=S
    python -m calql_robot.pretrain task=pick_place agent=<method> dataset=... run_dir=OUT/runs/<m>_s<s>/pretrain ...
    python -m calql_robot.finetune task=pick_place agent=<method> checkpoint=OUT/runs/<m>_s<s>/pretrain ...

(the pretrain / finetune commands are bench/learning.py's ``run_one``; every subprocess gets OMP_NUM_THREADS=1).
Then it reads ``finetune/eval.csv`` (step 0 = the pre-trained policy) and ``finetune/episode.csv`` and prints per
method (metrics of bench/learning_report.py): success before fine-tuning, the lowest eval success in the first
``--dip-fraction`` of fine-tuning, final success, regret rate and the cumulative regret (failed online episodes,
the last ``cumulative_regret`` of episode.csv). It writes OUT/summary.json, the success plot ``--plot``
(default docs/pick_place_learning.png) and beside it ``*_q.png``: mean Q on dataset actions against the mean
Monte-Carlo return of the training batches, pre-training then fine-tuning.

Example (the run in docs/results.md)::

    .venv/bin/python bench/pick_place_learning.py --out /tmp/ppl/bench --image-size 32 --episodes 100 \\
        --pretrain-steps 1500 --pretrain-eval-every 750 --batch-size 64 --finetune-steps 1500 --eval-every 250 \\
        --eval-episodes 10 --jobs 2

Re-running with the same ``--out`` reuses the dataset and resumes or reuses the runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

from learning import run_app, run_one, write_json  # noqa: E402
from learning_report import format_table, load_run, plot_curves, read_csv, summarize  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--task", default="pick_place", choices=["pick_place", "pick_place_state"],
                   help="the image task or its state-based twin (same scene, data and reward)")
    p.add_argument("--methods", nargs="+", default=["calql", "cql"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--episodes", type=int, default=100, help="scripted episodes of the offline dataset")
    p.add_argument("--image-size", type=int, default=64, help="camera image size (task.env.image_size)")
    p.add_argument("--pretrain-steps", type=int, default=1000)
    p.add_argument("--pretrain-eval-every", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=64, help="pretrain and finetune batch size")
    p.add_argument("--finetune-steps", type=int, default=1000, help="online env steps (1 update each)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--dip-fraction", type=float, default=0.25)
    p.add_argument("--jobs", type=int, default=2, help="(method, seed) runs at once")
    p.add_argument("--out", type=Path, default=Path("/tmp/pick_place_learning"))
    p.add_argument("--plot", type=Path, default=REPO / "docs" / "pick_place_learning.png")
    p.add_argument("--report-only", action="store_true", help="skip collecting and training; read the runs in --out")
    args = p.parse_args(argv)
    if min(args.episodes, args.pretrain_steps, args.finetune_steps, args.eval_every, args.eval_episodes) < 1:
        p.error("--episodes, --pretrain-steps, --finetune-steps, --eval-every and --eval-episodes must be positive")
    return args


def collect(args: argparse.Namespace) -> Path:
    """The offline dataset from the collect app (scripted demos, seed 0), reused when it exists."""
    name = f"{args.image_size}px" if args.task == "pick_place" else "state"
    path = args.out / "data" / f"{args.task}_{name}_{args.episodes}ep.zarr"
    if path.exists():
        print(f"offline data: {path} (reused)")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    seconds = run_app([sys.executable, "-m", "calql_robot.collect", f"task={args.task}", f"episodes={args.episodes}",
                       f"output={path}", *image_override(args), "seed=0"], args.out / "collect.log")
    print(f"offline data: {path} ({seconds:.0f} s)")
    return path


def image_override(args: argparse.Namespace) -> list[str]:
    """``task.env.image_size=S`` for the image task; nothing for the state twin."""
    return [f"task.env.image_size={args.image_size}"] if args.task == "pick_place" else []


def cumulative_regret(run: Path) -> float:
    """Failed online episodes: the last ``cumulative_regret`` of ``run``/finetune/episode.csv."""
    rows = read_csv(run / "finetune" / "episode.csv")
    return float(rows[-1]["cumulative_regret"]) if rows else float("nan")


def plot_q(out: Path, runs: list[tuple[str, int]], path: Path) -> Path:
    """Mean Q(s, a_data) and mean Monte-Carlo return of the training batches (train.csv ``q_data_mean``,
    ``mc_return_mean``) over pre-training then fine-tuning (x = updates, fine-tuning offset by the pre-training
    updates): a calibrated critic tracks the return."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, (method, seed) in enumerate(runs):
        offset = 0.0
        for phase, style in (("pretrain", "-"), ("finetune", "--")):
            rows = read_csv(out / "runs" / f"{method}_s{seed}" / phase / "train.csv")
            steps = [offset + float(r.get("update", r.get("env_step", r.get("step")))) for r in rows]
            ax.plot(steps, [float(r["q_data_mean"]) for r in rows], style, color=f"C{i}",
                    label=f"{method} s{seed} Q(s, a_data), {phase}")
            if i == 0:
                ax.plot(steps, [float(r["mc_return_mean"]) for r in rows], style, color="k", lw=1,
                        label=f"MC return of the batches, {phase}")
            offset = steps[-1] if steps else offset
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="gradient updates (pre-training, then fine-tuning)", ylabel="mean over the batch",
           title="critic calibration: Q on dataset actions against Monte-Carlo returns")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    obs = f"{args.image_size}px" if args.task == "pick_place" else "state"
    print(f"{args.task} learning run: {args.methods}, seeds {args.seeds}, {obs}, {args.episodes} "
          f"episodes, {args.pretrain_steps} updates at batch {args.batch_size}, {args.finetune_steps} online steps; "
          f"load average {os.getloadavg()[0]:.1f}")
    dataset = args.out / "data" if args.report_only else collect(args)
    # bench/learning.py's run_one with this task's options (its parser's names, filled here).
    run_args = argparse.Namespace(
        task=args.task, out=args.out, eval_episodes=args.eval_episodes, pretrain_steps=args.pretrain_steps,
        pretrain_eval_every=args.pretrain_eval_every, finetune_steps=args.finetune_steps, eval_every=args.eval_every,
        override=[*image_override(args), f"++pretrain.batch_size={args.batch_size}",
                  f"++finetune.batch_size={args.batch_size}"],  # ++: each app lacks the other's key
    )  # fmt: skip
    pairs = [(m, s) for s in args.seeds for m in args.methods]
    timings, failures = {}, []
    if args.report_only:
        timings = {f"{m}_s{s}": {} for m, s in pairs if (args.out / "runs" / f"{m}_s{s}" / "finetune").is_dir()}
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        todo = [] if args.report_only else pairs
        futures = {pool.submit(run_one, run_args, dataset, m, s): (m, s) for m, s in todo}
        for fut, (m, s) in futures.items():
            try:
                timings[f"{m}_s{s}"] = fut.result()
                print(f"done {m} seed {s}: {timings[f'{m}_s{s}']}", flush=True)
            except Exception as err:  # one broken run must not hide the others' results
                failures.append(f"{m} seed {s}: {err}")
                print(f"FAILED {m} seed {s}: {err}", flush=True)
    results, regrets = [], {}
    for m, s in pairs:
        if f"{m}_s{s}" in timings:
            run = args.out / "runs" / f"{m}_s{s}"
            results.append(load_run(run, m, s, args.dip_fraction, args.finetune_steps))
            regrets[f"{m}_s{s}"] = cumulative_regret(run)
    summary = summarize(results, args.methods)
    print(format_table(summary, args.dip_fraction))
    for r in results:
        key = f"{r.method}_s{r.seed}"
        print(f"{key}: offline eval {dict(zip(r.offline_steps.tolist(), r.offline_success.tolist()))}; online eval "
              f"{dict(zip(r.eval_steps.tolist(), r.eval_success.tolist()))}; cumulative regret {regrets[key]:.0f} "
              f"of {r.metrics['episodes']:.0f} episodes")
    title = f"pick_place ({args.image_size}px)" if args.task == "pick_place" else args.task
    plot = plot_curves(results, args.methods, args.plot, title)
    q_plot = plot_q(args.out, [(r.method, r.seed) for r in results], args.plot.with_name(args.plot.stem + "_q.png"))
    meta = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "dataset": str(dataset),
            "wall_s": time.perf_counter() - t0, "run_timings_s": timings, "failures": failures,
            "cumulative_regret": regrets, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    write_json(args.out / "summary.json", {"meta": meta, "summary": summary, "runs": [r.as_dict() for r in results]})
    print(f"wall time {meta['wall_s'] / 60:.1f} min; summary {args.out / 'summary.json'}; plots {plot}, {q_plot}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
