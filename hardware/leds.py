"""Status LED patterns a technician reads across the room (pure: state in, pattern out).

| unit state | green | red |
|---|---|---|
| all delivered | steady | off |
| sending / waiting | slow blink (1 s on, 1 s off) | off |
| attention (a destination down, on battery) | steady | slow blink |
| fault (an alarm: storage, journal, clock, wedged) | off | fast blink (4 per s) |
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
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


class StatusLeds:
    """Blinks two LEDs in the pattern of the current look, from its own thread.

    ``red`` and ``green`` switch one LED each (a GPIO line, or a fake in tests)."""

    def __init__(
        self, red: Callable[[bool], None], green: Callable[[bool], None], tick: float = 0.125
    ) -> None:
        self._set = {"red": red, "green": green}
        self._tick = tick
        self.look: Look = "delivered"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-leds", daemon=True)

    def start(self) -> None:
        """Start blinking."""
        self._thread.start()

    def stop(self) -> None:
        """Stop blinking and switch both off."""
        self._stop.set()
        self._thread.join(timeout=2)
        for switch in self._set.values():
            switch(False)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(self._tick):
            at = time.monotonic() - started
            pattern = PATTERNS[self.look]
            self._set["green"](is_on(pattern.green, at))
            self._set["red"](is_on(pattern.red, at))


def is_on(timing: tuple[float, float], at: float) -> bool:
    """Whether an LED with (on, off) ``timing`` is lit ``at`` seconds into the pattern."""
    on, off = timing
    if on == 0:
        return False
    if off == 0:
        return True
    return (at % (on + off)) < on
