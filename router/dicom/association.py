"""An established association, whichever side opened it, and the requestor's way to open one.

:class:`Association` is role-agnostic: it sends DIMSE messages (:meth:`Association.send`),
receives them (:meth:`Association.receive`), answers the peer's A-RELEASE-RQ and A-ABORT,
releases and aborts. :func:`request` is the association requestor (PS3.8 section 7.1): it
proposes presentation contexts in an A-ASSOCIATE-RQ and turns the A-ASSOCIATE-AC into an
Association, or raises AssociationRejected. The association PDUs are built and parsed with
pynetdicom's own PDU classes and primitives; this module only decides what goes in them.
An acceptor can build the same Association from a socket and its own A-ASSOCIATE-AC.

Nothing here starts a thread: every call blocks the caller until done or its deadline.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu import A_ASSOCIATE_AC as AssociateAcPdu
from pynetdicom.pdu import A_ASSOCIATE_RJ as AssociateRjPdu
from pynetdicom.pdu import A_ASSOCIATE_RQ as AssociateRqPdu
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from router.dicom import pdata, pdu
from router.dicom.errors import (
    AssociationRejected,
    ConnectionClosed,
    DicomNetError,
    PeerAborted,
    PeerReleased,
    ProtocolError,
    UnexpectedMessage,
    UnexpectedPdu,
)
from router.dicom.pdata import Message, MessageAssembler, Readable, SinkFactory

_IN_MEMORY = (bytes, bytearray, memoryview)
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
#: The maximum PDU length this side announces unless told otherwise. Never 0: a limit is
#: what keeps a hostile PDU length from becoming an allocation (RELIABILITY.md).
DEFAULT_MAX_PDU = 256 * 1024
#: A data set collected in memory (no sink) may be at most this large.
DEFAULT_MAX_DATASET = 64 * 1024 * 1024
#: Presentation context IDs are odd numbers 1-255 (PS3.8 9.3.2.2): at most 128 contexts.
MAX_CONTEXTS = 128
#: When the peer announces no maximum length (PS3.8 D.1 makes the item mandatory).
_PEER_MAX_IF_MISSING = 16384


@dataclass(frozen=True)
class AcceptedContext:
    """A presentation context the acceptor accepted, with the one transfer syntax chosen."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str


