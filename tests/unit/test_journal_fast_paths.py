"""The journal's and spool's fast paths keep their guarantees: lazy delivery-state commits are
bounded and flushed, checkpoints run off the commit path, the in-memory ciphertext hand-off
never stands in for what verification reads, and ingest parses the plaintext it encrypted."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from router.core.retry import Classification
from router.delivery.queue import DeliveryQueue
from router.errors import IntegrityError
from router.spool import journal as journal_module
from router.spool.fresh import FreshBlobs
from router.spool.incoming import IncomingObject
from router.spool.journal import LAZY_LIMIT, Journal
from router.spool.retention import expire
from tests.unit.test_spool import ingest, make_spool

CT = Path(str(get_testdata_file("CT_small.dcm")))


def _insert(key: str) -> journal_module.Transaction:
    def transaction(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO journal_meta(key, value) VALUES (?, 'x')", (key,))

    return transaction


def _wait(condition: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def no_quiet_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loaded machine may pause a test for longer than the quiet flush waits: keep it off."""
    monkeypatch.setattr(journal_module, "LAZY_FLUSH_SECONDS", 600.0)


@pytest.mark.usefixtures("no_quiet_flush")
def test_lazy_commits_are_bounded_then_synced(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    try:
        for index in range(LAZY_LIMIT):
            journal.run(_insert(f"lazy{index}"), durable=False)
        # Every one of them lazy (one at a time: each its own batch), none synced yet.
        assert journal.stats.lazy_commits == LAZY_LIMIT
        assert journal._lazy_unsynced == LAZY_LIMIT
        # The bound is reached: the next lazy transaction is committed with an fsync.
        journal.run(_insert("over-the-bound"), durable=False)
        assert journal.stats.lazy_commits == LAZY_LIMIT
        assert journal._lazy_unsynced == 0
    finally:
        journal.close()


@pytest.mark.usefixtures("no_quiet_flush")
def test_a_durable_transaction_is_never_committed_lazily(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    try:
        journal.run(_insert("lazy"), durable=False)
        assert journal.stats.lazy_commits == 1
        journal.run(_insert("durable"))
        assert journal.stats.lazy_commits == 1 and journal._lazy_unsynced == 0
        assert journal._synchronous == "FULL"
    finally:
        journal.close()


def test_quiet_journal_flushes_lazy_changes_by_itself(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    try:
        journal.run(_insert("lazy"), durable=False)
        commits = journal.stats.commits
        assert journal._lazy_unsynced == 1
        # Nothing else comes: the committer makes it durable (a FULL commit) on its own.
        assert _wait(lambda: journal._lazy_unsynced == 0)
        assert journal.stats.commits == commits + 1
        assert journal.stats.lazy_commits == 1
    finally:
        journal.close()


def test_checkpoints_run_in_their_own_thread(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    try:
        autocheckpoint = journal._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert autocheckpoint == journal_module.FALLBACK_AUTOCHECKPOINT_PAGES
        blob = b"\x5a" * 400_000

        def insert_blob(index: int) -> journal_module.Transaction:
            def transaction(conn: sqlite3.Connection) -> None:
                conn.execute(
                    "INSERT INTO journal_meta(key, value) VALUES (?, ?)", (f"b{index}", blob)
                )

            return transaction

        for index in range(5):
            journal.run(insert_blob(index))
        assert _wait(lambda: journal.checkpointer.checkpoints > 0)
        # Everything committed so far reached the database file: a new reader that ignores
        # the WAL would see it (checked through the WAL-aware reader, plus the checkpoint's
        # own report that nothing is left to copy).
        busy, in_wal, copied = journal.read().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0 and in_wal == copied
        assert journal.checkpointer.failures == 0
    finally:
        journal.close()
    assert not journal.checkpointer._thread.is_alive()


def test_fresh_blobs_are_bounded_oldest_first() -> None:
    fresh = FreshBlobs(limit=10)
    fresh.put("a", b"12345")
    fresh.put("b", b"12345")
    fresh.put("c", b"123")  # over the limit: "a" goes
    assert fresh.get("a") is None and fresh.get("b") == b"12345" and fresh.get("c") == b"123"
    assert fresh.size == 8
    fresh.put("huge", b"x" * 11)  # larger than the whole cache: not kept
    assert fresh.get("huge") is None and fresh.size == 8
    fresh.forget("b")
    assert fresh.get("b") is None and fresh.size == 3


def test_delivery_reads_a_fresh_object_from_memory_but_verify_reads_the_journal(
    tmp_path: Path,
) -> None:
    spool = make_spool(tmp_path)
    try:
        result = ingest(spool, CT.read_bytes())
        held = spool.get(result.object_id)
        assert held is not None and not held.blob  # held inline
        with spool.open_object(held, fresh=True) as reader:
            assert reader.read() == CT.read_bytes()
        assert spool.fresh.hits == 1

        # Damage the stored copy: delivery's in-memory copy is still the committed bytes,
        # but whatever checks the stored object reads the journal and sees the damage.
        def damage(conn: sqlite3.Connection) -> None:
            (data,) = conn.execute(
                "SELECT data FROM inline_blobs WHERE object_id = ?", (result.object_id,)
            ).fetchone()
            damaged = bytearray(data)
            damaged[-1] ^= 0xFF
            conn.execute(
                "UPDATE inline_blobs SET data = ? WHERE object_id = ?",
                (bytes(damaged), result.object_id),
            )

        spool.journal.run(damage)
        with spool.open_object(held, fresh=True) as reader:
            assert reader.read() == CT.read_bytes()
        with pytest.raises(IntegrityError), spool.open_object(held) as reader:
            reader.read()
    finally:
        spool.close()


def test_duplicates_and_blob_files_are_not_cached(tmp_path: Path) -> None:
    spool = make_spool(tmp_path, inline_limit=0)
    try:
        ingest(spool, CT.read_bytes())
        assert spool.fresh.size == 0  # a blob file: delivery reads the file
    finally:
        spool.close()


def test_header_reader_gives_the_plaintext_just_encrypted(tmp_path: Path) -> None:
    data = CT.read_bytes()
    one_chunk = IncomingObject(tmp_path, data_key=b"k" * 32, cipher="aes-256-gcm")
    one_chunk.write(data)
    one_chunk.finish()
    with one_chunk.header_reader() as reader:
        assert type(reader).__name__ == "BytesIO"  # no second decryption
        assert reader.read() == data
    # An object of several chunks: the decrypting reader, which reads the header's chunks only.
    chunked = IncomingObject(tmp_path, data_key=b"k" * 32, cipher="aes-256-gcm", chunk_size=4096)
    chunked.write(data)
    chunked.finish()
    with chunked.header_reader() as reader:
        assert type(reader).__name__ == "BlobReader"
        assert reader.read() == data


@pytest.mark.usefixtures("no_quiet_flush")
def test_retention_never_deletes_on_an_unsynced_delivered_mark(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    try:
        queue = DeliveryQueue(spool)
        stored = ingest(spool, CT.read_bytes())
        [claimed] = queue.claim("pacs", 8)
        queue.record("pacs", claimed, Classification("delivered", "stored")).result()
        # The delivered mark is committed lazily: not yet synced.
        assert spool.journal._lazy_unsynced > 0
        assert expire(spool, retention_seconds=0.0, now=time.time() + 1) == 1
        # Retention's own commit is durable, so it synced the mark it relied on first.
        assert spool.journal._lazy_unsynced == 0
        held = spool.get(stored.object_id)
        assert held is not None and held.state == "deleted"
        assert spool.fresh.get(stored.object_id) is None  # no copy left in memory either
    finally:
        spool.close()


@pytest.mark.usefixtures("no_quiet_flush")
def test_a_clean_stop_syncs_lazy_changes(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    journal.run(_insert("lazy"), durable=False)
    assert journal._lazy_unsynced == 1
    commits = journal.stats.commits
    journal.close()
    assert journal._lazy_unsynced == 0 and journal.stats.commits == commits + 1
