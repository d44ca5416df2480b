"""DIMSE command sets (PS3.7 section 9.3 and 10.3, Annex E): encode and decode group 0000.

A command set is always Implicit VR Little Endian. Only the few elements of each message are
encoded, with ``struct``: a C-STORE-RQ costs a handful of microseconds, where building a
pydicom Dataset would cost far more per object. The VR of every command element is fixed by
PS3.7 Annex E, so the table below is the whole dictionary needed.

Builders return the encoded bytes of one command set (Command Group Length included):
``c_store_rq``/``c_store_rsp``, ``c_echo_rq``/``c_echo_rsp``, and for Storage Commitment
``n_action_rq``/``n_action_rsp`` and ``n_event_report_rq``/``n_event_report_rsp``.
:func:`decode` turns received bytes into a :class:`Command` whose properties name the
elements; :func:`encode` takes any element mapping for messages not covered here.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

from router.dicom.errors import ProtocolError

# Command Field values (PS3.7 E.1).
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
N_EVENT_REPORT_RQ = 0x0100
N_EVENT_REPORT_RSP = 0x8100
N_ACTION_RQ = 0x0130
N_ACTION_RSP = 0x8130
NAMES = {
    C_STORE_RQ: "C-STORE-RQ",
    C_STORE_RSP: "C-STORE-RSP",
    C_ECHO_RQ: "C-ECHO-RQ",
    C_ECHO_RSP: "C-ECHO-RSP",
    N_EVENT_REPORT_RQ: "N-EVENT-REPORT-RQ",
    N_EVENT_REPORT_RSP: "N-EVENT-REPORT-RSP",
    N_ACTION_RQ: "N-ACTION-RQ",
    N_ACTION_RSP: "N-ACTION-RSP",
}
# Command Data Set Type: 0x0101 means "no data set"; any other value means one follows.
NO_DATASET = 0x0101
DATASET_PRESENT = 0x0001
# C-STORE Priority.
PRIORITY_MEDIUM = 0x0000
PRIORITY_HIGH = 0x0001
PRIORITY_LOW = 0x0002
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

# Element numbers (all in group 0000).
GROUP_LENGTH = 0x0000
AFFECTED_SOP_CLASS = 0x0002
REQUESTED_SOP_CLASS = 0x0003
COMMAND_FIELD = 0x0100
MESSAGE_ID = 0x0110
RESPONDING_TO = 0x0120
MOVE_DESTINATION = 0x0600
PRIORITY = 0x0700
DATASET_TYPE = 0x0800
STATUS = 0x0900
OFFENDING_ELEMENT = 0x0901
ERROR_COMMENT = 0x0902
ERROR_ID = 0x0903
AFFECTED_SOP_INSTANCE = 0x1000
REQUESTED_SOP_INSTANCE = 0x1001
EVENT_TYPE = 0x1002
ATTRIBUTE_LIST = 0x1005
ACTION_TYPE = 0x1008
MOVE_ORIGINATOR_AE = 0x1030
MOVE_ORIGINATOR_ID = 0x1031

_UL = {GROUP_LENGTH}
_UI = {AFFECTED_SOP_CLASS, REQUESTED_SOP_CLASS, AFFECTED_SOP_INSTANCE, REQUESTED_SOP_INSTANCE}
_US = {COMMAND_FIELD, MESSAGE_ID, RESPONDING_TO, PRIORITY, DATASET_TYPE, STATUS, ERROR_ID,
       EVENT_TYPE, ACTION_TYPE, MOVE_ORIGINATOR_ID, 0x1020, 0x1021, 0x1022, 0x1023}  # fmt: skip
_TEXT = {MOVE_DESTINATION, MOVE_ORIGINATOR_AE, ERROR_COMMENT}  # AE, LO: space-padded
_AT = {OFFENDING_ELEMENT, ATTRIBUTE_LIST}

Value = int | str | tuple[int, ...] | bytes
_ELEMENT = struct.Struct("<HHI")
_US_VALUE = struct.Struct("<H")
_UL_VALUE = struct.Struct("<I")


def encode(elements: Mapping[int, Value]) -> bytes:
    """Encode a command set from ``{element number: value}`` (group 0000, any order).

    Values: int for US/UL elements, str for UI/AE/LO, a tuple of tags (``0xGGGGEEEE``) for AT,
    bytes (even length) for elements this table does not know. The Command Group Length is
    computed; a value given for it is ignored."""
    parts: list[bytes] = []
    for element in sorted(elements):
        if element == GROUP_LENGTH:
            continue
        value = _encode_value(element, elements[element])
        parts.append(_ELEMENT.pack(0, element, len(value)) + value)
    body = b"".join(parts)
    return _ELEMENT.pack(0, GROUP_LENGTH, 4) + _UL_VALUE.pack(len(body)) + body


def _encode_value(element: int, value: Value) -> bytes:
    if element in _US:
        return _US_VALUE.pack(_as_int(element, value))
    if element in _UL:
        return _UL_VALUE.pack(_as_int(element, value))
    if element in _UI or element in _TEXT:
        if not isinstance(value, str):
            raise TypeError(f"(0000,{element:04X}) needs a str")
        raw = value.encode("ascii")
        if len(raw) % 2:
            raw += b"\0" if element in _UI else b" "
        return raw
    if element in _AT:
        if not isinstance(value, tuple):
            raise TypeError(f"(0000,{element:04X}) needs a tuple of tags")
        return b"".join(struct.pack("<HH", tag >> 16, tag & 0xFFFF) for tag in value)
    if not isinstance(value, bytes) or len(value) % 2:
        raise TypeError(f"(0000,{element:04X}) is not in the table: give even-length bytes")
    return value


def _as_int(element: int, value: Value) -> int:
    if not isinstance(value, int):
        raise TypeError(f"(0000,{element:04X}) needs an int")
    return value


@dataclass(frozen=True)
class Command:
    """A decoded command set; ``elements`` maps element numbers to values."""

    elements: Mapping[int, Value]

    def _int(self, element: int) -> int | None:
        value = self.elements.get(element)
        return value if isinstance(value, int) else None

    def _str(self, element: int) -> str | None:
        value = self.elements.get(element)
        return value if isinstance(value, str) else None

    @property
    def field(self) -> int:
        """The Command Field (e.g. C_STORE_RSP)."""
        value = self._int(COMMAND_FIELD)
        if value is None:
            raise ProtocolError("the command set has no Command Field")
        return value

    @property
    def name(self) -> str:
        """The message's name, e.g. "C-STORE-RSP"."""
        return NAMES.get(self.field, f"command 0x{self.field:04X}")

    @property
    def is_response(self) -> bool:
        """Whether this is a response (bit 15 of the Command Field)."""
        return bool(self.field & 0x8000)

    @property
    def has_dataset(self) -> bool:
        """Whether a data set follows the command set."""
        return self._int(DATASET_TYPE) != NO_DATASET

    @property
    def message_id(self) -> int | None:
        """Message ID (requests)."""
        return self._int(MESSAGE_ID)

    @property
    def responding_to(self) -> int | None:
        """Message ID Being Responded To (responses)."""
        return self._int(RESPONDING_TO)

    @property
    def status(self) -> int | None:
        """Status (responses)."""
        return self._int(STATUS)

    @property
    def priority(self) -> int | None:
        """Priority (C-STORE-RQ)."""
        return self._int(PRIORITY)

    @property
    def affected_sop_class(self) -> str | None:
        """Affected SOP Class UID."""
        return self._str(AFFECTED_SOP_CLASS)

    @property
    def affected_sop_instance(self) -> str | None:
        """Affected SOP Instance UID."""
        return self._str(AFFECTED_SOP_INSTANCE)

    @property
    def requested_sop_class(self) -> str | None:
        """Requested SOP Class UID (N-ACTION-RQ)."""
        return self._str(REQUESTED_SOP_CLASS)

    @property
    def requested_sop_instance(self) -> str | None:
        """Requested SOP Instance UID (N-ACTION-RQ)."""
        return self._str(REQUESTED_SOP_INSTANCE)

    @property
    def action_type(self) -> int | None:
        """Action Type ID (N-ACTION)."""
        return self._int(ACTION_TYPE)

    @property
    def event_type(self) -> int | None:
        """Event Type ID (N-EVENT-REPORT)."""
        return self._int(EVENT_TYPE)

    @property
    def error_comment(self) -> str | None:
        """Error Comment (failure responses), if the peer sent one."""
        return self._str(ERROR_COMMENT)


