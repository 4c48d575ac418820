"""Where the config files are and what an app's config is made of: its own keys, its groups and their choices.

The YAML files ship inside the package as ``calql_robot/configs`` (package data of a wheel); in the checkout the
same package is the top-level ``configs/`` folder, mapped by ``package-dir`` in pyproject.toml. :func:`find_config_dir`
finds either. An app ``NAME`` reads ``configs/NAME.yaml``, whose defaults list names the config groups it uses
(``- task: pick_place``); the choices of a group are the ``.yaml`` files of ``configs/<group>/``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

PACKAGE_DIR = Path(__file__).resolve().parent
SKIPPED_KEYS = ("defaults", "hydra")  # keys of an app file that are not options


def find_config_dir() -> Path:
    """The folder holding ``pretrain.yaml`` and the group folders: ``calql_robot/configs`` of an installed package,
    else ``configs/`` beside the package in a checkout (the same files, mapped by ``package-dir``)."""
    for candidate in (PACKAGE_DIR / "configs", PACKAGE_DIR.parent / "configs"):
        if (candidate / "base.yaml").is_file():
            return candidate
    return PACKAGE_DIR / "configs"


@dataclass(frozen=True)
class GroupUse:
    """One entry of an app's defaults list: ``group`` with its default ``choice`` (None for ``task: null``)."""

    group: str
    choice: str | None
    root_key: str  # the top-level config key the group's files fill (``agent`` for the encoder group)


def group_choices(config_dir: Path, group: str) -> list[str]:
    """The options of ``group=``: the names of ``configs/<group>/*.yaml``, sorted."""
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def all_groups(config_dir: Path) -> list[str]:
    """Every config group: the sub-folders of the config folder that hold YAML files."""
    return sorted(p.name for p in config_dir.iterdir() if p.is_dir() and any(p.glob("*.yaml")))


def group_package(config_dir: Path, group: str) -> str:
    """The top-level key a group's files fill: from a ``# @package X`` line (``_global_``: the group's name)."""
    for path in sorted((config_dir / group).glob("*.yaml")):
        for line in path.read_text().splitlines()[:3]:
            if line.startswith("# @package "):
                package = line[len("# @package "):].strip()
                return group if package == "_global_" else package.split(".")[0]
    return group


def _defaults(config_dir: Path, config_name: str) -> list:
    loaded = OmegaConf.load(config_dir / f"{config_name}.yaml")
    items = loaded.get("defaults") if isinstance(loaded, DictConfig) else None
    return list(items) if isinstance(items, ListConfig) else []


def app_groups(config_dir: Path, config_name: str) -> list[GroupUse]:
    """The config groups ``configs/<config_name>.yaml`` uses, in its defaults-list order (``override`` entries of
    hydra's own groups and plain file names such as ``base`` are not groups)."""
    uses = []
    for item in _defaults(config_dir, config_name):
        if not isinstance(item, DictConfig):
            continue
        for key, choice in item.items():
            group = str(key)
            if group.startswith("override ") or group.startswith("hydra") or not (config_dir / group).is_dir():
                continue
            uses.append(GroupUse(group, None if choice is None else str(choice), group_package(config_dir, group)))
    return uses


def own_keys(config_dir: Path, config_name: str) -> list[str]:
    """The top-level option keys of ``configs/<config_name>.yaml`` (not ``defaults`` or ``hydra``), in file order."""
    loaded = OmegaConf.load(config_dir / f"{config_name}.yaml")
    return [str(k) for k in loaded.keys() if str(k) not in SKIPPED_KEYS] if isinstance(loaded, DictConfig) else []


def top_level_keys(config_dir: Path, config_name: str) -> list[str]:
    """The top-level keys an override may start with: the app's own keys, then its groups' keys."""
    keys = own_keys(config_dir, config_name)
    for use in app_groups(config_dir, config_name):
        for key in (use.group, use.root_key):
            if key not in keys:
                keys.append(key)
    return keys


def nearest_first(word: str, options: list[str]) -> list[str]:
    """``options`` sorted by similarity to ``word`` (difflib's ratio; the most similar first, ties by name)."""
    def score(option: str) -> float:
        return difflib.SequenceMatcher(None, word.lower(), option.lower()).ratio()

    return sorted(dict.fromkeys(options), key=lambda option: (-score(option), option))
