"""An object being received: a file-like sink that encrypts as bytes arrive.

pynetdicom's chunked receive writes each incoming data set to a temporary file it opens itself;
ingest hands it one of these instead (see router/ingest/tempfile_seam.py), so plaintext never
reaches storage. Write errors are captured, not raised: pynetdicom calls ``write`` from its
network thread, where an exception would kill the association without an answer. The C-STORE
handler reads ``error`` and answers 0xA700.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO

from router.errors import StorageFault, StorageFull
from router.spool.crypto import DEFAULT_CHUNK_SIZE, BlobReader, BlobWriter, CipherName
from router.spool.fsio import fsync_file


class IncomingObject:
    """The encrypted ``.part`` file of one object being received."""

    def __init__(
        self,
        directory: Path,
        *,
        data_key: bytes,
        cipher: CipherName,
        refused: StorageFull | StorageFault | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.object_id = uuid.uuid4().hex
        self.directory = directory
        self.part_path = directory / f"{self.object_id}.part"
        self.final_path = directory / f"{self.object_id}.blob"
        self.name = str(self.part_path)  # pynetdicom reads .name and unlinks it afterwards
        self.data_key = data_key
        self.chunk_size = chunk_size
        self.error: StorageFault | StorageFull | None = refused
        self.size = 0
        self.sha256 = b""
        self._file: BinaryIO | None = None
        self._writer: BlobWriter | None = None
        if refused is None:
            try:
                fd = os.open(self.part_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                self._file = os.fdopen(fd, "wb", buffering=0)
                self._writer = BlobWriter(
                    self._file,
                    data_key=data_key,
                    object_id=bytes.fromhex(self.object_id),
                    cipher=cipher,
                    chunk_size=chunk_size,
                )
            except OSError as exc:
                self._fail(exc)

    @property
    def file(self) -> IncomingObject:
        """pynetdicom calls ``.file.flush()``; flushing is meaningless before the end."""
        return self

    def flush(self) -> None:
        """No-op: durability is decided by ``make_durable``, not by pynetdicom."""

    def write(self, data: bytes) -> int:
        """Encrypt and write ``data``; after an error, bytes are counted and dropped."""
        if self._writer is not None and self.error is None:
            try:
                self._writer.write(data)
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def finish(self) -> None:
        """Seal the last chunk. Raises the captured error, if any."""
        if self.error is None and self._writer is not None:
            try:
                self.size, self.sha256 = self._writer.finish()
            except OSError as exc:
                self._fail(exc)
        if self.error is not None:
            raise self.error

    def reader(self) -> BlobReader:
        """A plaintext view of what was written (call after ``finish``)."""
        return BlobReader(
            self.part_path, data_key=self.data_key, object_id=bytes.fromhex(self.object_id)
        )

    def make_durable(self) -> None:
        """fsync the blob, close it, and rename it to its final name in the same directory.

        Why this order: the data must be durable before the name that publishes it; the
        rename itself becomes durable with the directory fsync the journal commit performs.
        """
        if self._file is None:
            raise StorageFault("object was never opened for writing")
        fsync_file(self._file.fileno())
        self._file.close()
        self._file = None
        try:
            os.rename(self.part_path, self.final_path)
        except OSError as exc:
            raise StorageFault(f"cannot rename blob into place: {exc.strerror}") from exc

    def close(self) -> None:
        """Close the file (pynetdicom calls this after the handler). Idempotent."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        """Remove whatever was written; used when the object is refused or not acknowledged."""
        self.close()
        for path in (self.part_path, self.final_path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                pass  # recovery at the next start removes what is left

    def _fail(self, exc: OSError) -> None:
        if self.error is None:
            self.error = (
                StorageFull("storage is full")
                if exc.errno in (28, 122)  # ENOSPC, EDQUOT
                else StorageFault(f"write failed: {exc.strerror}")
            )
        self.close()