class Association:
    """One established association on a connected socket; not thread-safe.

    ``max_pdu`` is the maximum P-DATA-TF length this side announced (PDUs claiming more are
    refused unread); ``peer_max_pdu`` the peer's (0 = unlimited), which every PDU sent
    respects. ``contexts`` are the accepted presentation contexts by ID."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        requestor: bool,
        max_pdu: int,
        peer_max_pdu: int,
        contexts: Sequence[AcceptedContext],
        max_dataset: int = DEFAULT_MAX_DATASET,
        sink_factory: SinkFactory | None = None,
    ) -> None:
        if max_pdu <= 0:
            raise ValueError("this side's maximum PDU length must be a positive number")
        pdata.fragment_size(peer_max_pdu)  # refuses a peer maximum too small to carry data
        self.sock: socket.socket | None = sock
        self.requestor = requestor
        self.max_pdu = max_pdu
        self.peer_max_pdu = peer_max_pdu
        self.contexts = {cx.context_id: cx for cx in contexts}
        self._by_pair = {(cx.abstract_syntax, cx.transfer_syntax): cx.context_id
                         for cx in contexts}  # fmt: skip
        self._assembler = MessageAssembler(max_dataset=max_dataset, sink_factory=sink_factory)
        self._message_id = 0
        self._send_buffer: bytearray | None = None  # reused by every streamed data set

    # -- state -------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """Whether the association can still carry messages."""
        return self.sock is not None

    def context_id(self, abstract_syntax: str, transfer_syntax: str) -> int | None:
        """The accepted context for this pair, if any."""
        return self._by_pair.get((abstract_syntax, transfer_syntax))

    def accepted_pairs(self) -> set[tuple[str, str]]:
        """Every accepted (abstract syntax, transfer syntax)."""
        return set(self._by_pair)

    def next_message_id(self) -> int:
        """A fresh Message ID (1-65535, wrapping) for a request on this association."""
        self._message_id = self._message_id % 65535 + 1
        return self._message_id

    def peer_gone(self) -> bool:
        """Without blocking: has the peer closed, aborted or asked to release while idle?

        Called before reusing an idle association, so a peer that dropped it (an idle
        timeout on its side) costs a reassociation, not a failed object."""
        sock = self.sock
        if sock is None:
            return True
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        try:
            self._read_expected(time.monotonic() + 1.0)
        except DicomNetError:
            return True
        # A message nobody asked for on an idle association: not this side's protocol.
        self.abort(reason=2)
        return True

    # -- sending and receiving -----------------------------------------------------------------

    def send(
        self,
        context_id: int,
        command: bytes,
        dataset: bytes | bytearray | memoryview | Readable | None = None,
        *,
        length: int | None = None,
        deadline: float | None,
    ) -> None:
        """Send one DIMSE message: ``command`` (an encoded command set, see
        :mod:`router.dicom.commands`) and its data set, from memory or streamed from a
        readable source of ``length`` bytes.

        Any failure part-way leaves the peer with half a message, so the association is
        aborted before the exception propagates (DicomNetError for the network, the source's
        own exception when reading the data set failed)."""
        sock = self._socket()
        if context_id not in self.contexts:
            raise ValueError(f"presentation context {context_id} was not accepted")
        if self._send_buffer is None and length and not isinstance(dataset, _IN_MEMORY):
            size = pdata.READ_SIZE + pdata.fragment_size(self.peer_max_pdu)
            self._send_buffer = bytearray(size)
        try:
            for buffers in pdata.message_batches(
                context_id, command, dataset, length, self.peer_max_pdu, self._send_buffer
            ):
                pdu.send_buffers(sock, buffers, deadline)
        except BaseException:
            self.abort()
            raise

    def receive(self, deadline: float | None) -> Message:
        """The next complete DIMSE message from the peer.

        Raises PeerAborted (A-ABORT), PeerReleased (A-RELEASE-RQ: answered, closed),
        ProtocolError (malformed or unexpected PDUs: this side aborts), NetworkTimeout,
        ConnectionClosed. After any of these the association is closed, except a
        NetworkTimeout, after which the caller decides (normally :meth:`abort`)."""
        while not self._assembler.ready:
            self._read_expected(deadline)
        return self._assembler.ready.popleft()

    def exchange(
        self,
        context_id: int,
        command: bytes,
        *,
        message_id: int,
        response_field: int,
        dataset: bytes | bytearray | memoryview | Readable | None = None,
        length: int | None = None,
        deadline: float | None,
        on_request: Callable[[Message], None] | None = None,
        meanwhile: Callable[[], None] | None = None,
    ) -> Message:
        """Send a request and wait for its response (``response_field``, answering
        ``message_id``). Requests the peer sends meanwhile go to ``on_request`` (e.g. an
        N-EVENT-REPORT of Storage Commitment); without it they break the exchange.
        Any other message raises UnexpectedMessage and aborts the association.
        ``meanwhile`` runs once the request is sent, while the peer works on it (it must not
        raise): the answer waits in the socket until it is read."""
        self.send(context_id, command, dataset, length=length, deadline=deadline)
        if meanwhile is not None:
            meanwhile()
        while True:
            message = self.receive(deadline)
            answer = message.command
            if not answer.is_response and on_request is not None:
                on_request(message)
                continue
            if answer.field != response_field or answer.responding_to != message_id:
                self.abort()
                raise UnexpectedMessage(
                    f"awaited the answer to message {message_id}, got {answer.name} "
                    f"answering {answer.responding_to}"
                )
            return message

    def _read_expected(self, deadline: float | None) -> None:
        """Read one PDU and act on it: P-DATA goes to the assembler, A-ABORT and A-RELEASE
        end the association; anything else is a protocol error (this side aborts)."""
        sock = self._socket()
        _quick_ack(sock)
        try:
            received = pdu.read_pdu(sock, max_pdata=self.max_pdu, deadline=deadline)
            if received.type == pdu.P_DATA_TF:
                self._assembler.feed(received.body)
                return
        except ProtocolError as exc:
            self.abort(reason=exc.abort_reason)
            raise
        except ConnectionClosed:
            self.close()
            raise
        if received.type == pdu.A_ABORT:
            self.close()
            source, reason = _abort_fields(received)
            raise PeerAborted(source, reason)
        if received.type == pdu.A_RELEASE_RQ_TYPE and self._assembler.idle:
            with contextlib.suppress(DicomNetError):
                pdu.send_buffers(sock, [pdu.RELEASE_RP], time.monotonic() + 5.0)
            self.close()
            raise PeerReleased("the peer released the association")
        self.abort(reason=2)
        raise UnexpectedPdu(f"unexpected PDU type 0x{received.type:02X} on an association")

    # -- ending ----------------------------------------------------------------------------------

    def release(self, timeout: float = 10.0) -> None:
        """A-RELEASE-RQ, then wait for A-RELEASE-RP; aborts if the peer does not answer
        properly within ``timeout``. The socket is closed either way."""
        sock = self.sock
        if sock is None:
            return
        deadline = time.monotonic() + timeout
        collided = False
        try:
            pdu.send_buffers(sock, [pdu.RELEASE_RQ], deadline)
            while True:
                received = pdu.read_pdu(sock, max_pdata=self.max_pdu, deadline=deadline)
                if received.type == pdu.A_RELEASE_RP_TYPE:
                    if collided and not self.requestor:
                        pdu.send_buffers(sock, [pdu.RELEASE_RP], deadline)
                    break
                if received.type == pdu.A_RELEASE_RQ_TYPE:
                    # Release collision (PS3.8 7.2): the requestor answers at once, the
                    # acceptor once its own request is answered.
                    collided = True
                    if self.requestor:
                        pdu.send_buffers(sock, [pdu.RELEASE_RP], deadline)
                    continue
                if received.type == pdu.A_ABORT:
                    break
                if received.type != pdu.P_DATA_TF:  # late data may still arrive: dropped
                    raise UnexpectedPdu(f"PDU type 0x{received.type:02X} during release")
        except DicomNetError:
            self.abort()
            return
        self.close()

    def abort(self, *, source: int = 0, reason: int = 0) -> None:
        """Send A-ABORT (best effort) and close. ``source`` 0 is this service user;
        a ``reason`` given with the default source is sent as the service provider's."""
        sock = self.sock
        if sock is None:
            return
        if reason and not source:
            source = 2
        with contextlib.suppress(DicomNetError):
            pdu.send_buffers(sock, [pdu.abort_pdu(source, reason)], time.monotonic() + 2.0)
        self.close()

    def close(self) -> None:
        """Close the socket without a word to the peer."""
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _socket(self) -> socket.socket:
        if self.sock is None:
            raise ConnectionClosed("the association is closed")
        return self.sock


