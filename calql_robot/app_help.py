"""``--help`` of every app, written from its config files: its options, their meaning, defaults and group choices.

:func:`format_help` composes the app's config (with the group choices given beside ``--help``, so
``pretrain task=pointmaze_umaze --help`` shows that task's values), then lists

* the app's own options: every key of ``configs/<app>.yaml`` with the comment beside or above it and its default;
  a default that a group file changes (a task's ``pretrain.steps``) is shown with the app file's own value beside;
* the config groups of its defaults list with their choices (``configs/<group>/*.yaml``) and the default choice;
* the keys of the groups that fill one block (``agent.*``, ``agent.encoder.*``, ``robot.*``) with their comments.

Task files set keys of several blocks (``@package _global_``), so only their choices are listed; blocks the app does
not read (a task's ``finetune:`` block in pretrain) never appear.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from calql_robot.config_comments import file_description, key_comments, key_order
from calql_robot.config_layout import GroupUse, app_groups, group_choices, own_keys

WIDTH = 118
NAME_COLUMN = 36
SCRIPT_NAMES = {"inspect_dataset": "calql-inspect", "robot_server": "calql-robot-server",
                "robot_keys": "calql-robot-keys"}


def script_name(config_name: str) -> str:
    """The console script of app ``config_name`` (``calql-pretrain``)."""
    return SCRIPT_NAMES.get(config_name, f"calql-{config_name.replace('_', '-')}")


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value if value.strip() == value and value != "" else repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        text = OmegaConf.to_yaml(OmegaConf.create(value), sort_keys=False).strip() if value else str(value)
        flat = " ".join(text.split())
        return flat if isinstance(value, dict) or not text.startswith("-") else str(value).replace("'", "")
    return str(value)


def _raw(cfg: DictConfig, key: str) -> Any:
    """The unresolved value of dotted ``key`` (interpolations shown as written); ``???`` for a required key."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node.keys():
            return "(not set)"
        if OmegaConf.is_missing(node, part):
            return "??? (required)"
        node = node._get_node(part)
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=False)
    return node._value()


def _option_line(name: str, default: str, comment: str) -> list[str]:
    head = f"  {name}={default}"
    if not comment:
        return [head]
    indent = " " * NAME_COLUMN
    if len(head) < NAME_COLUMN - 1:
        return textwrap.wrap(comment, WIDTH, initial_indent=head.ljust(NAME_COLUMN), subsequent_indent=indent)
    return [head, *textwrap.wrap(comment, WIDTH, initial_indent=indent, subsequent_indent=indent)]


def _leaf_keys(path: Path, prefix: str, skip: tuple[str, ...] = ()) -> list[tuple[str, str, bool]]:
    """(dotted key with ``prefix``, comment, is a block) for each key of the YAML file at ``path``."""
    comments = key_comments(path)
    order = [k for k in key_order(path) if not k.startswith("defaults") and k.split(".")[0] not in skip]
    blocks = {k.rsplit(".", 1)[0] for k in order if "." in k}
    return [(f"{prefix}{k}", comments.get(k, ""), k in blocks) for k in order]


def _options(cfg: DictConfig, config_dir: Path, config_name: str, uses: list[GroupUse]) -> list[str]:
    path = config_dir / f"{config_name}.yaml"
    own = OmegaConf.load(path)
    setters = [f"{u.group}={_group_choice(cfg, u)}" for u in uses
               if _is_global(config_dir / u.group / f"{_group_choice(cfg, u)}.yaml")]
    lines = [f"options (key=value; configs/{config_name}.yaml):"]
    keys = set(own_keys(config_dir, config_name))
    for key, comment, is_block in _leaf_keys(path, "", ("hydra",)):
        if key.split(".")[0] not in keys:
            continue
        if is_block:
            if comment:
                lines.extend(textwrap.wrap(f"{key}.*: {comment}", WIDTH, initial_indent="  ", subsequent_indent="    "))
            continue
        default = _shown(_raw(cfg, key))
        file_default = _shown(_raw(own, key))
        if default != file_default:
            default += f"  (set by {' '.join(setters) or 'a group file'}; configs/{config_name}.yaml: {file_default})"
        lines.extend(_option_line(key, default, comment))
    return lines


def _groups(cfg: DictConfig, config_dir: Path, config_name: str, uses: list[GroupUse]) -> list[str]:
    if not uses:
        return []
    comments = key_comments(config_dir / f"{config_name}.yaml")
    lines = ["", "config groups (group=option; the files of configs/<group>/):"]
    for use in uses:
        chosen = _group_choice(cfg, use)
        text = f"choices: {', '.join(group_choices(config_dir, use.group))}"
        if comments.get(f"defaults/{use.group}"):
            text += f". {comments[f'defaults/{use.group}']}"
        lines.extend(_option_line(use.group, chosen, text))
    return lines


def _group_choice(cfg: DictConfig, use: GroupUse) -> str:
    """The option of ``use.group`` the composed ``cfg`` was made with (hydra records it under hydra.runtime)."""
    choices = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    chosen = choices.get(use.group) if isinstance(choices, DictConfig) else None
    return str(chosen if chosen is not None else use.choice if use.choice is not None else "null")


