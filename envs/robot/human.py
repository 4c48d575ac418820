"""Human-in-the-loop events: success / failure labels, reset done, pause / resume, abort, e-stop.

Two sources produce the same :class:`HumanEvent` objects, so a deploy loop never knows which one it has:

* :class:`TerminalEvents`: single keys read from the terminal by a background thread (no Enter needed on a tty;
  from a pipe, every character of a line counts). Keys::

      s  success label (ends the episode as a success)     f  failure label (ends the episode as a failure)
      r  reset done (the scene is set up for the next episode)
      p  pause / resume (the robot is stopped while paused)  q  abort the run
      space  e-stop (latches; the robot refuses to move)     c  clear the e-stop

* :class:`ScriptedEvents`: the same events from a config list, for unattended runs and tests::

      events:
        - {step: reset, event: reset_done}             # every episode: confirm the reset at once
        - {episode: 0, step: 12, event: success}       # label step 12 of episode 0 a success
        - {episode: 1, step: 3, event: pause, duration_s: 0.5}   # pause 0.5 s, then resume
        - {episode: 2, step: 5, event: abort}

  ``episode`` omitted / null means every episode; ``step`` is the step index within the episode (the event is
  delivered when the loop polls before sending that step's action) or ``reset`` (delivered while resetting).
"""

from __future__ import annotations

import os
import queue
import select
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from calql_robot.errors import UserError

SUCCESS, FAILURE, RESET_DONE, PAUSE, ABORT, ESTOP, CLEAR_ESTOP = (
    "success", "failure", "reset_done", "pause", "abort", "estop", "clear_estop")
EVENT_KINDS = (SUCCESS, FAILURE, RESET_DONE, PAUSE, ABORT, ESTOP, CLEAR_ESTOP)
KEYMAP = {"s": SUCCESS, "f": FAILURE, "r": RESET_DONE, "p": PAUSE, "q": ABORT, " ": ESTOP, "c": CLEAR_ESTOP}
RESET_STEP = "reset"


@dataclass(frozen=True)
class HumanEvent:
    """One event: ``kind`` in EVENT_KINDS (``pause`` toggles pause / resume), ``source`` ("terminal" / "script")."""

    kind: str
    source: str
    time: float = field(default_factory=time.time)


class EventSource(ABC):
    """Where human events come from. ``poll`` never blocks."""

    @abstractmethod
    def poll(self, episode: int, step: int | str) -> list[HumanEvent]:
        """Events available now; ``episode`` / ``step`` (int or "reset") say where the loop is."""

    def close(self) -> None:  # noqa: B027  (optional hook: sources without resources need nothing)
        """Release the terminal / threads."""

    def __enter__(self) -> EventSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ScriptedEvents(EventSource):
    """Events from a list of ``{event, step, episode?, duration_s?}`` entries (see the module docstring)."""

    def __init__(self, script: Iterable[Mapping[str, Any]] | None = None, config_key: str = "events") -> None:
        self._entries: list[dict[str, Any]] = []
        for i, raw in enumerate(script or []):
            entry = dict(raw)
            kind, step = entry.get("event"), entry.get("step", RESET_STEP if entry.get("event") == RESET_DONE else None)
            if kind not in EVENT_KINDS:
                raise UserError(f"{config_key}[{i}].event is {kind!r}; expected one of {', '.join(EVENT_KINDS)}")
            if not (step == RESET_STEP or (isinstance(step, int) and step >= 0)):
                raise UserError(f"{config_key}[{i}].step is {step!r}; expected a step index >= 0 or 'reset'")
            episode = entry.get("episode")
            if episode is not None and (not isinstance(episode, int) or episode < 0):
                raise UserError(f"{config_key}[{i}].episode is {episode!r}; expected an episode index >= 0 or null")
            duration = float(entry.get("duration_s", 0.0) or 0.0)
            self._entries.append({"kind": kind, "step": step, "episode": episode, "duration_s": duration})
        self._fired: set[tuple[int, int]] = set()  # (entry index, episode)
        self._pending: list[tuple[float, str]] = []  # (release time, kind) for the resume after a scripted pause

    def poll(self, episode: int, step: int | str) -> list[HumanEvent]:
        now = time.monotonic()
        out = [HumanEvent(kind, "script") for release, kind in self._pending if release <= now]
        self._pending = [(release, kind) for release, kind in self._pending if release > now]
        for i, entry in enumerate(self._entries):
            if entry["step"] != step or entry["episode"] not in (None, episode) or (i, episode) in self._fired:
                continue
            self._fired.add((i, episode))
            out.append(HumanEvent(entry["kind"], "script"))
            if entry["kind"] == PAUSE and entry["duration_s"] > 0:
                self._pending.append((now + entry["duration_s"], PAUSE))
        return out


class TerminalEvents(EventSource):
    """Keys from ``stream`` (default stdin) read by a daemon thread; a tty is put in cbreak mode until close()."""

    def __init__(self, stream: IO[Any] | None = None, echo_help: bool = True) -> None:
        self._stream = stream if stream is not None else sys.stdin
        self._fd = self._stream.fileno()
        self._queue: queue.Queue[HumanEvent] = queue.Queue()
        self._closed = threading.Event()
        self._saved_tty: Any = None
        if os.isatty(self._fd):
            import termios
            import tty

            self._saved_tty = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        if echo_help:
            print("keys: s=success f=failure r=reset done p=pause/resume q=abort space=e-stop c=clear e-stop",
                  file=sys.stderr)
        self._thread = threading.Thread(target=self._read, name="hil-keys", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self._fd, 64)
            except OSError:
                return
            if not data:  # end of input
                return
            for char in data.decode(errors="ignore"):
                kind = KEYMAP.get(char if char == " " else char.lower())
                if kind is not None:
                    self._queue.put(HumanEvent(kind, "terminal"))

    def poll(self, episode: int, step: int | str) -> list[HumanEvent]:
        out: list[HumanEvent] = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=1.0)
        if self._saved_tty is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None


def make_event_source(kind: str = "script", script: Iterable[Mapping[str, Any]] | None = None) -> EventSource:
    """``kind="terminal"`` for keys on stdin, ``"script"`` for a config list (empty: no events)."""
    if kind == "terminal":
        return TerminalEvents()
    if kind == "script":
        return ScriptedEvents(script)
    raise UserError(f"events.source is {kind!r}; expected 'terminal' or 'script'")
