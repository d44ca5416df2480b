"""A destination's rate gate (router/wan/rate.py) shared by all its sending threads, with its
budget counters kept in the journal so a restart does not reset a day's or a month's bytes.

The STOW-RS sender uses it; the counters live under the same journal key the hub sender uses
(``rate-counters:{destination}``).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

from router.config.rate import RateConfig
from router.spool.spool import Spool
from router.wan.rate import BudgetCounters, Decision, RateGate


class SharedGate:
    """Thread-safe cap, calendar and budgets for one destination."""

    def __init__(self, spool: Spool, destination: str, rate: RateConfig) -> None:
        self.spool = spool
        self.destination = destination
        self._lock = threading.Lock()
        self.gate = RateGate(rate.policy(), counters=load_counters(spool, destination))

    @property
    def limited(self) -> bool:
        """Whether any cap, calendar or budget applies (else asking is pointless)."""
        policy = self.gate.policy
        return bool(
            policy.bits_per_second is not None
            or policy.windows
            or policy.daily_budget is not None
            or policy.monthly_budget is not None
        )

    def ask(self, nbytes: int, *, stat: bool) -> Decision:
        """May ``nbytes`` go now (see RateGate.ask)?"""
        with self._lock:
            return self.gate.ask(nbytes, _now(), stat=stat)

    def cap_bytes_per_second(self) -> float | None:
        """The cap in force now, in bytes per second (None: no cap)."""
        with self._lock:
            cap = self.gate.cap_at(_now())
        return None if cap is None else cap / 8

    def sent(self, nbytes: int, *, stat: bool) -> None:
        """Count ``nbytes`` that went on the wire."""
        with self._lock:
            self.gate.sent(nbytes, _now(), stat=stat)

    def save(self) -> None:
        """Record the counters in the journal. Not waited for: losing the last request's
        count at a crash overshoots a budget by at most that request."""
        with self._lock:
            counters = self.gate.counters.to_dict()
        save_counters(self.spool, self.destination, counters)


def load_counters(spool: Spool, destination: str) -> BudgetCounters:
    """A destination's budget counters as last recorded in the journal (fresh ones if none)."""
    row = (
        spool.reader_connection()
        .execute("SELECT value FROM journal_meta WHERE key = ?", (_key(destination),))
        .fetchone()
    )
    if row is None:
        return BudgetCounters()
    try:
        return BudgetCounters.from_dict(json.loads(row[0]))
    except (ValueError, TypeError, KeyError):
        return BudgetCounters()


def save_counters(spool: Spool, destination: str, counters: dict[str, Any]) -> None:
    """Record a destination's budget counters in the journal. Not waited for, and lazy (no
    fsync of its own; Journal.submit): this is written for every chunk, and a power cut that
    loses the last few requests' counts overshoots a budget by at most those requests."""
    record = json.dumps(counters)
    key = _key(destination)
    spool.journal.submit(
        lambda conn: conn.execute(
            "INSERT INTO journal_meta(key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, record),
        ),
        durable=False,
    )


def _key(destination: str) -> str:
    return f"rate-counters:{destination}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
