"""The hub's upload store: resumable uploads become held objects, each committed once.

Durability, in order (docs/hub-protocol.md, "What the hub guarantees"):

1. A chunk (PATCH) is sealed with the upload's own data key and written to a segment file
   ``<spool>/uploads/<upload>/<offset>.seg``: written, fsynced, renamed, directory fsynced.
   Only then is the upload's ``received`` offset advanced in the journal, and only then is
   the new offset answered. So an answered offset always survives a power cut, and a
   segment past the recorded offset is garbage that recovery removes.
2. Commit decrypts the segments in order into the spool's encrypting ``IncomingObject``,
   checks the whole object's SHA-256 against the one announced at creation and that the
   data set's SOP Instance UID is the announced one, then stores it with ``Spool.store`` -
   object row, deliveries and the (SOP Instance UID, SHA-256) key in hub_commits in ONE
   journal transaction. Nothing is in the spool until that commit; a crash before it leaves
   only the upload, which the unit resumes or commits again.
3. A key already in hub_commits answers "already committed" to create and to commit, so a
   lost acknowledgement never produces a second copy.

Why segments, not one IncomingObject kept open: an IncomingObject lives in memory (and a
``.part`` file it cannot reopen); a hub restart would lose it. Segments make every confirmed
offset survive a restart, at the cost of decrypting once more at commit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from router.core.objects import ObjectAttributes, PlannedDelivery, Source
from router.errors import IntegrityError, StorageFault, StorageFull
from router.hub.protocol import ENVELOPE, UploadMetadata
from router.ingest.attributes import UnreadableObject, read_attributes
from router.spool.crypto import open_sealed, seal
from router.spool.fsio import fsync_dir, fsync_file, make_dirs
from router.spool.incoming import IncomingObject
from router.spool.spool import Spool, StoreResult
from router.wan.envelope import EnvelopeError, unwrap

log = logging.getLogger("waystation.hub")

# Envelopes are restored in memory: their size, and what they restore to, is bounded. (The
# sender envelopes only objects up to 64 MiB.)
ENVELOPE_LIMIT = 256 * 1024 * 1024

Planner = Callable[[ObjectAttributes, Source], Sequence[PlannedDelivery]]


class UploadError(Exception):
    """A refused upload request: ``status`` is the HTTP status, the message plain words."""

    status = 400

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class NotFound(UploadError):
    """No such upload for this unit (another unit's upload is "not found" too)."""

    status = 404


class OffsetConflict(UploadError):
    """The chunk does not start at the upload's current offset (tus: 409 + Upload-Offset)."""

    status = 409


class TooLarge(UploadError):
    """The chunk would take the upload past its declared length."""

    status = 413


class ChecksumMismatch(UploadError):
    """The chunk's Upload-Checksum does not match its bytes (tus checksum extension)."""

    status = 460


class Discarded(UploadError):
    """What was received is unusable (SHA-256 mismatch, a missing segment, a bad envelope)
    and was thrown away: the unit sends the object again from the start (tus: 410 Gone)."""

    status = 410


class Unprocessable(UploadError):
    """The object is complete but wrong: hash mismatch, undecodable, other SOP instance."""

    status = 422


@dataclass(frozen=True)
class Upload:
    """An upload's state as HEAD reports it."""

    id: str
    size: int
    received: int
    state: str  # uploading | committed
    object_id: str | None


@dataclass(frozen=True)
class Created:
    """The answer to a create: a new or resumed upload, or the key is already committed."""

    upload: Upload
    already_committed: bool


@dataclass(frozen=True)
class Committed:
    """The answer to a commit."""

    upload_id: str
    object_id: str
    already: bool


@dataclass(frozen=True)
class Receipt:
    """Where one of a unit's uploads stands: uploading, committed (held at the hub),
    delivered (every destination at the provider has it), failed, or unknown."""

    upload_id: str
    state: str


@dataclass(frozen=True)
class _NewUpload:
    """A new upload's hub_incoming row before it is written."""

    id: str
    unit: str
    size: int
    sop_tag: bytes
    study_tag: bytes
    digest: bytes
    key_id: str
    wrapped_key: bytes
    meta: bytes

    def insert(
        self, conn: sqlite3.Connection, *, received: int, state: str, object_id: str | None
    ) -> None:
        now = time.time()
        conn.execute(
            "INSERT INTO hub_incoming(id, unit, size, received, sop_tag, study_tag, digest,"
            " key_id, wrapped_key, meta, state, object_id, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.id, self.unit, self.size, received, self.sop_tag, self.study_tag,
             self.digest, self.key_id, self.wrapped_key, self.meta, state, object_id, now,
             now),
        )  # fmt: skip

    def as_upload(self) -> Upload:
        return Upload(self.id, self.size, self.size, "uploading", None)


