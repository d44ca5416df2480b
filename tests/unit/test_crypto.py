"""The blob format: round trips, and every kind of tampering is detected."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from router.errors import IntegrityError
from router.spool.crypto import (
    HEADER_SIZE,
    TAG_SIZE,
    BlobReader,
    BlobWriter,
    CipherName,
    choose_cipher,
    ciphertext_size,
)

CHUNK = 4096
CIPHERS: list[CipherName] = ["aes-256-gcm", "chacha20-poly1305"]


def make_blob(path: Path, data: bytes, cipher: CipherName, key: bytes, oid: bytes) -> None:
    with open(path, "wb") as f:
        writer = BlobWriter(f, data_key=key, object_id=oid, cipher=cipher, chunk_size=CHUNK)
        for start in range(0, len(data), 1000):  # uneven writes, as the network delivers them
            writer.write(data[start : start + 1000])
        size, _ = writer.finish()
    assert size == len(data)
    assert path.stat().st_size == ciphertext_size(len(data), CHUNK)


def read_all(path: Path, key: bytes, oid: bytes) -> bytes:
    with BlobReader(path, data_key=key, object_id=oid) as reader:
        return reader.read()


@pytest.mark.parametrize("cipher", CIPHERS)
@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])
def test_round_trip_and_random_access(tmp_path: Path, cipher: CipherName, size: int) -> None:
    data, key, oid = os.urandom(size), os.urandom(32), os.urandom(16)
    make_blob(tmp_path / "b", data, cipher, key, oid)
    assert read_all(tmp_path / "b", key, oid) == data
    with BlobReader(tmp_path / "b", data_key=key, object_id=oid) as reader:
        assert reader.size == size
        reader.seek(size // 2)
        assert reader.read(100) == data[size // 2 : size // 2 + 100]
        assert b"".join(reader.chunk(i) for i in reader.chunks()) == data


def test_plaintext_does_not_appear_in_the_blob(tmp_path: Path) -> None:
    data = b"PATIENT^SECRET " * 5000
    make_blob(tmp_path / "b", data, "aes-256-gcm", os.urandom(32), os.urandom(16))
    assert b"PATIENT^SECRET" not in (tmp_path / "b").read_bytes()


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, bytes, bytes, bytes]:
    data, key, oid = os.urandom(3 * CHUNK + 100), os.urandom(32), os.urandom(16)
    make_blob(tmp_path / "b", data, "aes-256-gcm", key, oid)
    return tmp_path / "b", data, key, oid


def stride() -> int:
    return CHUNK + TAG_SIZE


def test_flipped_byte_is_detected(blob: tuple[Path, bytes, bytes, bytes]) -> None:
    path, _, key, oid = blob
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + stride() + 10] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="chunk 1"):
        read_all(path, key, oid)


def test_flipped_header_byte_is_detected(blob: tuple[Path, bytes, bytes, bytes]) -> None:
    path, _, key, oid = blob
    raw = bytearray(path.read_bytes())
    raw[12] ^= 0x01  # inside the salt
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        read_all(path, key, oid)


@pytest.mark.parametrize("cut", [1, TAG_SIZE, 100, "chunk"])
def test_truncation_is_detected(blob: tuple[Path, bytes, bytes, bytes], cut: int | str) -> None:
    path, _, key, oid = blob
    raw = path.read_bytes()
    keep = HEADER_SIZE + 2 * stride() if cut == "chunk" else len(raw) - int(cut)
    path.write_bytes(raw[:keep])
    with pytest.raises(IntegrityError):
        read_all(path, key, oid)


def test_swapped_chunks_are_detected(blob: tuple[Path, bytes, bytes, bytes]) -> None:
    path, _, key, oid = blob
    raw = path.read_bytes()
    one = raw[HEADER_SIZE : HEADER_SIZE + stride()]
    two = raw[HEADER_SIZE + stride() : HEADER_SIZE + 2 * stride()]
    path.write_bytes(raw[:HEADER_SIZE] + two + one + raw[HEADER_SIZE + 2 * stride() :])
    with pytest.raises(IntegrityError, match="chunk 0"):
        read_all(path, key, oid)


def test_blob_under_another_object_id_is_detected(tmp_path: Path) -> None:
    key = os.urandom(32)
    make_blob(tmp_path / "a", b"a" * 10_000, "aes-256-gcm", key, b"A" * 16)
    with pytest.raises(IntegrityError, match="another object"):
        read_all(tmp_path / "a", key, b"B" * 16)
    # Even with the header rewritten to the other id, the header hash no longer matches.
    raw = bytearray((tmp_path / "a").read_bytes())
    raw[HEADER_SIZE - 16 : HEADER_SIZE] = b"B" * 16
    (tmp_path / "a").write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        read_all(tmp_path / "a", key, b"B" * 16)


def test_chunk_from_another_object_is_detected(tmp_path: Path) -> None:
    key = os.urandom(32)
    make_blob(tmp_path / "a", os.urandom(2 * CHUNK + 5), "aes-256-gcm", key, b"A" * 16)
    make_blob(tmp_path / "b", os.urandom(2 * CHUNK + 5), "aes-256-gcm", key, b"B" * 16)
    a, b = (tmp_path / "a").read_bytes(), (tmp_path / "b").read_bytes()
    mixed = a[: HEADER_SIZE + stride()] + b[HEADER_SIZE + stride() :]
    (tmp_path / "a").write_bytes(mixed)
    with pytest.raises(IntegrityError):
        read_all(tmp_path / "a", key, b"A" * 16)


def test_wrong_key_is_detected(blob: tuple[Path, bytes, bytes, bytes]) -> None:
    path, _, _, oid = blob
    with pytest.raises(IntegrityError):
        read_all(path, os.urandom(32), oid)


def test_cipher_choice() -> None:
    assert choose_cipher("chacha20-poly1305") == "chacha20-poly1305"
    assert choose_cipher("aes-256-gcm") == "aes-256-gcm"
    assert choose_cipher("auto") in CIPHERS


def test_writer_never_buffers_more_than_about_a_chunk() -> None:
    sink = io.BytesIO()
    writer = BlobWriter(
        sink,
        data_key=os.urandom(32),
        object_id=os.urandom(16),
        cipher="aes-256-gcm",
        chunk_size=CHUNK,
    )
    for _ in range(100):
        writer.write(os.urandom(1500))
        assert len(writer._buffer) <= CHUNK + 1500
