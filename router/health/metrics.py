"""Prometheus text exposition: counts, states and sizes only, never patient data."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from router.health.checks import Check

_STATE_VALUE = {"ok": 0, "unknown": 1, "warn": 2, "fault": 3}


def render(checks: Iterable[Check], gauges: dict[str, float], alarms: Iterable[str]) -> str:
    """The exposition text: one gauge per value, health states as 0 ok .. 3 fault."""
    lines = [
        "# HELP waystation_health Health state per aspect: 0 ok, 1 unknown, 2 warn, 3 fault.",
        "# TYPE waystation_health gauge",
    ]
    lines += [f'waystation_health{{aspect="{c.name}"}} {_STATE_VALUE[c.state]}' for c in checks]
    lines += [
        "# HELP waystation_alarm An active alarm, by its stable code.",
        "# TYPE waystation_alarm gauge",
    ]
    lines += [f'waystation_alarm{{code="{code}"}} 1' for code in sorted(alarms)]
    for name, value in sorted(gauges.items()):
        lines += [f"# TYPE waystation_{name} gauge", f"waystation_{name} {value:g}"]
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Replace ``path`` atomically (node_exporter must never read half a file)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.chmod(temporary, 0o644)
    temporary.replace(path)
