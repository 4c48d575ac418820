"""Compose an app's hydra config from Python, as ``python -m calql_robot.<app> key=value ...`` would.

Configs are always read from :data:`calql_robot.app.CONFIG_DIR` (looked up at call time). While a training function
runs, :class:`hydra.core.hydra_config.HydraConfig` holds the composed hydra node, as under ``hydra.main``, so code
that reads the command line's overrides from it (``agent.KEY=VALUE`` over a checkpoint's agent) behaves the same.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from omegaconf import DictConfig, open_dict
from omegaconf.errors import OmegaConfBaseException

from calql_robot.errors import ConfigError


def check_overrides(overrides: Sequence[str] | None, where: str) -> list[str]:
    """``overrides`` as a list of ``key=value`` strings; ConfigError naming ``where`` for anything else."""
    if overrides is None:
        return []
    if isinstance(overrides, str) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"{where}: overrides must be a list of 'key=value' strings as on the command line, e.g. "
                          f"['task=pointmaze_umaze', 'pretrain.steps=100'], got {overrides!r}")
    return list(overrides)


def compose_app_config(config_name: str, overrides: Sequence[str], with_hydra: bool = False) -> DictConfig:
    """``configs/<config_name>.yaml`` with ``overrides`` applied; bad overrides raise ConfigError naming them.

    A hydra already initialised by the caller (e.g. inside a hydra app) is restored afterwards.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from calql_robot import app
    from calql_robot.app_errors import check_overrides as check_keys_and_choices

    check_keys_and_choices(app.CONFIG_DIR, config_name, list(overrides))  # the apps' messages: valid keys, choices
    global_hydra = GlobalHydra.instance()
    saved = global_hydra.hydra if global_hydra.is_initialized() else None
    global_hydra.clear()
    try:
        with initialize_config_dir(config_dir=str(app.CONFIG_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=with_hydra)
    except (HydraException, OmegaConfBaseException) as err:
        text = " ".join(str(err).split())
        raise ConfigError(f"{config_name}: the overrides {list(overrides)} do not compose with {app.CONFIG_DIR}: "
                          f"{text}") from None
    finally:
        global_hydra.clear()
        if saved is not None:
            global_hydra.initialize(saved)


@contextmanager
def app_config(config_name: str, overrides: Sequence[str]) -> Iterator[DictConfig]:
    """The composed config of app ``config_name`` without its ``hydra`` node, with HydraConfig set meanwhile."""
    from hydra.core.hydra_config import HydraConfig

    full = compose_app_config(config_name, overrides, with_hydra=True)
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    hydra_config.set_config(full)
    cfg = copy.deepcopy(full)
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        yield cfg
    finally:
        hydra_config.cfg = previous
