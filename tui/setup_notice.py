"""What first boot left for the console (``firstboot/notice.json`` in the state directory):
shown instead of "not responding" while the unit has no valid configuration."""

from __future__ import annotations

import json
from pathlib import Path


def read_notice(path: Path | None) -> list[str] | None:
    """The problems to show, or None when first boot installed a configuration (or left
    nothing to say)."""
    if path is None:
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        outcome = document["outcome"]
        problems = [str(p) for p in document.get("problems", [])]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if outcome not in ("invalid", "no-file"):
        return None
    return problems or ["The unit has no configuration yet."]


def setup_text(problems: list[str], *, can_set_up: bool = False) -> str:
    """The panel's words for an engineer at the unit."""
    lines = "\n".join(f"  - {p}" for p in problems)
    here = "\nOr press c to answer the setup questions here.\n" if can_set_up else ""
    return (
        "!! THIS UNIT IS NOT SET UP YET !!\n\n"
        "It is not receiving or sending studies. What first boot found:\n"
        f"{lines}\n\n"
        "What to do (docs/commissioning.md):\n"
        "  1. Take the SD card or USB stick to a laptop; fix waystation.toml\n"
        "     on its boot partition (waystation-problems.txt there lists the same).\n"
        "  2. Put it back and restart the unit. This screen goes away when the\n"
        "     router answers."
        f"{here}"
    )
