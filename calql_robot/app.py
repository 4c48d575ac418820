"""Shared plumbing for the hydra apps: where configs live, run directories, and user-facing errors.

Every app is written as::

    @calql_app("pretrain")
    def main(cfg: DictConfig) -> None: ...

    if __name__ == "__main__":
        main()

``calql_app`` wraps ``hydra.main`` with the project's config folder, turns :class:`UserError` into a one-paragraph
message on stderr with exit status 2, and never shows a traceback for bad input. Before hydra runs, ``--help`` prints
the app's options written from its config files (:mod:`calql_robot.app_help`) and the command line's keys and group
choices are checked against the app's config (:mod:`calql_robot.app_errors`).

The config files are package data (``calql_robot/configs`` in a wheel, the top-level ``configs/`` folder in the
checkout): :data:`CONFIG_DIR` is where they are on disk, wherever the package runs from.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from calql_robot.config_layout import find_config_dir
from calql_robot.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout (when running from one)
CONFIG_DIR = find_config_dir()


def _setup_process() -> None:
    """Environment defaults that must be set before MuJoCo or robosuite are imported."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")


def report_user_error(err: UserError) -> None:
    """Print ``err`` as one paragraph and exit with status 2."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def before_hydra(config_name: str, args: list[str]) -> None:
    """``--help``: print the app's help and exit 0; else refuse unknown keys and choices in ``args`` (exit 2)."""
    from calql_robot.app_errors import HELP_FLAGS, check_overrides

    if any(arg in HELP_FLAGS for arg in args):
        from calql_robot.app_help import format_help, help_config

        print(format_help(CONFIG_DIR, config_name, help_config(CONFIG_DIR, config_name, args)))
        sys.exit(0)
    try:
        check_overrides(CONFIG_DIR, config_name, args)
    except UserError as err:
        report_user_error(err)


def calql_app(config_name: str) -> Callable[[Callable[[DictConfig], None]], Callable[[], None]]:
    """Decorator: make ``fn(cfg)`` a hydra app reading ``configs/<config_name>.yaml``."""
    if not (CONFIG_DIR / f"{config_name}.yaml").is_file():
        raise RuntimeError(f"config file {CONFIG_DIR / (config_name + '.yaml')} is missing: the calql_robot package "
                           "was installed without its configs package data; reinstall it (pip install .)")

    def decorate(fn: Callable[[DictConfig], None]) -> Callable[[], None]:
        @functools.wraps(fn)
        def task(cfg: DictConfig) -> None:
            try:
                fn(cfg)
            except UserError as err:
                report_user_error(err)
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                sys.exit(130)

        hydra_main = hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(task)

        @functools.wraps(fn)
        def main() -> None:
            _setup_process()
            before_hydra(config_name, sys.argv[1:])
            hydra_main()

        return main

    return decorate


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Create ``cfg.run_dir``, save the resolved config there and print where the run writes."""
    run_dir = Path(cfg.run_dir).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    print(f"run directory: {run_dir}")
    return run_dir
