"""The learner of ``finetune`` with ``actors.count >= 1``: episodes arrive from an actor pool, updates run here.

Order per received episode (the crash-safety rule): decode and check it, append it to ``online.zarr`` (the commit
point), then its row in ``online_actors.csv``, then the counters (env_steps, episodes, successes) and the replay
buffer. A learner killed at any point resumes from its last checkpoint plus ``OnlineStore.load_into``, which counts
the episodes stored after that checkpoint once, so the counters always equal the stored episodes and steps.

Update rule (never blocked by a slow actor): the learner owes ``finetune.utd`` updates per received transition
(``owed = utd * env_steps - updates``). While it owes updates it runs them in bursts of at most
:data:`UPDATE_BURST_S` seconds, polling the actors (without waiting) between bursts; when it owes none it waits for
an episode at most :data:`WAIT_S` seconds, then publishes weights / logs and waits again. It never updates ahead of
the data. When it owes more than ``actors.max_update_lag`` updates it stops reading episodes (they wait in the
pipes / Ray object store and the actors wait to send) until it is back under the cap: actors that outpace the
learner are slowed to its pace instead of piling up unlearned data. When the env-step budget is reached, episodes
still arriving are dropped, the owed updates are finished and the final checkpoint written, so
``updates == utd * env_steps`` at the end as in the single-process loop (env_steps may pass ``finetune.env_steps``
by less than one episode: episodes are never cut).

``online_actors.csv`` (beside ``online.zarr``): one row per stored episode: episode (its index in online.zarr),
actor, restarts, policy_version (the learner update count of the weights it acted with), env_seed, length, success.
Rows are written after the episode is committed; a row lost to a crash is written back as actor -1 on resume.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from calql_robot.deployment.actors import start_pool
from calql_robot.deployment.episode_wire import decode_episode, weights_frames
from calql_robot.deployment.learner import policy_weights
from calql_robot.errors import UserError
from calql_robot.training.replay import batch_to_torch
from calql_robot.training.update_timer import UpdateTimer

UPDATE_BURST_S = 0.05  # longest run of owed updates between two looks at the actors' pipes
WAIT_S = 0.05          # longest wait for an episode when no update is owed
PROVENANCE_FIELDS = ("episode", "actor", "restarts", "policy_version", "env_seed", "length", "success")


class Provenance:
    """``online_actors.csv``: which actor produced each episode of ``online.zarr`` (see the module docstring)."""

    def __init__(self, path: Path, n_stored: int):
        self.path = path
        rows: dict[int, dict[str, str]] = {}
        if path.is_file():
            with path.open(newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        index = int(row["episode"])
                        int(row["actor"])
                    except (KeyError, TypeError, ValueError):
                        continue  # a line cut by a crash
                    if 0 <= index < n_stored:
                        rows[index] = row
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, PROVENANCE_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for index in range(n_stored):
                writer.writerow(rows.get(index, {"episode": index, "actor": -1}))
        os.replace(tmp, path)
        self.file = path.open("a", newline="")
        self.writer = csv.DictWriter(self.file, PROVENANCE_FIELDS)

    def add(self, index: int, meta: dict[str, Any], length: int) -> None:
        self.writer.writerow({"episode": index, **{k: meta[k] for k in PROVENANCE_FIELDS[1:5]}, "length": length,
                              "success": int(meta["success"])})
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _spec_maker(cfg: DictConfig, env_spec: dict[str, Any], action_dim: int, scaling: Any, launch: int) -> Any:
    from calql_robot.training.evaluate import DEFAULT_EVAL_SEED

    base = {"cfg": OmegaConf.to_container(cfg, resolve=True), "obs_spec": env_spec, "action_dim": action_dim,
            "launch": launch, "action_scaling": None if scaling is None else scaling.to_json(),
            "eval_seeds": [int(cfg.eval.get("seed", DEFAULT_EVAL_SEED)), int(cfg.eval.episodes)]}

    def make_spec(actor_id: int, restarts: int) -> bytes:
        return json.dumps({**base, "actor_id": actor_id, "restarts": restarts}).encode()

    return make_spec


def learn_from_actors(cfg: DictConfig, agent: Any, sampler: Any, online: Any, store: Any, counters: dict[str, int],
                      logger: Any, save: Any, bar: Any, env_spec: dict[str, Any], action_dim: int, scaling: Any,
                      evaluate: Any, device: Any) -> dict[str, Any]:
    """Run the learner until ``finetune.env_steps`` steps were received; returns the last evaluation's metrics.

    ``save()`` writes a checkpoint of ``counters``; ``evaluate(step)`` evaluates and logs; the rest are
    ``run_finetune``'s objects. Prints its own end-of-run summary.
    """
    fcfg, count = cfg.finetune, int(cfg.actors.count)
    total, utd, batch_size = int(fcfg.env_steps), int(fcfg.utd), int(fcfg.batch_size)
    log_every, save_every, eval_every = int(fcfg.log_every), int(fcfg.save_every), int(cfg.eval.every)
    sync_every_s = float(cfg.actors.sync_every_s)
    max_lag = cfg.actors.get("max_update_lag", 1000)
    max_lag = float("inf") if max_lag is None else int(max_lag)
    run_dir = Path(store.path).parent
    provenance = Provenance(run_dir / "online_actors.csv", counters["episodes"])
    launch = counters["episodes"]
    step0, updates0, last_save = counters["env_steps"], counters["updates"], counters["env_steps"]
    next_log = (step0 // log_every + 1) * log_every
    eval_mark = step0 // eval_every if eval_every > 0 else 0
    per_actor, bad, last_eval, metrics = [0] * count, 0, {}, {}
    timer = UpdateTimer(agent)
    pool = start_pool(cfg, _spec_maker(cfg, env_spec, action_dim, scaling, launch),
                      weights_frames(policy_weights(agent), counters["updates"]))
    print(f"{count} {cfg.actors.backend} actor(s) started; weights published every {sync_every_s:g} s", flush=True)
    last_publish = time.perf_counter()
    t0, rate0 = None, (step0, updates0)  # rates are measured from the first received episode (actor start excluded)
    try:
        while True:
            owed = utd * counters["env_steps"] - counters["updates"] if len(sampler) > 0 else 0
            if counters["env_steps"] >= total and owed <= 0:
                break
            boundary = False
            taking = counters["env_steps"] < total and owed <= max_lag
            arrivals = pool.poll(0.0 if owed > 0 else WAIT_S) if taking else []
            for actor_id, frames in arrivals:
                if counters["env_steps"] >= total:
                    break  # the budget is spent: later episodes are dropped
                try:
                    meta, episode = decode_episode(frames, env_spec, action_dim)
                except UserError as err:
                    bad += 1
                    print(f"refused a message from actor {actor_id}: {err}", flush=True)
                    continue
                store.append(episode)  # the commit point: before the buffer and the counters
                provenance.add(counters["episodes"], meta, len(episode["actions"]))
                n = len(episode["actions"])
                counters["env_steps"] += n
                counters["episodes"] += 1
                counters["successes"] += int(episode["success"])
                online.add_episode(episode["observations"], episode["actions"], episode["rewards"],
                                   episode["terminals"])
                per_actor[actor_id] += 1
                bar.update(n)
                regret = counters["episodes"] - counters["successes"]
                logger.log("episode", counters["env_steps"], {
                    "return": float(np.sum(episode["rewards"])), "success": episode["success"], "length": n,
                    "cumulative_regret": regret, "regret_rate": regret / counters["episodes"], "actor": actor_id,
                    "policy_lag": counters["updates"] - meta["policy_version"]})
                boundary = True
                if t0 is None:
                    t0, rate0 = time.perf_counter(), (counters["env_steps"], counters["updates"])
            owed = utd * counters["env_steps"] - counters["updates"] if len(sampler) > 0 else 0
            burst_end = time.perf_counter() + UPDATE_BURST_S
            while owed > 0 and (time.perf_counter() < burst_end or counters["env_steps"] >= total):
                with timer:
                    metrics = agent.update(batch_to_torch(sampler.sample(batch_size), device))
                counters["updates"] += 1
                owed -= 1
            step, now = counters["env_steps"], time.perf_counter()
            if now - last_publish >= sync_every_s:
                pool.publish(weights_frames(policy_weights(agent), counters["updates"]))
                last_publish = now
            if metrics and step >= next_log and t0 is not None and now > t0:
                next_log = (step // log_every + 1) * log_every
                logger.log("train", step, {
                    **metrics, **timer.rates(0.0), "env_steps_per_s": (step - rate0[0]) / (now - t0),
                    "learner_updates_per_s": (counters["updates"] - rate0[1]) / (now - t0),
                    "update_lag": max(owed, 0), "actor_restarts": pool.total_restarts, "refused_messages": bad,
                    **{f"episodes_actor_{i}": c for i, c in enumerate(per_actor)}})
            if boundary:
                bar.set_postfix(ep=counters["episodes"], succ=f"{counters['successes'] / counters['episodes']:.2f}",
                                actors="/".join(str(c) for c in per_actor), refresh=False)
            final = step >= total and owed <= 0
            if (boundary or final) and (step - last_save >= save_every or final) and step > last_save:
                save()
                last_save = step
            if eval_every > 0 and ((step // eval_every > eval_mark) or final):
                eval_mark = step // eval_every
                last_eval = evaluate(step)
                bar.write(f"env step {step}: eval success {last_eval['success_rate']:.2f}")
    finally:
        pool.close()
        provenance.close()
    bar.close()
    wall = max(time.perf_counter() - (t0 or 0.0), 1e-9) if t0 is not None else float("inf")
    print(f"env steps: {(counters['env_steps'] - rate0[0]) / wall:.1f}/s received from {count} actor(s) after the "
          f"first episode; learner updates: {(counters['updates'] - rate0[1]) / wall:.1f}/s; {timer.summary(0.0)}")
    print(f"episodes per actor: {per_actor}; actor restarts: {pool.restarts}; refused messages: {bad}")
    return last_eval
