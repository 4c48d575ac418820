"""ActionScaling: the per-dimension affine map between a source's action units and the policy's [-1, 1].

Real teleoperation actions are rarely in [-1, 1]: PushT's are pixel targets (0..512), an SO-100 arm's are joint
angles in degrees. ``python -m calql_robot.convert ... action_normalize=true`` stores every action as

    a_policy = 2 (a_env - low) / (high - low) - 1        (per dimension; low -> -1, high -> +1)

with the store's ``action_low`` / ``action_high`` set to -1 / +1, and records the map in the store attribute
``action_scaling = {"low": [...], "high": [...], "source": "data" | "action_bounds"}`` (``low`` / ``high`` in the
source's units: the data's per-dimension min/max, or the ``action_bounds`` given). Pre-training copies it into the
checkpoint's ``state.json`` (key ``action_scaling``), so evaluation, fine-tuning and deployment map the policy's
actions back with :meth:`ActionScaling.to_env` without the store. A store or checkpoint without the attribute has no
scaling (``None``): its actions already are the environment's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from calql_robot.errors import UserError

ATTR = "action_scaling"        # the store attribute and the checkpoint state.json key
SOURCES = ("data", "action_bounds")
_MIN_RANGE = 1e-6              # a dimension whose data range is narrower than this is widened to +-1 around it


@dataclass(frozen=True, eq=False)
class ActionScaling:
    """Maps env actions in [low, high] (per dimension) to policy actions in [-1, 1] and back."""

    low: np.ndarray   # (A,) float64: the env action that maps to -1
    high: np.ndarray  # (A,) float64: the env action that maps to +1
    source: str = "action_bounds"

    # ------------------------------------------------------------------------------------------------ constructors
    @classmethod
    def from_bounds(cls, low: Any, high: Any, source: str = "action_bounds", where: str = "action scaling"
                    ) -> ActionScaling:
        """From (A,) bounds in env units; UserError naming ``where`` unless finite, equally long and low < high."""
        try:
            lo = np.asarray(low, dtype=np.float64).reshape(-1)
            hi = np.asarray(high, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise UserError(f"{where}: low / high must be lists of numbers, got {low!r} / {high!r}") from None
        if lo.size == 0 or lo.shape != hi.shape or not np.isfinite(lo).all() or not np.isfinite(hi).all():
            raise UserError(f"{where}: low {lo.tolist()} / high {hi.tolist()} must be equally long non-empty lists "
                            "of finite numbers (one per action dimension)")
        if not (lo < hi).all():
            raise UserError(f"{where}: low {lo.tolist()} must be below high {hi.tolist()} in every dimension")
        if source not in SOURCES:
            raise UserError(f"{where}: source is {source!r}; expected one of {list(SOURCES)}")
        return cls(lo, hi, source)

    @classmethod
    def from_data(cls, minimum: Any, maximum: Any) -> ActionScaling:
        """From the per-dimension min/max of the actions; a constant dimension v gets [v - 1, v + 1] (maps to 0)."""
        lo = np.asarray(minimum, dtype=np.float64).reshape(-1).copy()
        hi = np.asarray(maximum, dtype=np.float64).reshape(-1).copy()
        narrow = (hi - lo) < _MIN_RANGE * np.maximum(1.0, np.abs(lo))
        mid = (lo + hi) / 2
        lo[narrow], hi[narrow] = mid[narrow] - 1.0, mid[narrow] + 1.0
        return cls.from_bounds(lo, hi, source="data", where="action range of the data")

    @classmethod
    def from_json(cls, value: Any, where: str = "action_scaling") -> ActionScaling | None:
        """Inverse of :meth:`to_json`; None for None (no scaling). A malformed value is a UserError naming ``where``."""
        if value is None:
            return None
        if not isinstance(value, Mapping) or not {"low", "high"} <= set(value):
            raise UserError(f"{where}: expected {{'low': [...], 'high': [...], 'source': 'data' | 'action_bounds'}} "
                            f"(written by convert action_normalize=true), got {value!r}")
        return cls.from_bounds(value["low"], value["high"], str(value.get("source", "action_bounds")), where)

    @classmethod
    def from_store_attrs(cls, attrs: Mapping[str, Any], where: str = "dataset") -> ActionScaling | None:
        """The scaling a store's attributes record (None when they record none).

        The store's own ``action_low`` / ``action_high`` must then be -1 / +1 with as many dimensions.
        """
        scaling = cls.from_json(attrs.get(ATTR), f"{where}: attribute {ATTR}")
        if scaling is None:
            return None
        low = np.asarray(attrs.get("action_low", []), dtype=np.float64).reshape(-1)
        high = np.asarray(attrs.get("action_high", []), dtype=np.float64).reshape(-1)
        if low.shape != scaling.low.shape or not np.allclose(low, -1.0) or not np.allclose(high, 1.0):
            raise UserError(f"{where}: attribute {ATTR} has {scaling.dim} dimensions and needs action_low = -1 and "
                            f"action_high = +1 in each (the stored actions are the policy's), got action_low "
                            f"{low.tolist()} / action_high {high.tolist()}")
        return scaling

    @classmethod
    def from_checkpoint_state(cls, state: Mapping[str, Any], where: str = "checkpoint") -> ActionScaling | None:
        """The scaling a checkpoint's ``state.json`` records (None for none, e.g. checkpoints older than it)."""
        return cls.from_json(state.get(ATTR), f"{where}: state.json {ATTR}")

    # ------------------------------------------------------------------------------------------------ the map
    @property
    def dim(self) -> int:
        return int(self.low.shape[0])

    def to_policy(self, action: Any) -> np.ndarray:
        """Env units -> policy units ([low, high] -> [-1, 1]); float32, any leading batch dims."""
        a = np.asarray(action, dtype=np.float64)
        self._check_dim(a)
        return (2.0 * (a - self.low) / (self.high - self.low) - 1.0).astype(np.float32)

    def to_env(self, action: Any) -> np.ndarray:
        """Policy units -> env units ([-1, 1] -> [low, high]); float32, any leading batch dims. Not clipped."""
        a = np.asarray(action, dtype=np.float64)
        self._check_dim(a)
        return (self.low + (a + 1.0) * 0.5 * (self.high - self.low)).astype(np.float32)

    def check_dim(self, dim: int, where: str) -> None:
        """UserError naming ``where`` unless the scaling has ``dim`` action dimensions."""
        if int(dim) != self.dim:
            raise UserError(f"{where}: the action scaling has {self.dim} dimensions (low {self.low.tolist()}) but "
                            f"the environment's actions have {dim}; the store or checkpoint belongs to another robot")

    def _check_dim(self, a: np.ndarray) -> None:
        if a.ndim == 0 or a.shape[-1] != self.dim:
            raise ValueError(f"action of shape {a.shape} does not end in the scaling's {self.dim} dimensions")

    # ------------------------------------------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """{"low": [...], "high": [...], "source": ...}: the store attribute / checkpoint entry."""
        return {"low": self.low.tolist(), "high": self.high.tolist(), "source": self.source}

    def describe(self) -> str:
        """One line for logs: where the bounds came from and what they are."""
        origin = "the data's range" if self.source == "data" else "action_bounds"
        return (f"actions normalised to [-1, 1] from {origin}: low {np.round(self.low, 4).tolist()}, "
                f"high {np.round(self.high, 4).tolist()}")


def env_action_fn(scaling: ActionScaling | None) -> Any:
    """``scaling.to_env``, or the identity for no scaling: what turns a policy action into the env's."""
    return scaling.to_env if scaling is not None else (lambda a: a)
