"""Checkpoints off the commit path: a thread of its own copies the WAL into the database.

SQLite's automatic checkpoint runs inside the COMMIT that crosses its threshold (1000 pages),
so every few CT slices one C-STORE waited for about 4 MB to be copied and the database file
to be fsynced before its answer. This thread runs PASSIVE checkpoints on its own connection
instead: a passive checkpoint never blocks the committer (SQLite lets one writer append to
the WAL while a checkpoint copies the frames before it), and its syncs are SQLite's own - the
WAL is synced before anything is copied, the database file after.

The committer keeps SQLite's automatic checkpoint at a much higher threshold as a fallback,
so the WAL stays bounded should this thread fall behind or stop.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("waystation.journal")

#: At most one checkpoint per this many seconds while commits keep coming.
MIN_INTERVAL = 0.25
#: After a failed checkpoint, wait this long before the next (the WAL keeps every frame).
FAILURE_PAUSE = 5.0


class Checkpointer:
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` soon after commits, in its own thread."""

    def __init__(self, path: Path, connect: Callable[[Path], sqlite3.Connection]) -> None:
        self._conn = connect(path)
        # This connection must never checkpoint on its own terms either (it writes nothing).
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._pending = threading.Event()
        self._stop = threading.Event()
        self.checkpoints = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="journal-checkpoint", daemon=True)
        self._thread.start()

    def committed(self) -> None:
        """A commit added frames to the WAL (called by the committer; never blocks)."""
        self._pending.set()

    def close(self) -> None:
        """Stop the thread (after a checkpoint in progress) and close its connection."""
        self._stop.set()
        self._pending.set()
        self._thread.join(timeout=30)
        self._conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._pending.wait()
            if self._stop.is_set():
                return
            self._pending.clear()
            started = time.monotonic()
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.checkpoints += 1
            except sqlite3.Error as exc:
                # Nothing is lost: the frames stay in the WAL until a checkpoint succeeds.
                self.failures += 1
                log.error("journal checkpoint failed (retried later): %s", exc)
                self._stop.wait(FAILURE_PAUSE)
            # Coalesce: commits arriving meanwhile share the next checkpoint.
            self._stop.wait(max(0.0, MIN_INTERVAL - (time.monotonic() - started)))
