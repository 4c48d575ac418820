"""The evaluation app's work: load a checkpoint, roll out its deterministic policy, write CSV, JSON and videos.

The rollouts and metrics are those of training-time evaluation (:func:`calql_robot.training.evaluate.evaluate_agent`);
this module only adds what a stand-alone evaluation needs: which checkpoint and task, where to write, and the files.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from calql_robot.datasets.action_scaling import ActionScaling
from calql_robot.errors import UserError
from calql_robot.training import session
from calql_robot.training.checkpoint import checkpoint_counter, find_checkpoint, load_checkpoint, saved_step
from calql_robot.training.config_check import TASK_RULES, check_agent_config, check_evaluate_config, check_keys
from calql_robot.training.run_files import print_run_dir

EPISODE_COLUMNS = ("seed", "success", "return", "length")


def checkpoint_run_dir(ckpt: Path) -> Path:
    """The run directory a checkpoint folder belongs to (``RUN/checkpoints/update_N`` -> ``RUN``), else the folder."""
    ckpt = ckpt.resolve()
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt


def resolve_task(cfg: DictConfig, state: dict[str, Any], ckpt: Path) -> DictConfig:
    """The task to evaluate on: the checkpoint's task unless ``task=NAME`` is given, which must name the same task.

    Without ``task=``, keys given as ``+task.KEY=VALUE`` are applied over the checkpoint's task config. That config
    was saved resolved, so a key others were interpolated from (``task.horizon``) no longer moves them: set the one
    that is read (``+task.env.horizon=N``) instead.
    """
    saved = state["config"].get("task")
    if not isinstance(saved, dict) or "name" not in saved:
        raise UserError(f"checkpoint '{ckpt}' names no task in its saved config; pass task=NAME (configs/task/)")
    given = cfg.get("task")
    if given is None:
        return OmegaConf.create(saved)
    given = OmegaConf.create(OmegaConf.to_container(given, resolve=True))
    if "name" not in given:  # only +task.KEY=VALUE overrides: on top of the checkpoint's task
        return OmegaConf.merge(OmegaConf.create(saved), given)
    if given.name != saved["name"]:
        raise UserError(f"task={given.name} was given but checkpoint '{ckpt}' was trained on task '{saved['name']}'; "
                        f"an agent is only evaluated on its own task: drop task= (the checkpoint's task is used) or "
                        f"pass task={saved['name']}")
    return given


def resolve_output(cfg: DictConfig, task_name: str, ckpt: Path) -> Path:
    """``cfg.output`` or ``runs/evaluate/<task>_<timestamp>``; never inside the run directory being evaluated."""
    output = Path(str(cfg.output) if cfg.get("output") else
                  f"runs/evaluate/{task_name}_{time.strftime('%Y%m%d-%H%M%S')}").expanduser().resolve()
    run_dir = checkpoint_run_dir(ckpt)
    if output == run_dir or run_dir in output.parents:
        raise UserError(f"output={output} is inside the run directory '{run_dir}' of the checkpoint being evaluated; "
                        f"evaluation never writes into the run it reads: pass an output= folder outside it "
                        f"(e.g. runs/evaluate/{task_name})")
    if output.exists() and not output.is_dir():
        raise UserError(f"output={output} exists and is not a folder; pass a folder for the evaluation files")
    return output


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling, so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp_{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_episodes_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One row per episode: seed, success (0/1), return, length."""
    tmp = path.with_name(f".{path.name}.tmp_{os.getpid()}")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(EPISODE_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({"seed": row["seed"], "success": int(row["success"]), "return": repr(float(row["return"])),
                             "length": row["length"]})
    os.replace(tmp, path)


def _remove_previous_videos(output: Path) -> None:
    """Delete the videos a previous evaluation listed in ``output/summary.json`` (it is being overwritten)."""
    try:
        previous = json.loads((output / "summary.json").read_text())
    except (OSError, ValueError):
        return
    for name in previous.get("videos", []) if isinstance(previous, dict) else []:
        video = (output / str(name)).resolve()
        if output in video.parents and video.suffix == ".mp4":
            video.unlink(missing_ok=True)


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.checkpoint`` for ``cfg.eval.episodes`` rollouts from env seed ``cfg.eval.seed``; returns the
    summary written to ``<output>/summary.json``."""
    from calql_robot.agent import build_agent
    from calql_robot.datasets.format import obs_spec_from_space
    from calql_robot.envs import make_task_env
    from calql_robot.training.evaluate import evaluate_agent

    source = cfg.get("checkpoint")
    if not source:
        raise UserError("evaluate needs checkpoint=PATH: a pretrain/finetune run directory or one of its "
                        "checkpoint folders (checkpoints/update_* or checkpoints/env_step_*)")
    check_evaluate_config(cfg)
    if not Path(str(source)).expanduser().exists():
        raise UserError(f"checkpoint '{source}' does not exist; expected a pretrain/finetune run directory or one of "
                        f"its checkpoint folders (checkpoints/update_* or checkpoints/env_step_*)")
    ckpt = find_checkpoint(str(source))
    tensors, state = load_checkpoint(ckpt or str(source))  # no checkpoint there: a UserError saying so
    ckpt = ckpt.resolve()
    if not isinstance(state.get("config"), dict):
        raise UserError(f"checkpoint '{ckpt}' has no saved config in its state.json, so its agent cannot be rebuilt")
    task = resolve_task(cfg, state, ckpt)
    output = resolve_output(cfg, str(task.name), ckpt)

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    cfg.task = task
    cfg = session.agent_cfg_for_finetune(cfg, state)  # the checkpoint's agent unless agent=... is given
    check_keys(cfg, TASK_RULES, f"the task config saved in checkpoint '{ckpt}'")
    check_agent_config(cfg)
    device = session.setup_torch(cfg)
    video = bool(cfg.eval.video) and int(cfg.eval.video_episodes) > 0
    env = make_task_env(cfg.task, seed=int(cfg.eval.seed), render=video)
    try:
        env_spec = obs_spec_from_space(env.observation_space)
        scaling = ActionScaling.from_checkpoint_state(state, f"checkpoint '{ckpt}'")  # policy -> env units
        if scaling is not None:
            scaling.check_dim(int(env.action_space.shape[0]), f"checkpoint '{ckpt}' on task '{cfg.task.name}'")
        agent = session.build_agent_for(cfg, env_spec, int(env.action_space.shape[0]), device, build_agent,
                                        acting_only=True)
        session.restore_agent(agent, tensors, state)
        step = saved_step(state, ckpt) if "step" in state else 0
        counter = checkpoint_counter(state)
        print(f"evaluating {ckpt} ({counter.replace('_', ' ')} {step}) on task"
              f" '{cfg.task.name}': {int(cfg.eval.episodes)} episodes from "
              f"env seed {int(cfg.eval.seed)}; writing to {output}")
        output.mkdir(parents=True, exist_ok=True)
        _remove_previous_videos(output)
        result = evaluate_agent(agent, env, cfg.task, cfg.eval, video_dir=output / "videos" if video else None,
                                action_scaling=scaling)
    finally:
        env.close()

    rows = result["episodes"]
    write_episodes_csv(output / "episodes.csv", rows)
    low, high = result["success_ci95"]
    summary = {
        "checkpoint": str(ckpt), "step": step, "counter": counter, "phase": state.get("phase"),
        "task": str(cfg.task.name),
        "agent": str(cfg.agent.variant), "seeds": [r["seed"] for r in rows], "episodes": len(rows),
        "successes": int(sum(r["success"] for r in rows)), "success_rate": result["success_rate"],
        "ci95": [low, high], "return_mean": result["return_mean"], "return_std": result["return_std"],
        "length_mean": result["length_mean"], "final_reward_mean": result["final_reward_mean"],
        **({"normalized_score": result["normalized_score"]} if "normalized_score" in result else {}),
        "videos": [str(Path(v).relative_to(output)) for v in result["videos"]],
    }
    _write_atomic(output / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(f"success rate {summary['success_rate']:.3f} ({summary['successes']}/{len(rows)}), 95% Wilson interval "
          f"[{low:.3f}, {high:.3f}]; mean return {summary['return_mean']:.3f}; mean episode length "
          f"{summary['length_mean']:.1f}"
          + (f"; normalized score {summary['normalized_score']:.3f}" if "normalized_score" in summary else ""))
    print_run_dir(output, "output folder")
    return summary