@dataclass(frozen=True)
class _Keys:
    """An upload's tags: the object's (SOP Instance UID, SHA-256) key and its study."""

    sop_tag: bytes
    study_tag: bytes
    digest: bytes


class HubStore:
    """Uploads, commits, receipts and manifests on top of the hub's spool."""

    def __init__(
        self,
        spool: Spool,
        *,
        planner: Planner,
        on_stored: Callable[[Sequence[PlannedDelivery]], None] = lambda d: None,
        wanted_keywords: frozenset[str] = frozenset(),
        max_object: int = 4 * 1024**3,
    ) -> None:
        self.spool = spool
        self.max_object = max_object
        self._unwrapping = threading.Lock()
        self.root = spool.root / "uploads"
        make_dirs(self.root)
        self._planner = planner
        self._on_stored = on_stored
        self._wanted = wanted_keywords
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.resent_bytes = 0  # bytes that arrived for offsets already received (for tests)

    # -- create, head ----------------------------------------------------------------------

    def create(self, unit: str, size: int, meta: UploadMetadata) -> Created:
        """A new upload, the unit's unfinished one for the same object, or "committed"."""
        found = self._existing(unit, size, meta)
        if found is not None:
            return found
        new = self._new_upload(unit, size, meta)

        def insert(conn: sqlite3.Connection) -> None:
            new.insert(conn, received=0, state="uploading", object_id=None)
            self._announce_in(conn, unit, new.study_tag, meta.study_objects)

        self.spool.journal.run(insert)
        return Created(Upload(new.id, size, 0, "uploading", None), already_committed=False)

    def _existing(self, unit: str, size: int, meta: UploadMetadata) -> Created | None:
        """The object already committed, or the unit's unfinished upload of it (a create
        whose answer was lost: resume that upload); None for a new upload. Either of the
        first two also records the study's announced size."""
        if meta.encoding == ENVELOPE and size > ENVELOPE_LIMIT:
            raise TooLarge(
                f"an enveloped object may have at most {ENVELOPE_LIMIT} bytes on the wire; "
                "send bigger objects as they are"
            )
        keyring = self.spool.keyring
        sop_tag = keyring.lookup_tag("sop", meta.sop_instance_uid)
        digest = keyring.content_tag(bytes.fromhex(meta.sha256))
        reader = self.spool.reader_connection()
        done = reader.execute(
            "SELECT object_id, upload_id FROM hub_commits WHERE sop_tag = ? AND digest = ?",
            (sop_tag, digest),
        ).fetchone()
        found: Created | None = None
        if done is not None:
            upload = Upload(str(done[1]), size, size, "committed", str(done[0]))
            found = Created(upload, already_committed=True)
        else:
            row = reader.execute(
                "SELECT id FROM hub_incoming WHERE unit = ? AND sop_tag = ? AND digest = ?"
                " AND size = ? AND state = 'uploading' ORDER BY created_at DESC LIMIT 1",
                (unit, sop_tag, digest, size),
            ).fetchone()
            existing = self.head(unit, str(row[0])) if row is not None else None
            if existing is not None:
                found = Created(existing, already_committed=False)
        if found is not None and meta.study_objects:
            self._announce(unit, meta.study_instance_uid, meta.study_objects)
        return found

    def _new_upload(self, unit: str, size: int, meta: UploadMetadata) -> _NewUpload:
        """A new upload's row, not yet written: id, tags, wrapped data key, sealed record."""
        keyring = self.spool.keyring
        upload_id = uuid.uuid4().hex
        data_key = os.urandom(32)
        key_id, wrapped = keyring.wrap(data_key, upload_id)
        record = {
            "sop_instance_uid": meta.sop_instance_uid,
            "study_instance_uid": meta.study_instance_uid,
            "series_instance_uid": meta.series_instance_uid,
            "sha256": meta.sha256,
            "encoding": meta.encoding,
        }
        return _NewUpload(
            id=upload_id,
            unit=unit,
            size=size,
            sop_tag=keyring.lookup_tag("sop", meta.sop_instance_uid),
            study_tag=keyring.lookup_tag("study", meta.study_instance_uid),
            digest=keyring.content_tag(bytes.fromhex(meta.sha256)),
            key_id=key_id,
            wrapped_key=wrapped,
            meta=keyring.seal_record(upload_id, json.dumps(record).encode()),
        )

    def create_whole(
        self, unit: str, meta: UploadMetadata, data: bytes, checksum: bytes | None, peer: str
    ) -> tuple[Created, Committed | None]:
        """A create whose body is the whole object, to be committed at once (the
        creation-with-upload and waystation-commit extensions together: one request per
        small object). Verified and stored like :meth:`commit`, straight from memory: no
        segment is written, fsynced, read back and decrypted, and the upload's row, the
        object, its key in hub_commits and the study manifest share ONE journal commit.

        Why that keeps the promise: nothing is answered before that commit is durable, and
        before it nothing of this upload exists at the hub, so a crash costs the unit one
        repeat of the request (as a lost answer would). An object already committed, or
        with an unfinished upload (a repeat of a create whose answer was lost), is left to
        the usual path: ``(created, None)`` then, and the caller appends and commits.
        """
        size = len(data)
        found = self._existing(unit, size, meta)
        if found is not None:
            return found, None
        if checksum is not None and hashlib.sha256(data).digest() != checksum:
            raise ChecksumMismatch("the chunk's checksum does not match its bytes", offset=0)
        if self.spool.free_bytes() < self.spool.config.min_free:
            raise StorageFull("the hub's spool is below its minimum free space")
        new = self._new_upload(unit, size, meta)
        original = data
        if meta.encoding == ENVELOPE:
            try:
                with self._unwrapping:  # one at a time: each holds its object in memory
                    original = unwrap(data, max_size=min(self.max_object, ENVELOPE_LIMIT))
            except EnvelopeError as exc:
                raise Discarded(f"the envelope is not valid ({exc}); send it again") from None
        incoming = self.spool.begin()
        try:
            view = memoryview(original)
            for start in range(0, len(view), 1024 * 1024):
                incoming.write(view[start : start + 1024 * 1024])
            incoming.finish()
        except BaseException:
            incoming.discard()
            raise

        def insert(conn: sqlite3.Connection, result: StoreResult) -> None:
            new.insert(conn, received=size, state="committed", object_id=result.object_id)
            self._announce_in(conn, unit, new.study_tag, meta.study_objects)

        announced = {"sop_instance_uid": meta.sop_instance_uid, "sha256": meta.sha256}
        committed = self._store_verified(
            new.as_upload(), unit, new, announced, incoming, peer, restart=lambda: None,
            row=insert,
        )  # fmt: skip
        upload = Upload(new.id, size, size, "committed", committed.object_id)
        return Created(upload, already_committed=False), committed

    def head(self, unit: str, upload_id: str) -> Upload | None:
        """The unit's upload, or None (unknown, or another unit's)."""
        row = (
            self.spool.reader_connection()
            .execute(
                "SELECT id, size, received, state, object_id FROM hub_incoming"
                " WHERE id = ? AND unit = ?",
                (upload_id, unit),
            )
            .fetchone()
        )
        return Upload(*row) if row is not None else None

    # -- append ----------------------------------------------------------------------------

    def append(
        self, unit: str, upload_id: str, offset: int, data: bytes, checksum: bytes | None
    ) -> int:
        """Append ``data`` at ``offset``; returns the new durable offset."""
        with self._lock(upload_id):
            upload = self.head(unit, upload_id)
            if upload is None:
                raise NotFound("no such upload")
            if upload.state != "uploading":
                raise OffsetConflict("the upload is already committed", offset=upload.size)
            if offset != upload.received:
                if offset < upload.received:
                    self.resent_bytes += len(data)
                raise OffsetConflict(
                    f"the upload is at offset {upload.received}, not {offset}",
                    offset=upload.received,
                )
            if offset + len(data) > upload.size:
                raise TooLarge(
                    f"the chunk ends at {offset + len(data)}, past the upload's length "
                    f"{upload.size}",
                    offset=upload.received,
                )
            if checksum is not None and hashlib.sha256(data).digest() != checksum:
                raise ChecksumMismatch(
                    "the chunk's checksum does not match its bytes", offset=upload.received
                )
            if not data:
                return upload.received
            if self.spool.free_bytes() < self.spool.config.min_free:
                raise StorageFull("the hub's spool is below its minimum free space")
            self._write_segment(upload_id, offset, data)
            end = offset + len(data)

            def advance(conn: sqlite3.Connection) -> None:
                conn.execute(
                    "UPDATE hub_incoming SET received = ?, updated_at = ?"
                    " WHERE id = ? AND received = ?",
                    (end, time.time(), upload_id, offset),
                )

            self.spool.journal.run(advance)
            return end

    def _write_segment(self, upload_id: str, offset: int, data: bytes) -> None:
        key = self._data_key(upload_id)
        sealed = seal(self.spool.cipher, key, data, _segment_ad(upload_id, offset))
        directory = self.root / upload_id
        make_dirs(directory)
        final = directory / f"{offset:020d}.seg"
        temporary = directory / f"{offset:020d}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(sealed)
                while view:
                    view = view[os.write(fd, view) :]
                # Why this order: data durable, then the name, then (caller) the journal
                # offset that says the segment counts.
                fsync_file(fd)
            finally:
                os.close(fd)
            os.rename(temporary, final)
            fsync_dir(directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            if exc.errno in (28, 122):
                raise StorageFull("the hub's storage is full") from exc
            raise StorageFault(f"cannot write an upload segment: {exc.strerror}") from exc

    def _data_key(self, upload_id: str) -> bytes:
        row = (
            self.spool.reader_connection()
            .execute("SELECT key_id, wrapped_key FROM hub_incoming WHERE id = ?", (upload_id,))
            .fetchone()
        )
        if row is None:
            raise IntegrityError(f"upload {upload_id} has no key")
        return self.spool.keyring.unwrap(str(row[0]), bytes(row[1]), upload_id)

    # -- commit ----------------------------------------------------------------------------

    def commit(self, unit: str, upload_id: str, peer: str) -> Committed:
        """Verify and store the complete upload; idempotent."""
        with self._lock(upload_id):
            upload = self.head(unit, upload_id)
            if upload is None:
                raise NotFound("no such upload")
            if upload.state == "committed":
                return Committed(upload_id, str(upload.object_id), already=True)
            if upload.received != upload.size:
                raise OffsetConflict(
                    f"the upload has {upload.received} of {upload.size} bytes",
                    offset=upload.received,
                )
            return self._commit(unit, upload, peer)

    def _commit(self, unit: str, upload: Upload, peer: str) -> Committed:
        conn = self.spool.reader_connection()
        sop_tag, study_tag, digest, sealed = conn.execute(
            "SELECT sop_tag, study_tag, digest, meta FROM hub_incoming WHERE id = ?",
            (upload.id,),
        ).fetchone()
        done = conn.execute(
            "SELECT object_id FROM hub_commits WHERE sop_tag = ? AND digest = ?",
            (sop_tag, digest),
        ).fetchone()
        if done is not None:  # the same object came through another upload meanwhile
            self._mark_committed(upload.id, str(done[0]))
            return Committed(upload.id, str(done[0]), already=True)
        announced = json.loads(self.spool.keyring.open_record(upload.id, bytes(sealed)))
        incoming = self.spool.begin()
        try:
            if announced.get("encoding") == ENVELOPE:
                self._unwrap_into(upload, incoming.write)
            else:
                self._replay_segments(upload, incoming.write)
            incoming.finish()
        except BaseException:
            incoming.discard()
            raise

        def mark(txn: sqlite3.Connection, result: StoreResult) -> None:
            txn.execute(
                "UPDATE hub_incoming SET state = 'committed', object_id = ?, updated_at = ?"
                " WHERE id = ?",
                (result.object_id, time.time(), upload.id),
            )

        keys = _Keys(bytes(sop_tag), bytes(study_tag), bytes(digest))
        committed = self._store_verified(
            upload, unit, keys, announced, incoming, peer,
            restart=lambda: self._restart(upload.id), row=mark,
        )  # fmt: skip
        self._remove_segments(upload.id)
        return committed

    def _store_verified(
        self,
        upload: Upload,
        unit: str,
        keys: _Keys | _NewUpload,
        announced: dict[str, str],
        incoming: IncomingObject,
        peer: str,
        *,
        restart: Callable[[], None],
        row: Callable[[sqlite3.Connection, StoreResult], None],
    ) -> Committed:
        """Check a finished ``incoming`` against what the unit announced (SHA-256, SOP
        Instance UID, readable DICOM), then store it: object, deliveries, the key in
        hub_commits and ``row`` (the upload's row) in one journal commit. ``restart``
        throws away what was received when the bytes are wrong."""
        if incoming.sha256.hex() != announced["sha256"]:
            incoming.discard()
            restart()
            raise Discarded(
                "the object's SHA-256 does not match the one announced; the upload was "
                "discarded, send it again"
            )
        try:
            # The plaintext the writer just sealed where the object fits its first chunk
            # (no second decryption), else the decrypting reader.
            with contextlib.closing(incoming.header_reader()) as reader:
                attributes = read_attributes(
                    reader,
                    command_sop_class="",
                    command_sop_instance=announced["sop_instance_uid"],
                    wanted_keywords=self._wanted,
                )
        except UnreadableObject as exc:
            incoming.discard()
            raise Unprocessable(f"the object is not readable DICOM ({exc.kind})") from None
        if attributes.sop_instance_uid != announced["sop_instance_uid"]:
            incoming.discard()
            raise Unprocessable("the object's SOP Instance UID is not the one announced")
        source = Source(calling_ae=unit, called_ae="HUB", peer=peer)
        deliveries = self._planner(attributes, source)
        now = time.time()

        def record_key(txn: sqlite3.Connection, result: StoreResult) -> None:
            # Same transaction as the object row: key and object exist together or not at all.
            txn.execute(
                "INSERT OR IGNORE INTO hub_commits(sop_tag, digest, unit, study_tag, object_id,"
                " upload_id, committed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (keys.sop_tag, keys.digest, unit, keys.study_tag, result.object_id, upload.id,
                 now),
            )  # fmt: skip
            row(txn, result)

        result = self.spool.store(incoming, attributes, source, deliveries, also=record_key)
        if result.deliveries:
            self._on_stored(deliveries)
        log.info(
            "upload %s from %s committed as object %s (%d bytes)",
            upload.id,
            unit,
            result.object_id,
            upload.size,
        )
        return Committed(upload.id, result.object_id, already=False)

    def _unwrap_into(self, upload: Upload, write: Callable[[bytes], int]) -> None:
        """Restore an enveloped upload to the original bytes (in memory: the envelope is
        bounded by max_object, and unwrap never inflates past the size it declares)."""
        collected = bytearray()

        def collect(piece: bytes) -> int:
            collected.extend(piece)
            return len(piece)

        self._replay_segments(upload, collect)
        try:
            with self._unwrapping:  # one at a time: each holds its object in memory
                original = unwrap(bytes(collected), max_size=min(self.max_object, ENVELOPE_LIMIT))
        except EnvelopeError as exc:
            self._restart(upload.id)
            raise Discarded(f"the envelope is not valid ({exc}); send it again") from None
        for start in range(0, len(original), 1024 * 1024):
            write(original[start : start + 1024 * 1024])

    def _replay_segments(self, upload: Upload, write: Callable[[bytes], int]) -> None:
        key = self._data_key(upload.id)
        offset = 0
        while offset < upload.size:
            path = self.root / upload.id / f"{offset:020d}.seg"
            try:
                sealed = path.read_bytes()
            except FileNotFoundError:
                self._restart(upload.id)
                raise Discarded(
                    f"the upload's data at offset {offset} is missing; send it again"
                ) from None
            plain = open_sealed(self.spool.cipher, key, sealed, _segment_ad(upload.id, offset))
            write(plain)
            offset += len(plain)

    def _mark_committed(self, upload_id: str, object_id: str) -> None:
        self.spool.journal.run(
            lambda conn: conn.execute(
                "UPDATE hub_incoming SET state = 'committed', object_id = ?, updated_at = ?"
                " WHERE id = ?",
                (object_id, time.time(), upload_id),
            )
        )
        self._remove_segments(upload_id)

    def _restart(self, upload_id: str) -> None:
        """Throw away what was received: the unit sends the object again from 0."""
        self.spool.journal.run(
            lambda conn: conn.execute(
                "UPDATE hub_incoming SET received = 0, updated_at = ? WHERE id = ?",
                (time.time(), upload_id),
            )
        )
        self._remove_segments(upload_id)

    def _remove_segments(self, upload_id: str) -> None:
        shutil.rmtree(self.root / upload_id, ignore_errors=True)

    def terminate(self, unit: str, upload_id: str) -> None:
        """tus termination: forget an uncommitted upload."""
        with self._lock(upload_id):
            upload = self.head(unit, upload_id)
            if upload is None:
                raise NotFound("no such upload")
            if upload.state == "committed":
                raise OffsetConflict("a committed upload cannot be removed", offset=upload.size)
            self.spool.journal.run(
                lambda conn: conn.execute("DELETE FROM hub_incoming WHERE id = ?", (upload_id,))
            )
            self._remove_segments(upload_id)

    # -- receipts, manifests ---------------------------------------------------------------

    def receipts(self, unit: str, upload_ids: Sequence[str]) -> list[Receipt]:
        """Where each of the unit's uploads stands (another unit's are "unknown")."""
        conn = self.spool.reader_connection()
        answers: list[Receipt] = []
        for upload_id in upload_ids:
            row = conn.execute(
                "SELECT state, object_id FROM hub_incoming WHERE id = ? AND unit = ?",
                (upload_id, unit),
            ).fetchone()
            if row is None:
                answers.append(Receipt(upload_id, "unknown"))
                continue
            if row[0] != "committed":
                answers.append(Receipt(upload_id, str(row[0])))
                continue
            states = {
                str(s)
                for (s,) in conn.execute(
                    "SELECT state FROM deliveries WHERE object_id = ?", (row[1],)
                )
            }
            if not states:
                answers.append(Receipt(upload_id, "committed"))
            elif states <= {"delivered"}:
                answers.append(Receipt(upload_id, "delivered"))
            elif "failed" in states:
                answers.append(Receipt(upload_id, "failed"))
            else:
                answers.append(Receipt(upload_id, "committed"))
        return answers

    def _announce(self, unit: str, study_uid: str, expected: int) -> None:
        """A study holds at least ``expected`` objects (a create's study-objects)."""
        study_tag = self.spool.keyring.lookup_tag("study", study_uid)
        self.spool.journal.run(lambda conn: self._announce_in(conn, unit, study_tag, expected))

    @staticmethod
    def _announce_in(conn: sqlite3.Connection, unit: str, study_tag: bytes, expected: int) -> None:
        """:meth:`_announce` inside a caller's transaction (nothing when ``expected`` is 0)."""
        if expected:
            conn.execute(
                "INSERT INTO hub_manifests(unit, study_tag, expected, updated_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT(unit, study_tag) DO UPDATE SET"
                " expected = max(expected, excluded.expected), updated_at = excluded.updated_at",
                (unit, study_tag, expected, time.time()),
            )

    def manifest(self, unit: str, study_uid: str, expected: int | None) -> tuple[int | None, int]:
        """Record (when ``expected`` is given) and report a study: (expected, received)."""
        study_tag = self.spool.keyring.lookup_tag("study", study_uid)
        if expected is not None:
            self.spool.journal.run(
                lambda conn: conn.execute(
                    "INSERT INTO hub_manifests(unit, study_tag, expected, updated_at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT(unit, study_tag) DO UPDATE SET"
                    " expected = excluded.expected, updated_at = excluded.updated_at",
                    (unit, study_tag, expected, time.time()),
                )
            )
        conn = self.spool.reader_connection()
        row = conn.execute(
            "SELECT expected FROM hub_manifests WHERE unit = ? AND study_tag = ?",
            (unit, study_tag),
        ).fetchone()
        received = conn.execute(
            "SELECT count(*) FROM hub_commits WHERE unit = ? AND study_tag = ?",
            (unit, study_tag),
        ).fetchone()[0]
        return (int(row[0]) if row else None), int(received)

    # -- start and housekeeping ------------------------------------------------------------

    def recover(self) -> None:
        """At start: drop segments past each upload's recorded offset (written, never
        confirmed), and leftovers of committed, removed or unknown uploads."""
        conn = self.spool.reader_connection()
        uploading = {
            str(i): int(r)
            for i, r in conn.execute(
                "SELECT id, received FROM hub_incoming WHERE state = 'uploading'"
            )
        }
        for directory in self.root.iterdir():
            received = uploading.get(directory.name)
            if received is None:
                shutil.rmtree(directory, ignore_errors=True)
                continue
            for path in directory.iterdir():
                stem = path.stem
                if path.suffix != ".seg" or not stem.isdigit() or int(stem) >= received:
                    path.unlink(missing_ok=True)

    def expire(self, older_than: float) -> int:
        """Remove uncommitted uploads untouched since ``older_than`` (epoch seconds)."""
        rows = (
            self.spool.reader_connection()
            .execute(
                "SELECT id FROM hub_incoming WHERE state = 'uploading' AND updated_at < ?",
                (older_than,),
            )
            .fetchall()
        )
        for (upload_id,) in rows:
            with self._lock(str(upload_id)):
                self._delete_uploading(str(upload_id))
                self._remove_segments(str(upload_id))
        return len(rows)

    def _delete_uploading(self, upload_id: str) -> None:
        self.spool.journal.run(
            lambda conn: conn.execute(
                "DELETE FROM hub_incoming WHERE id = ? AND state = 'uploading'", (upload_id,)
            )
        )

    def _lock(self, upload_id: str) -> threading.Lock:
        with self._locks_guard:
            lock = self._locks.get(upload_id)
            if lock is None:
                lock = self._locks[upload_id] = threading.Lock()
            return lock


def _segment_ad(upload_id: str, offset: int) -> bytes:
    # Binds a segment to its upload and place: segments cannot be swapped or moved.
    return f"hub-segment|{upload_id}|{offset}".encode()
