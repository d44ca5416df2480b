"""The spool facade: receive, hold and read back encrypted objects under one journal.

Directory layout (see docs/spool-format.md)::

    <spool>/journal.sqlite (+ -wal, -shm)   the journal
    <spool>/blobs/YYYYMMDD/<id>.part         an object being received (never acknowledged)
    <spool>/blobs/YYYYMMDD/<id>.blob         a held object, encrypted

Objects up to 1 MiB (encrypted) are held inline in the journal's ``inline_blobs`` table.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from router.config.model import SpoolConfig
from router.core.objects import ObjectAttributes, PlannedDelivery, Source
from router.errors import IntegrityError, KeyStoreError, SpoolError, StorageFull
from router.spool import keys
from router.spool.crypto import BlobReader, choose_cipher
from router.spool.fresh import FreshBlobs
from router.spool.fsio import free_bytes, make_dirs
from router.spool.incoming import IncomingObject
from router.spool.journal import Journal

log = logging.getLogger("waystation.spool")

Outcome = Literal["stored", "duplicate", "replaced"]


@dataclass(frozen=True)
class StoreResult:
    """What the journal made of a received object."""

    object_id: str
    outcome: Outcome
    deliveries: int


@dataclass(frozen=True)
class HeldObject:
    """A journal row as the spool's readers need it (no patient data in clear)."""

    id: str
    blob: str
    size: int
    sha256: bytes
    key_id: str
    wrapped_key: bytes | None
    state: str
    study_tag: bytes
    meta: bytes
    received_at: float


_HELD_COLUMNS = "id, blob, size, sha256, key_id, wrapped_key, state, study_tag, meta, received_at"


