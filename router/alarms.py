"""Alarms: conditions an operator must see (spool full, storage fault, quarantined objects)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("waystation.alarms")


@dataclass(frozen=True)
class Alarm:
    """One active condition, in plain words."""

    code: str
    message: str
    raised_at: float
    count: int = 1


class Alarms:
    """The unit's active alarms. Raising an active alarm again only counts it."""

    def __init__(self) -> None:
        self._active: dict[str, Alarm] = {}
        self._lock = threading.Lock()

    def raise_(self, code: str, message: str) -> None:
        """Raise (or re-raise) an alarm; logged once when it first becomes active."""
        with self._lock:
            current = self._active.get(code)
            if current is None:
                self._active[code] = Alarm(code, message, time.time())
                log.error("ALARM %s: %s", code, message, extra={"message_id": "alarm"})
            else:
                self._active[code] = Alarm(code, message, current.raised_at, current.count + 1)

    def clear(self, code: str) -> None:
        """Clear an alarm when its condition has gone."""
        with self._lock:
            if self._active.pop(code, None) is not None:
                log.info("alarm %s cleared", code, extra={"message_id": "alarm-cleared"})

    def active(self) -> list[Alarm]:
        """The active alarms, oldest first."""
        with self._lock:
            return sorted(self._active.values(), key=lambda a: a.raised_at)
