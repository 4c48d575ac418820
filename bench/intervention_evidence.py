"""Does a scripted intervener in the first K deploy episodes help? Two deploy runs on ``robot=sim task=pick_place``
from the same checkpoint and scene seeds, one with ``deploy.intervention.kind=scripted``, one without.

Runs (or reuses) the two deploys through the real app, then reads their ``episode.csv`` and prints, per block of
``--block`` episodes: env steps so far, success rate, mean intervention rate; and the success of the policy acting
alone after episode K. Writes OUT/summary.json and the plot ``--plot`` (success against online env steps, both
arms). The run in docs/results.md::

    .venv/bin/python bench/intervention_evidence.py --out runs/hil \\
        --checkpoint runs/readme/pretrain/checkpoints/step_000025000 --episodes 60 --intervene-episodes 20 \\
        --takeover-after 25 --seed 7000

``--report-only`` reads the existing runs (e.g. the committed docs/runs/hil/*/episode.csv) and runs nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ARMS = ("scripted", "none")
LABELS = {"scripted": "scripted intervener", "none": "no intervention",
          "scripted_demo": "scripted intervener + demo_buffer"}


def intervene_episodes(run_dir: Path, default: int) -> int:
    """K of a run: its config.yaml's deploy.intervention.episodes (``default`` when absent)."""
    from omegaconf import OmegaConf

    path = run_dir / "config.yaml"
    value = OmegaConf.select(OmegaConf.load(path), "deploy.intervention.episodes") if path.exists() else None
    return int(value) if value is not None else default


def deploy_command(args: argparse.Namespace, arm: str) -> list[str]:
    return [sys.executable, "-m", "calql_robot.deploy", "robot=sim", "task=pick_place",
            f"checkpoint={args.checkpoint}", f"deploy.episodes={args.episodes}", "deploy.batch_size=64",
            "deploy.max_utd=1", "deploy.learner_catch_up=true", f"deploy.intervention.kind={arm}",
            f"deploy.intervention.episodes={args.intervene_episodes}",
            f"deploy.intervention.scripted.takeover_after_steps={args.takeover_after}",
            "deploy.video_every_episodes=20", f"seed={args.seed}", f"robot.driver.seed={args.seed}", "threads=1",
            "progress=false", f"run_dir={Path(args.out) / arm}"]


def read_episodes(run_dir: Path) -> dict[str, np.ndarray]:
    with (run_dir / "episode.csv").open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{run_dir}/episode.csv has no rows")
    return {key: np.array([float(r.get(key) or 0.0) for r in rows]) for key in ("success", "length",
                                                                             "intervention_steps")}


