"""``waystation spool export``: decrypt held objects to plain DICOM Part 10 files.

The disaster-recovery and sneakernet path. An object is written under a temporary name and
renamed only after its SHA-256 matched the one recorded at ingest, so damaged data is never
exported as good.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from router.errors import IntegrityError
from router.spool.spool import Spool

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def safe_name(uid: str, fallback: str) -> str:
    """A UID as a file name only if it is a well-formed UID; never a path from the wire."""
    return uid if len(uid) <= 64 and _UID.match(uid) else fallback


@dataclass
class ExportReport:
    """Outcome of an export."""

    exported: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


def export(spool: Spool, out: Path, *, study_uid: str | None = None) -> ExportReport:
    """Write every held object (or one study's) as ``out/<study UID>/<SOP Instance UID>.dcm``."""
    report = ExportReport()
    wanted = spool.study_tag(study_uid) if study_uid else None
    for held in spool.held_objects():
        if wanted is not None and held.study_tag != wanted:
            continue
        try:
            meta = spool.metadata(held)
        except IntegrityError as exc:
            report.failed.append((held.id, f"metadata: {exc}"))
            continue
        folder = out / safe_name(meta.get("study_instance_uid", ""), "unknown-study")
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{safe_name(meta.get('sop_instance_uid', ''), held.id)}.dcm"
        temp = target.with_suffix(".partial")
        try:
            digest = hashlib.sha256()
            with spool.open_object(held) as reader, open(temp, "wb") as f:
                for index in reader.chunks():
                    chunk = reader.chunk(index)
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if spool.keyring.content_tag(digest.digest()) != held.sha256:
                raise IntegrityError("SHA-256 differs from the one recorded at ingest")
            os.replace(temp, target)
            report.exported.append(target)
        except (IntegrityError, OSError) as exc:
            temp.unlink(missing_ok=True)
            report.failed.append((held.id, str(exc)))
    return report
