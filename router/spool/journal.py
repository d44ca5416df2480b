"""The journal: SQLite in WAL mode with synchronous=FULL, written by one committer thread that
batches concurrent transactions into one durable commit (group commit).

Why one writer: SQLite serialises writers anyway; one thread that takes every queued transaction
at once turns N concurrent associations' N commits (N WAL fsyncs) into one, and the directory
fsyncs their renames need into one per directory.

Lazy transactions (``durable=False``: delivery-state changes) skip their own fsync; see
:meth:`Journal.submit` for exactly what that does and does not give up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.errors import StorageFault, StorageFull
from router.health.liveness import Heartbeat
from router.spool.checkpoint import Checkpointer
from router.spool.fsio import fsync_dir
from router.spool.schema import (
    MIGRATE_2_TO_3,
    MIGRATE_3_TO_4,
    READ_MODEL,
    SCHEMA,
    SCHEMA_VERSION,
)

log = logging.getLogger("waystation.journal")

_SQLITE_FULL = 13
# A test-only switch that breaks the spool on purpose, so the power-loss test can prove it
# catches a spool that skips the directory fsync of renamed blobs (the "control run").
# Never set in production.
_SKIP_BLOB_DIR_FSYNC = os.environ.get("WAYSTATION_TEST_FAULT") == "skip-dir-fsync"
Transaction = Callable[[sqlite3.Connection], Any]
#: Lazy transactions committed without an fsync before one batch is made durable anyway:
#: after a power cut at most this many lazy changes are lost (each one a bounded re-send).
LAZY_LIMIT = 64
#: With lazy changes not yet synced and nothing else to commit, the committer makes them
#: durable after this many seconds of quiet.
LAZY_FLUSH_SECONDS = 0.2
#: The committer's own automatic checkpoint, a fallback only: checkpoints normally run in the
#: Checkpointer's thread, off the commit path (64 MB of 4 KiB pages).
FALLBACK_AUTOCHECKPOINT_PAGES = 16384


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open the journal with the settings its guarantees depend on."""
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    if not readonly:
        # Statement journals (one per savepoint'd transaction that changes existing pages)
        # stay in memory instead of a temp file created and deleted per commit.
        conn.execute("PRAGMA temp_store = MEMORY")
        # WAL + synchronous=FULL: a commit returns only after the WAL is fsynced.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        # Deleted rows (wrapped data keys) are overwritten, not left in free pages.
        conn.execute("PRAGMA secure_delete = ON")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    """Create the tables if needed, migrate an older journal, and check the schema version."""
    conn.executescript(SCHEMA)
    row = conn.execute("SELECT value FROM journal_meta WHERE key = 'schema'").fetchone()
    if row is None:
        conn.executescript(READ_MODEL)
        conn.execute(
            "INSERT INTO journal_meta(key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
        )
        return
    version = int(row[0])
    if version == 2:
        # One transaction: a journal is either still version 2 or fully version 3.
        conn.executescript(
            "BEGIN IMMEDIATE;"
            + READ_MODEL
            + MIGRATE_2_TO_3
            + "UPDATE journal_meta SET value = '3' WHERE key = 'schema';"
            + "COMMIT;"
        )
        log.info("journal migrated from schema 2 to 3")
        version = 3
    if version == 3:
        # The hub tables were just created by SCHEMA (IF NOT EXISTS); record the version.
        conn.executescript(
            "BEGIN IMMEDIATE;"
            + READ_MODEL
            + MIGRATE_3_TO_4
            + "UPDATE journal_meta SET value = '4' WHERE key = 'schema';"
            + "COMMIT;"
        )
        log.info("journal migrated from schema 3 to 4")
        version = 4
    if version != SCHEMA_VERSION:
        raise StorageFault(f"journal schema {row[0]} is not the supported {SCHEMA_VERSION}")
    conn.executescript(READ_MODEL)


@dataclass
class _Item:
    txn: Transaction
    dirs: frozenset[Path]
    durable: bool = True
    future: Future[Any] = field(default_factory=Future)