class Spool:
    """Encrypted, journaled, power-loss-safe storage of received objects."""

    def __init__(self, config: SpoolConfig, *, create: bool = True) -> None:
        """Open the spool at ``config.path``; ``create=False`` (the CLI's tools) refuses to
        make a new, empty spool where none exists."""
        self.config = config
        self.root = config.path
        self.blob_root = self.root / "blobs"
        journal_path = self.root / "journal.sqlite"
        key_file = config.resolved_key_file
        if not journal_path.exists() and not create:
            raise SpoolError(f"no spool at {self.root} (is --config right?)")
        if journal_path.exists() and not key_file.exists():
            # Never mint a new key for a spool that already holds objects: they would become
            # unreadable. Most often the key's device is not mounted.
            raise KeyStoreError(
                f"the spool at {self.root} exists but its key file {key_file} is missing; "
                "mount or restore the key file (see docs/keys.md)"
            )
        make_dirs(self.blob_root)
        self.cipher = choose_cipher(config.cipher)
        self.keyring = keys.load_or_create(key_file, self.cipher)
        self.journal = Journal(journal_path)
        self._day_dirs: set[Path] = set()
        self._dir_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        # Inline ciphertext of just-committed objects, for the delivery that usually follows.
        self.fresh = FreshBlobs()

    # -- receiving -------------------------------------------------------------------------

    def begin(self) -> IncomingObject:
        """Start receiving an object. Below ``min_free`` the object is refused up front."""
        directory = self._today_dir()
        refused = None
        if self.free_bytes() < self.config.min_free:
            refused = StorageFull("spool free space is below min_free")
        return IncomingObject(
            directory,
            data_key=os.urandom(32),
            cipher=self.cipher,
            refused=refused,
            inline_limit=self.config.inline_limit,
        )

    def store(
        self,
        incoming: IncomingObject,
        attributes: ObjectAttributes,
        source: Source,
        deliveries: Sequence[PlannedDelivery],
        *,
        also: Callable[[sqlite3.Connection, StoreResult], None] | None = None,
    ) -> StoreResult:
        """Make a finished object durable and record it with its deliveries in one commit.

        ``also`` runs inside that same transaction with its result (the hub records its
        idempotence key there, so the object and the key are committed together or not at all).

        Returns only once the commit is durable; raises StorageFault/StorageFull otherwise,
        in which case nothing was acknowledged and the blob is removed.
        """
        if self.free_bytes() < self.config.min_free:
            incoming.discard()
            raise StorageFull("spool free space is below min_free")
        try:
            inline = incoming.inline
            incoming.make_durable()
            sop_tag = self.keyring.lookup_tag("sop", attributes.sop_instance_uid)
            digest = self.keyring.content_tag(incoming.sha256)
            key_id, wrapped = self.keyring.wrap(incoming.data_key, incoming.object_id)
            meta = self._seal_meta(incoming.object_id, attributes)
            blob = "" if inline is not None else str(incoming.final_path.relative_to(self.root))

            def transaction(conn: sqlite3.Connection) -> StoreResult:
                stored = _record(
                    conn,
                    incoming=incoming,
                    attributes=attributes,
                    source=source,
                    deliveries=deliveries,
                    sop_tag=sop_tag,
                    digest=digest,
                    root=self.root,
                    study_tag=self.keyring.lookup_tag("study", attributes.study_instance_uid),
                    key_id=key_id,
                    wrapped=wrapped,
                    meta=meta,
                    blob=blob,
                    inline=inline,
                )
                if also is not None:
                    also(conn, stored)
                return stored

            # Why wait here: the C-STORE success may only be sent after this returns.
            # A blob file's directory entry must be durable too; an inline object has none.
            dirs = [incoming.directory] if inline is None else []
            result: StoreResult = self.journal.run(transaction, dirs=dirs)
        except BaseException:
            incoming.discard(keep_published=True)
            raise
        if result.outcome == "duplicate":
            incoming.discard()  # identical bytes are already held; keep the first copy
        elif inline is not None and result.deliveries:
            # Only after the commit is durable: what the cache hands out is what is held.
            self.fresh.put(result.object_id, inline)
        return result

    def _seal_meta(self, object_id: str, attributes: ObjectAttributes) -> bytes:
        record = {
            **attributes.phi,
            "sop_instance_uid": attributes.sop_instance_uid,
            "study_instance_uid": attributes.study_instance_uid,
            "series_instance_uid": attributes.series_instance_uid,
        }
        return self.keyring.seal_record(object_id, json.dumps(record).encode())

    def _today_dir(self) -> Path:
        directory = self.blob_root / time.strftime("%Y%m%d", time.gmtime())
        if directory not in self._day_dirs:
            with self._dir_lock:
                make_dirs(directory)
                self._day_dirs.add(directory)
        return directory

    # -- reading ---------------------------------------------------------------------------

    def reader_connection(self) -> sqlite3.Connection:
        """This thread's read connection to the journal."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.journal.read()
            self._local.conn = conn
            with self._dir_lock:
                self._readers.append(conn)
        return conn

    def held_objects(self, states: Sequence[str] = ("held",)) -> Iterator[HeldObject]:
        """Every object in the given states, oldest first."""
        marks = ",".join("?" * len(states))
        query = f"SELECT {_HELD_COLUMNS} FROM objects WHERE state IN ({marks}) ORDER BY rowid"
        for row in self.reader_connection().execute(query, tuple(states)):
            yield HeldObject(*row)

    def get(self, object_id: str) -> HeldObject | None:
        """One object's row, whatever its state."""
        row = (
            self.reader_connection()
            .execute(f"SELECT {_HELD_COLUMNS} FROM objects WHERE id = ?", (object_id,))
            .fetchone()
        )
        return HeldObject(*row) if row is not None else None

    def study_tag(self, study_instance_uid: str) -> bytes:
        """The lookup tag of a Study Instance UID."""
        return self.keyring.lookup_tag("study", study_instance_uid)

    def open_object(self, held: HeldObject, *, fresh: bool = False) -> BlobReader:
        """A plaintext reader over a held object; every chunk is authenticated as read.

        ``fresh=True`` (delivery) may read a just-committed inline object's ciphertext from
        memory instead of the journal; checks of what is stored (verify, export) never do."""
        if held.wrapped_key is None:
            raise IntegrityError(f"object {held.id} was deleted (its key is destroyed)")
        data_key = self.keyring.unwrap(held.key_id, held.wrapped_key, held.id)
        source: Path | bytes = self.root / held.blob
        if not held.blob and fresh and (cached := self.fresh.get(held.id)) is not None:
            source = cached
        elif not held.blob:
            row = (
                self.reader_connection()
                .execute("SELECT data FROM inline_blobs WHERE object_id = ?", (held.id,))
                .fetchone()
            )
            if row is None:
                raise IntegrityError(f"object {held.id} has no inline blob in the journal")
            source = bytes(row[0])
        return BlobReader(source, data_key=data_key, object_id=bytes.fromhex(held.id))

    def metadata(self, held: HeldObject) -> dict[str, str]:
        """The sealed metadata of an object (patient data: never log it)."""
        record: dict[str, str] = json.loads(self.keyring.open_record(held.id, held.meta))
        return record

    def free_bytes(self) -> int:
        """Free bytes on the spool's file system."""
        return free_bytes(self.root)

    def close(self) -> None:
        """Close every reader connection and stop the journal committer."""
        with self._dir_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            conn.close()
        self.journal.close()


