"""Offline pre-training: sample the dataset, update the agent, evaluate, checkpoint; resumes from its run dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from calql_robot.datasets.action_scaling import ActionScaling
from calql_robot.errors import UserError
from calql_robot.progress import Progress
from calql_robot.training import distributed, session
from calql_robot.training.checkpoint import (
    check_state_keys,
    find_checkpoint,
    load_checkpoint,
    restore_generator,
    restore_rng_state,
    save_checkpoint,
    saved_step,
)
from calql_robot.training.compile_choice import apply_compile
from calql_robot.training.config_check import check_pretrain_config
from calql_robot.training.logger import MetricsLogger
from calql_robot.training.plots import RunInfo, plot_run
from calql_robot.training.prefetch import training_batches
from calql_robot.training.replay import MixedSampler, ReplayBuffer, RewardTransform
from calql_robot.training.run_files import print_run_dir
from calql_robot.training.update_timer import UpdateTimer


def load_offline_buffer(cfg: DictConfig, path: Path | str, env_obs_spec: dict[str, Any]) -> tuple[Any, ReplayBuffer]:
    """Open the zarr dataset (validated; a URL is read with ``data.storage_options``), check it fits the task's
    env, and load it into a replay buffer."""
    from calql_robot.datasets.format import ZarrDataset

    lazy = bool(OmegaConf.select(cfg, "data.lazy", default=False))
    cache_mb = OmegaConf.select(cfg, "data.cache_mb", default=1024)
    dataset = ZarrDataset(path, lazy=lazy, storage_options=session.storage_options(cfg),
                          **({"cache_bytes": int(cache_mb) * 2**20} if lazy else {}))
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
    Under torchrun each process trains on its shard of every batch and rank 0 alone writes (training/distributed.py).
    """
    from calql_robot.agent import build_agent
    from calql_robot.app import prepare_run_dir
    from calql_robot.datasets.format import obs_spec_from_space
    from calql_robot.envs import make_task_env

    check_pretrain_config(cfg)
    pcfg = cfg.pretrain
    run_dir = session.run_dir_path(cfg)
    world = distributed.from_env(session.setup_torch(cfg))  # torchrun: this rank's place, device and process group
    device, main = world.device, world.is_main()
    distributed.check_batch_statistics(cfg, world)
    shard = world.shard_size(int(pcfg.batch_size))  # rows this process samples per update
    path = session.ensure_dataset(cfg) if main else session.dataset_path(cfg)
    world.barrier()  # ranks > 0 wait while rank 0 creates a missing default dataset
    env = make_task_env(cfg.task, seed=int(cfg.seed), render=bool(cfg.eval.video) and main)
    env_spec = obs_spec_from_space(env.observation_space)
    dataset, buffer = load_offline_buffer(cfg, path, env_spec)
    scaling = ActionScaling.from_store_attrs(dataset.attrs, f"dataset '{path}'")  # stored actions -> env units
    if scaling is not None:
        scaling.check_dim(int(env.action_space.shape[0]), f"dataset '{path}' for task '{cfg.task.name}'")
        print(scaling.describe())
    agent = session.build_agent_for(cfg, env_spec, int(env.action_space.shape[0]), device, build_agent,
                                    batch_size=shard)
    apply_compile(agent, cfg.get("compile", "auto"), device, int(pcfg.steps))
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
        print(f"resuming from {ckpt} at update {step}")
    world.broadcast_from_main(distributed.agent_tensors(agent))  # every rank starts from rank 0's networks
    rank_rng = world.rank_streams(int(cfg.seed), step, agent.generator)  # ranks > 0: their own random streams
    if rank_rng is not None:
        sampler.rng = rank_rng
    if world.enabled:
        agent.grad_sync = world.average_gradients
    if main:
        prepare_run_dir(cfg)  # everything above was checked: only now is the run directory created or its config saved
    logger = MetricsLogger(run_dir, resume_step=step if ckpt is not None else None, index="update") if main else None

    def save() -> Path:
        state = {"phase": "pretrain", "dataset": session.dataset_label(path), "agent_meta": session.agent_meta(agent),
                 "action_scaling": None if scaling is None else scaling.to_json(),
                 "sampler_rng": batches.resume_state(), "world_size": world.world_size,  # rank 0's sampler
                 "config": OmegaConf.to_container(cfg, resolve=True)}
        return save_checkpoint(run_dir, step, session.checkpoint_tensors(agent), state, counter="update")

    total = int(pcfg.steps)
    last_eval: dict[str, Any] = {}
    bar = Progress(total, f"pretrain {cfg.task.name} [{cfg.agent.variant}]", "upd", initial=step,
                   bar=bool(cfg.progress) and main, every=cfg.get("progress_every") if main else 0)
    batches = training_batches(cfg, sampler, device, batch_size=shard)
    timer = UpdateTimer(agent)  # sampling wait + update only: evaluation and checkpoints are timed apart
    step0 = step
    while step < total:
        with timer:
            metrics = agent.update(batches.next())
        step += 1
        bar.update(1)
        if step % int(pcfg.log_every) == 0 or step == total:
            metrics = world.mean_metrics(metrics)  # over the ranks' shards (collective: every rank is here)
            metrics.update(timer.rates(batches.wait_s))
            if logger is not None:
                logger.log("train", step, metrics)
                bar.set_postfix(q=f"{metrics.get('q_data_mean', np.nan):.2f}",
                                mc=f"{metrics.get('mc_return_mean', np.nan):.2f}",
                                bound=f"{metrics.get('bound_rate', np.nan):.2f}", refresh=False)
        if main and int(cfg.eval.every) > 0 and (step % int(cfg.eval.every) == 0 or step == total):
            last_eval = session.evaluate_and_log(agent, env, cfg, run_dir, step, logger, "pretrain_update",
                                                 action_scaling=scaling)
            bar.write(f"update {step}: eval success {last_eval['success_rate']:.2f}, "
                      f"return {last_eval['return_mean']:.2f}")
        if main and (step % int(pcfg.save_every) == 0 or step == total):
            save()
    bar.close()
    batches.close()
    env.close()
    world.close()
    if logger is None:
        return {"update": step}
    logger.close()
    if step > step0:
        print(timer.summary(batches.wait_s))
    if step0 >= total:
        print(f"run already complete at update {total}; nothing to do (raise pretrain.steps to train longer)")
    plot_run(run_dir, RunInfo.from_cfg(cfg, "pretrain"))
    print(f"checkpoint: {find_checkpoint(run_dir)}")
    print_run_dir(run_dir)
    return {"update": step, **{k: v for k, v in last_eval.items() if k != "video"}}