def _group_files(config_dir: Path, group: str, choice: str) -> list[Path]:
    """The group file ``choice`` and the files of its own defaults list (``cql`` extends ``calql``), base first."""
    path = config_dir / group / f"{choice}.yaml"
    if not path.is_file():
        return []
    files = [path]
    loaded = OmegaConf.load(path)
    for item in loaded.get("defaults", []) if isinstance(loaded, DictConfig) else []:
        if isinstance(item, str) and item != "_self_":
            files = [*_group_files(config_dir, group, item), *files]
    return files


def _block_options(cfg: DictConfig, config_dir: Path, use: GroupUse, choice: str, prefix: str,
                   elsewhere: tuple[str, ...] = ()) -> list[str]:
    """The keys of group file ``choice`` (and the files it extends) as ``prefix + key``; keys under a prefix of
    ``elsewhere`` are listed by another group (``agent.encoder.`` by the encoder group) and left out."""
    comments: dict[str, str] = {}
    order: list[tuple[str, bool]] = []
    for path in _group_files(config_dir, use.group, choice):
        for key, comment, is_block in _leaf_keys(path, prefix):
            if key.startswith(elsewhere) and elsewhere:
                continue
            if key not in comments:
                order.append((key, is_block))
            comments[key] = comment or comments.get(key, "")
    lines = ["", f"{use.group} options ({prefix}KEY=VALUE; configs/{use.group}/{choice}.yaml):"]
    for key, is_block in order:
        if is_block:
            continue
        lines.extend(_option_line(key, _shown(_raw(cfg, key)), comments[key]))
    return lines


def format_help(config_dir: Path, config_name: str, cfg: DictConfig) -> str:
    """The ``--help`` text of app ``config_name`` for its composed config ``cfg``."""
    uses = app_groups(config_dir, config_name)
    script = script_name(config_name)
    module = f"python -m calql_robot.{config_name}"
    groups = " ".join(f"[{u.group}=NAME]" for u in uses)
    lines = [f"{script} ({module}): part of calql_robot (Cal-QL for robot manipulation)", "",
             file_description(config_dir / f"{config_name}.yaml"), "",
             f"usage: {script} [key=value ...] {groups}".rstrip(), ""]
    lines += _options(cfg, config_dir, config_name, uses)
    lines += _groups(cfg, config_dir, config_name, uses)
    nested = [u for u in uses if u.root_key != u.group and _group_choice(cfg, u) != "null"]  # encoder: agent.encoder
    nested_prefixes = tuple(f"{_package(config_dir, u, _group_choice(cfg, u))}." for u in nested)
    for use in uses:
        chosen = _group_choice(cfg, use)
        if use.root_key == use.group and chosen != "null" and isinstance(cfg.get(use.group), DictConfig):
            if not _is_global(config_dir / use.group / f"{chosen}.yaml"):
                lines += _block_options(cfg, config_dir, use, chosen, f"{use.group}.", nested_prefixes)
    for use, prefix in zip(nested, nested_prefixes):
        lines += _block_options(cfg, config_dir, use, _group_choice(cfg, use), prefix)
    notes = [f"Defaults are those of the group choices shown; --help with other choices ({uses[-1].group}=NAME "
             "--help) shows theirs."] if uses else []
    if any(_is_global(config_dir / u.group / f"{_group_choice(cfg, u)}.yaml") for u in uses):
        notes.append("task.KEY=VALUE changes one key of the task file (configs/task/NAME.yaml; +task.KEY=VALUE adds "
                     "one); a task file also sets its own values of the options above.")
    notes.append("Errors name the key and what was expected. Docs: README.md and docs/ of calql_robot.")
    lines.append("")
    for note in notes:
        lines.extend(textwrap.wrap(note, WIDTH))
    return "\n".join(lines)


def _is_global(path: Path) -> bool:
    return path.is_file() and "# @package _global_" in path.read_text().splitlines()[:2]


def _package(config_dir: Path, use: GroupUse, choice: str) -> str:
    for line in (config_dir / use.group / f"{choice}.yaml").read_text().splitlines()[:3]:
        if line.startswith("# @package "):
            return line[len("# @package "):].strip()
    return use.group


def help_config(config_dir: Path, config_name: str, args: list[str]) -> DictConfig:
    """The app's config composed with the group choices among ``args`` (``task=NAME``), for :func:`format_help`.

    Arguments that are not group choices are ignored; choices that do not compose fall back to the defaults.
    """
    from hydra import compose, initialize_config_dir

    groups = {u.group for u in app_groups(config_dir, config_name)}
    chosen = [a for a in args if not a.startswith("-") and a.split("=", 1)[0].lstrip("+") in groups]
    for overrides in (chosen, []):
        try:
            with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
                return compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
        except Exception:  # noqa: BLE001 - a bad choice beside --help: show the defaults
            continue
    raise RuntimeError(f"configs/{config_name}.yaml does not compose")
