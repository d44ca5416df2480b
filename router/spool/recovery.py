"""Recovery at start: reconcile the journal with the blobs after any crash or power cut.

What a crash can leave, given the ordering in incoming.py and journal.py:
- ``.part`` files: objects still being received; never acknowledged. Removed.
- ``.blob`` files with no journal row: renamed, but the commit did not happen; never
  acknowledged (the success status is sent only after the commit). Removed - but only when
  the journal is healthy and holds objects. A damaged, missing or replaced journal cannot
  vouch for anything, so then they are moved to ``quarantine/`` and an alarm is raised.
- journal rows whose blob is missing or the wrong length: should be impossible with honest
  storage; quarantined, raised as an alarm, never dropped silently.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from router.spool.crypto import ciphertext_size
from router.spool.fsio import fsync_dir, make_dirs
from router.spool.spool import Spool

log = logging.getLogger("waystation.recovery")


@dataclass
class RecoveryReport:
    """What recovery found and did."""

    partials_removed: int = 0
    unacknowledged_removed: int = 0
    quarantined: list[tuple[str, str]] = field(default_factory=list)
    inflight_requeued: int = 0
    set_aside: int = 0
    journal_ok: bool = True
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the log and the console."""
        return (
            f"recovery: journal {'ok' if self.journal_ok else 'DAMAGED'}, "
            f"{self.partials_removed} partial and {self.unacknowledged_removed} unacknowledged "
            f"blobs removed, {self.set_aside} blobs set aside in quarantine/, "
            f"{len(self.quarantined)} objects quarantined, "
            f"{self.inflight_requeued} deliveries re-queued ({self.seconds:.2f} s)"
        )


def recover(spool: Spool) -> RecoveryReport:
    """Reconcile journal and blobs; returns what was done. Safe to run at every start."""
    started = time.monotonic()
    report = RecoveryReport()
    conn = spool.reader_connection()
    report.journal_ok = conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    if not report.journal_ok:
        log.error("journal failed its integrity check; objects are kept, run `spool verify`")
        _alarm(spool, "journal-damaged", "The journal failed its integrity check.")

    known = {
        row[0]: (row[1], row[2], row[3])
        for row in conn.execute(
            "SELECT blob, id, size, chunk_size FROM objects"
            " WHERE blob != '' AND state IN ('held', 'superseded', 'quarantined')"
        )
    }
    journal_vouches = report.journal_ok and _journal_has_objects(conn)
    touched: set[Path] = set()
    kept: list[Path] = []
    for directory in sorted(p for p in spool.blob_root.iterdir() if p.is_dir()):
        for path in directory.iterdir():
            relative = str(path.relative_to(spool.root))
            if path.suffix == ".part":
                path.unlink()
                report.partials_removed += 1
                touched.add(directory)
            elif path.suffix == ".blob" and relative not in known:
                if journal_vouches:
                    path.unlink()
                    report.unacknowledged_removed += 1
                else:
                    kept.append(path)
                touched.add(directory)
    if kept:
        _keep_aside(spool, kept)
        report.set_aside = len(kept)
    for directory in touched:
        fsync_dir(directory)

    for blob, (object_id, size, chunk_size) in known.items():
        path = spool.root / blob
        if not path.exists():
            reason = "blob file missing"
        elif path.stat().st_size != ciphertext_size(size, chunk_size):
            reason = "blob file has the wrong length"
        else:
            continue
        report.quarantined.append((object_id, reason))
    if report.quarantined:
        _quarantine(spool, report.quarantined)

    report.inflight_requeued = spool.journal.run(
        lambda c: (
            c.execute("UPDATE deliveries SET state = 'pending' WHERE state = 'inflight'").rowcount
        )
    )
    report.seconds = time.monotonic() - started
    log.info(report.summary())
    return report


def _journal_has_objects(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM objects LIMIT 1").fetchone() is not None


def _keep_aside(spool: Spool, paths: list[Path]) -> None:
    """Move blobs the journal cannot account for to quarantine/, keeping them for an expert."""
    target = spool.root / "quarantine"
    make_dirs(target)
    for path in paths:
        os.replace(path, target / path.name)
    fsync_dir(target)
    log.error("%d blobs the journal does not know were set aside in %s", len(paths), target)
    _alarm(
        spool,
        "blobs-set-aside",
        f"{len(paths)} stored objects are not in the journal; kept in {target}.",
    )


def _quarantine(spool: Spool, items: list[tuple[str, str]]) -> None:
    def transaction(conn: sqlite3.Connection) -> None:
        now = time.time()
        for object_id, reason in items:
            state = conn.execute("SELECT state FROM objects WHERE id = ?", (object_id,))
            if state.fetchone()[0] == "quarantined":
                continue
            conn.execute("UPDATE objects SET state = 'quarantined' WHERE id = ?", (object_id,))
            conn.execute(
                "INSERT INTO history(object_id, at, event, detail) VALUES (?, ?, ?, ?)",
                (object_id, now, "quarantined", json.dumps({"reason": reason})),
            )
            log.error("object %s quarantined: %s", object_id, reason)

    spool.journal.run(transaction)
    _alarm(spool, "objects-quarantined", f"{len(items)} objects failed recovery checks.")


def _alarm(spool: Spool, code: str, message: str) -> None:
    spool.journal.run(
        lambda c: c.execute(
            "INSERT INTO alarms(code, message, raised_at) VALUES (?, ?, ?)",
            (code, message, time.time()),
        )
    )
