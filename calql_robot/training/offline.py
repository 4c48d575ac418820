"""Offline pre-training: sample the dataset, update the agent, evaluate, checkpoint; resumes from its run dir."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from calql_robot.errors import UserError
from calql_robot.training import session
from calql_robot.training.checkpoint import (
    check_state_keys,
    find_checkpoint,
    load_checkpoint,
    restore_generator,
    restore_rng_state,
    save_checkpoint,
    saved_step,
)
from calql_robot.training.config_check import check_pretrain_config
from calql_robot.training.logger import MetricsLogger
from calql_robot.training.plots import plot_run
from calql_robot.training.replay import MixedSampler, ReplayBuffer, RewardTransform, batch_to_torch


def load_offline_buffer(cfg: DictConfig, path: Path, env_obs_spec: dict[str, Any]) -> tuple[Any, ReplayBuffer]:
    """Open the zarr dataset (validated), check it fits the task's env, and load it into a replay buffer."""
    from calql_robot.datasets.format import ZarrDataset

    lazy = bool(OmegaConf.select(cfg, "data.lazy", default=False))
    cache_mb = OmegaConf.select(cfg, "data.cache_mb", default=1024)
    dataset = ZarrDataset(path, lazy=lazy, **({"cache_bytes": int(cache_mb) * 2**20} if lazy else {}))
    session.check_obs_spec(dataset.obs_spec, env_obs_spec, path, cfg.task.name)
    if int(dataset.n_transitions) == 0:
        raise UserError(f"dataset '{path}' holds no episodes (0 transitions), so there is nothing to train on; "
                        "collect or convert episodes into it first (python -m calql_robot.collect / convert)"
                        + (", or pass finetune.mixing_ratio=0 to fine-tune on online data only"
                           if "finetune" in cfg else ""))
    buffer = ReplayBuffer.from_dataset(dataset, RewardTransform.from_task(cfg.task), keys=set(env_obs_spec))
    print(f"offline data: {path} ({dataset.n_episodes} episodes, {dataset.n_transitions} transitions, "
          f"{'lazy' if lazy else f'{buffer.bytes_per_transition() / 1024:.1f} KiB/transition in RAM'})")
    return dataset, buffer


def run_pretrain(cfg: DictConfig) -> dict[str, Any]:
    """Offline Cal-QL / CQL / SAC training of ``cfg.agent`` on the task's dataset; returns the final metrics.

    The config, the dataset and a resumed checkpoint (its RNG states and network shapes) are all checked before the
    run directory is created or its ``config.yaml`` written, so a refused run leaves the directory as it was.
    """
    from calql_robot.agent import build_agent
    from calql_robot.app import prepare_run_dir
    from calql_robot.datasets.format import obs_spec_from_space
    from calql_robot.envs import make_task_env

    check_pretrain_config(cfg)
    pcfg = cfg.pretrain
    run_dir = session.run_dir_path(cfg)
    device = session.setup_torch(cfg)
    path = session.ensure_dataset(cfg)
    env = make_task_env(cfg.task, seed=int(cfg.seed), render=bool(cfg.eval.video))
    env_spec = obs_spec_from_space(env.observation_space)
    dataset, buffer = load_offline_buffer(cfg, path, env_spec)
    agent = session.build_agent_for(cfg, env_spec, int(env.action_space.shape[0]), device, build_agent)
    session.fit_to_offline_data(agent, dataset, buffer)  # a resumed run's checkpoint then restores the same values
    sampler = MixedSampler(buffer, None, 1.0, seed=int(cfg.seed))

    step = 0
    ckpt = find_checkpoint(run_dir)
    if ckpt is not None:
        tensors, state = load_checkpoint(ckpt)
        check_state_keys(state, ckpt, ("step", "rng", "sampler_rng"), "resuming this pretrain run")
        session.restore_agent(agent, tensors, state)
        restore_rng_state(tensors, state["rng"], f"checkpoint '{ckpt}'")
        restore_generator(sampler.rng, state["sampler_rng"], f"checkpoint '{ckpt}'")
        step = saved_step(state, ckpt)
        print(f"resuming from {ckpt} at step {step}")
    prepare_run_dir(cfg)  # everything above was checked: only now is the run directory created or its config saved
    logger = MetricsLogger(run_dir, resume_step=step if ckpt is not None else None)

    def save() -> Path:
        state = {"phase": "pretrain", "dataset": str(path.resolve()), "agent_meta": session.agent_meta(agent),
                 "sampler_rng": sampler.rng.bit_generator.state, "config": OmegaConf.to_container(cfg, resolve=True)}
        return save_checkpoint(run_dir, step, session.checkpoint_tensors(agent), state)

    total = int(pcfg.steps)
    last_eval: dict[str, Any] = {}
    bar = tqdm(total=total, initial=step, desc=f"pretrain {cfg.task.name} [{cfg.agent.variant}]", unit="upd",
               dynamic_ncols=True, disable=not cfg.progress)
    t0, step0 = time.perf_counter(), step
    while step < total:
        metrics = agent.update(batch_to_torch(sampler.sample(int(pcfg.batch_size)), device))
        step += 1
        bar.update(1)
        if step % int(pcfg.log_every) == 0 or step == total:
            metrics["updates_per_s"] = (step - step0) / max(time.perf_counter() - t0, 1e-9)
            logger.log("train", step, metrics)
            bar.set_postfix(q=f"{metrics.get('q_data_mean', np.nan):.2f}",
                            mc=f"{metrics.get('mc_return_mean', np.nan):.2f}",
                            bound=f"{metrics.get('bound_rate', np.nan):.2f}", refresh=False)
        if int(cfg.eval.every) > 0 and (step % int(cfg.eval.every) == 0 or step == total):
            last_eval = session.evaluate_and_log(agent, env, cfg, run_dir, step, logger, "pretrain")
            bar.write(f"step {step}: eval success {last_eval['success_rate']:.2f}, "
                      f"return {last_eval['return_mean']:.2f}")
        if step % int(pcfg.save_every) == 0 or step == total:
            save()
    bar.close()
    logger.close()
    env.close()
    if step0 >= total:
        print(f"run already complete at step {total}; nothing to do (raise pretrain.steps to train longer)")
    plots = plot_run(run_dir)
    print(f"checkpoint: {find_checkpoint(run_dir)}")
    print(f"logs: {run_dir / 'train.csv'}, {run_dir / 'eval.csv'}, TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    if last_eval.get("video"):
        print(f"video: {last_eval['video']}")
    for p in plots:
        print(f"plot: {p}")
    return {"step": step, **{k: v for k, v in last_eval.items() if k != "video"}}
