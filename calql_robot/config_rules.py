"""Typed rules for config values, checked before an app touches the disk.

An app lists its keys with a :class:`Rule` each (``{"pretrain.steps": whole(minimum=1), ...}``) and calls
:func:`check_keys` first: a value of the wrong type or out of range, a missing required key or an interpolation that
does not resolve is a :class:`~calql_robot.errors.ConfigError` naming the key, the value and what was expected, raised
before any run directory, ``config.yaml``, store or output exists. The per-app tables live next to their apps
(:mod:`calql_robot.training.config_check`, :mod:`calql_robot.datasets.converters.options`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from calql_robot.errors import ConfigError

ABSENT = object()


@dataclass(frozen=True)
class Rule:
    """What a valid value of one key is: ``accepts(value) -> bool`` and the words for it (``expected``)."""

    expected: str
    accepts: Callable[[Any], bool]
    optional: bool = False  # null (None) is accepted too

    def allows(self, value: Any) -> bool:
        """True if ``value`` (a plain python value) is valid for this rule."""
        if value is None:
            return self.optional
        try:
            return bool(self.accepts(value))
        except (TypeError, ValueError, OverflowError):
            return False


def is_whole(value: Any) -> bool:
    """An int (not a bool), or a finite float with an integral value (``1e5``)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value) and value.is_integer()


def is_number(value: Any) -> bool:
    """A finite int or float, not a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _num(value: float) -> str:
    """A bound as written: whole numbers in full (1048576), others in the shortest form (0.5)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _bounds_text(minimum: float | None, maximum: float | None, above: float | None) -> str:
    parts = []
    if above is not None:
        parts.append(f"> {_num(above)}")
    if minimum is not None:
        parts.append(f">= {_num(minimum)}")
    if maximum is not None:
        parts.append(f"<= {_num(maximum)}")
    return " and ".join(parts)


def _within(value: float, minimum: float | None, maximum: float | None, above: float | None) -> bool:
    return ((minimum is None or value >= minimum) and (maximum is None or value <= maximum)
            and (above is None or value > above))


def whole(minimum: int | None = None, maximum: int | None = 2**53, optional: bool = False) -> Rule:
    """A whole number in [minimum, maximum] (an integral float such as 1e5 counts)."""
    bounds = _bounds_text(minimum, maximum if maximum != 2**53 else None, None)
    return Rule(f"a whole number{' ' + bounds if bounds else ''}",
                lambda v: is_whole(v) and _within(int(v), minimum, maximum, None), optional)


def number(minimum: float | None = None, maximum: float | None = None, above: float | None = None,
           optional: bool = False) -> Rule:
    """A finite number in the given range (``above``: strictly greater than)."""
    bounds = _bounds_text(minimum, maximum, above)
    return Rule(f"a finite number{' ' + bounds if bounds else ''}",
                lambda v: is_number(v) and _within(float(v), minimum, maximum, above), optional)


def one_of(*choices: Any, optional: bool = False) -> Rule:
    """One of ``choices`` (compared by value and type, so ``true`` is not ``1``)."""
    return Rule(f"one of {list(choices)}",
                lambda v: any(type(v) is type(c) and v == c for c in choices), optional)


def flag() -> Rule:
    """true or false (a quoted 'false' is a string, which would read as true: refused)."""
    return Rule("true or false", lambda v: isinstance(v, bool))


def text(optional: bool = False) -> Rule:
    """A non-empty string."""
    return Rule("a non-empty string", lambda v: isinstance(v, str) and v.strip() != "", optional)


def path(optional: bool = False) -> Rule:
    """A file or folder path: a non-empty string (a bare number such as 2024 is taken as its digits)."""
    return Rule("a path (a non-empty string without NUL characters)",
                lambda v: (isinstance(v, str) and v.strip() != "" and "\x00" not in v)
                or (isinstance(v, int) and not isinstance(v, bool)), optional)


def matches(pattern: str, expected: str, optional: bool = False) -> Rule:
    """A string matching the regular expression ``pattern`` in full."""
    compiled = re.compile(pattern)
    return Rule(expected, lambda v: isinstance(v, str) and compiled.fullmatch(v) is not None, optional)


def plain_value(cfg: DictConfig, key: str) -> Any:
    """The resolved plain python value of dotted ``key`` in ``cfg``; :data:`ABSENT` if the key does not exist.

    A key set to ``???`` (required) is returned as the string ``"???"``; an interpolation that does not resolve is a
    ConfigError naming the key.
    """
    parent_key, _, leaf = key.rpartition(".")
    try:
        parent = OmegaConf.select(cfg, parent_key, default=ABSENT) if parent_key else cfg
    except OmegaConfBaseException as err:
        raise ConfigError(f"{parent_key} cannot be read ({_one_line(err)}); fix or remove that override") from None
    if parent is ABSENT or not isinstance(parent, DictConfig) or leaf not in parent.keys():
        return ABSENT
    if OmegaConf.is_missing(parent, leaf):  # ('leaf in parent' is False for a ??? value)
        return "???"
    try:
        node = parent[leaf]
        if isinstance(node, (DictConfig, ListConfig)):
            return OmegaConf.to_container(node, resolve=True)
        return node
    except OmegaConfBaseException as err:
        raise ConfigError(f"{key} cannot be resolved ({_one_line(err)}); give it a plain value") from None


def _one_line(err: Exception) -> str:
    """The first line of an omegaconf error (they append 'full_key: ...' lines)."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def check_value(key: str, value: Any, rule: Rule, where: str) -> None:
    """Raise ConfigError naming ``key`` unless ``value`` satisfies ``rule``; ``where`` says where the key is set."""
    if value is ABSENT or (isinstance(value, str) and value == "???"):
        if value is ABSENT and rule.optional:
            return
        raise ConfigError(f"{key} is required and not set: expected {rule.expected} (pass {key}=VALUE; {where})")
    if not rule.allows(value):
        raise ConfigError(f"{key}={_shown(value)} is not valid: expected {rule.expected} ({where})")


def check_keys(cfg: DictConfig, rules: Mapping[str, Rule], where: str) -> None:
    """Check every key of ``rules`` in ``cfg``; the first bad one is a ConfigError naming it."""
    for key, rule in rules.items():
        check_value(key, plain_value(cfg, key), rule, where)


def check_output_location(value: Any, key: str = "output") -> Path:
    """The resolved path of an output that a run may create or replace; refuses paths whose replacement would delete
    the working directory or one of its parents (``output=.``, ``..``, ``/``) or that have no name of their own."""
    raw = str(value).strip()
    name = Path(raw).expanduser().name
    resolved = Path(raw).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if name in ("", ".", "..") or resolved == cwd or resolved in cwd.parents or resolved == Path(resolved.anchor):
        raise ConfigError(f"{key}={raw!r} resolves to {resolved}, which is the working directory or a folder above it; "
                          f"an output there would replace that folder: pass a new path such as {key}=data/NAME.zarr")
    return resolved
