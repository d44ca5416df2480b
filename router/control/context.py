"""What the control API's handlers work with: the router's parts and a pool of journal readers.

Reads use their own connections (WAL readers never wait for the committer, and the committer
never waits for them); writes go through the journal's committer like every other write.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from router.alarms import Alarms
from router.config.model import Config
from router.control.auth import PinStore
from router.delivery.queue import DeliveryQueue
from router.delivery.worker import DestinationWorker
from router.health.checks import Check
from router.spool.spool import Spool


class ReaderPool:
    """A few read connections to the journal, shared by the API's request threads.

    Why not Spool.reader_connection(): that keeps one connection per thread for the life of
    the spool, and the HTTP server starts a thread per connection."""

    def __init__(self, spool: Spool, size: int = 4) -> None:
        self._spool = spool
        self._idle: queue.Queue[sqlite3.Connection] = queue.Queue()
        self._all: list[sqlite3.Connection] = []
        for _ in range(size):
            conn = spool.journal.read()
            self._all.append(conn)
            self._idle.put(conn)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one read transaction: every query sees the same journal."""
        conn = self._idle.get()
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")
        finally:
            self._idle.put(conn)

    def close(self, wait: float = 5.0) -> None:
        """Close every connection, waiting a little for requests still using one."""
        for _ in self._all:
            with contextlib.suppress(queue.Empty):
                self._idle.get(timeout=wait)
        for conn in self._all:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


@dataclass
class ControlContext:
    """The router's parts the control API reads and acts on."""

    config: Config
    spool: Spool
    queue: DeliveryQueue
    workers: Mapping[str, DestinationWorker]
    alarms: Alarms
    pins: PinStore
    readers: ReaderPool
    started_at: float = field(default_factory=time.time)
    # The health monitor's latest checks (clock, link, storage, power, liveness).
    health: Callable[[], Sequence[Check]] = tuple
