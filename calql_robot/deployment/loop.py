"""The deployment loop: act on a (simulated or real) robot at its control rate while a learner fine-tunes beside it.

Crash safety: every finished episode is appended to ``<run_dir>/online.zarr`` before anything else happens, and the
store commits an episode only once it is complete, so a ``kill -9`` at any moment loses at most the episode in
progress. Checkpoints (networks, optimizers, counters, RNG) are written every ``save_every_episodes`` episodes; on
restart the loop reloads every stored episode, so data collected after the last checkpoint is kept and counted.
Counters are episodes: ``episode.csv`` / ``train.csv`` rows and ``checkpoints/episode_<N>`` are indexed by the number
of finished episodes. At the end the learning curve and Q-calibration plots are written to ``plots/``; episodes whose
observations hold a camera image get an MP4 in ``videos/`` every ``deploy.video_every_episodes`` episodes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from calql_robot.datasets.action_scaling import ActionScaling, env_action_fn
from calql_robot.deployment.interventions import InterventionStats, build_device, demo_buffer_target
from calql_robot.deployment.learner import BackgroundLearner, PolicySnapshot
from calql_robot.deployment.reward_source import ClassifierReward, env_reward_source
from calql_robot.deployment.viewer import NullViewer, episode_q_values, episode_returns, make_viewer
from calql_robot.errors import UserError
from calql_robot.progress import Progress
from calql_robot.training import session
from calql_robot.training.checkpoint import find_checkpoint, restore_rng_state, save_checkpoint
from calql_robot.training.episodes import EpisodeRecorder, OnlineStore
from calql_robot.training.evaluate import write_mp4
from calql_robot.training.logger import MetricsLogger
from calql_robot.training.offline import load_offline_buffer
from calql_robot.training.plots import RunInfo, plot_run
from calql_robot.training.replay import ReplayBuffer, RewardTransform
from calql_robot.training.run_files import print_run_dir


def _make_env(cfg: DictConfig) -> Any:
    from calql_robot.envs.robot.human import make_event_source
    from calql_robot.envs.robot.robot_env import make_robot_env

    dcfg = cfg.deploy
    events = make_event_source(str(dcfg.events.kind), OmegaConf.to_container(dcfg.events.script, resolve=True))
    return make_robot_env(cfg.robot, horizon=int(cfg.task.horizon), events=events,
                          reward_source=env_reward_source(str(dcfg.reward_source)),
                          reward_success=float(cfg.task.reward_success), reward_failure=float(cfg.task.reward_failure))


def episode_video(episode: dict[str, Any], path: Path, fps: float) -> Path | None:
    """MP4 of the episode's first camera observation key (sorted by name); None when it has no camera image."""
    for key in sorted(episode["observations"]):
        frames = np.asarray(episode["observations"][key])
        if frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] in (3, 4):
            return write_mp4(list(frames), path, fps)
    return None


def policy_units(scaling: ActionScaling, sent: np.ndarray) -> np.ndarray:
    """The action the robot was sent, in the policy's units for the online data: ``scaling.to_policy``, clipped to
    [-1, 1] (a safety layer's hold command may lie outside the range the policy was trained on)."""
    return np.clip(scaling.to_policy(sent), -1.0, 1.0)


def _resume_line(store: Path, own_ckpt: Path | None, source: Any, at_checkpoint: dict[str, int],
                 counters: dict[str, int]) -> str:
    """What a restarted deploy took up: the episodes and steps of ``store`` and where the networks come from."""
    reloaded = f"{counters['episodes']} episodes / {counters['env_steps']} steps reloaded from {store}"
    if own_ckpt is None:
        start = find_checkpoint(source) if source else None
        start = start.resolve() if start is not None else source
        return (f"resuming deployment: {reloaded}; this run stopped before its first checkpoint, so the networks "
                f"start again from checkpoint={start} and learn from those episodes")
    later = counters["episodes"] - at_checkpoint["episodes"]
    return (f"resuming deployment: {reloaded} ({later} of them finished after checkpoint {own_ckpt.name}); networks, "
            f"optimizers and counters from {own_ckpt}")


