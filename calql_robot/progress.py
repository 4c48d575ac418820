"""Progress reports that suit a terminal and a log file alike.

A tqdm bar is drawn only when it is wanted (``progress=true``) *and* stderr is a terminal. Otherwise (``progress=
false``, or output piped into a file or a cluster log) there is no bar, and one plain line goes to stdout, flushed,
every ``every`` units of work (default: every 10% of the total; ``every=0``: none), plus one when the total is
reached, with the rate, elapsed time, remaining time and the latest reported values::

    pretrain pointmaze_umaze [calql]: 300/3000 upd (10%), 97.1 upd/s, elapsed 3s, eta 28s, q=1.20 mc=1.31

Progress exposes tqdm's ``update``, ``set_postfix``, ``write`` and ``close``, so a loop written for tqdm works as is.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

DEFAULT_FRACTION = 0.1  # plain lines every 10% of the total unless told otherwise
T = TypeVar("T")


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stderr, where tqdm draws) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(callable(isatty) and isatty())
    except ValueError:  # a closed stream
        return False


def line_interval(total: int | None, every: int | None) -> int:
    """Units of work between plain lines: ``every`` if given (0: never), else 10% of ``total`` (at least 1)."""
    if every is not None:
        if int(every) < 0:
            raise ValueError(f"progress interval must be >= 0, got {every}")
        return int(every)
    if not total:
        return 0
    return max(1, math.ceil(DEFAULT_FRACTION * int(total)))


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 100:
        return f"{seconds:.0f}s"
    if seconds < 6000:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


def print_line(message: str) -> None:
    """Print one line without breaking a bar that may be drawn (tqdm.write), flushed."""
    tqdm.write(message)
    sys.stdout.flush()


class Progress:
    """A tqdm bar on a terminal, else periodic plain lines (see the module docstring)."""

    def __init__(self, total: int | None, desc: str, unit: str, *, initial: int = 0, bar: bool = True,
                 every: int | None = None, out: TextIO | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self._start = int(initial)
        self._out = out
        self._postfix: dict[str, Any] = {}
        self._t0 = time.perf_counter()
        self._closed = False
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True) \
            if bar and is_terminal() else None
        self.every = 0 if self.bar is not None else line_interval(total, every)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; a plain line when an interval boundary or the total is crossed."""
        before, self.n = self.n, self.n + int(n)
        if self.bar is not None:
            self.bar.update(n)
            return
        if not self.every:
            return
        crossed = self.n // self.every > before // self.every
        finished = self.total is not None and before < self.total <= self.n
        if crossed or finished:
            self._line()

    def set_postfix(self, refresh: bool = False, **values: Any) -> None:
        """Values shown after the bar / at the end of the next plain line (e.g. ``q=1.2``)."""
        self._postfix = dict(values)
        if self.bar is not None:
            self.bar.set_postfix(refresh=refresh, **values)

    def write(self, message: str) -> None:
        """Print a line (above the bar when one is drawn)."""
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, file=self._out or sys.stdout, flush=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def format_line(self) -> str:
        """The plain progress line for the current count."""
        elapsed = time.perf_counter() - self._t0
        rate = (self.n - self._start) / elapsed if elapsed > 0 else 0.0
        if self.total:
            text = f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            text = f"{self.desc}: {self.n} {self.unit}"
        text += f", {rate:.3g} {self.unit}/s, elapsed {_duration(elapsed)}"
        if self.total and rate > 0 and self.n < self.total:
            text += f", eta {_duration((self.total - self.n) / rate)}"
        if self._postfix:
            text += ", " + " ".join(f"{k}={v}" for k, v in self._postfix.items())
        return text

    def _line(self) -> None:
        print(self.format_line(), file=self._out or sys.stdout, flush=True)


def progress_iter(items: Iterable[T], desc: str, unit: str, total: int | None = None,
                  every: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a :class:`Progress` (bar on a terminal, else a plain line every 10%)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(total, desc, unit, every=every) as progress:
        for item in items:
            yield item
            progress.update(1)
