"""The spool without the network: store, duplicates, replacement, recovery, verify, export."""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from router.config.model import SpoolConfig
from router.core.objects import PlannedDelivery, Source
from router.errors import KeyStoreError, SpoolError, StorageFault, StorageFull
from router.ingest.attributes import read_attributes
from router.spool.export import export
from router.spool.recovery import recover
from router.spool.spool import Spool, StoreResult
from router.spool.verify import verify

SOURCE = Source("MODALITY", "WAYSTATION", "127.0.0.1")
CT = Path(str(get_testdata_file("CT_small.dcm")))
MR = Path(str(get_testdata_file("MR_small.dcm")))


def make_spool(tmp_path: Path, **kwargs: object) -> Spool:
    """A spool on tmp_path; pass inline_limit=0 to force blob files."""
    config = SpoolConfig(path=tmp_path / "spool", min_free=0, **kwargs)  # type: ignore[arg-type]
    return Spool(config)


def ingest(spool: Spool, data: bytes, routes: tuple[str, ...] = ("pacs",)) -> StoreResult:
    incoming = spool.begin()
    for start in range(0, len(data), 16384):
        incoming.write(data[start : start + 16384])
    incoming.finish()
    with incoming.reader() as reader:
        attributes = read_attributes(
            reader,
            command_sop_class="",
            command_sop_instance="",  # type: ignore[arg-type]
        )
    plan = [PlannedDelivery(name, "everything") for name in routes]
    return spool.store(incoming, attributes, SOURCE, plan)


def objects(spool: Spool, state: str = "held") -> int:
    return len(list(spool.held_objects((state,))))


def blob_files(spool: Spool) -> list[Path]:
    return sorted(spool.blob_root.rglob("*.blob"))


def inline_count(spool: Spool) -> int:
    return int(spool.reader_connection().execute("SELECT count(*) FROM inline_blobs").fetchone()[0])


