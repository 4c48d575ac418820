"""The comments of a config YAML file, paired with the keys they describe (for ``--help``).

The project's config files document each key with a comment beside it, continued on the following lines at a
deeper indentation, or with a comment block on the lines right above it::

    episodes: null     # episodes to generate; null: task.dataset.episodes,
                       #   else the generator's default
    # the store to write
    output: null

:func:`key_comments` returns ``{"episodes": "episodes to generate; ...", "output": "the store to write"}`` with dotted
names for nested keys (``reward.rule``). The comment block at the top of the file (before the first key) is the
file's own description: :func:`file_description`. Only block-style mappings are read; list items and flow values
(``[1, 2]``, ``{a: 1}``) are values, never keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_DEFAULTS_ITEM = re.compile(r"^(?P<indent> *)- +(?:override +)?(?P<group>[\w/]+) *:")
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w\-]*|\"[^\"]+\"|'[^']+'):(?:\s|$)")


@dataclass
class _Entry:
    path: str
    indent: int
    lines: list[str] = field(default_factory=list)


def _split_comment(line: str) -> tuple[str, str | None, int]:
    """(code, comment text or None, column of '#'); a '#' inside quotes or right after a non-space is not a comment."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip(), line[i + 1:].strip(), i
    return line.rstrip(), None, -1


def _parse(text: str) -> tuple[list[str], list[_Entry]]:
    """(the file's leading comment lines, one entry per key in file order).

    A defaults-list item ``- group: choice  # comment`` is an entry named ``defaults/group``.
    """
    header: list[str] = []
    entries: list[_Entry] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    pending: list[str] = []  # a comment block waiting for the key below it
    last: _Entry | None = None  # the key whose comment a deeper-indented comment line continues
    for raw in text.splitlines():
        code, comment, column = _split_comment(raw)
        if not code.strip():
            if comment is None:  # a blank line ends a comment block and any continuation
                pending, last = [], None
            elif not entries:
                header.append(comment)
            elif last is not None and column > last.indent:
                last.lines.append(comment)
            else:
                pending.append(comment)
                last = None
            continue
        item = _DEFAULTS_ITEM.match(code)
        if item is not None and stack and stack[-1][1] == "defaults":
            entry = _Entry(f"defaults/{item.group('group')}", len(item.group("indent")), [comment] if comment else [])
            entries.append(entry)
            pending, last = [], entry
            continue
        match = _KEY.match(code)
        if match is None:
            last, pending = None, []  # a list item or a continued value: neither a key nor a comment of one
            continue
        indent = len(match.group("indent"))
        key = match.group("key").strip("\"'")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        entry = _Entry(".".join([*(k for _, k in stack), key]), indent, [*pending, *([comment] if comment else [])])
        entries.append(entry)
        pending, last = [], entry
        stack.append((indent, key))
    return header, entries


def _join(lines: list[str]) -> str:
    return " ".join(line.strip() for line in lines if line.strip())


def key_comments(path: str | Path) -> dict[str, str]:
    """{dotted key: its comment text} for every key of the YAML file at ``path`` ('' where none is written)."""
    _, entries = _parse(Path(path).read_text())
    return {entry.path: _join(entry.lines) for entry in entries}


def key_order(path: str | Path) -> list[str]:
    """The dotted keys of the YAML file at ``path`` in file order."""
    return [entry.path for entry in _parse(Path(path).read_text())[1]]


def file_description(path: str | Path) -> str:
    """The comment lines at the top of the YAML file at ``path`` (before its first key), joined with newlines;
    a ``@package`` directive is left out."""
    header, _ = _parse(Path(path).read_text())
    lines = [line for line in header if not line.startswith("@package")]
    return "\n".join(lines).strip()
