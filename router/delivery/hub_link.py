"""What the parallel upload streams to one hub share: the rate gate, polite mode, which
priorities are in flight, and what the hub's protocol offers.

A hub destination sends on ``streams`` connections at once (one HubSender per delivery
thread), because on a long, lossy path one TCP connection idles for a round trip per request
and recovers slowly from each loss, while a few connections keep the link full. Everything
that is a property of the link rather than of one connection lives here, behind one lock:

* the rate gate (cap, weekly calendar, daily and monthly budgets in wire bytes): a chunk is
  admitted and counted in one step, so N streams together overshoot a budget by at most one
  chunk, never by N;
* the polite controller (queueing delay is the link's, not a connection's), and the turn
  the streams take to put a polite slice on the uplink (:meth:`HubLink.uplink_turn`);
* the priorities each stream is sending: a bulk stream yields at its next chunk boundary
  while a more urgent (STAT) object is in flight on another stream, so the STAT object gets
  the whole link;
* the hub's extensions (``creation-with-upload``, ``waystation-commit``), asked once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from router.wan.polite import PoliteController
from router.wan.rate import BudgetCounters, Decision, RateGate

# The longest a polite stream waits for its turn on the uplink: a stream whose send blocks on
# a dead connection must not hold the others back for longer than this.
_TURN_WAIT = 2.0


@dataclass
class HubLink:
    """Shared by every stream of one hub destination; thread-safe."""

    gate: RateGate
    polite: PoliteController | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _turn: threading.Lock = field(default_factory=threading.Lock)  # see uplink_turn
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

    @contextlib.contextmanager
    def uplink_turn(self, nbytes: int, bits_per_second: float) -> Iterator[None]:
        """Polite mode: one stream's slice of ``nbytes`` on the uplink at a time, the turn
        held for as long as the slice takes on the wire at ``bits_per_second`` (the kernel
        paces it at that rate). Why: N streams each paced at the polite rate burst at N
        times that rate whenever their slices coincide, and that burst is the queue the
        clinic's interactive traffic waits in; in turns, the streams' slices follow each
        other. A stream waits at most ``_TURN_WAIT`` for its turn, then sends anyway."""
        taken = self._turn.acquire(timeout=_TURN_WAIT)
        began = time.monotonic()
        try:
            yield
            on_the_wire = nbytes * 8 / bits_per_second - (time.monotonic() - began)
            if on_the_wire > 0:
                time.sleep(on_the_wire)
        finally:
            if taken:
                self._turn.release()
