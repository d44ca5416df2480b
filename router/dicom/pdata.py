"""P-DATA-TF (PS3.8 section 9.3.5, Annex E): fragmenting DIMSE messages into PDVs, and
collecting received PDVs back into messages.

Writing: each PDU carries one PDV; a fragment is ``max PDU - 6`` bytes (the PDV item's
length field and its two header bytes count against the peer's maximum), rounded down to an
even number. A data set is read from a file-like object in reads of about 1 MiB into one
reused buffer, and the PDUs of a read go out in one ``sendmsg`` call as PDU header + slice of
the buffer, header + slice, ...: no concatenation, a dozen bytes of Python-built header per
PDU. The command set's PDUs share the first call.

Reading: :class:`MessageAssembler` takes P-DATA-TF bodies and yields complete messages
(command set + optional data set), checking that fragments arrive in PS3.8's order.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from typing_extensions import Buffer

from router.dicom import commands
from router.dicom.errors import ProtocolError

#: Message Control Header bits: bit 0 command (else data set), bit 1 last fragment.
COMMAND = 0x01
LAST = 0x02
#: PDU header + PDV item header for one PDV per PDU: type, reserved, PDU length,
#: item length, presentation context ID, message control header.
PDV_PDU_HEADER = struct.Struct(">BxIIBB")
_ITEM_HEADER = struct.Struct(">IBB")
#: Fragment size when the peer announces no limit (0).
UNLIMITED_FRAGMENT = 1024 * 1024
#: About how many data set bytes are read and sent per sendmsg call.
READ_SIZE = 1024 * 1024
#: PDUs per sendmsg (two buffers each, under IOV_MAX).
_MAX_PDUS_PER_CALL = 500
#: Smallest maximum PDU length a peer may announce and still be written to.
MIN_PEER_MAX_PDU = 8


def fragment_size(peer_max_pdu: int) -> int:
    """The largest PDV value that fits the peer's maximum PDU length (0 = unlimited)."""
    if peer_max_pdu == 0:
        return UNLIMITED_FRAGMENT
    if peer_max_pdu < MIN_PEER_MAX_PDU:
        raise ProtocolError(f"the peer's maximum PDU length {peer_max_pdu} cannot carry data")
    return min((peer_max_pdu - 6) & ~1, UNLIMITED_FRAGMENT)


class Readable(Protocol):
    """What a data set source must offer: ``readinto`` (as files and BlobReader do)."""

    def readinto(self, buffer: Buffer, /) -> int | None: ...


def fragment_buffers(
    context_id: int, data: memoryview, fragment: int, *, command: bool, last: bool
) -> list[Buffer]:
    """PDU headers and slices of ``data``: one PDU per fragment, the final one flagged LAST
    when ``last`` (an empty ``data`` still makes one PDU when ``last``)."""
    control = COMMAND if command else 0
    buffers: list[Buffer] = []
    total = len(data)
    start = 0
    while True:
        end = min(start + fragment, total)
        size = end - start
        flags = control | (LAST if last and end == total else 0)
        buffers.append(PDV_PDU_HEADER.pack(0x04, size + 6, size + 2, context_id, flags))
        if size:
            buffers.append(data[start:end])
        start = end
        if start >= total:
            return buffers