@dataclass
class JournalStats:
    """Counters for benchmarks and health: commits, batched transactions and fsyncs."""

    commits: int = 0
    transactions: int = 0
    dir_fsyncs: int = 0
    lazy_commits: int = 0  # commits made without their own fsync (lazy transactions only)


class Journal:
    """Durable, batched transactions over the journal database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = connect(path)
        create_schema(self._conn)
        self._conn.execute(f"PRAGMA wal_autocheckpoint = {FALLBACK_AUTOCHECKPOINT_PAGES}")
        self.checkpointer = Checkpointer(path, connect)
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.stats = JournalStats()
        self._failed: StorageFault | None = None
        self._synchronous = "FULL"  # what connect() set
        self._lazy_unsynced = 0  # lazy transactions committed since the last fsynced commit
        # The service watchdog checks it: waiting on the queue is fine, hanging in a commit not.
        self.heartbeat = Heartbeat()
        self._thread = threading.Thread(target=self._run, name="journal-committer", daemon=True)
        self._thread.start()

    @property
    def committer(self) -> threading.Thread:
        """The committer thread (for the service watchdog)."""
        return self._thread

    def submit(
        self, txn: Transaction, dirs: Iterable[Path] = (), *, durable: bool = True
    ) -> Future[Any]:
        """Queue ``txn`` to run inside a durable commit, after fsyncing ``dirs``.

        The future resolves with txn's result once the commit is durable, or with the exception
        (StorageFault when the directory fsync or the commit failed; nothing was committed).

        ``durable=False`` (a lazy transaction) resolves once committed, not necessarily synced.
        Why that is safe for what uses it (delivery claims and outcomes) - the journal is in WAL
        mode, which appends every commit to one file in order:

        * A batch of lazy transactions only is committed with ``synchronous=NORMAL``: its WAL
          frames are written but not fsynced. Any batch with a durable transaction is committed
          with ``synchronous=FULL``, and that fsync of the WAL file also makes every earlier
          frame durable. So an ingest commit is still durable before its C-STORE success, and
          once it is, every lazy change before it is too.
        * A power cut can lose only the lazy changes after the last fsync, and only a suffix:
          SQLite's recovery replays WAL frames in order and stops at the first one whose
          cumulative checksum fails, so nothing later survives a lost earlier frame. A lost
          claim or outcome leaves the delivery pending or inflight (which recovery makes
          pending): the object is sent again. Bounded: after :data:`LAZY_LIMIT` lazy
          transactions a batch is fsynced anyway, and after :data:`LAZY_FLUSH_SECONDS` of
          quiet the committer fsyncs what is pending.
        * Whatever acts irreversibly on a delivery state - retention deleting a delivered
          object and destroying its key, an operator's action - runs as a durable
          transaction in this same journal, after the state it read: its own fsync makes that
          state durable first, and it unlinks files only after its commit returned.
        """
        item = _Item(txn, frozenset(dirs), durable)
        self._queue.put(item)
        return item.future

    def run(self, txn: Transaction, dirs: Iterable[Path] = (), *, durable: bool = True) -> Any:
        """Submit and wait."""
        return self.submit(txn, dirs, durable=durable).result()

    def read(self) -> sqlite3.Connection:
        """A new connection for reading (each thread should use its own)."""
        return connect(self.path)

    def close(self) -> None:
        """Finish queued transactions and stop the committer."""
        self._queue.put(None)
        self._thread.join(timeout=30)
        self.checkpointer.close()
        with self._lock:
            self._conn.close()

    def _run(self) -> None:
        while True:
            self.heartbeat.waiting()
            try:
                first = self._queue.get(timeout=LAZY_FLUSH_SECONDS if self._lazy_unsynced else None)
            except queue.Empty:
                # Quiet, with lazy changes not yet synced: make them durable now.
                first = _Item(_flush_marker, frozenset())
            self.heartbeat.working()
            if first is None:
                if self._lazy_unsynced:  # a clean stop leaves nothing lazy unsynced
                    self._commit([_Item(_flush_marker, frozenset())])
                return
            batch = [first]
            # Take everything already queued: these transactions share one commit.
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            try:
                self._commit(batch)
            except BaseException as exc:  # never leave a caller waiting on a dead committer
                log.exception("journal committer failed")
                fault = StorageFault(f"journal committer failed: {exc}")
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(fault)

    def _commit(self, batch: list[_Item]) -> None:
        if self._failed is not None:
            self._lazy_unsynced = 0  # nothing more can be made durable
            for item in batch:
                item.future.set_exception(self._failed)
            return
        try:
            # Why first: the directory entries (renamed blobs) must be durable before the
            # journal row that points at them is.
            for directory in sorted(set().union(*(item.dirs for item in batch))):
                if not _SKIP_BLOB_DIR_FSYNC:
                    fsync_dir(directory)
                self.stats.dir_fsyncs += 1
        except StorageFault as exc:
            for item in batch:
                item.future.set_exception(exc)
            return
        results: list[tuple[_Item, Any, BaseException | None]] = []
        # Why: see submit(). Lazy only when nothing in the batch needs durability and the bound
        # on unsynced lazy changes is not reached; a FULL commit syncs all earlier frames too.
        lazy = not any(item.durable for item in batch) and self._lazy_unsynced < LAZY_LIMIT
        with self._lock:
            try:
                self._set_synchronous("NORMAL" if lazy else "FULL")
                self._conn.execute("BEGIN IMMEDIATE")
                for index, item in enumerate(batch):
                    # A savepoint per transaction: one failing does not undo the others.
                    self._conn.execute(f"SAVEPOINT t{index}")
                    try:
                        value = item.txn(self._conn)
                    except Exception as exc:  # contained: reported to that caller only
                        self._conn.execute(f"ROLLBACK TO t{index}")
                        self._conn.execute(f"RELEASE t{index}")
                        results.append((item, None, exc))
                    else:
                        self._conn.execute(f"RELEASE t{index}")
                        results.append((item, value, None))
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                fault: StorageFault | StorageFull = (
                    StorageFull("storage is full (journal commit failed)")
                    if getattr(exc, "sqlite_errorcode", None) == _SQLITE_FULL
                    else StorageFault(f"journal commit failed: {exc}")
                )
                log.error("journal commit failed; nothing in this batch is acknowledged: %s", exc)
                self._reset_after_failure()
                for item in batch:
                    item.future.set_exception(fault)
                return
        self.stats.commits += 1
        self.stats.transactions += len(batch)
        if lazy:
            self.stats.lazy_commits += 1
            self._lazy_unsynced += len(batch)
        else:
            self._lazy_unsynced = 0
        self.checkpointer.committed()
        for item, value, error in results:
            if error is None:
                item.future.set_result(value)
            else:
                item.future.set_exception(error)

    def _set_synchronous(self, level: str) -> None:
        if level != self._synchronous:
            self._conn.execute(f"PRAGMA synchronous = {level}")
            self._synchronous = level

    def _reset_after_failure(self) -> None:
        # fsyncgate: after a failed commit the connection's view of durable state cannot be
        # trusted. Roll back, reopen, and let SQLite's own recovery decide what is on disk.
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")
        try:
            self._conn.close()
            self._conn = connect(self.path)
            self._conn.execute(f"PRAGMA wal_autocheckpoint = {FALLBACK_AUTOCHECKPOINT_PAGES}")
            self._synchronous = "FULL"
        except sqlite3.Error as exc:
            self._failed = StorageFault(f"journal unusable after a failed commit: {exc}")


def _flush_marker(conn: sqlite3.Connection) -> None:
    """A durable transaction that writes one page, so its commit fsyncs the WAL (an empty
    transaction writes nothing and syncs nothing): lazy changes before it become durable."""
    conn.execute("UPDATE journal_meta SET value = value WHERE key = 'schema'")
