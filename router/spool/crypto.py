"""Chunked streaming AEAD for spooled objects (in the style of age / Tink streaming AEAD).

Blob layout (all integers big-endian)::

    header  = MAGIC(4) "WSB1" | cipher id(1) | chunk size(4) | salt(16) | object id(16)
    chunk i = AEAD(chunk_key, nonce_i, plaintext_i, ad_i)  -> len(plaintext_i) + 16 bytes

    chunk_key = HKDF-SHA256(data_key, salt, info="waystation blob v1" | cipher id)
    nonce_i   = i as 11 bytes | 0x01 if i is the last chunk else 0x00
    ad_i      = SHA-256(header) | i as 8 bytes

Every chunk but the last holds exactly ``chunk size`` plaintext bytes; the last holds 0 to
``chunk size`` bytes and is sealed with the final flag. So truncation (the new last chunk was not
sealed as final), reordering or swapping chunks (the index is in nonce and AD), moving chunks
between objects (a different data key and header hash) and header tampering (its hash is in
every AD) all fail authentication. The data key is random per object and wrapped by the unit's
key-encryption key (see keys.py), so a blob is unreadable without its journal row.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from dataclasses import dataclass
from functools import cache
from typing import BinaryIO, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from typing_extensions import Buffer

from router.errors import IntegrityError

CipherName = Literal["aes-256-gcm", "chacha20-poly1305"]
MAGIC = b"WSB1"
TAG_SIZE = 16
DEFAULT_CHUNK_SIZE = 1024 * 1024
_HEADER = struct.Struct(">4sBI16s16s")
HEADER_SIZE = _HEADER.size
_CIPHER_IDS: dict[CipherName, int] = {"aes-256-gcm": 1, "chacha20-poly1305": 2}
_CIPHER_NAMES = {v: k for k, v in _CIPHER_IDS.items()}


@cache
def cpu_has_aes() -> bool:
    """True when the CPU advertises AES instructions (x86 "aes", arm64 "aes" feature)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features") and "aes" in line.split(":", 1)[1].split():
                    return True
    except OSError:
        pass
    return False


def choose_cipher(setting: str) -> CipherName:
    """Resolve the ``spool.cipher`` setting: AES-256-GCM with AES instructions, else ChaCha20."""
    if setting == "aes-256-gcm" or (setting == "auto" and cpu_has_aes()):
        return "aes-256-gcm"
    return "chacha20-poly1305"


