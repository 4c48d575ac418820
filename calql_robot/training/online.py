"""Online fine-tuning from a pre-trained checkpoint, mixing offline and online data.

Every finished online episode gets its Monte-Carlo returns (the Cal-QL bound stays on online, as the authors do),
joins the online replay buffer and is appended to ``<run_dir>/online.zarr``. Checkpoints are written on episode
boundaries; re-running on the same run directory reloads every stored online episode and continues the counters.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from calql_robot.datasets.action_scaling import ActionScaling, env_action_fn
from calql_robot.deployment.actors import check_actors_config
from calql_robot.errors import UserError
from calql_robot.progress import Progress
from calql_robot.training import session
from calql_robot.training.checkpoint import find_checkpoint, restore_generator, restore_rng_state, save_checkpoint
from calql_robot.training.compile_choice import apply_compile
from calql_robot.training.config_check import check_agent_config, check_finetune_config
from calql_robot.training.episodes import EpisodeRecorder, OnlineStore
from calql_robot.training.logger import MetricsLogger
from calql_robot.training.offline import load_offline_buffer
from calql_robot.training.plots import RunInfo, plot_run
from calql_robot.training.prefetch import SequentialBatches
from calql_robot.training.replay import MixedSampler, ReplayBuffer, RewardTransform, batch_to_torch
from calql_robot.training.run_files import print_run_dir
from calql_robot.training.update_timer import UpdateTimer


def _saved_counters(state: dict[str, Any], ckpt: Path) -> dict[str, int]:
    """The checkpoint's counters (env_steps, updates, episodes, successes) as ints; UserError if malformed."""
    saved = state.get("counters")
    keys = ("env_steps", "updates", "episodes", "successes")
    if not isinstance(saved, dict) or any(isinstance(saved.get(k), bool) or not isinstance(saved.get(k), int)
                                          or saved[k] < 0 for k in keys):
        raise UserError(f"checkpoint '{ckpt}': state.json has counters={saved!r}; expected non-negative whole "
                        f"numbers {list(keys)} as written by finetune")
    return {k: int(saved[k]) for k in keys}


