"""Finding the data set in a DICOM Part 10 file (PS3.10 section 7.1) without decoding it.

A C-STORE carries the data set only; the 128-byte preamble, "DICM" and the File Meta
Information (group 0002, always Explicit VR Little Endian) stay behind. :func:`read_file_meta`
reads just the File Meta and says where the data set starts, so the rest can be streamed as
it is. :func:`part10_header` writes one, for the receiver to put in front of a data set.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import BinaryIO

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

PREAMBLE = 128
MAGIC = b"DICM"
#: A File Meta group larger than this is not believed (it is normally a few hundred bytes).
MAX_META = 1024 * 1024
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
             b"UT", b"UV"}  # fmt: skip
_SHORT = struct.Struct("<HH2sH")
_UL = struct.Struct("<I")


class NotPart10(ValueError):
    """The bytes are not a DICOM Part 10 file with a readable File Meta."""


@dataclass(frozen=True)
class FileMeta:
    """What the File Meta says, and the byte offset where the data set begins."""

    sop_class: str
    sop_instance: str
    transfer_syntax: str
    dataset_offset: int


def read_file_meta(stream: BinaryIO | io.RawIOBase) -> FileMeta:
    """Read the preamble and File Meta from ``stream`` (positioned at the start); the stream
    is left just past the File Meta, at the first byte of the data set."""
    head = _read(stream, PREAMBLE + len(MAGIC))
    if head[PREAMBLE:] != MAGIC:
        raise NotPart10("no DICM prefix after the preamble")
    values: dict[int, bytes] = {}
    offset = PREAMBLE + len(MAGIC)
    end: int | None = None
    while end is None or offset < end:
        header = stream.read(8) or b""
        if len(header) < 8:
            if end is None and values:
                break  # a file of File Meta only: an empty data set
            raise NotPart10("the File Meta is cut off")
        group, element, vr, short_length = _SHORT.unpack(header)
        if group != 0x0002:
            if end is not None:
                raise NotPart10("the File Meta group length is wrong")
            stream.seek(offset)  # no group length: the data set starts at this element
            break
        offset += 8
        length = short_length
        if vr in _LONG_VRS:  # 2 reserved bytes (read as the short length), then 4 of length
            length = _UL.unpack(_read(stream, 4))[0]
            offset += 4
        if length > MAX_META:
            raise NotPart10("a File Meta element is implausibly long")
        values[element] = _read(stream, length)
        offset += length
        if element == 0x0000 and end is None and length == 4:
            end = offset + _UL.unpack(values[0x0000])[0]
            if end - offset > MAX_META:
                raise NotPart10("the File Meta group length is implausible")
    return FileMeta(
        sop_class=_text(values.get(0x0002)),
        sop_instance=_text(values.get(0x0003)),
        transfer_syntax=_text(values.get(0x0010)),
        dataset_offset=offset,
    )


def _read(stream: BinaryIO | io.RawIOBase, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise NotPart10("the file ends inside its File Meta")
        data += chunk
    return data


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("ascii", "replace").rstrip("\0 ")


# -- writing ----------------------------------------------------------------------------
# Encoded directly (Explicit VR Little Endian, seven elements) because building it with
# pydicom's Dataset machinery cost more per object than receiving a small object's data.
# The result is byte for byte the header pynetdicom writes (tests/unit/test_ingest_protocol.py).

_HEADER_START = b"\x00" * PREAMBLE + MAGIC


def _element(element: int, vr: bytes, value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii", "replace")
    if len(raw) % 2:
        raw += pad
    return struct.pack("<HH2sH", 0x0002, element, vr, len(raw)) + raw


_TAIL = _element(0x0012, b"UI", str(PYNETDICOM_IMPLEMENTATION_UID), b"\x00") + _element(
    0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION, b" "
)
_VERSION = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"


def part10_header(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, "DICM" and the file meta information group for one object."""
    body = (
        _VERSION
        + _element(0x0002, b"UI", sop_class, b"\x00")
        + _element(0x0003, b"UI", sop_instance, b"\x00")
        + _element(0x0010, b"UI", transfer_syntax, b"\x00")
        + _TAIL
    )
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return _HEADER_START + length + body
