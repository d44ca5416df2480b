"""Retention: delete objects every destination has confirmed, once the retention period has
passed, destroying their data keys (crypto-shredding). Undelivered objects are never deleted,
whatever the free space; copies an operator discarded count as settled (docs/control-api.md).

Order: first one journal commit destroys the wrapped key, the sealed metadata and any inline
blob and marks the object deleted - from then on it is unreadable; then the blob file is
unlinked. If a crash loses the unlink, recovery removes the file (no held row names it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time

from router.spool.spool import Spool

log = logging.getLogger("waystation.retention")

_EXPIRED = """
SELECT o.id, o.blob FROM objects o
WHERE o.state IN ('held', 'superseded') AND o.received_at < :cutoff
  AND EXISTS (SELECT 1 FROM deliveries d WHERE d.object_id = o.id)
  AND NOT EXISTS (
    SELECT 1 FROM deliveries d WHERE d.object_id = o.id
    AND (d.state NOT IN ('delivered', 'cancelled', 'discarded') OR d.updated_at >= :cutoff))
LIMIT :limit
"""


def expire(
    spool: Spool, retention_seconds: float, *, now: float | None = None, limit: int = 500
) -> int:
    """Delete up to ``limit`` objects whose retention has passed; returns how many."""
    at = time.time() if now is None else now
    cutoff = at - retention_seconds

    def transaction(conn: sqlite3.Connection) -> list[tuple[str, str]]:
        rows = conn.execute(_EXPIRED, {"cutoff": cutoff, "limit": limit}).fetchall()
        for object_id, _blob in rows:
            conn.execute(
                "UPDATE objects SET state = 'deleted', wrapped_key = NULL, meta = x'' WHERE id = ?",
                (object_id,),
            )
            conn.execute("DELETE FROM inline_blobs WHERE object_id = ?", (object_id,))
            conn.execute(
                "INSERT INTO history(object_id, at, event, detail) VALUES (?, ?, 'deleted', ?)",
                (object_id, at, json.dumps({"reason": "retention period over, delivered"})),
            )
        return [(str(r[0]), str(r[1])) for r in rows]

    deleted: list[tuple[str, str]] = spool.journal.run(transaction)
    for object_id, blob in deleted:
        spool.fresh.forget(object_id)
        if blob:
            with contextlib.suppress(FileNotFoundError):
                (spool.root / blob).unlink()
    if deleted:
        log.info("retention: %d delivered objects deleted, their keys destroyed", len(deleted))
    return len(deleted)
