"""What the parallel upload streams to one hub share: the rate gate, polite mode, which
priorities are in flight, and what the hub's protocol offers.

A hub destination sends on ``streams`` connections at once (one HubSender per delivery
thread), because on a long, lossy path one TCP connection idles for a round trip per request
and recovers slowly from each loss, while a few connections keep the link full. Everything
that is a property of the link rather than of one connection lives here, behind one lock:

* the rate gate (cap, weekly calendar, daily and monthly budgets in wire bytes): a chunk is
  admitted and counted in one step, so N streams together overshoot a budget by at most one
  chunk, never by N;
* the polite controller (queueing delay is the link's, not a connection's);
* the priorities each stream is sending: a bulk stream yields at its next chunk boundary
  while a more urgent (STAT) object is in flight on another stream, so the STAT object gets
  the whole link;
* the hub's extensions (``creation-with-upload``, ``waystation-commit``), asked once.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field

from router.wan.polite import PoliteController
from router.wan.rate import BudgetCounters, Decision, RateGate


@dataclass
class HubLink:
    """Shared by every stream of one hub destination; thread-safe."""

    gate: RateGate
    polite: PoliteController | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sending: dict[int, int] = field(default_factory=dict)  # thread id -> priority
    extensions: frozenset[str] | None = None  # None: not asked yet
    # Objects whose upload the hub discarded: their envelope is verified before it is sent
    # again (an encoder fault then falls back to deflate instead of failing forever).
    verify_envelope: set[str] = field(default_factory=set)

    def admit(self, nbytes: int, now: dt.datetime, *, stat: bool) -> Decision:
        """Ask the gate for ``nbytes``; if allowed, they are counted at once (atomically
        with the question, so parallel streams cannot all pass the same last byte of a
        budget)."""
        with self._lock:
            decision = self.gate.ask(nbytes, now, stat=stat)
            if decision.allowed:
                # Counted before sending: bytes of a chunk cut off mid-way were on the wire.
                self.gate.sent(nbytes, now, stat=stat)
            return decision

    def counters(self) -> BudgetCounters:
        """The budget counters now (to persist)."""
        with self._lock:
            return self.gate.counters

    def sending(self, priority: int | None) -> None:
        """This thread starts sending an object of ``priority`` (None: it stopped)."""
        me = threading.get_ident()
        with self._lock:
            if priority is None:
                self._sending.pop(me, None)
            else:
                self._sending[me] = priority

    def more_urgent_in_flight(self, priority: int) -> bool:
        """Whether another stream is sending an object more urgent than ``priority``."""
        me = threading.get_ident()
        with self._lock:
            return any(p < priority for t, p in self._sending.items() if t != me)

    def active_streams(self) -> int:
        """How many streams are sending now (at least 1)."""
        with self._lock:
            return max(1, len(self._sending))