def run_finetune(cfg: DictConfig) -> dict[str, Any]:
    """Fine-tune online for ``cfg.finetune.env_steps`` environment steps; returns the final metrics.

    The config, the checkpoint (merged agent options, RNG states, network shapes) and the offline data are all
    checked before the run directory is created or its ``config.yaml`` written.
    """
    from calql_robot.agent import build_agent
    from calql_robot.app import prepare_run_dir
    from calql_robot.datasets.format import obs_spec_from_space
    from calql_robot.envs import make_task_env

    if not cfg.get("checkpoint"):
        raise UserError("finetune needs checkpoint=PATH: a pretrain run directory or one of its checkpoint folders")
    check_finetune_config(cfg)
    check_actors_config(cfg)
    run_dir = session.run_dir_path(cfg)
    cfg, own_ckpt, pre_tensors, pre_state = session.load_start_checkpoint(cfg, run_dir, cfg.checkpoint)
    session.check_checkpoint_task(cfg, pre_state, own_ckpt or cfg.checkpoint)  # before any env or file exists
    check_agent_config(cfg)  # the agent actually used: the checkpoint's options with agent.KEY overrides on top
    fcfg = cfg.finetune
    device = session.setup_torch(cfg)
    env = make_task_env(cfg.task, seed=int(cfg.seed))
    eval_env = make_task_env(cfg.task, seed=int(cfg.seed) + 1, render=bool(cfg.eval.video))
    env_spec = obs_spec_from_space(env.observation_space)
    action_dim = int(env.action_space.shape[0])
    dataset = session.dataset_location(cfg.dataset or pre_state.get("dataset") or session.dataset_path(cfg))
    transform = RewardTransform.from_task(cfg.task)
    offline = load_offline_buffer(cfg, dataset, env_spec)[1] if float(fcfg.mixing_ratio) != 0 else None
    online = ReplayBuffer(env_spec, action_dim, transform)
    sampler = MixedSampler(offline, online, float(fcfg.mixing_ratio), seed=int(cfg.seed))
    scaling = ActionScaling.from_checkpoint_state(pre_state, f"checkpoint '{cfg.checkpoint}'")  # policy -> env units
    if scaling is not None:
        scaling.check_dim(action_dim, f"checkpoint '{cfg.checkpoint}' for task '{cfg.task.name}'")
        print(scaling.describe())
    to_env = env_action_fn(scaling)
    agent = session.build_agent_for(cfg, env_spec, action_dim, device, build_agent, batch_size=int(fcfg.batch_size))
    session.restore_agent(agent, pre_tensors, pre_state)
    apply_compile(agent, cfg.get("compile", "auto"), device, int(fcfg.env_steps) * int(fcfg.utd))

    counters = {"env_steps": 0, "updates": 0, "episodes": 0, "successes": 0}
    if own_ckpt is not None:
        restore_rng_state(pre_tensors, pre_state["rng"], f"checkpoint '{own_ckpt}'")
        restore_generator(sampler.rng, pre_state["sampler_rng"], f"checkpoint '{own_ckpt}'")
        counters.update(_saved_counters(pre_state, own_ckpt))
        print(f"resuming fine-tuning from {own_ckpt} at env step {counters['env_steps']}")
    else:
        print(f"fine-tuning from {cfg.checkpoint}")
    prepare_run_dir(cfg)  # everything above was checked: only now is the run directory created or its config saved
    store = OnlineStore(run_dir / "online.zarr", env_spec, env.action_space, cfg.task,
                        action_scaling=None if scaling is None else scaling.to_json())  # policy-unit actions
    store.load_into(online, counters)  # episodes stored after the last checkpoint are kept and counted once
    resumed = own_ckpt is not None or counters["episodes"] > 0
    logger = MetricsLogger(run_dir, resume_step=counters["env_steps"] if resumed else None, index="env_step")

    def save() -> None:
        state = {"phase": "finetune", "dataset": session.dataset_label(dataset), "counters": counters,
                 "agent_meta": session.agent_meta(agent), "sampler_rng": sampler.rng.bit_generator.state,
                 "action_scaling": None if scaling is None else scaling.to_json(),
                 "config": OmegaConf.to_container(cfg, resolve=True)}
        save_checkpoint(run_dir, counters["env_steps"], session.checkpoint_tensors(agent), state, counter="env_step")

    total, eval_every = int(fcfg.env_steps), int(cfg.eval.every)
    last_eval: dict[str, Any] = {}
    if not resumed and eval_every > 0:
        last_eval = session.evaluate_and_log(agent, eval_env, cfg, run_dir, 0, logger, "finetune_env_step",
                                             action_scaling=scaling)
        print(f"before fine-tuning: eval success {last_eval['success_rate']:.2f}")
    bar = Progress(total, f"finetune {cfg.task.name} [{cfg.agent.variant}]", "step", initial=counters["env_steps"],
                   bar=bool(cfg.progress), every=cfg.get("progress_every"))
    if int((cfg.get("actors") or {}).get("count", 0)) >= 1:  # many actors, one learner: training/online_actors.py
        from calql_robot.training.online_actors import learn_from_actors

        last_eval = learn_from_actors(cfg, agent, sampler, online, store, counters, logger, save, bar, env_spec,
                                      action_dim, scaling, lambda s: session.evaluate_and_log(
                                          agent, eval_env, cfg, run_dir, s, logger, "finetune_env_step",
                                          action_scaling=scaling), device) or last_eval
    recorder = EpisodeRecorder()
    obs, _ = env.reset(seed=int(cfg.seed) + counters["episodes"])
    recorder.start(obs)
    last_save, t0, step0, metrics = counters["env_steps"], time.perf_counter(), counters["env_steps"], {}
    timer, acting_s, sampling = UpdateTimer(agent), 0.0, SequentialBatches(
        lambda: batch_to_torch(sampler.sample(int(fcfg.batch_size)), device), lambda: None)
    while counters["env_steps"] < total:
        acting_start = time.perf_counter()
        action = agent.act(obs, deterministic=False)
        obs, reward, terminated, truncated, info = env.step(to_env(action))  # recorded in the policy's units
        acting_s += time.perf_counter() - acting_start
        recorder.step(obs, action, reward, terminated, truncated, bool(info.get("success", False)))
        counters["env_steps"] += 1
        bar.update(1)
        for _ in range(int(fcfg.utd) if len(sampler) > 0 else 0):  # online-only: none before the 1st episode
            with timer:  # sampled after this step's transition: no prefetch here, the online buffer just grew
                metrics = agent.update(sampling.next())
            counters["updates"] += 1
        step = counters["env_steps"]
        if metrics and step % int(fcfg.log_every) == 0:
            done = step - step0
            logger.log("train", step, {**metrics, **timer.rates(sampling.wait_s),
                                       "env_steps_per_s": done / max(time.perf_counter() - t0, 1e-9),
                                       "acting_steps_per_s": done / max(acting_s, 1e-9)})
        if terminated or truncated or step >= total:
            episode = recorder.finish()
            online.add_episode(episode["observations"], episode["actions"], episode["rewards"], episode["terminals"])
            store.append(episode)
            counters["episodes"] += 1
            counters["successes"] += int(episode["success"])
            regret = counters["episodes"] - counters["successes"]
            logger.log("episode", step, {"return": float(np.sum(episode["rewards"])), "success": episode["success"],
                                         "length": len(episode["actions"]), "cumulative_regret": regret,
                                         "regret_rate": regret / counters["episodes"]})
            bar.set_postfix(ep=counters["episodes"], succ=f"{counters['successes'] / counters['episodes']:.2f}",
                            refresh=False)
            if step - last_save >= int(fcfg.save_every) or step >= total:
                save()
                last_save = step
            obs, _ = env.reset(seed=int(cfg.seed) + counters["episodes"])
            recorder.start(obs)
        if eval_every > 0 and (step % eval_every == 0 or step == total):
            last_eval = session.evaluate_and_log(agent, eval_env, cfg, run_dir, step, logger, "finetune_env_step",
                                                 action_scaling=scaling)
            bar.write(f"env step {step}: eval success {last_eval['success_rate']:.2f}")
    bar.close()
    if counters["env_steps"] > step0:
        done = counters["env_steps"] - step0
        print(f"env steps: {done / max(time.perf_counter() - t0, 1e-9):.1f}/s overall, "
              f"{done / max(acting_s, 1e-9):.1f}/s acting alone (policy + simulator); {timer.summary(sampling.wait_s)}")
    logger.close()
    env.close()
    eval_env.close()
    store.close()
    plot_run(run_dir, RunInfo.from_cfg(cfg, "finetune"))
    n_ep = max(counters["episodes"], 1)
    print(f"online episodes: {counters['episodes']}, success rate {counters['successes'] / n_ep:.2f}, "
          f"regret {(counters['episodes'] - counters['successes']) / n_ep:.3f}")
    print(f"checkpoint: {find_checkpoint(run_dir)}")
    print_run_dir(run_dir)
    return {**counters, **{k: v for k, v in last_eval.items() if k != "video"}}
