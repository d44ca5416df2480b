"""The Part 10 header written in front of each received data set (PS3.10 section 7.1).

Encoded here directly (Explicit VR Little Endian, seven elements) because building it with
pydicom's Dataset machinery cost more per object than receiving a small object's data.
The result is the same header pynetdicom writes: same elements, same implementation UID.
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

_PREAMBLE = b"\x00" * 128 + b"DICM"


def _text(element: int, vr: bytes, value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii", "replace")
    if len(raw) % 2:
        raw += pad
    return struct.pack("<HH2sH", 0x0002, element, vr, len(raw)) + raw


_TAIL = _text(0x0012, b"UI", str(PYNETDICOM_IMPLEMENTATION_UID), b"\x00") + _text(
    0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION, b" "
)
_VERSION = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"


def part10_header(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, "DICM" and the file meta information group for one object."""
    body = (
        _VERSION
        + _text(0x0002, b"UI", sop_class, b"\x00")
        + _text(0x0003, b"UI", sop_instance, b"\x00")
        + _text(0x0010, b"UI", transfer_syntax, b"\x00")
        + _TAIL
    )
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body))
    return _PREAMBLE + length + body