def _aead(cipher: CipherName, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return AESGCM(key) if cipher == "aes-256-gcm" else ChaCha20Poly1305(key)


def _chunk_key(data_key: bytes, salt: bytes, cipher_id: int) -> bytes:
    info = b"waystation blob v1" + bytes([cipher_id])
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(data_key)


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


@dataclass(frozen=True)
class BlobHeader:
    """The clear-text header at the start of every blob."""

    cipher: CipherName
    chunk_size: int
    salt: bytes
    object_id: bytes

    def pack(self) -> bytes:
        """The header's bytes as stored."""
        return _HEADER.pack(
            MAGIC, _CIPHER_IDS[self.cipher], self.chunk_size, self.salt, self.object_id
        )

    @classmethod
    def unpack(cls, raw: bytes) -> BlobHeader:
        """Parse a header; raises IntegrityError when it is not one."""
        if len(raw) != HEADER_SIZE:
            raise IntegrityError("blob is shorter than its header")
        magic, cipher_id, chunk_size, salt, object_id = _HEADER.unpack(raw)
        if magic != MAGIC or cipher_id not in _CIPHER_NAMES or not 0 < chunk_size <= 1 << 26:
            raise IntegrityError("blob header is not a Waystation blob header")
        return cls(_CIPHER_NAMES[cipher_id], chunk_size, salt, object_id)


class BlobWriter:
    """Encrypts a stream into a blob as it arrives; never holds more than about one chunk.

    The caller owns the file object; ``finish`` seals the last chunk (it does not fsync).
    """

    def __init__(
        self,
        out: BinaryIO,
        *,
        data_key: bytes,
        object_id: bytes,
        cipher: CipherName,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self._out = out
        header = BlobHeader(cipher, chunk_size, os.urandom(16), object_id)
        packed = header.pack()
        self._header_hash = hashlib.sha256(packed).digest()
        self._aead = _aead(cipher, _chunk_key(data_key, header.salt, _CIPHER_IDS[cipher]))
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._index = 0
        self._sha = hashlib.sha256()
        self._size = 0
        self._finished = False
        # The first chunk's plaintext (ingest parses the header from it, not decrypting again).
        self.head: bytes | None = None
        out.write(packed)

    def write(self, data: Buffer) -> int:
        """Add plaintext; full chunks are sealed and written once more data follows them."""
        view = memoryview(data)
        self._sha.update(view)
        self._size += len(view)
        self._buffer += view
        # Keep the last (possibly full) chunk buffered: only finish() knows it is the last one.
        while len(self._buffer) > self._chunk_size:
            self._seal(bytes(self._buffer[: self._chunk_size]), last=False)
            del self._buffer[: self._chunk_size]
        return len(view)

    def plaintext_prefix(self) -> bytes:
        """The first plaintext bytes written so far: all of them while the first chunk is
        still open, else the first chunk (a copy; the writer's buffer keeps changing)."""
        return self.head if self.head is not None else bytes(self._buffer)

    def finish(self) -> tuple[int, bytes]:
        """Seal the final chunk; returns (plaintext size, SHA-256 of the plaintext)."""
        if not self._finished:
            self._seal(bytes(self._buffer), last=True)
            self._buffer = bytearray()
            self._finished = True
        return self._size, self._sha.digest()

    def _seal(self, plaintext: bytes, *, last: bool) -> None:
        if self._index == 0:
            self.head = plaintext
        ad = self._header_hash + self._index.to_bytes(8, "big")
        self._out.write(self._aead.encrypt(_nonce(self._index, last), plaintext, ad))
        self._index += 1


def ciphertext_size(plain_size: int, chunk_size: int) -> int:
    """The size on disk of a blob holding ``plain_size`` bytes."""
    chunks = max(1, -(-plain_size // chunk_size))
    return HEADER_SIZE + plain_size + chunks * TAG_SIZE


class BlobReader(io.RawIOBase):
    """A seekable, read-only plaintext view of a blob that authenticates every chunk it reads."""

    def __init__(
        self, source: str | os.PathLike[str] | bytes, *, data_key: bytes, object_id: bytes
    ) -> None:
        """``source`` is a blob file's path, or a blob's bytes (objects held inline)."""
        super().__init__()
        self._file: BinaryIO = (
            io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
        )
        try:
            header = BlobHeader.unpack(self._file.read(HEADER_SIZE))
            if header.object_id != object_id:
                raise IntegrityError("blob belongs to another object")
            self._header_hash = hashlib.sha256(header.pack()).digest()
            self._aead = _aead(
                header.cipher,
                _chunk_key(data_key, header.salt, _CIPHER_IDS[header.cipher]),
            )
            self._chunk_size = header.chunk_size
            body = self._file.seek(0, io.SEEK_END) - HEADER_SIZE
            stride = self._chunk_size + TAG_SIZE
            self._chunks = max(1, -(-body // stride))
            last = body - (self._chunks - 1) * stride - TAG_SIZE
            if last < 0:
                raise IntegrityError("blob is truncated")
            self.size = (self._chunks - 1) * self._chunk_size + last
        except BaseException:
            self._file.close()
            raise
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None
        self.name: str | None = None  # no path: readers must not reopen the plaintext by name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def chunk(self, index: int) -> bytes:
        """Decrypt and authenticate chunk ``index``; raises IntegrityError on any damage."""
        if self._cached and self._cached[0] == index:
            return self._cached[1]
        stride = self._chunk_size + TAG_SIZE
        self._file.seek(HEADER_SIZE + index * stride)
        sealed = self._file.read(stride)
        last = index == self._chunks - 1
        ad = self._header_hash + index.to_bytes(8, "big")
        try:
            plain = self._aead.decrypt(_nonce(index, last), sealed, ad)
        except InvalidTag:
            raise IntegrityError(f"chunk {index} failed authentication") from None
        self._cached = (index, plain)
        return plain

    def readinto(self, buffer: Buffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._pos >= self.size:
            # End of data is only believed once the final chunk authenticates: a blob cut at
            # a chunk boundary would otherwise read as a shorter, valid object.
            self.chunk(self._chunks - 1)
            return 0
        if not len(view):
            return 0
        index, offset = divmod(self._pos, self._chunk_size)
        data = memoryview(self.chunk(index))[offset : offset + len(view)]  # no copy
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def chunks(self) -> range:
        """The chunk indexes, for streaming the whole plaintext chunk by chunk."""
        return range(self._chunks)

    def close(self) -> None:
        self._file.close()
        super().close()


def seal(cipher: CipherName, key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """Encrypt a small record (nonce || ciphertext || tag) under ``key``."""
    nonce = os.urandom(12)
    return nonce + _aead(cipher, key).encrypt(nonce, plaintext, ad)


def open_sealed(cipher: CipherName, key: bytes, sealed: bytes, ad: bytes) -> bytes:
    """Decrypt a record made by ``seal``; raises IntegrityError if it was altered."""
    try:
        return _aead(cipher, key).decrypt(sealed[:12], sealed[12:], ad)
    except (InvalidTag, ValueError):
        raise IntegrityError("sealed record failed authentication") from None
