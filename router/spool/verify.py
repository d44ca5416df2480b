"""``waystation spool verify``: authenticate every held object end to end."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from router.errors import IntegrityError
from router.spool.spool import HeldObject, Spool


@dataclass
class VerifyReport:
    """The outcome of a verify run."""

    checked: int = 0
    bytes_checked: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)
    journal_ok: bool = True

    @property
    def ok(self) -> bool:
        """True when the journal and every object verified."""
        return self.journal_ok and not self.damaged


def check_object(spool: Spool, held: HeldObject) -> str | None:
    """Return None if the object verifies, else the reason it does not."""
    try:
        with spool.open_object(held) as reader:
            if reader.size != held.size:
                return f"size {reader.size} differs from the recorded {held.size}"
            digest = hashlib.sha256()
            for index in reader.chunks():
                digest.update(reader.chunk(index))
        if spool.keyring.content_tag(digest.digest()) != held.sha256:
            return "SHA-256 of the plaintext differs from the one recorded at ingest"
    except IntegrityError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read the blob: {exc.strerror}"
    return None


def verify(spool: Spool, states: tuple[str, ...] = ("held", "superseded")) -> VerifyReport:
    """Check the journal's integrity and every object's AEAD tags and SHA-256."""
    report = VerifyReport()
    conn = spool.reader_connection()
    report.journal_ok = conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for held in spool.held_objects(states):
        report.checked += 1
        reason = check_object(spool, held)
        if reason is None:
            report.bytes_checked += held.size
        else:
            report.damaged.append((held.id, reason))
    quarantined = conn.execute("SELECT id FROM objects WHERE state = 'quarantined'").fetchall()
    report.damaged.extend((row[0], "quarantined at recovery") for row in quarantined)
    return report
