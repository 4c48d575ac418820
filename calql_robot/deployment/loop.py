"""The deployment loop: act on a (simulated or real) robot at its control rate while a learner fine-tunes beside it.

Crash safety: every finished episode is appended to ``<run_dir>/online.zarr`` before anything else happens, and the
store commits an episode only once it is complete, so a ``kill -9`` at any moment loses at most the episode in
progress. Checkpoints (networks, optimizers, counters, RNG) are written every ``save_every_episodes`` episodes; on
restart the loop reloads every stored episode, so data collected after the last checkpoint is kept and counted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from calql_robot.deployment.learner import BackgroundLearner, PolicySnapshot
from calql_robot.errors import UserError
from calql_robot.training import session
from calql_robot.training.checkpoint import find_checkpoint, restore_rng_state, save_checkpoint
from calql_robot.training.episodes import EpisodeRecorder, OnlineStore
from calql_robot.training.logger import MetricsLogger
from calql_robot.training.offline import load_offline_buffer
from calql_robot.training.replay import ReplayBuffer, RewardTransform


def _make_env(cfg: DictConfig) -> Any:
    from calql_robot.envs.robot.human import make_event_source
    from calql_robot.envs.robot.robot_env import make_robot_env

    dcfg = cfg.deploy
    events = make_event_source(str(dcfg.events.kind), OmegaConf.to_container(dcfg.events.script, resolve=True))
    return make_robot_env(cfg.robot, horizon=int(cfg.task.horizon), events=events,
                          reward_source=str(dcfg.reward_source),
                          reward_success=float(cfg.task.reward_success), reward_failure=float(cfg.task.reward_failure))


def run_deploy(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run ``cfg.deploy.episodes`` episodes on ``cfg.robot`` with online learning; returns the counters."""
    from calql_robot.agent import build_agent

    dcfg = cfg.deploy
    if find_checkpoint(run_dir) is None and not cfg.get("checkpoint"):
        raise UserError("deploy needs checkpoint=PATH (a pretrain or finetune run directory) for its first run")
    cfg, own_ckpt, tensors, state = session.continue_from_checkpoint(cfg, run_dir, cfg.get("checkpoint"))
    device = session.setup_torch(cfg)
    env = _make_env(cfg)
    obs_spec, action_dim = dict(env.obs_spec), int(env.action_space.shape[0])
    dataset = cfg.dataset or state.get("dataset")
    offline = None
    if dataset and float(dcfg.mixing_ratio) != 0:
        offline = load_offline_buffer(cfg, Path(dataset), obs_spec)[1]
    online = ReplayBuffer(obs_spec, action_dim, RewardTransform.from_task(cfg.task))
    agent = session.build_agent_for(cfg, obs_spec, action_dim, device, build_agent)
    session.restore_agent(agent, tensors, state)
    learner = BackgroundLearner(agent, offline, online, float(dcfg.mixing_ratio), int(dcfg.batch_size), device,
                                max_utd=dcfg.max_utd, min_online=int(dcfg.min_online), seed=int(cfg.seed),
                                publish_every_s=float(dcfg.sync_every_s))
    counters = {"episodes": 0, "env_steps": 0, "successes": 0, "overruns": 0, "safety_events": 0}
    if own_ckpt is not None:
        restore_rng_state(tensors, state["rng"])
        learner.sampler.rng.bit_generator.state = state["sampler_rng"]
        learner.updates = int(state["counters"].get("updates", 0))
        counters.update({k: v for k, v in state["counters"].items() if k in counters})
        print(f"resuming deployment from {own_ckpt} at episode {counters['episodes']}")
    store = OnlineStore(run_dir / "online.zarr", obs_spec, env.action_space, cfg.task, source_kind="deploy")
    store.load_into(online, counters)  # episodes stored after the last checkpoint are kept and counted once
    resumed = own_ckpt is not None or counters["episodes"] > 0
    logger = MetricsLogger(run_dir, resume_step=counters["episodes"] if resumed else None)

    def save() -> None:
        with learner.paused():
            state_out = {"phase": "deploy", "dataset": str(dataset) if dataset else None,
                         "counters": {**counters, "updates": learner.updates},
                         "agent_meta": session.agent_meta(agent),
                         "sampler_rng": learner.sampler.rng.bit_generator.state,
                         "config": OmegaConf.to_container(cfg, resolve=True)}
            save_checkpoint(run_dir, counters["episodes"], session.checkpoint_tensors(agent), state_out)

    policy = PolicySnapshot(agent, seed=int(cfg.seed))
    learner.start()
    bar = tqdm(total=int(dcfg.episodes), initial=counters["episodes"], desc=f"deploy {cfg.task.name}", unit="ep",
               dynamic_ncols=True, disable=not cfg.progress)
    recorder = EpisodeRecorder()
    try:
        while counters["episodes"] < int(dcfg.episodes) and not env.aborted:
            learner.sync(policy)
            obs, _ = env.reset(seed=int(cfg.seed) + counters["episodes"])
            recorder.start(obs)
            done, t_start, n_events = False, time.perf_counter(), 0
            while not done:
                if learner.error is not None:
                    raise RuntimeError(f"the learner thread failed: {learner.error!r}") from learner.error
                if len(recorder) % max(int(dcfg.sync_every_steps), 1) == 0:
                    learner.sync(policy)
                action = policy.act(obs, deterministic=bool(dcfg.deterministic))
                obs, reward, terminated, truncated, info = env.step(action)
                recorder.step(obs, info["action_sent"], reward, terminated, truncated, bool(info["success"]))
                n_events += len(info["safety_events"])
                done = terminated or truncated
            if env.aborted and len(recorder) < int(cfg.task.horizon) and not recorder.terminals[-1]:
                print("aborted: the unfinished episode is not stored")
                break
            episode = recorder.finish()
            store.append(episode)  # the commit point: from here on a crash keeps this episode
            learner.add_episode(episode)
            counters["episodes"] += 1
            counters["env_steps"] += len(episode["actions"])
            counters["successes"] += int(episode["success"])
            counters["overruns"] += int(info["overruns"])
            counters["safety_events"] += n_events
            steps_per_s = len(episode["actions"]) / max(time.perf_counter() - t_start, 1e-9)
            logger.log("episode", counters["episodes"], {
                "return": float(np.sum(episode["rewards"])), "success": float(episode["success"]),
                "length": len(episode["actions"]), "success_rate": counters["successes"] / counters["episodes"],
                "overruns": int(info["overruns"]), "safety_events": n_events, "steps_per_s": steps_per_s,
                "learner_updates": learner.updates, "policy_version": policy.version})
            if learner.metrics:
                logger.log("train", counters["episodes"], learner.metrics)
            bar.update(1)
            bar.set_postfix(succ=f"{counters['successes'] / counters['episodes']:.2f}", upd=learner.updates,
                            overruns=counters["overruns"], safety=counters["safety_events"], refresh=False)
            if counters["episodes"] % int(dcfg.save_every_episodes) == 0:
                save()
    finally:
        learner.stop()
        env.close()
        bar.close()
    save()
    logger.close()
    store.close()
    n = max(counters["episodes"], 1)
    print(f"episodes: {counters['episodes']}, success rate {counters['successes'] / n:.2f}, learner updates "
          f"{learner.updates}, control-rate overruns {counters['overruns']}, safety events {counters['safety_events']}")
    print(f"online data: {run_dir / 'online.zarr'}; checkpoint: {find_checkpoint(run_dir)}")
    return {**counters, "updates": learner.updates}
