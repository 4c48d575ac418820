"""Watchdog: a thread that stops the robot when no command arrived for ``timeout_s``, or earlier at a per-command
stop deadline set by the workspace layer of a velocity-commanded robot (see :mod:`calql_robot.envs.robot.bounds`).

Re-exported by :mod:`calql_robot.envs.robot.safety`, where the layers are composed.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from calql_robot.envs.robot.interface import RobotInterface, RobotWrapper
from calql_robot.errors import UserError

MAX_WAIT_S = 60.0  # the thread re-checks its deadline at least this often


class Watchdog(RobotWrapper):
    """Stop the robot when no command arrived for ``timeout_s``; a background thread waits on the exact deadline.

    ``send_action_until(action, stop_by)`` also stops the robot at ``stop_by`` (a ``time.monotonic()`` time) if that
    comes first: the workspace layer of a velocity robot uses it to stop the robot before its velocity can carry the
    end effector past a box face. Such a stop is counted in ``workspace_stops`` and recorded as a
    ``workspace_stop`` SafetyEvent; a plain timeout is counted in ``trips`` and recorded as ``watchdog``.
    """

    def __init__(self, robot: RobotInterface, timeout_s: float) -> None:
        super().__init__(robot)
        if not np.isfinite(timeout_s) or timeout_s <= 0:
            raise UserError(f"watchdog_timeout_s must be > 0 seconds, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.trips = 0
        self.workspace_stops = 0
        self.last_trip_silence_s: float | None = None
        self._cond = threading.Condition()
        self._io = threading.RLock()  # serialises the robot calls of this thread and the watchdog thread
        self._deadline: float | None = None
        self._deadline_is_workspace = False
        self._last_command = 0.0
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def armed(self) -> bool:
        """True while the last command may still be moving the robot (a deadline is pending)."""
        with self._cond:
            return self._deadline is not None

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._closed = False
            self._thread = threading.Thread(target=self._run, name="robot-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        # Lock order everywhere: _io (robot calls) before _cond (deadline). The deadline is re-checked under both
        # locks, so a command that lands while this thread waits for _io is never stopped by a stale deadline.
        while True:
            with self._cond:
                if self._closed:
                    return
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(min(remaining, MAX_WAIT_S))  # huge waits overflow the lock's timeout
                    continue
                expired = self._deadline
            with self._io:
                with self._cond:
                    if self._closed or self._deadline != expired:
                        continue  # re-armed by a fresh command, disarmed, or closing
                    self._deadline = None
                    silence = time.monotonic() - self._last_command
                    for_workspace = self._deadline_is_workspace
                self.robot.stop()
            self._report(silence, for_workspace)

    def _report(self, silence: float, for_workspace: bool) -> None:
        if for_workspace:
            self.workspace_stops += 1
            self.record("workspace_stop", f"robot stopped {silence * 1000:.0f} ms after the last command: its "
                        "velocity would otherwise have carried the end effector to the workspace box face")
            return
        self.trips += 1
        self.last_trip_silence_s = silence
        self.record("watchdog", f"no command for {silence * 1000:.0f} ms (timeout "
                    f"{self.timeout_s * 1000:.0f} ms); robot stopped")

    def _arm(self, armed: bool, stop_by: float | None = None) -> None:
        """Caller holds ``_io``."""
        with self._cond:
            now = time.monotonic()
            self._last_command = now
            self._deadline = now + self.timeout_s if armed else None
            self._deadline_is_workspace = False
            if armed and stop_by is not None and stop_by < now + self.timeout_s:
                self._deadline = stop_by
                self._deadline_is_workspace = True
            self._cond.notify_all()

    def send_action(self, action: np.ndarray) -> np.ndarray:
        self._ensure_thread()
        with self._io:
            sent = self.robot.send_action(action)
            self._arm(True)
        return sent

    def send_action_until(self, action: np.ndarray, stop_by: float) -> np.ndarray:
        """Send ``action``; stop the robot at ``stop_by`` (``time.monotonic()``) or after ``timeout_s`` without a
        command, whichever comes first. A ``stop_by`` already past stops it at once."""
        self._ensure_thread()
        with self._io:
            sent = self.robot.send_action(action)
            self._arm(True, stop_by)
        return sent

    def stop(self) -> None:
        with self._io:
            self._arm(False)
            self.robot.stop()

    def home(self) -> dict[str, np.ndarray]:
        with self._io:
            self._arm(False)
            return self.robot.home()

    def get_observation(self) -> dict[str, np.ndarray]:
        with self._io:
            return self.robot.get_observation()

    def get_ee_position(self) -> np.ndarray:
        with self._io:
            return self.robot.get_ee_position()

    def disconnect(self) -> None:
        with self._cond:
            self._closed = True
            self._deadline = None
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        with self._io:
            self.robot.disconnect()
