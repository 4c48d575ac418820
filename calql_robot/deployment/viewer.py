"""Optional live viewer of a deployment, in rerun (``pip install calql_robot[viewer]``, rerun-sdk 0.22.1,
the last release that accepts numpy 1).

``deploy.viewer=rerun`` streams every step to a rerun viewer window (``deploy.viewer_save=null``) or into a recording
file ``deploy.viewer_save=PATH.rrd`` (no window; open it later with ``rerun PATH.rrd``). The file is written as
``PATH.rrd.partial`` and renamed when the viewer closes, so a complete ``PATH.rrd`` is never half-written.

Timelines (each logged row carries all three):
  * ``env_step``: sequence, every step this viewer logged, counted across episodes (a continuous plot);
  * ``episode``: sequence, the episode number given to ``episode_start``;
  * ``step``: sequence, the step within the episode given to ``step``.

Entity paths:
  * ``camera/<key>``            Image, every observation key whose array is uint8 (H, W, 3)
  * ``obs/<key>``               Scalar batch, the elements of every other (low-dim) key (``log_low_dim``)
  * ``action/sent/<i>``         Scalar, the action sent to the robot (policy units), dimension i
  * ``action/policy/<i>``       Scalar, the policy's own action, dimension i
  * ``intervention``            Scalar 0/1, whether a human was driving at this step
  * ``reward``                  Scalar, the step's raw reward
  * ``events/intervention``     TextLog when an intervention starts or stops
  * ``events/safety``           TextLog (WARN) per safety event: ``[kind] message`` (``SafetyEvent.to_dict`` keys)
  * ``episode/q_executed``      Scalar, Q(s_t, a_t) of the executed actions, logged at episode end on the episode's
                                own ``env_step``/``step`` values, beside
  * ``episode/mc_return``       Scalar, the episode's Monte-Carlo return-to-go G_t at the same steps
  * ``episode/success``         Scalar 0/1 at the episode's last step
  * ``events/episode``          TextLog at the episode's last step: success and intervention steps
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calql_robot.datasets.mc_returns import episode_mc_returns
from calql_robot.errors import UserError

VIEWER_KINDS = ("none", "rerun")
INSTALL_HINT = "pip install 'calql_robot[viewer]' (or pip install rerun-sdk==0.22.1)"
Q_BATCH = 256  # observations per critic forward in episode_q_values


class DeployViewer:
    """What the deploy loop reports to a viewer; this base class does nothing (``deploy.viewer=none``)."""

    def episode_start(self, episode: int) -> None:
        """An episode begins; ``episode`` is its number (the count of episodes finished before it)."""

    def step(self, step: int, obs: Mapping[str, np.ndarray], action_sent: np.ndarray, policy_action: np.ndarray,
             intervention: bool, safety_events: list[dict], reward: float) -> None:
        """One step: ``step`` within the episode, the observation after it {key: (...)}, the action sent (A,) and the
        policy's action (A,) in policy units, whether a human intervened, the step's safety events (dicts with
        ``kind``, ``message``, ``time``) and its raw reward."""

    def episode_end(self, episode: int, q_values: np.ndarray, mc_returns: np.ndarray, success: bool,
                    intervention_steps: int) -> None:
        """The episode finished: ``q_values`` and ``mc_returns`` (N,) for its N steps (see ``episode_q_values``)."""

    def close(self) -> None:
        """Flush and release everything; safe to call more than once."""


class NullViewer(DeployViewer):
    """No viewer: every call is a no-op."""


def _import_rerun() -> Any:
    try:
        import rerun
    except ImportError as exc:
        raise UserError(f"deploy.viewer=rerun needs the rerun SDK, which is not installed ({exc}); install it with "
                        f"{INSTALL_HINT}, or set deploy.viewer=none") from exc
    return rerun


def _check_save_path(save_path: Any) -> Path:
    if not isinstance(save_path, str | os.PathLike) or not str(save_path).endswith(".rrd"):
        raise UserError(f"deploy.viewer_save is {save_path!r}; expected null (open a rerun viewer window) or a path "
                        f"ending in .rrd for a recording file")
    path = Path(save_path)
    if not path.parent.is_dir():
        raise UserError(f"deploy.viewer_save={save_path}: the folder {path.parent} does not exist; create it or "
                        f"choose a path in an existing folder")
    return path


class RerunViewer(DeployViewer):
    """Logs the deployment to a dedicated ``rerun.RecordingStream`` (never the global one)."""

    def __init__(self, save_path: str | os.PathLike | None, app_id: str = "calql_robot_deploy",
                 log_low_dim: bool = True):
        self.rr = _import_rerun()
        self.path = None if save_path is None else _check_save_path(save_path)
        self.partial = None if self.path is None else self.path.with_name(self.path.name + ".partial")
        self.log_low_dim = bool(log_low_dim)
        self.rec = self.rr.new_recording(app_id, recording_id=uuid.uuid4(), make_default=False,
                                         make_thread_default=False)
        if self.partial is not None:
            self.rec.save(self.partial)
        else:
            has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
            if sys.platform.startswith("linux") and not has_display:
                raise UserError("deploy.viewer=rerun with deploy.viewer_save=null opens a rerun viewer window, but "
                                "neither DISPLAY nor WAYLAND_DISPLAY is set (no display); set deploy.viewer_save="
                                "PATH.rrd to record to a file and open it later with `rerun PATH.rrd`")
            beside = Path(sys.executable).parent  # rerun's spawn looks up `rerun` on PATH: pip put it beside python
            path_dirs = os.environ.get("PATH", "").split(os.pathsep)
            if (beside / "rerun").exists() and str(beside) not in path_dirs:
                os.environ["PATH"] = os.pathsep.join([str(beside), *path_dirs])
            try:
                self.rec.spawn()
            except Exception as exc:  # no display or no viewer binary: say how to record instead
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(f"deploy.viewer=rerun could not open a rerun viewer window ({reason}); on a machine "
                                f"without a display set deploy.viewer_save=PATH.rrd to record to a file") from exc
        self.env_step = 0  # steps logged so far, over all episodes
        self.episode = 0
        self.episode_first_env_step = 0
        self.intervening = False
        self.closed = False

    def _at(self, env_step: int, step: int) -> None:
        self.rec.set_time_sequence("env_step", int(env_step))
        self.rec.set_time_sequence("episode", int(self.episode))
        self.rec.set_time_sequence("step", int(step))

    def episode_start(self, episode: int) -> None:
        self.episode, self.episode_first_env_step, self.intervening = int(episode), self.env_step, False

    def step(self, step: int, obs: Mapping[str, np.ndarray], action_sent: np.ndarray, policy_action: np.ndarray,
             intervention: bool, safety_events: list[dict], reward: float) -> None:
        rr, rec = self.rr, self.rec
        self._at(self.env_step, step)
        for key in sorted(obs):
            value = np.asarray(obs[key])
            if value.dtype == np.uint8 and value.ndim == 3 and value.shape[-1] == 3:
                rec.log(f"camera/{rr.escape_entity_path_part(key)}", rr.Image(value))
            elif self.log_low_dim and value.size and np.issubdtype(value.dtype, np.number):
                rec.log(f"obs/{rr.escape_entity_path_part(key)}", rr.Scalar(value.astype(np.float64).reshape(-1)))
        for name, action in (("sent", action_sent), ("policy", policy_action)):
            for i, a in enumerate(np.asarray(action, dtype=np.float64).reshape(-1)):
                rec.log(f"action/{name}/{i}", rr.Scalar(float(a)))
        rec.log("intervention", rr.Scalar(1.0 if intervention else 0.0))
        rec.log("reward", rr.Scalar(float(reward)))
        if bool(intervention) != self.intervening:
            self.intervening = bool(intervention)
            text = "intervention started" if self.intervening else "intervention stopped"
            rec.log("events/intervention", rr.TextLog(f"{text} at step {step}", level=rr.TextLogLevel.INFO))
        for event in safety_events:
            text = f"[{event.get('kind', '?')}] {event.get('message', event.get('detail', ''))}"
            rec.log("events/safety", rr.TextLog(text, level=rr.TextLogLevel.WARN))
        self.env_step += 1

    def episode_end(self, episode: int, q_values: np.ndarray, mc_returns: np.ndarray, success: bool,
                    intervention_steps: int) -> None:
        rr, rec = self.rr, self.rec
        q, g = np.asarray(q_values, dtype=np.float64).reshape(-1), np.asarray(mc_returns, dtype=np.float64).reshape(-1)
        if len(q) != len(g):
            raise ValueError(f"episode_end: q_values {q.shape} and mc_returns {g.shape} must both be (N,)")
        self.episode = int(episode)
        for t in range(len(q)):
            self._at(self.episode_first_env_step + t, t)
            rec.log("episode/q_executed", rr.Scalar(q[t]))
            rec.log("episode/mc_return", rr.Scalar(g[t]))
        last = max(len(q), 1) - 1
        self._at(self.episode_first_env_step + last, last)
        rec.log("episode/success", rr.Scalar(1.0 if success else 0.0))
        outcome = "success" if success else "failure"
        rec.log("events/episode", rr.TextLog(f"episode {episode} ended: {outcome}, {len(q)} steps, "
                                             f"{int(intervention_steps)} intervention steps",
                                             level=rr.TextLogLevel.INFO))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.rec.flush(blocking=True)
        except Exception as exc:  # e.g. the viewer window was closed: the deployment itself must not fail for it
            print(f"warning: the rerun viewer stopped receiving data ({str(exc).strip().splitlines()[0]})")
        self.rec.disconnect()  # closes the file sink: everything logged is on disk after this
        if self.partial is not None and self.partial.exists():
            os.replace(self.partial, self.path)


def make_viewer(kind: str, save_path: str | None, app_id: str = "calql_robot_deploy") -> DeployViewer:
    """The viewer for ``deploy.viewer`` (``none`` | ``rerun``) and ``deploy.viewer_save`` (null = a viewer window,
    or a ``.rrd`` path = a recording file). ``save_path`` is ignored for ``none``."""
    if not isinstance(kind, str) or kind not in VIEWER_KINDS:
        raise UserError(f"deploy.viewer is {kind!r}; expected one of {'|'.join(VIEWER_KINDS)}")
    if kind == "none":
        return NullViewer()
    return RerunViewer(save_path, app_id=app_id)


def episode_returns(episode: Mapping[str, Any], transform: Any) -> np.ndarray:
    """MC return-to-go (N,) float32 of a finished episode's raw ``rewards`` (N,), computed exactly as the online
    buffer does (``ReplayBuffer.add_episode``): ``transform`` is the run's ``training.replay.RewardTransform``."""
    return episode_mc_returns(np.asarray(episode["rewards"], dtype=np.float32), transform.gamma,
                              reward_scale=transform.scale, reward_bias=transform.bias,
                              sparse_failure_reward=transform.transformed_failure)


