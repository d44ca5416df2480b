"""DIMSE command sets (PS3.7 section 9/10): the few group 0000 elements ingest reads and writes.

Command sets are always Implicit VR Little Endian. They are small and their layout is fixed,
so they are decoded and encoded here directly: decoding a whole pydicom Dataset for every
C-STORE costs more than the rest of receiving a small object.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
N_EVENT_REPORT_RQ = 0x0100
N_EVENT_REPORT_RSP = 0x8100
NO_DATA_SET = 0x0101

# Command elements by (group 0000) element number; UIDs and AE titles are text, the rest US/UL.
_AFFECTED_SOP_CLASS = 0x0002
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_MESSAGE_ID_RESPONDED = 0x0120
_PRIORITY = 0x0700
_DATA_SET_TYPE = 0x0800
_STATUS = 0x0900
_AFFECTED_SOP_INSTANCE = 0x1000
_EVENT_TYPE_ID = 0x1002
_MOVE_ORIGINATOR_AE = 0x1030
_MOVE_ORIGINATOR_ID = 0x1031
_TEXT = {_AFFECTED_SOP_CLASS, _AFFECTED_SOP_INSTANCE, _MOVE_ORIGINATOR_AE}
_ELEMENT = struct.Struct("<HHI")


class CommandError(ValueError):
    """A command set that cannot be decoded (truncated, wrong group, bad lengths)."""


@dataclass(frozen=True)
class Command:
    """The decoded elements of one request command set."""

    command_field: int
    message_id: int
    has_data_set: bool
    affected_sop_class: str = ""
    affected_sop_instance: str = ""
    priority: int = 0
    event_type_id: int | None = None


def decode(data: bytes) -> Command:
    """Decode a request command set; unknown elements are skipped."""
    text: dict[int, str] = {}
    numbers: dict[int, int] = {}
    offset, end = 0, len(data)
    while offset < end:
        if end - offset < 8:
            raise CommandError("truncated element header")
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += 8
        if group != 0x0000:
            raise CommandError(f"element ({group:04X},{element:04X}) is not a command element")
        if length > end - offset:
            raise CommandError(f"element (0000,{element:04X}) runs past the command set")
        value = data[offset : offset + length]
        offset += length
        if element in _TEXT:
            text[element] = value.rstrip(b"\x00 ").decode("ascii", "replace")
        elif length in (2, 4):
            numbers[element] = int.from_bytes(value, "little")
    if _COMMAND_FIELD not in numbers:
        raise CommandError("no Command Field")
    return Command(
        command_field=numbers[_COMMAND_FIELD],
        message_id=numbers.get(_MESSAGE_ID, 0),
        has_data_set=numbers.get(_DATA_SET_TYPE, NO_DATA_SET) != NO_DATA_SET,
        affected_sop_class=text.get(_AFFECTED_SOP_CLASS, ""),
        affected_sop_instance=text.get(_AFFECTED_SOP_INSTANCE, ""),
        priority=numbers.get(_PRIORITY, 0),
        event_type_id=numbers.get(_EVENT_TYPE_ID),
    )


def _uid(element: int, value: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\x00"  # UIDs are padded to even length with NUL
    return _ELEMENT.pack(0, element, len(raw)) + raw


def _us(element: int, value: int) -> bytes:
    return _ELEMENT.pack(0, element, 2) + struct.pack("<H", value)


def response(
    command_field: int,
    *,
    message_id: int,
    status: int,
    sop_class: str,
    sop_instance: str = "",
    event_type_id: int | None = None,
) -> bytes:
    """Encode a response command set (no data set) with its Command Group Length."""
    body = _uid(_AFFECTED_SOP_CLASS, sop_class)
    body += _us(_COMMAND_FIELD, command_field)
    body += _us(_MESSAGE_ID_RESPONDED, message_id)
    body += _us(_DATA_SET_TYPE, NO_DATA_SET)
    body += _us(_STATUS, status)
    if sop_instance:
        body += _uid(_AFFECTED_SOP_INSTANCE, sop_instance)
    if event_type_id is not None:
        body += _us(_EVENT_TYPE_ID, event_type_id)
    return _ELEMENT.pack(0, 0x0000, 4) + struct.pack("<I", len(body)) + body