def decode(data: bytes | bytearray | memoryview) -> Command:
    """Decode a command set; raises ProtocolError for anything malformed."""
    view = memoryview(data)
    elements: dict[int, Value] = {}
    offset = 0
    while offset < len(view):
        if offset + _ELEMENT.size > len(view):
            raise ProtocolError("the command set ends inside an element header")
        group, element, length = _ELEMENT.unpack_from(view, offset)
        offset += _ELEMENT.size
        if group != 0:
            raise ProtocolError(f"the command set holds an element of group {group:04X}")
        if offset + length > len(view):
            raise ProtocolError(f"(0000,{element:04X}) runs past the end of the command set")
        elements[element] = _decode_value(element, bytes(view[offset : offset + length]))
        offset += length
    if COMMAND_FIELD not in elements:
        raise ProtocolError("the command set has no Command Field")
    return Command(elements)


def _decode_value(element: int, raw: bytes) -> Value:
    if element in _US:
        if len(raw) != 2:
            raise ProtocolError(f"(0000,{element:04X}) US of length {len(raw)}")
        return int(_US_VALUE.unpack(raw)[0])
    if element in _UL:
        if len(raw) != 4:
            raise ProtocolError(f"(0000,{element:04X}) UL of length {len(raw)}")
        return int(_UL_VALUE.unpack(raw)[0])
    if element in _UI:
        return raw.decode("ascii", "replace").rstrip("\0 ")
    if element in _TEXT:
        return raw.decode("ascii", "replace").strip(" \0")
    if element in _AT:
        if len(raw) % 4:
            raise ProtocolError(f"(0000,{element:04X}) AT of length {len(raw)}")
        pairs = struct.iter_unpack("<HH", raw)
        return tuple((group << 16) | elem for group, elem in pairs)
    return raw