def _record(
    conn: sqlite3.Connection,
    *,
    incoming: IncomingObject,
    attributes: ObjectAttributes,
    source: Source,
    deliveries: Sequence[PlannedDelivery],
    sop_tag: bytes,
    digest: bytes,
    root: Path,
    study_tag: bytes,
    key_id: str,
    wrapped: bytes,
    meta: bytes,
    blob: str,
    inline: bytes | None,
) -> StoreResult:
    """The journal transaction of one received object (runs in the committer thread)."""
    now = time.time()
    object_id = incoming.object_id
    previous = conn.execute(
        "SELECT id, sha256, blob FROM objects WHERE sop_tag = ? AND state = 'held'", (sop_tag,)
    ).fetchone()
    received = {"calling_ae": source.calling_ae, "peer": source.peer, "size": incoming.size}
    # A duplicate is only answered from the held copy if that copy is really there.
    held_copy_present = previous is not None and (not previous[2] or (root / previous[2]).exists())
    if previous is not None and held_copy_present and bytes(previous[1]) == digest:
        _history(conn, previous[0], now, "received-again", {**received, "identical": True})
        return StoreResult(previous[0], "duplicate", 0)
    outcome: Outcome = "stored"
    if previous is not None:
        outcome = "replaced"
        conn.execute("UPDATE objects SET state = 'superseded' WHERE id = ?", (previous[0],))
        conn.execute(
            "UPDATE deliveries SET state = 'cancelled', updated_at = ? "
            "WHERE object_id = ? AND state IN ('pending', 'failed')",
            (now, previous[0]),
        )
        _history(conn, previous[0], now, "superseded", {"by": object_id})
    conn.execute(
        "INSERT INTO objects(id, sop_tag, study_tag, sop_class_uid, transfer_syntax, modality,"
        " size, sha256, blob, chunk_size, key_id, wrapped_key, meta, calling_ae, called_ae,"
        " peer, received_at, state, replaces)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,'held',?)",
        (
            object_id,
            sop_tag,
            study_tag,
            attributes.sop_class_uid,
            attributes.transfer_syntax,
            attributes.modality,
            incoming.size,
            digest,
            blob,
            incoming.chunk_size,
            key_id,
            wrapped,
            meta,
            source.calling_ae,
            source.called_ae,
            source.peer,
            now,
            previous[0] if previous is not None else None,
        ),
    )
    if inline is not None:
        conn.execute("INSERT INTO inline_blobs(object_id, data) VALUES (?, ?)", (object_id, inline))
    _history(conn, object_id, now, "received", received)
    if previous is not None:
        _history(conn, object_id, now, "replaces", {"object": previous[0]})
    for delivery in deliveries:
        conn.execute(
            "INSERT INTO deliveries(object_id, destination, rule, priority, send, state,"
            " updated_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
            (
                object_id,
                delivery.destination,
                delivery.rule,
                delivery.priority_rank,
                delivery.send,
                now,
            ),
        )
        _history(
            conn,
            object_id,
            now,
            "routed",
            {
                "rule": delivery.rule,
                "destination": delivery.destination,
                "priority": delivery.priority,
            },
        )
    if not deliveries:
        _history(conn, object_id, now, "unrouted", {"reason": "no routing rule matched"})
    return StoreResult(object_id, outcome, len(deliveries))


def _history(
    conn: sqlite3.Connection, object_id: str, at: float, event: str, detail: dict[str, object]
) -> None:
    conn.execute(
        "INSERT INTO history(object_id, at, event, detail) VALUES (?, ?, ?, ?)",
        (object_id, at, event, json.dumps(detail, sort_keys=True)),
    )
