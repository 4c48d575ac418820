"""Per-domain rules that turn one Minari episode into calql_robot episodes (the task side of the Minari converter).

Each layout flattens observations exactly as the task env does (``calql_robot.envs.<domain>.flatten_*_obs``) and
applies the task's reward / termination convention (docs/tasks.md):

- ``antmaze``: state = achieved_goal | desired_goal | observation (31). Reward as stored (1 within 0.45 of the goal,
  else 0). Each step that reaches the goal becomes terminal and ends a segment; the following steps that start
  inside the goal region are dropped (the Minari data were recorded with ``continuing_task=True``,
  ``reset_target=False``: the ant lingers at the goal), and the episode goes on as a new segment once it leaves.
- ``kitchen``: state = observation (59). Reward = target subtasks completed so far, recomputed from the stored
  ``achieved_goal`` of each next observation (so it does not depend on whether the source stored per-step or
  cumulative counts); terminal when all are done, later steps dropped.
- ``adroit``: state = the flat observation. Binary reward from the stored ``infos["success"]`` (0 success,
  -1 otherwise), no terminal. As the Cal-QL authors did with their binary data, episodes that never succeed are
  dropped and each episode is cut after its last success (truncated there).
- ``generic``: any other env: Dict observations flattened in ``gymnasium.spaces.flatten`` order (sorted keys),
  rewards / terminations / truncations as stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from calql_robot.envs import adroit, antmaze, kitchen


class BadEpisode(Exception):
    """A source episode that cannot be converted (wrong lengths, NaN, missing fields)."""


@dataclass
class Converted:
    """Result for one source episode: segments to write, whether it succeeded, steps dropped by the task rule."""

    segments: list[dict[str, Any]] = field(default_factory=list)
    success: bool = False
    dropped_steps: int = 0
    drop_reason: str | None = None  # set when the whole episode is dropped by the task rule


def flatten_dict_obs(obs: Any) -> np.ndarray:
    """Batch of (possibly nested) Dict observations -> (N, D) float32, keys sorted (``gymnasium.spaces.flatten``)."""
    if isinstance(obs, dict):
        return np.concatenate([flatten_dict_obs(obs[k]) for k in sorted(obs)], axis=-1)
    arr = np.asarray(obs, dtype=np.float32)
    return arr.reshape(arr.shape[0], -1)


def split_segments(
    states: np.ndarray, actions: np.ndarray, rewards: np.ndarray, terminals: np.ndarray, truncations: np.ndarray,
    keep: np.ndarray,
) -> list[dict[str, Any]]:
    """Split one episode into runs of kept steps, also ending a run after each terminal step.

    ``states`` (N+1, D); the other arrays (N,). A run that ends because the next step is dropped (or the source
    episode ends without a flag) is marked truncated at its last step.
    """
    segments: list[dict[str, Any]] = []
    n = len(actions)
    t = 0
    while t < n:
        if not keep[t]:
            t += 1
            continue
        start = t
        while t < n and keep[t] and not terminals[t]:
            t += 1
        end = t + 1 if t < n and keep[t] else t  # include the terminal step itself
        term = terminals[start:end].copy()
        trunc = truncations[start:end].copy()
        if not term[-1]:
            trunc[-1] = True
        segments.append({
            "observations": {"state": states[start : end + 1]},
            "actions": actions[start:end], "rewards": rewards[start:end], "terminals": term, "truncations": trunc,
        })
        t = end
    return segments


def _common_arrays(episode: Any, states: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    actions = np.asarray(episode.actions, dtype=np.float32)
    rewards = np.asarray(episode.rewards, dtype=np.float32).reshape(-1)
    terms = np.asarray(episode.terminations, dtype=bool).reshape(-1)
    truncs = np.asarray(episode.truncations, dtype=bool).reshape(-1)
    n = len(rewards)
    if n < 1:
        raise BadEpisode("has no steps")
    if actions.ndim != 2 or len(actions) != n or len(terms) != n or len(truncs) != n:
        raise BadEpisode(
            f"has {len(actions)} actions, {n} rewards, {len(terms)} terminations, {len(truncs)} truncations"
        )
    if len(states) != n + 1:
        raise BadEpisode(f"has {len(states)} observations for {n} steps, expected {n + 1}")
    for name, arr in (("observations", states), ("actions", actions), ("rewards", rewards)):
        if not np.isfinite(arr).all():
            raise BadEpisode(f"{name} hold NaN or inf")
    return actions, rewards, terms, truncs


class Layout:
    """Generic layout; subclasses override ``state_dim`` checks and :meth:`convert`."""

    domain = "generic"
    state_dim: int | None = None
    control_freq = 10.0
    reward_success = 1.0
    reward_failure = 0.0
    rule = "rewards, terminations and truncations as stored; Dict observations flattened with sorted keys"

    def states(self, episode: Any) -> np.ndarray:
        return flatten_dict_obs(episode.observations)

    def convert(self, episode: Any) -> Converted:
        states = self.states(episode)
        actions, rewards, terms, truncs = _common_arrays(episode, states)
        keep = np.ones(len(actions), dtype=bool)
        success = bool((rewards >= self.reward_success).any())
        return Converted(split_segments(states, actions, rewards, terms, truncs, keep), success)


class AntMazeLayout(Layout):
    domain = "antmaze"
    state_dim = antmaze.antmaze_state_dim(True)
    control_freq = antmaze.CONTROL_FREQ
    rule = ("state = achieved_goal|desired_goal|observation; reward 1 within 0.45 of the goal (terminal), else 0; "
            "steps that start inside the goal region after reaching it are dropped")

    def states(self, episode: Any) -> np.ndarray:
        obs = episode.observations
        if not isinstance(obs, dict) or not {"achieved_goal", "desired_goal", "observation"} <= set(obs):
            raise BadEpisode("observations are not the AntMaze Dict (achieved_goal, desired_goal, observation)")
        return antmaze.flatten_antmaze_obs(obs, include_goal=True)

    def convert(self, episode: Any) -> Converted:
        states = self.states(episode)
        actions, rewards, terms, truncs = _common_arrays(episode, states)
        if not np.isin(rewards, (0.0, 1.0)).all():
            raise BadEpisode("rewards are not the sparse AntMaze 0/1 rewards")
        reached = rewards == 1.0
        keep = np.ones(len(actions), dtype=bool)
        keep[1:] = ~reached[:-1]  # a step whose start state is already at the goal
        terminals = reached | terms
        segments = split_segments(states, actions, rewards, terminals, truncs & ~reached, keep)
        return Converted(segments, bool(reached.any()), int((~keep).sum()))


class KitchenLayout(Layout):
    domain = "kitchen"
    state_dim = kitchen.STATE_DIM
    control_freq = kitchen.CONTROL_FREQ
    reward_failure = 0.0

    def __init__(self, tasks: list[str]):
        self.tasks = list(tasks)
        self.reward_success = float(len(self.tasks))
        self.rule = (f"state = observation (59); reward = subtasks of {self.tasks} completed so far, from the stored "
                     "achieved_goal; terminal when all are done, later steps dropped")

    def states(self, episode: Any) -> np.ndarray:
        obs = episode.observations
        if not isinstance(obs, dict) or "observation" not in obs or not isinstance(obs.get("achieved_goal"), dict):
            raise BadEpisode("observations are not the kitchen Dict (observation, achieved_goal {subtask: values})")
        return kitchen.flatten_kitchen_obs(obs)

    def convert(self, episode: Any) -> Converted:
        states = self.states(episode)
        actions, _stored, terms, truncs = _common_arrays(episode, states)
        achieved = episode.observations.get("achieved_goal", {})
        missing = [t for t in self.tasks if t not in achieved]
        if missing:
            raise BadEpisode(f"achieved_goal has no entries for the target subtasks {missing} (has {sorted(achieved)})")
        next_achieved = {t: np.asarray(achieved[t])[1:] for t in self.tasks}
        counts = kitchen.cumulative_completion_counts(next_achieved, self.tasks)
        all_done = counts >= len(self.tasks)
        keep = np.ones(len(actions), dtype=bool)
        if all_done.any():
            first = int(np.argmax(all_done))
            keep[first + 1 :] = False
        segments = split_segments(states, actions, counts, all_done | terms, truncs & ~all_done, keep)
        return Converted(segments, bool(all_done.any()), int((~keep).sum()))


class AdroitBinaryLayout(Layout):
    domain = "adroit"
    control_freq = adroit.CONTROL_FREQ
    reward_success = adroit.REWARD_SUCCESS
    reward_failure = adroit.REWARD_FAILURE
    rule = ("binary reward from infos['success'] (0 success, -1 otherwise), no terminal; episodes that never succeed "
            "dropped, each episode cut after its last success")

    def __init__(self, task: str):
        self.state_dim = adroit.ADROIT_TASKS[task][2]

    def states(self, episode: Any) -> np.ndarray:
        if isinstance(episode.observations, dict):
            raise BadEpisode("observations are a Dict; Adroit observations are flat vectors")
        return adroit.flatten_adroit_obs(episode.observations)

    def convert(self, episode: Any) -> Converted:
        states = self.states(episode)
        actions, _stored, _terms, truncs = _common_arrays(episode, states)
        n = len(actions)
        infos = episode.infos or {}
        if "success" not in infos:
            raise BadEpisode("records no infos['success'] (goal_achieved), which the binary reward needs")
        flags = np.asarray(infos["success"], dtype=bool).reshape(-1)
        if len(flags) == n + 1:  # Minari records the reset info too
            flags = flags[1:]
        if len(flags) != n:
            raise BadEpisode(f"infos['success'] has {len(flags)} entries for {n} steps")
        if not flags.any():
            return Converted([], False, n, drop_reason="never succeeds (binary Adroit rule)")
        last = int(np.nonzero(flags)[0][-1])
        keep = np.arange(n) <= last
        rewards = adroit.binary_reward(flags)
        segments = split_segments(states, actions, rewards, np.zeros(n, dtype=bool), truncs, keep)
        return Converted(segments, True, int((~keep).sum()))


def task_name_for(dataset_id: str | None) -> str | None:
    """Default task name for a D4RL Minari id: D4RL/antmaze/umaze-diverse-v1 -> antmaze_umaze_diverse,
    D4RL/kitchen/mixed-v2 -> kitchen_mixed, D4RL/pen/cloned-v2 -> adroit_pen_binary (any namespace); None for
    other ids."""
    parts = (dataset_id or "").split("/")
    if len(parts) != 3:
        return None
    flavour = parts[2].rsplit("-v", 1)[0].replace("-", "_")
    if parts[1] == "antmaze":
        return f"antmaze_{flavour}"
    if parts[1] == "kitchen":
        return f"kitchen_{flavour}"
    if parts[1] in adroit.ADROIT_TASKS:
        return f"adroit_{parts[1]}_binary"
    return None


def layout_for(task: str | None, env_id: str | None) -> Layout:
    """Pick the layout from the task name (antmaze_*, kitchen_*, adroit_*_binary) or else the recorded env id."""
    name = (task or "").lower()
    env = (env_id or "")
    if name.startswith("antmaze") or (not name and env.startswith("AntMaze")):
        return AntMazeLayout()
    if name.startswith("kitchen") or (not name and env.startswith("FrankaKitchen")):
        task_set = name.split("_", 1)[1] if "_" in name else "complete"
        if task_set not in kitchen.TASK_SETS:
            raise ValueError(f"kitchen task '{name}': expected kitchen_<{'|'.join(kitchen.TASK_SETS)}>")
        return KitchenLayout(kitchen.TASK_SETS[task_set])
    if name.startswith("adroit") or (not name and env.startswith("AdroitHand")):
        for short in adroit.ADROIT_TASKS:
            if short in name or short.capitalize() in env:
                return AdroitBinaryLayout(short)
        raise ValueError(f"adroit task '{name}': expected adroit_<{'|'.join(adroit.ADROIT_TASKS)}>_binary")
    return Layout()
