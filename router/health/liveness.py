"""Liveness of the threads the promise depends on: ingest's accept loop, every delivery worker
and the journal committer.

Each such thread owns a Heartbeat. It says "working" when it starts a piece of work (each loop
turn, each object) and "waiting" when it blocks on purpose (an idle queue, a backoff). A thread
is wedged when it died, or has been working on one piece for longer than the stall limit: every
network call it makes has a timeout far below that limit, so only a real hang gets there.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass


class Heartbeat:
    """One thread's sign of progress. Cheap: two attribute writes per call."""

    def __init__(self) -> None:
        self._busy_since: float | None = None
        self.allowance = 0.0
        self.turns = 0

    def working(self, allowance: float = 0.0) -> None:
        """A new piece of work starts now (progress was made). ``allowance``: seconds this
        piece may legitimately take beyond the stall limit (a large object on a slow link)."""
        self.turns += 1
        self.allowance = allowance
        self._busy_since = time.monotonic()

    def waiting(self) -> None:
        """The thread blocks on purpose (nothing to do, or a planned delay)."""
        self.turns += 1
        self._busy_since = None

    def busy_for(self, now: float | None = None) -> float:
        """Seconds on the current piece of work; 0 while waiting."""
        since = self._busy_since
        if since is None:
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - since)


@dataclass(frozen=True)
class Watched:
    """A thread the watchdog watches."""

    name: str
    thread: threading.Thread
    heartbeat: Heartbeat


def wedged(watched: Iterable[Watched], stall_limit: float, now: float | None = None) -> list[str]:
    """Plain-words problems: threads that died or hang; empty when everything is alive."""
    at = time.monotonic() if now is None else now
    problems: list[str] = []
    for item in watched:
        if not item.thread.is_alive():
            problems.append(f"{item.name} stopped")
        elif item.heartbeat.busy_for(at) > stall_limit + item.heartbeat.allowance:
            problems.append(f"{item.name} stuck for {item.heartbeat.busy_for(at):.0f} s")
    return problems