def message_batches(
    context_id: int,
    command: bytes,
    dataset: bytes | bytearray | memoryview | Readable | None,
    length: int | None,
    peer_max_pdu: int,
    buffer: bytearray | None = None,
) -> Iterator[list[Buffer]]:
    """The buffers of one DIMSE message, in groups each meant for one sendmsg call.

    ``dataset`` is None (command only), a bytes-like object, or a readable source of
    exactly ``length`` bytes. A source that ends early raises ValueError after the bytes it
    gave were yielded: the message is then broken and the association must be aborted.
    Each yielded list is only valid until the next one is asked for (the read buffer is
    reused; pass ``buffer`` to reuse one across messages too: a fresh megabyte buffer per
    object costs page faults)."""
    fragment = fragment_size(peer_max_pdu)
    head = fragment_buffers(context_id, memoryview(command), fragment, command=True, last=True)
    if dataset is None:
        yield head
        return
    if isinstance(dataset, (bytes, bytearray, memoryview)):
        view = memoryview(dataset).cast("B")
        yield head + fragment_buffers(context_id, view, fragment, command=False, last=True)
        return
    if length is None:
        raise ValueError("a streamed data set needs its length")
    per_call = max(1, min(_MAX_PDUS_PER_CALL, READ_SIZE // fragment))
    size = min(per_call * fragment, max(length, 1))
    if buffer is None or len(buffer) < size:
        buffer = bytearray(size)
    view = memoryview(buffer)[:size]
    remaining = length
    pending: list[Buffer] = head
    while True:
        want = min(size, remaining)
        _read_exact(dataset, view[:want], length - remaining, length)
        remaining -= want
        last = remaining == 0
        pending += fragment_buffers(context_id, view[:want], fragment, command=False, last=last)
        yield pending
        if last:
            return
        pending = []


def _read_exact(source: Readable, view: memoryview, done: int, length: int) -> None:
    got = 0
    while got < len(view):
        n = source.readinto(view[got:])
        if not n:
            raise ValueError(f"the data set ended after {done + got} of {length} bytes")
        got += n


def iter_pdvs(body: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """(presentation context ID, message control header, value) of each PDV in a
    P-DATA-TF body; raises ProtocolError for a malformed item."""
    view = memoryview(body)
    if not len(view):
        raise ProtocolError("a P-DATA-TF PDU without any PDV")
    offset = 0
    while offset < len(view):
        if offset + _ITEM_HEADER.size > len(view):
            raise ProtocolError("a PDV item header is cut off")
        length, context_id, control = _ITEM_HEADER.unpack_from(view, offset)
        if length < 2 or offset + 4 + length > len(view):
            raise ProtocolError(f"a PDV item claims {length} bytes; the PDU holds fewer")
        if control & ~(COMMAND | LAST):
            raise ProtocolError(f"a PDV has reserved message control bits set ({control:#x})")
        yield context_id, control, view[offset + 6 : offset + 4 + length]
        offset += 4 + length


class Sink(Protocol):
    """Where a received data set's fragments go (a file, an encrypting writer ...)."""

    def write(self, data: Buffer, /) -> object: ...


@dataclass
class Message:
    """One received DIMSE message. ``dataset`` holds the data set's bytes when it was
    collected in memory; with a sink they went to ``sink`` and ``dataset`` is None."""

    context_id: int
    command: commands.Command
    dataset: bytes | None = None
    sink: Sink | None = None


SinkFactory = Callable[[commands.Command, int], Sink | None]


class MessageAssembler:
    """Collects PDVs into messages (PS3.7 section 9.3.1 and PS3.8 Annex E).

    Command fragments come first, all on one presentation context, up to one flagged LAST;
    then, when the command announces a data set, data set fragments on the same context up to
    one flagged LAST. Anything else raises ProtocolError. A data set goes to the sink that
    ``sink_factory(command, context_id)`` returns, or into memory (at most ``max_dataset``
    bytes) when there is no factory or it returns None."""

    def __init__(self, *, max_dataset: int, sink_factory: SinkFactory | None = None) -> None:
        self.max_dataset = max_dataset
        self.sink_factory = sink_factory
        self.ready: deque[Message] = deque()
        self._context: int | None = None
        self._command_parts: list[bytes] = []
        self._command_size = 0
        self._message: Message | None = None  # command complete, data set being received
        self._data: bytearray | None = None

    @property
    def idle(self) -> bool:
        """True when no message is half received."""
        return self._context is None

    def feed(self, body: bytes | bytearray | memoryview) -> None:
        """Take one P-DATA-TF body; complete messages are appended to ``ready``."""
        for context_id, control, value in iter_pdvs(body):
            self._add(context_id, control, value)

    def _add(self, context_id: int, control: int, value: memoryview) -> None:
        if self._context is not None and context_id != self._context:
            raise ProtocolError("a message's fragments arrived on two presentation contexts")
        self._context = context_id
        if self._message is None:
            if not control & COMMAND:
                raise ProtocolError("a data set fragment arrived before its command set")
            self._command_size += len(value)
            if self._command_size > 1024 * 1024:
                raise ProtocolError("a command set larger than 1 MiB")
            self._command_parts.append(bytes(value))
            if control & LAST:
                self._command_complete(context_id)
            return
        if control & COMMAND:
            raise ProtocolError("a command fragment arrived while a data set was expected")
        message = self._message
        if message.sink is not None:
            message.sink.write(value)
        else:
            assert self._data is not None
            if len(self._data) + len(value) > self.max_dataset:
                raise ProtocolError(f"a data set larger than {self.max_dataset} bytes")
            self._data += value
        if control & LAST:
            if self._data is not None:
                message.dataset = bytes(self._data)
            self._finish(message)

    def _command_complete(self, context_id: int) -> None:
        command = commands.decode(b"".join(self._command_parts))
        self._command_parts, self._command_size = [], 0
        message = Message(context_id, command)
        if not command.has_dataset:
            self._finish(message)
            return
        sink = self.sink_factory(command, context_id) if self.sink_factory else None
        message.sink = sink
        self._data = None if sink is not None else bytearray()
        self._message = message

    def _finish(self, message: Message) -> None:
        self.ready.append(message)
        self._context, self._message, self._data = None, None, None