def summarize(episodes: dict[str, np.ndarray], k: int, block: int) -> dict[str, object]:
    steps = np.cumsum(episodes["length"])
    blocks = []
    for start in range(0, len(steps), block):
        part = slice(start, start + block)
        blocks.append({"episodes": f"{start + 1}-{min(start + block, len(steps))}", "env_steps": int(steps[part][-1]),
                       "success": float(episodes["success"][part].mean()),
                       "intervention_rate": float(episodes["intervention_steps"][part].sum()
                                                  / episodes["length"][part].sum())})
    alone = episodes["success"][k:]
    return {"blocks": blocks, "episodes": int(len(steps)), "env_steps": int(steps[-1]),
            "success_first_k": float(episodes["success"][:k].mean()),
            "success_after_k": float(alone.mean()) if len(alone) else float("nan"),
            "successes_after_k": int(alone.sum()), "episodes_after_k": int(len(alone))}


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def plot(results: dict[str, dict[str, np.ndarray]], ks: dict[str, int], path: Path, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, episodes in results.items():
        steps = np.cumsum(episodes["length"])
        rolling = np.convolve(episodes["success"], np.ones(window) / window, mode="valid")
        line, = ax.plot(steps[window - 1:], rolling, marker="o", markersize=3, label=LABELS.get(arm, arm))
        k = ks[arm]
        if arm != "none" and 0 < k < len(steps):
            ax.axvline(steps[k - 1], color=line.get_color(), linestyle="--", alpha=0.6,
                       label=f"{LABELS.get(arm, arm)}: interventions stop (episode {k})")
    ax.set_xlabel("online env steps")
    ax.set_ylabel(f"success (mean of the last {window} episodes)")
    ax.set_title("deploy robot=sim task=pick_place: scripted intervener in the first episodes")
    ax.set_ylim(-0.05, 1.05)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/hil", help="folder of the two run directories (scripted/, none/)")
    parser.add_argument("--checkpoint", default="runs/readme/pretrain/checkpoints/step_000025000")
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--intervene-episodes", type=int, default=20, help="K: episodes the intervener may act in")
    parser.add_argument("--takeover-after", type=int, default=25, help="scripted.takeover_after_steps")
    parser.add_argument("--seed", type=int, default=7000)
    parser.add_argument("--block", type=int, default=10, help="episodes per row of the table")
    parser.add_argument("--window", type=int, default=10, help="episodes of the plot's rolling mean")
    parser.add_argument("--plot", default="docs/intervention_evidence.png")
    parser.add_argument("--report-only", action="store_true", help="read the existing runs, run nothing")
    parser.add_argument("--pool", nargs="*", default=[], metavar="LABEL=ARM,ARM",
                        help="also print the policy-alone success after K pooled over several arms (seeds)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS),
                        help="run directories under --out to report (e.g. scripted none scripted_demo)")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.report_only:
        procs = [subprocess.Popen(deploy_command(args, arm)) for arm in ARMS]  # both at once, one thread each
        if any(p.wait() != 0 for p in procs):
            raise SystemExit("a deploy run failed; see its output above")
    results = {arm: read_episodes(out / arm) for arm in args.arms}
    ks = {arm: intervene_episodes(out / arm, args.intervene_episodes) for arm in args.arms}
    ks["none"] = max(ks.get("none", 0), *(k for a, k in ks.items() if a != "none")) if len(ks) > 1 else ks["none"]
    summary = {arm: summarize(eps, ks[arm], args.block) for arm, eps in results.items()}
    for arm, s in summary.items():
        print(f"\n{arm}: {s['episodes']} episodes, {s['env_steps']} env steps; success in episodes 1-"
              f"{ks[arm]}: {s['success_first_k']:.2f}; policy alone afterwards: "
              f"{s['successes_after_k']}/{s['episodes_after_k']} = {s['success_after_k']:.2f}")
        print("| episodes | env steps | success | intervention rate |\n|---|---|---|---|")
        for b in s["blocks"]:
            print(f"| {b['episodes']} | {b['env_steps']} | {b['success']:.2f} | {b['intervention_rate']:.2f} |")
    pooled = {}
    for spec in args.pool:
        label, _, members = spec.partition("=")
        names = [m for m in members.split(",") if m]
        unknown = [m for m in names if m not in summary]
        if not label or not names or unknown:
            raise SystemExit(f"--pool {spec!r}: expected LABEL=ARM,ARM with arms among --arms ({unknown} unknown)")
        wins = sum(summary[m]["successes_after_k"] for m in names)
        total = sum(summary[m]["episodes_after_k"] for m in names)
        low, high = wilson(wins, total)
        pooled[label] = {"arms": names, "successes_after_k": wins, "episodes_after_k": total,
                         "success_after_k": wins / max(total, 1), "wilson95": [low, high]}
        print(f"\npooled {label} ({', '.join(names)}): policy alone after K {wins}/{total} = "
              f"{wins / max(total, 1):.2f}, 95% Wilson interval [{low:.2f}, {high:.2f}]")
    summary["pooled"] = pooled  # type: ignore[assignment]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    groups = {label: [m for m in members.split(",") if m]
              for label, _, members in (spec.partition("=") for spec in args.pool)}
    if groups:  # one curve per pool: success per episode index averaged over its runs (seeds)
        n = min(len(results[m]["success"]) for names in groups.values() for m in names)
        results = {label: {key: np.mean([results[m][key][:n] for m in names], axis=0)
                           for key in ("success", "length", "intervention_steps")} for label, names in groups.items()}
        ks = {label: max(ks[m] for m in names) for label, names in groups.items()}
    plot(results, ks, Path(args.plot), args.window)
    print(f"\nwrote {out / 'summary.json'} and {args.plot}")


if __name__ == "__main__":
    main()