def _dataset_type(has_dataset: bool) -> int:
    return DATASET_PRESENT if has_dataset else NO_DATASET


def c_store_rq(
    message_id: int,
    sop_class: str,
    sop_instance: str,
    priority: int = PRIORITY_MEDIUM,
    *,
    move_originator_ae: str | None = None,
    move_originator_id: int | None = None,
) -> bytes:
    """C-STORE-RQ; a data set always follows."""
    elements: dict[int, Value] = {
        AFFECTED_SOP_CLASS: sop_class,
        COMMAND_FIELD: C_STORE_RQ,
        MESSAGE_ID: message_id,
        PRIORITY: priority,
        DATASET_TYPE: DATASET_PRESENT,
        AFFECTED_SOP_INSTANCE: sop_instance,
    }
    if move_originator_ae is not None and move_originator_id is not None:
        elements[MOVE_ORIGINATOR_AE] = move_originator_ae
        elements[MOVE_ORIGINATOR_ID] = move_originator_id
    return encode(elements)


def c_store_rsp(responding_to: int, sop_class: str, sop_instance: str, status: int) -> bytes:
    """C-STORE-RSP (no data set)."""
    return encode({
        AFFECTED_SOP_CLASS: sop_class,
        COMMAND_FIELD: C_STORE_RSP,
        RESPONDING_TO: responding_to,
        DATASET_TYPE: NO_DATASET,
        STATUS: status,
        AFFECTED_SOP_INSTANCE: sop_instance,
    })  # fmt: skip