def _abort_fields(received: pdu.Pdu) -> tuple[int, int]:
    decoded = A_ABORT_RQ()
    try:
        decoded.decode(received.encoded())
    except Exception:  # a malformed abort is still an abort
        return 0, 0
    return int(decoded.source or 0), int(decoded.reason_diagnostic or 0)


# -- the requestor -----------------------------------------------------------------------------


def connect(
    host: str,
    port: int,
    timeout: float,
    *,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> socket.socket:
    """A TCP connection with TCP_NODELAY: without it, Nagle's algorithm and the peer's
    delayed ACK cost ~40 ms per message (PERFORMANCE.md, gotchas 1 and 2). With ``tls``
    the TLS handshake is done here, within ``timeout``, checking the server's certificate
    against ``server_name`` (default ``host``) when the context verifies names.

    Raises OSError (ConnectionRefusedError, TimeoutError, ssl.SSLError ...) when there is no
    connection."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is None:
        return sock
    try:
        return tls.wrap_socket(sock, server_hostname=server_name or host)
    except BaseException:
        sock.close()
        raise


def request(
    sock: socket.socket,
    *,
    calling_ae: str,
    called_ae: str,
    proposals: Sequence[tuple[str, Sequence[str]]],
    timeout: float,
    max_pdu: int = DEFAULT_MAX_PDU,
    max_dataset: int = DEFAULT_MAX_DATASET,
) -> Association:
    """Propose an association on a connected socket and return it once accepted.

    ``proposals`` are (abstract syntax, [transfer syntaxes]) pairs, at most 128; they get
    the context IDs 1, 3, 5, ... in order. Raises AssociationRejected, PeerAborted,
    ProtocolError, NetworkTimeout or ConnectionClosed; the socket is closed on failure."""
    if not proposals or len(proposals) > MAX_CONTEXTS:
        raise ValueError(f"propose 1 to {MAX_CONTEXTS} presentation contexts")
    deadline = time.monotonic() + timeout
    proposed: dict[int, tuple[str, Sequence[str]]] = {}
    primitive = A_ASSOCIATE()
    primitive.application_context_name = APPLICATION_CONTEXT
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    for index, (abstract, syntaxes) in enumerate(proposals):
        context = PresentationContext()
        context.context_id = 2 * index + 1
        context.abstract_syntax = abstract
        context.transfer_syntax = list(syntaxes)
        primitive.presentation_context_definition_list.append(context)
        proposed[2 * index + 1] = (abstract, syntaxes)
    _add_user_information(primitive, max_pdu)
    try:
        pdu.send_buffers(sock, [AssociateRqPdu(primitive).encode()], deadline)
        received = pdu.read_pdu(sock, max_pdata=max_pdu, deadline=deadline)
        if received.type == pdu.A_ASSOCIATE_RJ:
            rejection = AssociateRjPdu()
            rejection.decode(received.encoded())
            raise AssociationRejected(
                int(rejection.result or 0),
                int(rejection.source or 0),
                int(rejection.reason_diagnostic or 0),
            )
        if received.type == pdu.A_ABORT:
            raise PeerAborted(*_abort_fields(received))
        if received.type != pdu.A_ASSOCIATE_AC:
            raise UnexpectedPdu(f"PDU type 0x{received.type:02X} instead of an answer")
        contexts, peer_max = _accepted(received, proposed)
        return Association(
            sock,
            requestor=True,
            max_pdu=max_pdu,
            peer_max_pdu=peer_max,
            contexts=contexts,
            max_dataset=max_dataset,
        )
    except ProtocolError as exc:
        with contextlib.suppress(DicomNetError):
            pdu.send_buffers(sock, [pdu.abort_pdu(2, exc.abort_reason)], time.monotonic() + 2)
        sock.close()
        raise
    except BaseException:
        sock.close()
        raise


def _add_user_information(primitive: A_ASSOCIATE, max_pdu: int) -> None:
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    uid = ImplementationClassUIDNotification()
    uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    primitive.user_information = [length, uid, version]


def _accepted(
    received: pdu.Pdu, proposed: dict[int, tuple[str, Sequence[str]]]
) -> tuple[list[AcceptedContext], int]:
    """The accepted contexts (only those proposed, with a proposed syntax) and the peer's
    maximum PDU length, from an A-ASSOCIATE-AC."""
    answer = AssociateAcPdu()
    try:
        answer.decode(received.encoded())
        primitive = answer.to_primitive()
    except Exception as exc:
        raise ProtocolError(f"an A-ASSOCIATE-AC that cannot be decoded ({exc})") from None
    contexts: list[AcceptedContext] = []
    for result in primitive.presentation_context_definition_results_list:
        context_id = int(result.context_id or 0)
        if result.result != 0 or context_id not in proposed:
            continue
        abstract, syntaxes = proposed[context_id]
        chosen = result.transfer_syntax[0] if result.transfer_syntax else None
        if chosen is None or str(chosen) not in syntaxes:
            continue  # accepted with a syntax never proposed: unusable
        contexts.append(AcceptedContext(context_id, abstract, str(chosen)))
    peer_max = _PEER_MAX_IF_MISSING
    for item in primitive.user_information:
        if isinstance(item, MaximumLengthNotification):
            peer_max = int(item.maximum_length_received or 0)
    return contexts, peer_max


def _quick_ack(sock: socket.socket) -> None:
    """Acknowledge what the peer sends next at once (Linux TCP_QUICKACK, which the kernel
    clears again by itself). Why: a peer with Nagle's algorithm on (Debian's DCMTK and Orthanc
    by default, PERFORMANCE.md) holds the rest of its answer until our ACK of the first part,
    and a delayed ACK makes that ~40 ms per message."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
