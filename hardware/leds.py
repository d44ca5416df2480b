"""Status LED patterns a technician reads across the room (pure: state in, pattern out).

| unit state | green | red |
|---|---|---|
| all delivered | steady | off |
| sending / waiting | slow blink (1 s on, 1 s off) | off |
| attention (a destination down, on battery) | steady | slow blink |
| fault (an alarm: storage, journal, clock, wedged) | off | fast blink (4 per s) |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Look = Literal["delivered", "sending", "attention", "fault"]


@dataclass(frozen=True)
class Pattern:
    """On/off periods in seconds for each LED; (0, 0) is off, (1, 0) steady on."""

    green: tuple[float, float]
    red: tuple[float, float]


PATTERNS: dict[Look, Pattern] = {
    "delivered": Pattern(green=(1, 0), red=(0, 0)),
    "sending": Pattern(green=(1, 1), red=(0, 0)),
    "attention": Pattern(green=(1, 0), red=(1, 1)),
    "fault": Pattern(green=(0, 0), red=(0.125, 0.125)),
}


def look(*, faults: int, attention: int, waiting: int) -> Look:
    """Which pattern: faults outrank attention, which outranks sending."""
    if faults:
        return "fault"
    if attention:
        return "attention"
    return "sending" if waiting else "delivered"
