"""One incoming association, start to end, on its own thread (PS3.8 upper layer, acceptor).

Synchronous by design: each PDU is read off the socket by the thread that acts on it, and a
C-STORE's data fragments stream straight into the encrypting sink, so no plaintext is held in
memory or written to disk and nothing waits on another thread. The answer to a C-STORE is
sent only after ObjectStore.complete returned - that is, after the object is durable.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dsutils import decode

from router.core.objects import ObjectAttributes, Source
from router.dicom import commands, tls
from router.dicom.commands import Command
from router.dicom.errors import ProtocolError
from router.dicom.part10 import part10_header
from router.dicom.pdu import (
    A_ABORT,
    A_ASSOCIATE_RQ,
    A_RELEASE_RQ_TYPE,
    HEADER,
    P_DATA_TF,
    RELEASE_RP,
    abort_pdu,
)
from router.ingest.acceptor import (
    REJECT_CALLING_AE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    negotiate,
    rejection,
)
from router.ingest.store import (
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    STATUS_UNEXPECTED,
    ObjectStore,
)
from router.ingest.wire import PeerClosed, PeerTimeout, Wire
from router.spool.crypto import DEFAULT_CHUNK_SIZE
from router.spool.incoming import IncomingObject

log = logging.getLogger("waystation.ingest")

_MAX_REQUEST_PDU = 1024 * 1024  # an A-ASSOCIATE-RQ with 128 contexts is far smaller
_MAX_COMMAND = 64 * 1024
_STATUS_UNRECOGNISED_OPERATION = 0x0211
_STATUS_NO_SUCH_SOP_CLASS = 0x0118
_STATUS_PROCESSING_FAILURE = 0x0110
STATUS_NOT_AUTHORISED = 0x0124
_MAX_REPORT = 16 * 1024 * 1024
# Early header reads stop once this much has arrived (the prefix they see is one chunk).
_EARLY_READ_LIMIT = DEFAULT_CHUNK_SIZE
# A-ABORT reasons (source 2, service provider): PS3.8 table 9-26.
_UNEXPECTED_PDU = 2
_UNRECOGNISED_PDU = 1
_INVALID_PARAMETER = 6


class ProtocolViolation(Exception):
    """The peer broke the protocol; the association is aborted with ``reason``."""

    def __init__(self, message: str, reason: int = _INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """The receiver's limits and timeouts (from IngestConfig)."""

    ae_title: str
    max_pdu: int
    allowed_callers: tuple[str, ...]
    acse_timeout: float
    dimse_timeout: float
    network_timeout: float
    # Destinations admitted only to send Storage Commitment reports (when allowed_callers
    # restricts who may call): a C-STORE from them is refused.
    report_only: frozenset[str] = frozenset()
    # Largest object accepted (bytes of data set; 0: no limit).
    max_object_size: int = 0


# Handles one Storage Commitment report: (calling AE, peer address, event type, event
# information or None if undecodable) -> the N-EVENT-REPORT response status.
ReportSink = Callable[[str, str, int, Dataset | None], int]


@dataclass
class _Receiving:
    """The request whose data set is arriving: a C-STORE streams into ``sink``; a report is
    collected in ``report`` (small); a refused C-STORE is read and dropped."""

    command: Command
    context_id: int
    sink: IncomingObject | None = None
    report: bytearray | None = None
    refused: int | None = None
    received: int = 0
    # The header read from the first fragments (see _read_early), and when to try next.
    early: ObjectAttributes | None = None
    next_early_try: int = 0


