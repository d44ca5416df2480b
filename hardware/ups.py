"""One small interface for every UPS, and the policy the router follows (pure).

Mains lost: keep running and say so. Battery at or below the low mark while on battery: stop
accepting new associations, finish the objects in flight, flush, stop cleanly (the board's UPS
powers the unit back on when mains returns, and the router resumes by itself).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

Action = Literal["normal", "on-battery", "shutdown", "unknown"]


@dataclass(frozen=True)
class PowerState:
    """What the UPS reports: mains present, charge in percent (None: not reported)."""

    on_mains: bool | None
    charge_percent: float | None = None
    detail: str = ""


class Ups(Protocol):
    """A UPS the router can poll."""

    name: str

    def read(self) -> PowerState:
        """The current power state; never raises (an unreadable UPS says so in ``detail``)."""
        ...


def decide(state: PowerState, low_battery: float) -> Action:
    """What the router does about ``state``."""
    if state.on_mains is None:
        return "unknown"
    if state.on_mains:
        return "normal"
    if state.charge_percent is not None and state.charge_percent <= low_battery:
        return "shutdown"
    return "on-battery"


class FileUps:
    """A UPS whose state another program writes as JSON ``{"mains": true, "charge": 87}``:
    the fake for tests, and the bridge for a UPS monitor such as NUT's upsmon."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> PowerState:
        """The state in the file; unknown when it is missing or malformed."""
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            mains = document["mains"]
            charge = document.get("charge")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return PowerState(None, None, f"UPS state file unreadable ({type(exc).__name__})")
        if not isinstance(mains, bool) or not (charge is None or isinstance(charge, int | float)):
            return PowerState(None, None, "UPS state file malformed")
        return PowerState(mains, None if charge is None else float(charge))


def write_state(path: Path, *, mains: bool, charge: float | None) -> None:
    """Write a FileUps state atomically (tests and UPS monitors use it)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"mains": mains, "charge": charge}), encoding="utf-8")
    temporary.replace(path)
