"""HubStore.create_whole: a whole object in its create, committed at once, from memory - with
the same checks as a commit of segments, one journal commit, and no segment files."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from router.config.model import SpoolConfig
from router.hub.protocol import ENVELOPE, UploadMetadata
from router.hub.store import ChecksumMismatch, Discarded, HubStore, Unprocessable
from router.spool.spool import Spool
from router.wan.envelope import wrap

CT = Path(str(get_testdata_file("CT_small.dcm")))


def _store(tmp_path: Path) -> tuple[Spool, HubStore]:
    spool = Spool(SpoolConfig(path=tmp_path / "spool", min_free=0))
    return spool, HubStore(spool, planner=lambda a, s: [])


def _meta(data: bytes, *, encoding: str = "", study_objects: int = 0) -> UploadMetadata:
    from pydicom import dcmread

    ds = dcmread(CT)
    return UploadMetadata(
        str(ds.SOPInstanceUID),
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        hashlib.sha256(data).hexdigest(),
        encoding,
        study_objects,
    )


def _count(spool: Spool, table: str) -> int:
    return int(spool.reader_connection().execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.mark.parametrize("enveloped", [False, True])
def test_a_whole_object_is_stored_exactly_in_one_journal_commit(
    tmp_path: Path, enveloped: bool
) -> None:
    spool, store = _store(tmp_path)
    original = CT.read_bytes()
    wire = wrap(original) if enveloped else original
    meta = _meta(original, encoding=ENVELOPE if enveloped else "", study_objects=3)
    commits = spool.journal.stats.commits
    created, committed = store.create_whole(
        "CLINIC1", meta, wire, hashlib.sha256(wire).digest(), "127.0.0.1"
    )
    assert committed is not None and not committed.already
    assert spool.journal.stats.commits - commits == 1  # row, object, key, manifest together
    held = spool.get(committed.object_id)
    assert held is not None
    with spool.open_object(held) as reader:
        assert reader.read() == original
    assert not (store.root / created.upload.id).exists()  # no segment was written
    upload = store.head("CLINIC1", created.upload.id)
    assert upload is not None and (upload.state, upload.received) == ("committed", len(wire))
    assert [r.state for r in store.receipts("CLINIC1", [created.upload.id])] == ["committed"]
    assert store.manifest("CLINIC1", meta.study_instance_uid, None) == (3, 1)
    # The same object again (a lost answer): "already committed", nothing stored twice.
    again, none = store.create_whole("CLINIC1", meta, wire, None, "127.0.0.1")
    assert none is None and again.already_committed
    assert _count(spool, "objects") == 1 and _count(spool, "hub_commits") == 1


def test_wrong_bytes_store_nothing_and_the_right_ones_then_commit(tmp_path: Path) -> None:
    spool, store = _store(tmp_path)
    original = CT.read_bytes()
    meta = _meta(original)
    damaged = bytearray(original)
    damaged[-10] ^= 0xFF
    with pytest.raises(Discarded):  # SHA-256 not the announced one
        store.create_whole("CLINIC1", meta, bytes(damaged), None, "127.0.0.1")
    with pytest.raises(ChecksumMismatch):  # the chunk's own checksum
        store.create_whole("CLINIC1", meta, original, b"\0" * 32, "127.0.0.1")
    with pytest.raises(Discarded):  # an envelope that does not unwrap
        store.create_whole(
            "CLINIC1", replace(meta, encoding=ENVELOPE), b"WSEV-not-really", None, "127.0.0.1"
        )
    garbage = b"not DICOM at all" * 10
    with pytest.raises(Unprocessable):
        store.create_whole("CLINIC1", _meta(garbage), garbage, None, "127.0.0.1")
    for table in ("objects", "hub_incoming", "hub_commits"):
        assert _count(spool, table) == 0, table
    assert not any(store.root.iterdir())
    _, committed = store.create_whole("CLINIC1", meta, original, None, "127.0.0.1")
    assert committed is not None and _count(spool, "objects") == 1


def test_an_unfinished_upload_of_the_object_is_resumed_not_duplicated(tmp_path: Path) -> None:
    spool, store = _store(tmp_path)
    original = CT.read_bytes()
    meta = _meta(original)
    first = store.create("CLINIC1", len(original), meta).upload
    store.append("CLINIC1", first.id, 0, original[:1000], None)
    created, committed = store.create_whole("CLINIC1", meta, original, None, "127.0.0.1")
    assert committed is None  # the caller goes on with that upload (the usual path)
    assert created.upload.id == first.id and created.upload.received == 1000
    assert _count(spool, "objects") == 0
