"""Shared plumbing for the hydra apps: where configs live, run directories, and user-facing errors.

Every app is written as::

    @calql_app("pretrain")
    def main(cfg: DictConfig) -> None: ...

    if __name__ == "__main__":
        main()

``calql_app`` wraps ``hydra.main`` with the project's config folder, turns :class:`UserError` into a one-paragraph
message on stderr with exit status 2, and never shows a traceback for bad input.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from calql_robot.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"


def _setup_process() -> None:
    """Environment defaults that must be set before MuJoCo or robosuite are imported."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")


def report_user_error(err: UserError) -> None:
    """Print ``err`` as one paragraph and exit with status 2."""
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def calql_app(config_name: str) -> Callable[[Callable[[DictConfig], None]], Callable[[], None]]:
    """Decorator: make ``fn(cfg)`` a hydra app reading ``configs/<config_name>.yaml``."""
    if not CONFIG_DIR.is_dir():
        raise RuntimeError(f"config folder {CONFIG_DIR} is missing; calql_robot must run from its checkout")

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