def test_store_then_export_gives_back_the_exact_bytes(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    result = ingest(spool, CT.read_bytes())
    assert result.outcome == "stored" and result.deliveries == 1
    report = export(spool, tmp_path / "out")
    assert not report.failed
    [exported] = report.exported
    assert exported.read_bytes() == CT.read_bytes()
    assert exported.name == f"{dcmread(CT).SOPInstanceUID}.dcm"
    assert verify(spool).ok
    spool.close()


def test_identical_object_again_is_stored_once(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    first = ingest(spool, CT.read_bytes())
    again = ingest(spool, CT.read_bytes())
    assert again.outcome == "duplicate" and again.object_id == first.object_id
    assert objects(spool) == 1 and len(blob_files(spool)) + inline_count(spool) == 1
    conn = spool.reader_connection()
    assert conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 1
    events = [
        r[0]
        for r in conn.execute("SELECT event FROM history WHERE object_id = ?", (first.object_id,))
    ]
    assert events == ["received", "routed", "received-again"]
    spool.close()


def test_different_bytes_same_uid_replace_and_are_delivered_again(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    first = ingest(spool, CT.read_bytes())
    ds = dcmread(CT)
    ds.StudyDescription = "corrected"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    second = ingest(spool, buffer.getvalue())
    assert second.outcome == "replaced" and second.object_id != first.object_id
    conn = spool.reader_connection()
    states = dict(conn.execute("SELECT id, state FROM objects"))
    assert states == {first.object_id: "superseded", second.object_id: "held"}
    deliveries = dict(conn.execute("SELECT object_id, state FROM deliveries"))
    assert deliveries == {first.object_id: "cancelled", second.object_id: "pending"}
    old_events = [
        r[0]
        for r in conn.execute(
            "SELECT event FROM history WHERE object_id = ? ORDER BY seq", (first.object_id,)
        )
    ]
    assert old_events[-1] == "superseded"
    spool.close()


def test_unrouted_object_is_visible_not_dropped(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    result = ingest(spool, MR.read_bytes(), routes=())
    conn = spool.reader_connection()
    events = [
        r[0]
        for r in conn.execute("SELECT event FROM history WHERE object_id = ?", (result.object_id,))
    ]
    assert "unrouted" in events and objects(spool) == 1
    spool.close()


def test_refused_below_min_free(tmp_path: Path) -> None:
    spool = Spool(SpoolConfig(path=tmp_path / "spool", min_free=1 << 60))
    incoming = spool.begin()
    incoming.write(b"x" * 100)
    with pytest.raises(StorageFull):
        incoming.finish()
    incoming.discard()
    assert not list(spool.blob_root.rglob("*.part"))
    spool.close()


def test_recovery_removes_partials_and_unacknowledged_and_quarantines_missing(
    tmp_path: Path,
) -> None:
    spool = make_spool(tmp_path, inline_limit=0)
    kept = ingest(spool, CT.read_bytes())
    lost = ingest(spool, MR.read_bytes())
    partial = spool.begin()
    partial.write(b"half an object")
    partial.close()
    orphan = partial.directory / f"{'f' * 32}.blob"
    orphan.write_bytes(b"renamed but never committed")
    missing = next(p for p in blob_files(spool) if p.stem == lost.object_id)
    missing.unlink()
    spool.close()

    spool = make_spool(tmp_path, inline_limit=0)
    report = recover(spool)
    assert report.partials_removed == 1 and report.unacknowledged_removed == 1
    assert report.quarantined == [(lost.object_id, "blob file missing")]
    assert [p.stem for p in blob_files(spool)] == [kept.object_id]
    assert objects(spool, "quarantined") == 1
    result = verify(spool)
    assert not result.ok and (lost.object_id, "quarantined at recovery") in result.damaged
    conn = spool.reader_connection()
    assert conn.execute("SELECT count(*) FROM alarms").fetchone()[0] == 1
    spool.close()


def damage(spool: Spool, how: str) -> str:
    """Damage the CT object's blob in one way; returns its id."""
    blobs = {p.stem: p for p in blob_files(spool)}
    rows = list(spool.held_objects())
    target = rows[0]
    path = blobs[target.id]
    raw = bytearray(path.read_bytes())
    if how == "flip":
        raw[len(raw) // 2] ^= 0x40
        path.write_bytes(bytes(raw))
    elif how == "truncate":
        path.write_bytes(bytes(raw[:-10]))
    elif how == "swap":
        from router.spool.crypto import HEADER_SIZE, TAG_SIZE

        stride = 4096 + TAG_SIZE
        one, two = (
            raw[HEADER_SIZE : HEADER_SIZE + stride],
            raw[HEADER_SIZE + stride : HEADER_SIZE + 2 * stride],
        )
        raw[HEADER_SIZE : HEADER_SIZE + 2 * stride] = two + one
        path.write_bytes(bytes(raw))
    elif how == "moved":
        other = blobs[rows[1].id]
        shutil.copyfile(other, path)
    return target.id


@pytest.mark.parametrize("how", ["flip", "truncate", "swap", "moved"])
def test_tampering_is_detected_and_never_exported(tmp_path: Path, how: str) -> None:
    spool = make_spool(tmp_path, inline_limit=0)
    ingest_small_chunks(spool, CT.read_bytes())
    ingest_small_chunks(spool, MR.read_bytes())
    damaged = damage(spool, how)
    report = verify(spool)
    assert not report.ok
    assert [d[0] for d in report.damaged] == [damaged]
    out = export(spool, tmp_path / "out")
    assert [f[0] for f in out.failed] == [damaged]
    assert len(out.exported) == 1
    assert not list((tmp_path / "out").rglob("*.partial"))
    spool.close()


def ingest_small_chunks(spool: Spool, data: bytes) -> None:
    """Store with 4 KiB chunks so a small test file spans several chunks."""
    from router.spool.incoming import IncomingObject

    incoming = IncomingObject(
        spool._today_dir(),
        data_key=os.urandom(32),
        cipher=spool.cipher,
        chunk_size=4096,
        inline_limit=spool.config.inline_limit,
    )
    incoming.write(data)
    incoming.finish()
    with incoming.reader() as reader:
        attributes = read_attributes(
            reader,
            command_sop_class="",
            command_sop_instance="",  # type: ignore[arg-type]
        )
    spool.store(incoming, attributes, SOURCE, [])


def test_no_patient_data_in_journal_or_blobs(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    ds = dcmread(CT)
    ds.PatientName = "SECRETNAME^ALICE"
    ds.PatientID = "PID-SECRET-42"
    ds.AccessionNumber = "ACC-SECRET-42"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    ingest(spool, buffer.getvalue())
    spool.close()
    needles = [b"SECRETNAME", b"PID-SECRET-42", b"ACC-SECRET-42", str(ds.StudyInstanceUID).encode()]
    for path in (tmp_path / "spool").rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for needle in needles:
                assert needle not in content, f"{needle!r} in {path}"


@pytest.mark.parametrize("how", ["flip", "truncate", "moved"])
def test_tampering_with_inline_objects_is_detected(tmp_path: Path, how: str) -> None:
    spool = make_spool(tmp_path)
    first = ingest(spool, CT.read_bytes())
    second = ingest(spool, MR.read_bytes())
    assert inline_count(spool) == 2 and not blob_files(spool)
    spool.close()
    conn = sqlite3.connect(tmp_path / "spool" / "journal.sqlite")
    data = bytearray(
        conn.execute(
            "SELECT data FROM inline_blobs WHERE object_id = ?", (first.object_id,)
        ).fetchone()[0]
    )
    if how == "flip":
        data[len(data) // 2] ^= 0x01
    elif how == "truncate":
        data = data[:-20]
    else:
        data = bytearray(
            conn.execute(
                "SELECT data FROM inline_blobs WHERE object_id = ?", (second.object_id,)
            ).fetchone()[0]
        )
    conn.execute(
        "UPDATE inline_blobs SET data = ? WHERE object_id = ?", (bytes(data), first.object_id)
    )
    conn.commit()
    conn.close()
    spool = make_spool(tmp_path)
    report = verify(spool)
    assert [d[0] for d in report.damaged] == [first.object_id]
    out = export(spool, tmp_path / "out")
    assert [f[0] for f in out.failed] == [first.object_id] and len(out.exported) == 1
    spool.close()


def test_missing_key_file_for_an_existing_spool_is_refused(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    ingest(spool, CT.read_bytes())
    spool.close()
    key_file = spool.config.resolved_key_file
    key_file.rename(tmp_path / "elsewhere")
    with pytest.raises(KeyStoreError, match=r"key file .* is missing"):
        make_spool(tmp_path)
    assert not key_file.exists()  # no new key was minted


def test_tools_do_not_create_a_spool(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="no spool at"):
        Spool(SpoolConfig(path=tmp_path / "nowhere"), create=False)
    assert not (tmp_path / "nowhere").exists()


def test_recovery_sets_aside_unknown_blobs_when_the_journal_is_new(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, inline_limit=0)
    ingest(spool, CT.read_bytes())
    spool.close()
    for name in ("journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"):
        (tmp_path / "spool" / name).unlink(missing_ok=True)
    spool = make_spool(tmp_path, inline_limit=0)
    report = recover(spool)
    assert report.unacknowledged_removed == 0 and report.set_aside == 1
    assert len(list((tmp_path / "spool" / "quarantine").iterdir())) == 1
    spool.close()


def test_failed_commit_keeps_the_published_blob_for_recovery(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, inline_limit=0)
    incoming = spool.begin()
    incoming.write(CT.read_bytes())
    incoming.finish()
    with incoming.reader() as reader:
        attributes = read_attributes(
            reader,
            command_sop_class="",
            command_sop_instance="",  # type: ignore[arg-type]
        )

    def failing(conn: object) -> None:
        raise StorageFault("commit failed")

    original = spool.journal.run
    spool.journal.run = lambda txn, dirs=(): original(failing, dirs)  # type: ignore[method-assign]
    with pytest.raises(StorageFault):
        spool.store(incoming, attributes, SOURCE, [])
    assert incoming.final_path.exists()  # recovery decides, with the journal in hand
    spool.journal.run = original  # type: ignore[method-assign]
    spool.close()