def c_echo_rq(message_id: int) -> bytes:
    """C-ECHO-RQ (Verification SOP Class, no data set)."""
    return encode({
        AFFECTED_SOP_CLASS: VERIFICATION_SOP_CLASS,
        COMMAND_FIELD: C_ECHO_RQ,
        MESSAGE_ID: message_id,
        DATASET_TYPE: NO_DATASET,
    })  # fmt: skip


def c_echo_rsp(responding_to: int, status: int = 0x0000) -> bytes:
    """C-ECHO-RSP (no data set)."""
    return encode({
        AFFECTED_SOP_CLASS: VERIFICATION_SOP_CLASS,
        COMMAND_FIELD: C_ECHO_RSP,
        RESPONDING_TO: responding_to,
        DATASET_TYPE: NO_DATASET,
        STATUS: status,
    })  # fmt: skip


def n_action_rq(
    message_id: int, sop_class: str, sop_instance: str, action_type: int, *, has_dataset: bool
) -> bytes:
    """N-ACTION-RQ (e.g. Storage Commitment Request: sop_class 1.2.840.10008.1.20.1,
    sop_instance 1.2.840.10008.1.20.1.1, action_type 1, with an Action Information data set)."""
    return encode({
        REQUESTED_SOP_CLASS: sop_class,
        COMMAND_FIELD: N_ACTION_RQ,
        MESSAGE_ID: message_id,
        DATASET_TYPE: _dataset_type(has_dataset),
        REQUESTED_SOP_INSTANCE: sop_instance,
        ACTION_TYPE: action_type,
    })  # fmt: skip


def n_action_rsp(
    responding_to: int,
    sop_class: str,
    sop_instance: str,
    status: int,
    *,
    action_type: int | None = None,
    has_dataset: bool = False,
) -> bytes:
    """N-ACTION-RSP; ``action_type`` is echoed when given."""
    elements: dict[int, Value] = {
        AFFECTED_SOP_CLASS: sop_class,
        COMMAND_FIELD: N_ACTION_RSP,
        RESPONDING_TO: responding_to,
        DATASET_TYPE: _dataset_type(has_dataset),
        STATUS: status,
        AFFECTED_SOP_INSTANCE: sop_instance,
    }
    if action_type is not None:
        elements[ACTION_TYPE] = action_type
    return encode(elements)


def n_event_report_rq(
    message_id: int, sop_class: str, sop_instance: str, event_type: int, *, has_dataset: bool
) -> bytes:
    """N-EVENT-REPORT-RQ (e.g. Storage Commitment result: event_type 1 all committed,
    2 some failed, with an Event Information data set)."""
    return encode({
        AFFECTED_SOP_CLASS: sop_class,
        COMMAND_FIELD: N_EVENT_REPORT_RQ,
        MESSAGE_ID: message_id,
        DATASET_TYPE: _dataset_type(has_dataset),
        AFFECTED_SOP_INSTANCE: sop_instance,
        EVENT_TYPE: event_type,
    })  # fmt: skip


def n_event_report_rsp(
    responding_to: int,
    sop_class: str,
    sop_instance: str,
    status: int,
    *,
    event_type: int | None = None,
    has_dataset: bool = False,
) -> bytes:
    """N-EVENT-REPORT-RSP; ``event_type`` is echoed when given."""
    elements: dict[int, Value] = {
        AFFECTED_SOP_CLASS: sop_class,
        COMMAND_FIELD: N_EVENT_REPORT_RSP,
        RESPONDING_TO: responding_to,
        DATASET_TYPE: _dataset_type(has_dataset),
        STATUS: status,
        AFFECTED_SOP_INSTANCE: sop_instance,
    }
    if event_type is not None:
        elements[EVENT_TYPE] = event_type
    return encode(elements)
