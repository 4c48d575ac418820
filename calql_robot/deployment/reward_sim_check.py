"""Does a reward classifier end pick_place episodes as the simulator's success check would? (issue 12, point 2)

    python -m calql_robot.deployment.reward_sim_check runs/reward_classifier/pick_place --episodes 100 \
        [--seed 50000] [--consecutive N] [--threshold P] [--output agreement.json]

Each episode is a new scene (env seed ``seed + i``) driven by the scripted pick-and-place controller with its
failure modes drawn at the dataset's mix (:mod:`calql_robot.envs.pick_place_scripted`), so about 40% succeed.
The episode runs as deployment with ``reward_source=classifier`` would: before every action the classifier's
:class:`~calql_robot.deployment.reward_classifier.RewardDetector` sees the camera frame, and the episode ends as a
success when it fires, or as a failure after ``horizon`` actions. Once the simulator's check passes the scene holds
still (as ``robot=sim`` does: commands are no longer executed), so the detector keeps seeing the success state.
An episode agrees when "ended by the classifier" equals "the simulator's check passed before the episode ended";
a classifier that fires before the check passes therefore disagrees even if the cube would have landed next step.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from calql_robot.deployment.reward_classifier import RewardDetector, load_reward_classifier
from calql_robot.errors import UserError


def run_episode(env: Any, detector: RewardDetector, mode: str, scene_seed: int, policy_seed: int, horizon: int,
                action_noise: float) -> dict[str, Any]:
    """One scripted episode judged by ``detector``; returns its outcome by classifier and by the simulator."""
    from calql_robot.envs.pick_place_scripted import ScriptedPickPlace

    obs, info = env.reset(seed=scene_seed)
    policy = ScriptedPickPlace(env, mode, np.random.default_rng(policy_seed), action_noise=action_noise)
    detector.reset()
    sim_step = 0 if info["success"] else None
    fired_step = None
    for step in range(horizon + 1):  # frames seen: the start and one after each action
        if detector.observe(obs):
            fired_step = step
            break
        if step == horizon:
            break
        if sim_step is None:  # after success the scene holds still
            obs, _, _, _, info = env.step(policy.act(obs["robot_state"]))
            if info["success"]:
                sim_step = step + 1
    by_classifier, by_sim = fired_step is not None, sim_step is not None
    return {"scene_seed": scene_seed, "mode": mode, "success_by_classifier": by_classifier,
            "success_by_sim": by_sim, "agree": by_classifier == by_sim, "classifier_step": fired_step,
            "sim_step": sim_step, "last_prob": detector.last_prob}


def run_sim_check(classifier_path: str, episodes: int = 100, seed: int = 50_000, horizon: int = 80,
                  consecutive: int | None = None, threshold: float | None = None, action_noise: float = 0.1,
                  device: str = "cpu") -> dict[str, Any]:
    """Agreement of the classifier's episode outcomes with the simulator's over ``episodes`` scripted episodes."""
    from calql_robot.envs.pick_place import make_pick_place_env
    from calql_robot.envs.pick_place_scripted import DEFAULT_MODE_PROBS, MODES

    classifier = load_reward_classifier(classifier_path, device)
    if classifier.cameras != ["agentview_rgb"]:
        raise UserError(f"reward classifier {classifier_path} reads {classifier.cameras}; the pick_place check "
                        "renders only agentview_rgb (train it with cameras=[agentview_rgb])")
    detector = RewardDetector.for_classifier(classifier, consecutive=consecutive, threshold=threshold)
    image_size = int(classifier.obs_spec["agentview_rgb"]["shape"][0])
    env = make_pick_place_env(image_size=image_size, horizon=horizon + 10, seed=seed)
    weights = np.array([DEFAULT_MODE_PROBS[mode] for mode in MODES])
    rng = np.random.default_rng(seed)
    rows, started = [], time.perf_counter()
    try:
        for index in range(int(episodes)):
            mode = MODES[int(rng.choice(len(MODES), p=weights / weights.sum()))]
            rows.append(run_episode(env, detector, mode, seed + index, int(rng.integers(2**31)), horizon,
                                    action_noise))
    finally:
        env.close()
    agree = sum(row["agree"] for row in rows)
    early = sum(row["success_by_classifier"] and not row["success_by_sim"] for row in rows)
    missed = sum(row["success_by_sim"] and not row["success_by_classifier"] for row in rows)
    delays = [row["classifier_step"] - row["sim_step"] for row in rows if row["agree"] and row["success_by_sim"]]
    return {"classifier": str(classifier_path), "episodes": len(rows), "agreement": agree / max(len(rows), 1),
            "successes_by_sim": sum(row["success_by_sim"] for row in rows),
            "successes_by_classifier": sum(row["success_by_classifier"] for row in rows),
            "false_successes": early, "missed_successes": missed,
            "mean_delay_steps": float(np.mean(delays)) if delays else None,
            "threshold": detector.threshold, "consecutive": detector.consecutive, "horizon": horizon, "seed": seed,
            "seconds": time.perf_counter() - started, "per_episode": rows}


def main(argv: list[str] | None = None) -> None:
    """Command line: print the agreement (and write it as JSON with ``--output``); bad input exits with status 2."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("classifier", help="output folder of train_reward_classifier")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=50_000, help="env seed of the first scene (then seed + i)")
    parser.add_argument("--horizon", type=int, default=80, help="actions per episode (pick_place: 80)")
    parser.add_argument("--consecutive", type=int, default=None, help="default: the classifier's own")
    parser.add_argument("--threshold", type=float, default=None, help="default: the classifier's own")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="JSON file for the summary and every episode")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    try:
        if args.episodes < 1 or args.horizon < 1:
            raise UserError(f"--episodes and --horizon must be >= 1, got {args.episodes} and {args.horizon}")
        result = run_sim_check(args.classifier, args.episodes, args.seed, args.horizon, args.consecutive,
                               args.threshold)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"{result['episodes']} episodes: outcome by classifier agrees with the simulator on "
          f"{result['agreement']:.3f} (successes: simulator {result['successes_by_sim']}, classifier "
          f"{result['successes_by_classifier']}; false successes {result['false_successes']}, missed "
          f"{result['missed_successes']}; mean delay {result['mean_delay_steps']} steps; threshold "
          f"{result['threshold']:g}, {result['consecutive']} frames in a row; {result['seconds']:.0f} s)")
    if args.output:
        out = Path(args.output)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(out)


if __name__ == "__main__":
    main()
