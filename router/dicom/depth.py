"""How deeply a data set's sequences nest, measured on its bytes before anything parses it.

Why a separate scan: pydicom parses sequences of undefined length recursively while it reads
(a few hundred levels end in RecursionError) and sequences of defined length lazily, later,
wherever a value is first touched - on delivery, when converting or wrapping an object. A
hostile object nested thousands deep would be acknowledged and then fail (or eat memory)
downstream. This scan walks element headers iteratively, seeking over values, so it costs
about one read of the header and never recurses; an over-deep object is refused at the door.

It judges nesting only. Bytes it cannot follow (a truncated stream, an odd item tag) end the
scan quietly: the parser that runs next reports those.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

DEFAULT_MAX_SEQUENCE_DEPTH = 64

_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


class SequenceTooDeep(ValueError):
    """Sequences nest deeper than allowed; the message names the limit only."""


@dataclass
class _Frame:
    kind: str  # "dataset" (top level or an item), "sequence" or "fragments"
    end: int | None  # offset where a defined length ends; None: ends at a delimiter
    implicit: bool


def check_sequence_depth(
    stream: BinaryIO, *, implicit: bool, little: bool, end: int, limit: int
) -> int:
    """Scan the data set at ``stream``'s position up to ``end`` (stopping at top-level Pixel
    Data); raise :class:`SequenceTooDeep` as soon as sequences nest deeper than ``limit``.
    Returns the deepest nesting seen. The stream is left wherever the scan stopped."""
    order = "<" if little else ">"
    tag_length = struct.Struct(order + "HHI")
    tag_vr = struct.Struct(order + "HH2s")
    short_length = struct.Struct(order + "H")
    long_length = struct.Struct(order + "I")
    stack = [_Frame("dataset", end, implicit)]
    depth = deepest = 0
    while stack:
        frame = stack[-1]
        position = stream.tell()
        if (frame.end is not None and position >= frame.end) or position >= end:
            depth -= stack.pop().kind == "sequence"
            continue
        if frame.kind != "dataset":  # inside a sequence or encapsulated pixel data: items
            header = stream.read(8)
            if len(header) < 8:
                return deepest
            group, element, length = tag_length.unpack(header)
            tag = group << 16 | element
            if tag == _SEQUENCE_END:
                depth -= stack.pop().kind == "sequence"
            elif frame.kind == "fragments":
                stream.seek(length, 1)
            else:  # an item (pydicom reads any other tag here as one too, with a warning)
                item_end = None if length == _UNDEFINED else position + 8 + length
                stack.append(_Frame("dataset", item_end, frame.implicit))
            continue
        header = stream.read(4 if frame.implicit else 6)
        if len(header) < (4 if frame.implicit else 6):
            return deepest
        if frame.implicit:
            group, element = struct.unpack(order + "HH", header)
            vr = b""
        else:
            group, element, vr = tag_vr.unpack(header)
        tag = group << 16 | element
        if tag in (_ITEM_END, _ITEM, _SEQUENCE_END):
            # Delimiters carry no VR: the 2 bytes read as one belong to the length.
            stream.seek(position + 8)
            if tag == _ITEM_END and len(stack) > 1:
                stack.pop()
                continue
            return deepest
        if len(stack) == 1 and group >= 0x7FE0:
            return deepest  # the pixel data: the header is over
        if frame.implicit or vr in _LONG_VRS:
            if not frame.implicit:
                stream.seek(2, 1)
            raw = stream.read(4)
            if len(raw) < 4:
                return deepest
            (length,) = long_length.unpack(raw)
        else:
            raw = stream.read(2)
            if len(raw) < 2:
                return deepest
            (length,) = short_length.unpack(raw)
        start = stream.tell()
        kind = _kind(stream, tag, vr, length, frame.implicit, tag_length)
        if kind is None:
            if length == _UNDEFINED:  # pydicom reads such a value up to a sequence delimiter
                if not _skip_past_delimiter(stream, tag_length.format[0]):
                    return deepest
            else:
                stream.seek(length, 1)
            continue
        # Undefined-length UN holds an implicit VR little endian sequence (PS3.5 6.2.2).
        inner_implicit = frame.implicit or vr == b"UN"
        stack.append(_Frame(kind, None if length == _UNDEFINED else start + length, inner_implicit))
        if kind == "sequence":
            depth += 1
            deepest = max(deepest, depth)
            if depth > limit:
                raise SequenceTooDeep(f"sequences nested deeper than {limit}")
    return deepest


def _kind(
    stream: BinaryIO, tag: int, vr: bytes, length: int, implicit: bool, tag_length: struct.Struct
) -> str | None:
    """What an element's value holds: "sequence", "fragments" or None (a plain value)."""
    if length == _UNDEFINED:
        if tag == _PIXEL_DATA or vr in (b"OB", b"OW"):
            return "fragments"
        return "sequence" if vr in (b"SQ", b"UN", b"") else None
    if vr == b"SQ":
        return "sequence"
    if (implicit or vr == b"UN") and length >= 8:
        # Implicit VR (or UN) hides the VR: a value that starts with an item tag is a sequence
        # of defined length (what pydicom concludes too when it meets one).
        start = stream.tell()
        peek = stream.read(8)
        stream.seek(start)
        if len(peek) == 8:
            group, element, _ = tag_length.unpack(peek)
            if group << 16 | element == _ITEM:
                return "sequence"
    return None


def _skip_past_delimiter(stream: BinaryIO, order: str) -> bool:
    """Move past the next Sequence Delimitation Item and its length; False if there is none."""
    marker = struct.pack(order + "HH", 0xFFFE, 0xE0DD)
    start, carry = stream.tell(), b""
    while True:
        block = stream.read(64 * 1024)
        if not block:
            return False
        found = (carry + block).find(marker)
        if found >= 0:
            stream.seek(start - len(carry) + found + 8)
            return True
        start += len(block)
        carry = block[-3:]
