"""Interventions during deploy: keyboard, gamepad, SpaceMouse, or a scripted intervener (see base.py).

:func:`make_intervention_device` builds the device ``deploy.intervention.kind`` names; the hardware ones import
their input library only then (the ``teleop`` extra), so a missing library or device is a clear message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from calql_robot.envs.robot.interface import ActionSpec
from calql_robot.envs.robot.teleop.base import (
    FirstEpisodes,
    InterventionDevice,
    NoIntervention,
    TeleopMapping,
)
from calql_robot.errors import UserError

KINDS = ("none", "keyboard", "gamepad", "spacemouse", "scripted")

__all__ = ["KINDS", "FirstEpisodes", "InterventionDevice", "NoIntervention", "TeleopMapping",
           "make_intervention_device"]


def make_intervention_device(cfg: Mapping[str, Any] | None, spec: ActionSpec, seed: int = 0,
                             key: str = "deploy.intervention") -> InterventionDevice:
    """The device of ``cfg.kind`` (``cfg`` is the ``deploy.intervention`` block), limited to the first
    ``cfg.episodes`` episodes when that is set."""
    cfg = dict(cfg or {})
    kind = cfg.get("kind", "none")
    if kind not in KINDS:
        raise UserError(f"{key}.kind is {kind!r}; expected one of {' | '.join(KINDS)}")
    episodes = cfg.get("episodes")
    if episodes is not None and (isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 0):
        raise UserError(f"{key}.episodes is {episodes!r}; expected null (every episode) or a whole number >= 0 "
                        "of first episodes in which the device may take over")
    device: InterventionDevice
    if kind == "none":
        return NoIntervention()
    if kind == "scripted":
        from calql_robot.envs.robot.teleop.scripted import ScriptedIntervener

        scripted = dict(cfg.get("scripted") or {})
        unknown = sorted(set(scripted) - {"takeover_after_steps", "lift_m", "action_noise"})
        if unknown:
            raise UserError(f"{key}.scripted has unknown keys {unknown}; expected takeover_after_steps, lift_m, "
                            "action_noise")
        device = ScriptedIntervener(seed=seed, **scripted)
    else:
        mapping = TeleopMapping.from_cfg(spec, cfg, key)
        if kind == "keyboard":
            from calql_robot.envs.robot.teleop.keyboard import KeyboardIntervention

            device = KeyboardIntervention(mapping)
        elif kind == "gamepad":
            from calql_robot.envs.robot.teleop.gamepad import GamepadIntervention

            device = GamepadIntervention(mapping, cfg.get("gamepad"))
        else:
            from calql_robot.envs.robot.teleop.spacemouse import SpaceMouseIntervention

            device = SpaceMouseIntervention(mapping, cfg.get("spacemouse"))
    return FirstEpisodes(device, episodes) if episodes is not None else device
