"""An object being received: a file-like sink that encrypts as bytes arrive.

Ingest streams each incoming data set into one of these as its fragments arrive (see
router/ingest/association.py), so plaintext never reaches storage. Write errors are captured,
not raised: the rest of the data set must still be read off the wire so the sender gets an
answer - 0xA700, decided from ``error`` when the object is complete.

Small objects stay in memory (already encrypted) and are held inline in the journal, so one
journal commit is their only fsync. An object that grows past ``inline_limit`` spills to a
``.part`` file and becomes a blob file.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from pathlib import Path
from typing import BinaryIO

from router.errors import StorageFault, StorageFull
from router.spool.crypto import DEFAULT_CHUNK_SIZE, BlobReader, BlobWriter, CipherName
from router.spool.fsio import fsync_file

DEFAULT_INLINE_LIMIT = 1024 * 1024


class _SpillingOutput:
    """Ciphertext goes to memory until it passes the limit, then to the ``.part`` file."""

    def __init__(self, part_path: Path, limit: int) -> None:
        self.part_path = part_path
        self.limit = limit
        self.memory: io.BytesIO | None = io.BytesIO()
        self.file: BinaryIO | None = None

    def write(self, data: bytes) -> int:
        if self.memory is not None:
            self.memory.write(data)
            if self.memory.tell() <= self.limit:
                return len(data)
            fd = os.open(self.part_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            self.file = os.fdopen(fd, "wb", buffering=0)
            _write_all(self.file, self.memory.getbuffer())
            self.memory = None
            return len(data)
        assert self.file is not None
        _write_all(self.file, data)
        return len(data)


def _write_all(file: BinaryIO, data: bytes | memoryview) -> None:
    """Write every byte or raise: a short write (disk full, quota) must never go unnoticed."""
    view = memoryview(data)
    while view:
        written = file.write(view)
        if not written:
            raise OSError(28, "no space left on device (short write)")
        view = view[written:]


class IncomingObject:
    """The encrypted content of one object being received."""

    def __init__(
        self,
        directory: Path,
        *,
        data_key: bytes,
        cipher: CipherName,
        refused: StorageFull | StorageFault | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
    ) -> None:
        self.object_id = uuid.uuid4().hex
        self.directory = directory
        self.part_path = directory / f"{self.object_id}.part"
        self.final_path = directory / f"{self.object_id}.blob"
        self.data_key = data_key
        self.chunk_size = chunk_size
        self.error: StorageFull | StorageFault | None = refused
        self.size = 0
        self.sha256 = b""
        self._out = _SpillingOutput(self.part_path, inline_limit)
        self._writer: BlobWriter | None = None
        if refused is None:
            self._writer = BlobWriter(
                self._out,  # type: ignore[arg-type]
                data_key=data_key,
                object_id=bytes.fromhex(self.object_id),
                cipher=cipher,
                chunk_size=chunk_size,
            )

    @property
    def inline(self) -> bytes | None:
        """The whole encrypted blob when the object stayed in memory, else None."""
        memory = self._out.memory
        return bytes(memory.getbuffer()) if memory is not None else None

    def write(self, data: bytes | memoryview) -> int:
        """Encrypt and keep ``data``; after an error, bytes are counted and dropped."""
        if self._writer is not None and self.error is None:
            try:
                self._writer.write(data)
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def received_prefix(self) -> bytes | None:
        """The first plaintext bytes received so far (at most one chunk), for reading the
        header while the rest still arrives; None after an error. Never stored."""
        if self._writer is None or self.error is not None:
            return None
        return self._writer.plaintext_prefix()

    def finish(self) -> None:
        """Seal the last chunk. Raises the captured error, if any."""
        if self.error is None and self._writer is not None:
            try:
                self.size, self.sha256 = self._writer.finish()
            except OSError as exc:
                self._fail(exc)
        if self.error is not None:
            raise self.error

    def header_reader(self) -> BinaryIO:
        """A plaintext view for parsing the header (call after ``finish``): the plaintext
        the writer just encrypted when the object fits its first chunk (the usual case; no
        second decryption), else the decrypting :meth:`reader`."""
        head = self._writer.head if self._writer is not None else None
        if head is not None and len(head) == self.size:
            return io.BytesIO(head)
        return self.reader()  # type: ignore[return-value]

    def reader(self) -> BlobReader:
        """A plaintext view of what was received (call after ``finish``)."""
        inline = self.inline
        return BlobReader(
            inline if inline is not None else self.part_path,
            data_key=self.data_key,
            object_id=bytes.fromhex(self.object_id),
        )

    def make_durable(self) -> None:
        """For a blob file: fsync it, close it, and rename it to its final name.

        Why this order: the data must be durable before the name that publishes it; the
        rename itself becomes durable with the directory fsync the journal commit performs.
        An inline object is made durable by the journal commit alone.
        """
        file = self._out.file
        if self._out.memory is not None:
            return
        if file is None:
            raise StorageFault("object was never opened for writing")
        fsync_file(file.fileno())
        self.close()
        try:
            os.rename(self.part_path, self.final_path)
        except OSError as exc:
            raise StorageFault(f"cannot rename blob into place: {exc.strerror}") from exc

    def close(self) -> None:
        """Close the file (pynetdicom calls this after the handler). Idempotent."""
        if self._out.file is not None:
            self._out.file.close()
            self._out.file = None

    def discard(self, *, keep_published: bool = False) -> None:
        """Remove whatever was written; used when the object is refused or not acknowledged.

        ``keep_published`` keeps a blob already renamed into place: when a journal commit
        reports failure it may still have reached the disk, and only recovery, reading the
        journal at the next start, can tell whether the blob is referenced.
        """
        self.close()
        self._out.memory = None
        paths = (self.part_path,) if keep_published else (self.part_path, self.final_path)
        for path in paths:
            # Not there, or recovery at the next start removes it.
            with contextlib.suppress(OSError):
                path.unlink()

    def _fail(self, exc: OSError) -> None:
        if self.error is None:
            self.error = (
                StorageFull("storage is full")
                if exc.errno in (28, 122)  # ENOSPC, EDQUOT
                else StorageFault(f"write failed: {exc.strerror}")
            )
        self.close()