@torch.no_grad()
def episode_q_values(agent: Any, episode: Mapping[str, Any], device: Any) -> np.ndarray:
    """Q(s_t, a_t) (N,) float32 of the executed actions of one episode, as ``q_data_mean`` in ``train.csv`` (the
    Q-calibration plot) measures it: the live critics' mean over the ensemble, without augmentation.

    ``episode``: ``observations`` {key: (N+1, ...)}, ``actions`` (N, A) in policy units. Call it with the background
    learner paused (``learner.paused()``): it reads the networks the learner updates.
    """
    actions = np.asarray(episode["actions"], dtype=np.float32)
    n = len(actions)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    encoder, critic = agent.encoder, agent.critic
    was_training = encoder.training
    encoder.eval()
    try:
        out = []
        for start in range(0, n, Q_BATCH):
            stop = min(start + Q_BATCH, n)
            obs = {k: torch.as_tensor(np.asarray(episode["observations"][k][start:stop]), device=device)
                   for k in agent.obs_spec}
            action = torch.as_tensor(actions[start:stop], device=device)
            q = critic(encoder(obs), action.unsqueeze(0))  # (C, 1, B)
            out.append(q[:, 0].mean(dim=0).float().cpu().numpy())
    finally:
        encoder.train(was_training)
    return np.concatenate(out).astype(np.float32)
