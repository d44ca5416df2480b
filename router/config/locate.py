"""Find the line of a key in a TOML text, so errors can say "file:line".

tomllib does not keep positions. This scanner follows table headers (``[a]``, ``[[b]]`` with
their running index) and ``key =`` lines, which is exact for configuration files as people
write them (one key per line, inline tables and multi-line arrays start on the key's line).
"""

from __future__ import annotations

import re

_ARRAY_TABLE = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]")
_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\" ]+?)\s*\]")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"]+(?:\s*\.\s*[A-Za-z0-9_\-\"]+)*)\s*=")

Loc = tuple[str | int, ...]


def _split(dotted: str) -> list[str]:
    return [part.strip().strip('"') for part in dotted.split(".")]


def key_lines(text: str) -> dict[Loc, int]:
    """Map each location (e.g. ``("destinations", 0, "port")``) to its 1-based line."""
    lines: dict[Loc, int] = {}
    counters: dict[tuple[str, ...], int] = {}
    current: Loc = ()
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.split("#", 1)[0] if '"' not in line else line
        if match := _ARRAY_TABLE.match(stripped):
            path = tuple(_split(match.group(1)))
            index = counters.get(path, -1) + 1
            counters[path] = index
            current = (*path, index)
            lines.setdefault(current, number)
            lines.setdefault(path, number)
        elif match := _TABLE.match(stripped):
            current = tuple(_split(match.group(1)))
            lines.setdefault(current, number)
        elif match := _KEY.match(stripped):
            lines.setdefault((*current, *_split(match.group(1))), number)
    return lines


def line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    """Return the line of ``loc`` or of its nearest enclosing table that has one."""
    for end in range(len(loc), 0, -1):
        if (found := lines.get(tuple(loc[:end]))) is not None:
            return found
    return None