def run_deploy(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run ``cfg.deploy.episodes`` episodes on ``cfg.robot`` with online learning; returns the counters."""
    from calql_robot.agent import build_agent
    from calql_robot.app import prepare_run_dir

    dcfg = cfg.deploy
    if find_checkpoint(run_dir) is None and not cfg.get("checkpoint"):
        raise UserError("deploy needs checkpoint=PATH (a pretrain or finetune run directory) for its first run")
    cfg, own_ckpt, tensors, state = session.load_start_checkpoint(cfg, run_dir, cfg.get("checkpoint"))
    device = session.setup_torch(cfg)
    classifier_reward = ClassifierReward.from_cfg(cfg, device)  # None unless reward_source=classifier(_human)
    env = _make_env(cfg)
    env.intervention = build_device(cfg, env)  # the policy acts alone with kind=none
    obs_spec, action_dim = dict(env.obs_spec), int(env.action_space.shape[0])
    if classifier_reward is not None:
        classifier_reward.check_obs_spec(obs_spec, str(OmegaConf.select(cfg, "robot.name", default="?")))
        print(classifier_reward.describe())
        classifier_reward.attach(env)  # classifier_human: the confirmation wait reads the env's events
    dataset = cfg.dataset or state.get("dataset")
    offline = None
    if dataset and float(dcfg.mixing_ratio) != 0:
        offline = load_offline_buffer(cfg, session.dataset_location(dataset), obs_spec)[1]
    online = ReplayBuffer(obs_spec, action_dim, RewardTransform.from_task(cfg.task))
    demo = demo_buffer_target(cfg, offline)  # the offline buffer when intervention steps also go there
    scaling = ActionScaling.from_checkpoint_state(state, "the deployed checkpoint")  # policy units <-> robot units
    if scaling is not None:
        scaling.check_dim(action_dim, f"robot '{OmegaConf.select(cfg, 'robot.name', default='?')}'")
        print(scaling.describe())
    to_env = env_action_fn(scaling)
    agent = session.build_agent_for(cfg, obs_spec, action_dim, device, build_agent, batch_size=int(dcfg.batch_size))
    session.restore_agent(agent, tensors, state)
    learner = BackgroundLearner(agent, offline, online, float(dcfg.mixing_ratio), int(dcfg.batch_size), device,
                                max_utd=dcfg.max_utd, min_online=int(dcfg.min_online), seed=int(cfg.seed),
                                publish_every_s=float(dcfg.sync_every_s), demo_buffer=demo)
    catch_up = bool(dcfg.get("learner_catch_up", False))
    if catch_up and dcfg.max_utd is None:
        raise UserError("deploy.learner_catch_up=true waits for deploy.max_utd updates per online transition at "
                        "each reset; set deploy.max_utd to a number (it is null)")
    stats = InterventionStats()
    counters = {"episodes": 0, "env_steps": 0, "successes": 0, "overruns": 0, "safety_events": 0}
    if own_ckpt is not None:
        restore_rng_state(tensors, state["rng"])
        learner.sampler.rng.bit_generator.state = state["sampler_rng"]
        learner.updates = int(state["counters"].get("updates", 0))
        counters.update({k: v for k, v in state["counters"].items() if k in counters})
        stats.restore(state.get("interventions"))
        print(f"resuming deployment from {own_ckpt} at episode {counters['episodes']}")
    viewer = make_viewer(str(dcfg.get("viewer", "none")), dcfg.get("viewer_save"))  # refused before the run dir
    prepare_run_dir(cfg)  # with the agent actually used; checkpoint, robot and data were checked before it is made
    store = OnlineStore(run_dir / "online.zarr", obs_spec, env.action_space, cfg.task, source_kind="deploy",
                        action_scaling=None if scaling is None else scaling.to_json(),
                        step_extensions=("intervention",))
    at_checkpoint = dict(counters)
    for late in store.load_into(online, counters, demo):  # episodes stored after the last checkpoint: kept and
        stats.episode(late)                                 # counted once
    resumed = own_ckpt is not None or counters["episodes"] > 0
    if resumed:
        print(_resume_line(store.path, own_ckpt, cfg.get("checkpoint"), at_checkpoint, counters))
    logger = MetricsLogger(run_dir, resume_step=counters["episodes"] if resumed else None, index="episode")

    def save() -> None:
        with learner.paused():
            state_out = {"phase": "deploy", "dataset": str(dataset) if dataset else None,
                         "counters": {**counters, "updates": learner.updates},
                         "agent_meta": session.agent_meta(agent),
                         "action_scaling": None if scaling is None else scaling.to_json(),
                         "sampler_rng": learner.sampler.rng.bit_generator.state,
                         "interventions": stats.state(),
                         "config": OmegaConf.to_container(cfg, resolve=True)}
            save_checkpoint(run_dir, counters["episodes"], session.checkpoint_tensors(agent), state_out,
                            counter="episode")

    video_fps = float(OmegaConf.select(cfg, "robot.safety.control_hz", default=None)
                      or OmegaConf.select(cfg, "robot.driver.control_freq", default=None) or 10.0)
    policy = PolicySnapshot(agent, seed=int(cfg.seed))
    learner.start()
    bar = Progress(int(dcfg.episodes), f"deploy {cfg.task.name}", "ep", initial=counters["episodes"],
                   bar=bool(cfg.progress), every=cfg.get("progress_every"))
    recorder = EpisodeRecorder()
    try:
        while counters["episodes"] < int(dcfg.episodes) and not env.aborted:
            if catch_up:
                learner.wait_caught_up()
                learner.publish()
            learner.sync(policy)
            obs, _ = env.reset(seed=int(cfg.seed) + counters["episodes"])
            recorder.start(obs)
            if classifier_reward is not None:
                classifier_reward.reset()
            viewer.episode_start(counters["episodes"])
            done, t_start, n_events = False, time.perf_counter(), 0
            while not done:
                if learner.error is not None:
                    raise RuntimeError(f"the learner thread failed: {learner.error!r}") from learner.error
                if len(recorder) % max(int(dcfg.sync_every_steps), 1) == 0:
                    learner.sync(policy)
                action = policy.act(obs, deterministic=bool(dcfg.deterministic))
                obs, reward, terminated, truncated, info = env.step(to_env(action))
                if classifier_reward is not None:
                    reward, terminated, truncated, info = classifier_reward.step(obs, reward, terminated, truncated,
                                                                                 info)
                sent = info["action_sent"] if scaling is None else policy_units(scaling, info["action_sent"])
                recorder.step(obs, sent, reward, terminated, truncated, bool(info["success"]), info["intervention"])
                viewer.step(len(recorder) - 1, obs, sent, action, info["intervention"], info["safety_events"], reward)
                n_events += len(info["safety_events"])
                done = terminated or truncated
            if env.aborted and len(recorder) < int(cfg.task.horizon) and not recorder.terminals[-1]:
                print("aborted: the unfinished episode is not stored")
                break
            episode = recorder.finish()
            store.append(episode)  # the commit point: from here on a crash keeps this episode
            learner.add_episode(episode)
            if not isinstance(viewer, NullViewer):  # Q of what was done against what it returned, on the timeline
                with learner.paused():
                    q_values = episode_q_values(agent, episode, device)
                viewer.episode_end(counters["episodes"], q_values, episode_returns(episode, online.transform),
                                   bool(episode["success"]), int(episode["interventions"].sum()))
            counters["episodes"] += 1
            video_every = int(dcfg.get("video_every_episodes", 0))
            if video_every > 0 and (counters["episodes"] == 1 or counters["episodes"] % video_every == 0):
                video = episode_video(episode, run_dir / "videos" / f"episode_{counters['episodes']:09d}.mp4",
                                      video_fps)
                if video is not None:
                    logger.video("episode/video", counters["episodes"], video)
            counters["env_steps"] += len(episode["actions"])
            counters["successes"] += int(episode["success"])
            counters["overruns"] += int(info["overruns"])
            counters["safety_events"] += n_events
            steps_per_s = len(episode["actions"]) / max(time.perf_counter() - t_start, 1e-9)
            logger.log("episode", counters["episodes"], {
                "return": float(np.sum(episode["rewards"])), "success": float(episode["success"]),
                "length": len(episode["actions"]), "success_rate": counters["successes"] / counters["episodes"],
                "overruns": int(info["overruns"]), "safety_events": n_events, "steps_per_s": steps_per_s,
                "learner_updates": learner.updates, "policy_version": policy.version, **stats.episode(episode),
                **(classifier_reward.episode_metrics() if classifier_reward is not None else {})})
            if learner.metrics:
                logger.log("train", counters["episodes"], learner.metrics)
            bar.update(1)
            bar.set_postfix(succ=f"{counters['successes'] / counters['episodes']:.2f}", upd=learner.updates,
                            overruns=counters["overruns"], safety=counters["safety_events"], refresh=False)
            if counters["episodes"] % int(dcfg.save_every_episodes) == 0:
                save()
    finally:
        learner.stop()
        viewer.close()
        env.close()
        bar.close()
    save()
    logger.close()
    store.close()
    plot_run(run_dir, RunInfo.from_cfg(cfg, "deploy"))
    n = max(counters["episodes"], 1)
    print(f"episodes: {counters['episodes']}, success rate {counters['successes'] / n:.2f}, learner updates "
          f"{learner.updates}, control-rate overruns {counters['overruns']}, safety events {counters['safety_events']}")
    print(f"checkpoint: {find_checkpoint(run_dir)}")
    print_run_dir(run_dir)
    return {**counters, "updates": learner.updates}
