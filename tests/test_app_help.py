"""Issue 14, item 3: ``--help`` of every app lists that app's options with the meaning written beside them in its
config file, their defaults and the choices of the groups it uses, and nothing of other apps' blocks."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from calql_robot.app import CONFIG_DIR
from calql_robot.app_help import format_help, help_config
from calql_robot.config_comments import file_description, key_comments
from calql_robot.config_layout import app_groups, group_choices, top_level_keys

APPS = ("pretrain", "finetune", "evaluate", "collect", "convert", "inspect_dataset", "deploy", "robot_server",
        "robot_keys", "train_reward_classifier")
OPTION_LINE = re.compile(r"^  ([A-Za-z_][\w.]*)=", re.MULTILINE)


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module", params=APPS)
def app_help(request, tmp_path_factory) -> tuple[str, str]:
    cwd = tmp_path_factory.mktemp("help")
    proc = subprocess.run([sys.executable, "-m", f"calql_robot.{request.param}", "--help"], capture_output=True,
                          text=True, cwd=cwd, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip() == "" or "Traceback" not in proc.stderr
    assert list(cwd.iterdir()) == []  # --help writes nothing
    return request.param, proc.stdout


def test_help_lists_the_apps_own_keys_with_their_comments(app_help):
    app, out = app_help
    comments = key_comments(CONFIG_DIR / f"{app}.yaml")
    options = [k for k in comments if not k.startswith(("defaults", "hydra"))]
    leaves = [k for k in options if not any(other.startswith(k + ".") for other in options)]
    assert leaves
    shown = flat(out)
    for key in leaves:
        assert re.search(rf"^  {re.escape(key)}=", out, re.MULTILINE), f"{app} --help lacks {key}"
        if comments[key]:
            assert flat(comments[key]) in shown, f"{app} --help lacks the comment of {key}: {comments[key]!r}"
    assert flat(file_description(CONFIG_DIR / f"{app}.yaml")) in shown


def test_help_lists_the_choices_of_the_apps_groups_only(app_help):
    app, out = app_help
    uses = app_groups(CONFIG_DIR, app)
    for use in uses:
        line = next(line for line in out.splitlines() if line.startswith(f"  {use.group}="))
        assert "choices:" in line
        for choice in group_choices(CONFIG_DIR, use.group):
            assert choice in flat(out.split(f"  {use.group}=", 1)[1])
    for group in {"agent", "encoder", "task", "robot"} - {u.group for u in uses}:
        assert not re.search(rf"^  {group}=", out, re.MULTILINE), f"{app} --help shows the group {group}"


def test_help_shows_no_keys_of_other_apps_blocks(app_help):
    app, out = app_help
    allowed = set(top_level_keys(CONFIG_DIR, app))
    shown = set(OPTION_LINE.findall(out))
    assert shown, out
    stray = sorted(k for k in shown if k.split(".")[0] not in allowed)
    assert not stray, f"{app} --help lists keys the app does not read: {stray}"
    if app == "pretrain":
        assert "finetune." not in out and "deploy." not in out
    if app == "collect":  # one episodes setting, not three
        assert [k for k in shown if k.endswith("episodes")] == ["episodes"]
    if app == "inspect_dataset":
        assert not {"agent", "encoder", "robot", "task"} & {k.split(".")[0] for k in shown}


def test_help_defaults_follow_the_chosen_task():
    cfg = help_config(CONFIG_DIR, "pretrain", ["task=pick_place", "--help"])
    out = format_help(CONFIG_DIR, "pretrain", cfg)
    task_steps = OmegaConf.load(CONFIG_DIR / "task" / "pick_place.yaml").pretrain.steps
    app_steps = OmegaConf.load(CONFIG_DIR / "pretrain.yaml").pretrain.steps
    assert task_steps != app_steps  # the case this checks
    assert f"pretrain.steps={task_steps}  (set by task=pick_place; configs/pretrain.yaml: {app_steps})" in out
    other = format_help(CONFIG_DIR, "pretrain", help_config(CONFIG_DIR, "pretrain", ["task=antmaze_umaze"]))
    assert "  task=antmaze_umaze" in other and "(set by task=pick_place" not in other
    assert "agent.cql_lagrange=true" in other  # the AntMaze task's agent settings (Lagrange)


def test_comment_parser_pairs_keys_with_beside_continued_and_above_comments(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(
        "# @package _global_\n"
        "# What this file is for.\n"
        "#   second line\n"
        "defaults:\n"
        "  - base\n"
        "  - task: null   # a group entry\n"
        "\n"
        "alpha: 1     # beside\n"
        "             # continued\n"
        "# above beta\n"
        "beta: 'a # not a comment'\n"
        "block:       # the block\n"
        "  inner: [1, 2]   # inner one\n"
        "  items:\n"
        "    - x: 1        # a list item, not a key\n"
        "  after: null\n"
        "gamma: 3\n"
    )
    comments = key_comments(path)
    assert comments["alpha"] == "beside continued"
    assert comments["beta"] == "above beta"
    assert comments["block"] == "the block" and comments["block.inner"] == "inner one"
    assert comments["block.after"] == "" and comments["gamma"] == ""
    assert comments["defaults/task"] == "a group entry"
    assert "block.items.x" not in comments
    assert file_description(path) == "What this file is for.\nsecond line"
