"""Convert teleoperation logs and public datasets into the calql_robot zarr dataset format (docs/DESIGN.md).

    python -m calql_robot.convert source=robomimic input=demo.hdf5 output=data/lift.zarr
    python -m calql_robot.convert --help        # every option, with comments

``source=S`` picks ``calql_robot.datasets.converters.<S>``, whose ``convert(cfg) -> dict`` does the work and returns
a summary (episodes, transitions, success rate, dropped episodes), printed at the end. See docs/converters.md.
"""

from __future__ import annotations

import importlib

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from calql_robot.app import CONFIG_DIR, calql_app
from calql_robot.errors import UserError

SOURCES = ("robomimic", "lerobot", "minari", "diffusion_policy", "raw")


def run_conversion(cfg: DictConfig) -> dict:
    """Dispatch ``cfg.source`` to its converter module and return the converter's summary dict."""
    if OmegaConf.is_missing(cfg, "source"):
        raise UserError(f"source=S is required; one of {list(SOURCES)}")
    source = str(cfg.source)
    if source not in SOURCES:
        raise UserError(f"source={source!r} is not known; expected one of {list(SOURCES)}")
    for key in ("input", "output"):
        if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
            raise UserError(f"{key}=PATH is required (e.g. python -m calql_robot.convert source={source} "
                            f"input=demos.hdf5 output=data/demos.zarr)")
    from calql_robot.datasets.staging import check_output_apart_from_input

    check_output_apart_from_input(str(cfg.output), str(cfg.input))  # before anything touches the disk
    from calql_robot.datasets.converters.options import check_convert_config

    check_convert_config(cfg)  # every option (control_freq, output=., ...) before any source is read or written
    task = cfg.get("task")
    with open_dict(cfg):  # task=NAME loads configs/task/NAME.yaml; converters take its name (or None)
        cfg.task = task.get("name") if isinstance(task, DictConfig) else task
    module = importlib.import_module(f"calql_robot.datasets.converters.{source}")
    summary = module.convert(cfg)
    if not isinstance(summary, dict):
        raise RuntimeError(f"converter {source} returned {type(summary).__name__}, expected a summary dict")
    summary.setdefault("output", str(cfg.output))
    return summary


def load_config(overrides: list[str]) -> DictConfig:
    """Compose ``configs/convert.yaml`` with command-line style ``overrides`` (for scripts and tests)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="convert", overrides=list(overrides))


@calql_app("convert")
def main(cfg: DictConfig) -> None:
    """Hydra entry point: convert and print the closing summary."""
    from calql_robot.datasets.converters.writing import format_summary

    print(format_summary(run_conversion(cfg)))


if __name__ == "__main__":
    main()