class Slots:
    """A counter of associations in progress, with a maximum."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.used = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """Take a slot if one is free."""
        with self._lock:
            if self.used >= self.maximum:
                return False
            self.used += 1
            return True

    def release(self) -> None:
        """Give a slot back."""
        with self._lock:
            self.used -= 1


class IncomingAssociation:
    """Serves one connection: negotiate, then C-STORE/C-ECHO until release or abort."""

    def __init__(
        self,
        wire: Wire,
        peer: str,
        *,
        limits: Limits,
        store: ObjectStore,
        slots: Slots,
        reports: ReportSink | None = None,
        identities: frozenset[str] | None = None,
        ae_certificates: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.wire = wire
        # The TLS peer's certificate identities (None without TLS), and which certificates
        # each bound calling AE title may use.
        self.identities = identities
        self.ae_certificates = ae_certificates or {}
        self.reports = reports
        self.peer = peer
        self.limits = limits
        self.store = store
        self.slots = slots
        self._holds_slot = False
        self.calling_ae = ""
        self.called_ae = ""
        self._contexts: dict[int, tuple[str, str]] = {}
        self._command = bytearray()
        self._command_context = 0
        self._receiving: _Receiving | None = None

    def serve(self) -> None:
        """Run the association to its end. Never raises."""
        try:
            if self._associate():
                self._serve_messages()
        except ProtocolViolation as exc:
            log.warning("association from %s aborted: %s", self.peer, exc)
            self._send_quietly(abort_pdu(2, exc.reason))
        except PeerTimeout:
            log.warning("association from %s aborted: the peer stopped sending", self.peer)
            self._send_quietly(abort_pdu(2, 0))
        except PeerClosed:
            pass  # an abort or a dropped connection: nothing was acknowledged that is lost
        except Exception as exc:  # contained: one association never takes the service down
            log.error("association from %s failed: %s", self.peer, type(exc).__name__)
            self._send_quietly(abort_pdu(2, 0))
        finally:
            self._drop_partial()
            if self._holds_slot:
                self.slots.release()

    # -- association establishment -------------------------------------------------------

    def _associate(self) -> bool:
        limits = self.limits
        # One deadline for the whole request, however it trickles in (see wire.py).
        deadline = self.wire.deadline_for(0, limits.acse_timeout)
        pdu_type, length = self.wire.read_header(limits.acse_timeout, limits.acse_timeout)
        if pdu_type != A_ASSOCIATE_RQ:
            raise ProtocolViolation(
                f"expected an association request, got PDU {pdu_type:#x}", _UNEXPECTED_PDU
            )
        if length > _MAX_REQUEST_PDU:
            raise ProtocolViolation(f"association request of {length} bytes")
        body = self.wire.read(length, deadline)
        header = HEADER.pack(pdu_type, length)
        # A slot is taken only by a complete request: idle or trickling connections never
        # hold one (they are cut at the deadline above).
        self._holds_slot = self.slots.acquire()
        try:
            result = negotiate(
                header + body,
                ae_title=limits.ae_title,
                max_pdu=limits.max_pdu,
                allowed_callers=limits.allowed_callers + tuple(sorted(limits.report_only)),
                busy=not self._holds_slot,
                accept_reports=self.reports is not None,
            )
        except Exception as exc:  # pynetdicom's decoder raises assorted types on junk
            raise ProtocolViolation(
                f"undecodable association request ({type(exc).__name__})"
            ) from None
        self.calling_ae, self.called_ae = result.calling_ae, result.called_ae
        if result.accepted and not self._certificate_matches():
            log.warning(
                "association from %s (%s) rejected: its certificate is not one bound to "
                "that AE title",
                self.peer,
                self.calling_ae,
            )
            result = rejection(REJECT_CALLING_AE, result.calling_ae, result.called_ae)
        self.wire.send(result.answer)
        if not result.accepted:
            log.warning(
                "association from %s (%s) rejected: result %d, source %d, reason %d",
                self.peer,
                self.calling_ae,
                *(result.reject or (0, 0, 0)),
            )
            return False
        self._contexts = result.contexts
        return True

    def _certificate_matches(self) -> bool:
        """A calling AE title bound in ae_certificates must come with one of its
        certificates (PS3.15 B.1: the AE title is then authenticated, not just claimed)."""
        bound = self.ae_certificates.get(self.calling_ae)
        if bound is None:
            return True
        return self.identities is not None and tls.identity_allowed(self.identities, bound)

    # -- messages ------------------------------------------------------------------------

    def _serve_messages(self) -> None:
        limits = self.limits
        while True:
            # Between messages a connection may idle for network_timeout; inside a message
            # (a data set arriving) the next PDU must start within dimse_timeout.
            inside = self._receiving is not None or bool(self._command)
            idle = limits.dimse_timeout if inside else limits.network_timeout
            pdu_type, length = self.wire.read_header(idle, limits.acse_timeout)
            deadline = self.wire.deadline_for(length, limits.dimse_timeout)
            if pdu_type == P_DATA_TF:
                if limits.max_pdu and length > limits.max_pdu:
                    raise ProtocolViolation(
                        f"P-DATA of {length} bytes exceeds the agreed maximum {limits.max_pdu}"
                    )
                self._p_data(length, deadline)
            elif pdu_type == A_RELEASE_RQ_TYPE:
                self.wire.skip(length, deadline)
                if self._receiving is not None:
                    raise ProtocolViolation(
                        "release requested in the middle of an object", _UNEXPECTED_PDU
                    )
                self.wire.send(RELEASE_RP)
                return
            elif pdu_type == A_ABORT:
                log.info("association from %s aborted by the peer", self.peer)
                return
            elif pdu_type in (0x01, 0x02, 0x03, 0x06):
                raise ProtocolViolation(f"unexpected PDU {pdu_type:#x}", _UNEXPECTED_PDU)
            else:
                raise ProtocolViolation(f"unknown PDU type {pdu_type:#x}", _UNRECOGNISED_PDU)

    def _p_data(self, length: int, deadline: float) -> None:
        remaining = length
        while remaining > 0:
            if remaining < 6:
                raise ProtocolViolation("a presentation data value item is cut short")
            item_length, context_id, control = struct.unpack(">IBB", self.wire.read(6, deadline))
            remaining -= 4 + item_length
            if item_length < 2 or remaining < 0:
                raise ProtocolViolation("a presentation data value length disagrees with the PDU")
            if context_id not in self._contexts:
                raise ProtocolViolation(f"presentation context {context_id} was not accepted")
            size = item_length - 2
            if control & 0x01:
                self._command_fragment(context_id, size, bool(control & 0x02), deadline)
            else:
                self._data_fragment(context_id, size, bool(control & 0x02), deadline)

    def _command_fragment(self, context_id: int, size: int, last: bool, deadline: float) -> None:
        if self._receiving is not None:
            raise ProtocolViolation("a command arrived in the middle of a data set")
        if len(self._command) + size > _MAX_COMMAND:
            raise ProtocolViolation("a command set longer than 64 KiB")
        if self._command and context_id != self._command_context:
            raise ProtocolViolation("command fragments on different presentation contexts")
        self._command_context = context_id
        self.wire.stream(size, deadline, self._command.extend)
        if not last:
            return
        raw, self._command = bytes(self._command), bytearray()
        try:
            command = commands.decode(raw)
        except ProtocolError as exc:
            raise ProtocolViolation(f"undecodable command set: {exc}") from exc
        self._dispatch(command, context_id)

    def _dispatch(self, command: Command, context_id: int) -> None:
        field = command.field
        if field == commands.C_STORE_RQ and command.has_dataset:
            if self.calling_ae in self.limits.report_only:
                log.warning(
                    "C-STORE from %s refused: it may only send Storage Commitment reports",
                    self.calling_ae,
                )
                self._receiving = _Receiving(command, context_id, refused=STATUS_NOT_AUTHORISED)
            else:
                sink = self._begin(command, context_id)
                self._receiving = _Receiving(command, context_id, sink=sink)
        elif field == commands.N_EVENT_REPORT_RQ and command.has_dataset:
            self._receiving = _Receiving(command, context_id, report=bytearray())
        elif field == commands.C_ECHO_RQ:
            self._respond(context_id, commands.c_echo_rsp(command.message_id or 0, STATUS_SUCCESS))
        elif command.has_dataset:
            raise ProtocolViolation(f"unsupported request {field:#06x} with a data set")
        else:
            log.warning("request %#06x from %s is not supported", field, self.peer)
            self._respond(
                context_id,
                commands.encode(
                    {
                        commands.AFFECTED_SOP_CLASS: command.affected_sop_class
                        or self._contexts[context_id][0],
                        commands.COMMAND_FIELD: field | 0x8000,
                        commands.RESPONDING_TO: command.message_id or 0,
                        commands.DATASET_TYPE: commands.NO_DATASET,
                        commands.STATUS: _STATUS_UNRECOGNISED_OPERATION,
                    }
                ),
            )

    def _begin(self, command: Command, context_id: int) -> IncomingObject:
        sink = self.store.begin()
        # A Part 10 file: the header from the command and the context's transfer syntax, then
        # the data set exactly as received.
        transfer_syntax = self._contexts[context_id][1]
        sink.write(
            part10_header(
                command.affected_sop_class or "",
                command.affected_sop_instance or "",
                transfer_syntax,
            )
        )
        return sink

    def _data_fragment(self, context_id: int, size: int, last: bool, deadline: float) -> None:
        receiving = self._receiving
        if receiving is None:
            raise ProtocolViolation("data set fragment without a request", _UNEXPECTED_PDU)
        if context_id != receiving.context_id:
            raise ProtocolViolation("data set fragment on another presentation context")
        receiving.received += size
        limit = self.limits.max_object_size
        if receiving.sink is not None and limit and receiving.received > limit:
            # Too large: what arrived is discarded (never stored) and the rest is read and
            # dropped, so the association stays usable; the answer is 0xA700.
            log.warning(
                "object from %s refused: larger than ingest.max_object_size (%d bytes)",
                self.peer,
                limit,
            )
            receiving.sink.discard()
            receiving.sink = None
            receiving.refused = STATUS_OUT_OF_RESOURCES
        if receiving.sink is not None:
            self.wire.stream(size, deadline, receiving.sink.write)
            if not last:
                self._read_early(receiving)
        elif receiving.report is not None:
            if len(receiving.report) + size > _MAX_REPORT:
                raise ProtocolViolation("a Storage Commitment report larger than 16 MiB")
            self.wire.stream(size, deadline, receiving.report.extend)
        else:
            self.wire.skip(size, deadline)
        if not last:
            return
        self._receiving = None
        if receiving.report is not None:
            self._report(receiving, context_id)
            return
        command = receiving.command
        status = receiving.refused
        if receiving.sink is not None:
            status = self.store.complete(
                receiving.sink,
                sop_class=command.affected_sop_class or "",
                sop_instance=command.affected_sop_instance or "",
                source=Source(calling_ae=self.calling_ae, called_ae=self.called_ae, peer=self.peer),
                early=receiving.early,
            )
        self._respond(
            context_id,
            commands.c_store_rsp(
                command.message_id or 0,
                command.affected_sop_class or "",
                command.affected_sop_instance or "",
                STATUS_UNEXPECTED if status is None else status,
            ),
        )

    def _read_early(self, receiving: _Receiving) -> None:
        """Read the header from the fragments received so far, while the sender streams the
        rest (it has not finished, so it is not waiting for us yet): after the last fragment
        only encryption and the durable commit stand between it and its answer. Tried after
        the first fragment and again each time four times as much has arrived, up to one
        chunk (the plaintext prefix kept in memory), so a long header costs a few tries."""
        if receiving.early is not None or receiving.received < receiving.next_early_try:
            return
        if receiving.next_early_try > _EARLY_READ_LIMIT or receiving.sink is None:
            return
        receiving.next_early_try = receiving.received * 4
        command = receiving.command
        receiving.early = self.store.read_early(
            receiving.sink,
            sop_class=command.affected_sop_class or "",
            sop_instance=command.affected_sop_instance or "",
        )

    def _report(self, receiving: _Receiving, context_id: int) -> None:
        command = receiving.command
        syntax = UID(self._contexts[context_id][1])
        information: Dataset | None
        try:
            information = decode(
                io.BytesIO(bytes(receiving.report or b"")),
                syntax.is_implicit_VR,
                syntax.is_little_endian,
            )
        except Exception:  # malformed: the handler answers for it (its text may quote values)
            information = None
        if self.reports is None or command.affected_sop_class != STORAGE_COMMITMENT_PUSH_MODEL:
            status = _STATUS_NO_SUCH_SOP_CLASS
        else:
            try:
                status = self.reports(
                    self.calling_ae, self.peer, command.event_type or 0, information
                )
            except Exception as exc:  # contained: the type only
                log.error("Storage Commitment report not handled: %s", type(exc).__name__)
                status = _STATUS_PROCESSING_FAILURE
        self._respond(
            context_id,
            commands.n_event_report_rsp(
                command.message_id or 0,
                command.affected_sop_class or "",
                command.affected_sop_instance or "",
                status,
                event_type=command.event_type,
            ),
        )

    def _respond(self, context_id: int, command_set: bytes) -> None:
        item = struct.pack(">IBB", len(command_set) + 2, context_id, 0x03) + command_set
        self.wire.send(HEADER.pack(P_DATA_TF, len(item)), item)

    # -- endings -------------------------------------------------------------------------

    def _drop_partial(self) -> None:
        # An association that ends mid-object leaves its sink behind: remove the partial blob.
        if self._receiving is not None and self._receiving.sink is not None:
            self._receiving.sink.discard()
        self._receiving = None

    def _send_quietly(self, pdu: bytes) -> None:
        with contextlib.suppress(OSError):
            self.wire.send(pdu)
