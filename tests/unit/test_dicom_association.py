"""The upper layer on real loopback sockets: PDU framing limits, the association requestor
against a scripted acceptor (built from the same Association class, which shows the layer is
role-agnostic), and every way a peer can break an exchange."""

from __future__ import annotations

import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext

from router.dicom import association, commands, pdu
from router.dicom.association import AcceptedContext, Association
from router.dicom.errors import (
    AssociationRejected,
    ConnectionClosed,
    NetworkTimeout,
    PduTooLarge,
    PeerAborted,
    PeerReleased,
    UnexpectedMessage,
    UnexpectedPdu,
    UnknownPdu,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG_LS = "1.2.840.10008.1.2.4.80"
INSTANCE = "1.2.3.4.5"


def _pair() -> tuple[socket.socket, socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    server.close()
    return client, peer


def test_a_4_gib_pdu_header_is_refused_without_allocating() -> None:
    client, peer = _pair()
    with client, peer:
        peer.sendall(struct.pack(">BxI", 0x04, 0xFFFFFFFF))
        tracemalloc.start()
        try:
            with pytest.raises(PduTooLarge) as caught:
                pdu.read_pdu(client, max_pdata=16384, deadline=time.monotonic() + 5)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert caught.value.length == 0xFFFFFFFF and caught.value.limit == 16384
        assert peak < 1024 * 1024


@pytest.mark.parametrize(
    ("header", "error"),
    [
        (struct.pack(">BxI", 0x09, 4), UnknownPdu),
        (struct.pack(">BxI", 0x00, 4), UnknownPdu),
        (struct.pack(">BxI", 0x07, 5), PduTooLarge),  # A-ABORT is 4 bytes
        (struct.pack(">BxI", 0x02, 2 * 1024 * 1024), PduTooLarge),
    ],
)
def test_unknown_and_oversized_pdu_types_are_refused(header: bytes, error: type) -> None:
    client, peer = _pair()
    with client, peer:
        peer.sendall(header)
        with pytest.raises(error):
            pdu.read_pdu(client, max_pdata=16384, deadline=time.monotonic() + 5)


def test_a_pdu_cut_off_or_late_is_reported_as_such() -> None:
    client, peer = _pair()
    with client:
        peer.sendall(struct.pack(">BxI", 0x04, 100) + b"x" * 10)
        with pytest.raises(NetworkTimeout):
            pdu.read_pdu(client, max_pdata=16384, deadline=time.monotonic() + 0.3)
        peer.close()
        with pytest.raises(ConnectionClosed):
            pdu.read_pdu(client, max_pdata=16384, deadline=time.monotonic() + 5)


def test_send_buffers_survives_partial_sends_to_a_slow_reader() -> None:
    client, peer = _pair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    chunks = [bytes([i]) * 65537 for i in range(12)]  # odd sizes, 786 kB in all
    received = bytearray()
    expected = b"".join(c[1:] for c in chunks)

    def slow_reader() -> None:
        while len(received) < len(expected):
            time.sleep(0.0005)
            data = peer.recv(4096)
            if not data:
                return
            received.extend(data)

    reader = threading.Thread(target=slow_reader)
    reader.start()
    with client, peer:
        pdu.send_buffers(client, [memoryview(c)[1:] for c in chunks], time.monotonic() + 30)
        reader.join(30)
    assert bytes(received) == expected


# -- a scripted acceptor -------------------------------------------------------------------

Acceptor = Callable[[socket.socket, A_ASSOCIATE], None]


def answer_ac(
    sock: socket.socket, request: A_ASSOCIATE, *, max_pdu: int, accept: set[tuple[str, str]]
) -> Association:
    """Accept the pairs in ``accept`` (each context's first proposed syntax that is)."""
    answer = A_ASSOCIATE()
    answer.application_context_name = association.APPLICATION_CONTEXT
    answer.calling_ae_title = request.calling_ae_title
    answer.called_ae_title = request.called_ae_title
    accepted = []
    for proposed in request.presentation_context_definition_list:
        result = PresentationContext()
        result.context_id = proposed.context_id
        syntax = next(
            (s for s in proposed.transfer_syntax if (proposed.abstract_syntax, s) in accept), None
        )
        result.result = 0 if syntax else 4
        result.transfer_syntax = [syntax or proposed.transfer_syntax[0]]
        if syntax:
            accepted.append(
                AcceptedContext(
                    int(proposed.context_id or 0), str(proposed.abstract_syntax), str(syntax)
                )
            )
        answer.presentation_context_definition_results_list.append(result)
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    answer.user_information = [length]
    pdu.send_buffers(sock, [A_ASSOCIATE_AC(answer).encode()], None)
    return Association(
        sock, requestor=False, max_pdu=1 << 20, peer_max_pdu=256 * 1024, contexts=accepted
    )


@contextmanager
def acceptor(script: Acceptor) -> Iterator[tuple[int, list[BaseException]]]:
    """A one-connection acceptor on loopback running ``script(sock, request)`` in a thread."""
    server = socket.create_server(("127.0.0.1", 0))
    errors: list[BaseException] = []

    def run() -> None:
        conn, _ = server.accept()
        with conn:
            try:
                received = pdu.read_pdu(conn, max_pdata=1 << 20, deadline=time.monotonic() + 5)
                rq = A_ASSOCIATE_RQ()
                rq.decode(received.encoded())
                script(conn, rq.to_primitive())
            except BaseException as exc:  # reported to the test
                errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], errors
    finally:
        thread.join(10)
        server.close()


def open_scu(port: int, proposals: list[tuple[str, list[str]]] | None = None) -> Association:
    sock = association.connect("127.0.0.1", port, 5)
    return association.request(
        sock,
        calling_ae="WAYSTATION",
        called_ae="PACS",
        proposals=proposals or [(CT, [JPEG_LS]), (CT, [EXPLICIT]), (CT, [IMPLICIT])],
        timeout=5,
    )


def test_contexts_syntaxes_and_max_pdu_are_honoured_and_the_scp_side_reuses_the_class() -> None:
    seen: dict[str, object] = {}

    def scp(sock: socket.socket, request: A_ASSOCIATE) -> None:
        seen["calling"] = request.calling_ae_title
        seen["contexts"] = len(request.presentation_context_definition_list)
        assoc = answer_ac(sock, request, max_pdu=4096, accept={(CT, EXPLICIT), (CT, IMPLICIT)})
        message = assoc.receive(time.monotonic() + 5)
        seen["dataset"] = message.dataset
        seen["context"] = message.context_id
        command = message.command
        assert command.message_id is not None
        rsp = commands.c_store_rsp(command.message_id, CT, INSTANCE, 0xB000)
        assoc.send(message.context_id, rsp, deadline=time.monotonic() + 5)
        with pytest.raises(PeerReleased):
            assoc.receive(time.monotonic() + 5)

    with acceptor(scp) as (port, errors):
        scu = open_scu(port)
        assert scu.peer_max_pdu == 4096
        assert scu.accepted_pairs() == {(CT, EXPLICIT), (CT, IMPLICIT)}
        assert scu.context_id(CT, JPEG_LS) is None
        context_id = scu.context_id(CT, EXPLICIT)
        assert context_id == 3
        data = bytes(range(256)) * 100 + b"odd"
        message_id = scu.next_message_id()
        answer = scu.exchange(
            context_id,
            commands.c_store_rq(message_id, CT, INSTANCE),
            message_id=message_id,
            response_field=commands.C_STORE_RSP,
            dataset=data,
            deadline=time.monotonic() + 5,
        )
        assert answer.command.status == 0xB000
        scu.release(5)
        assert not scu.is_open
    assert not errors, errors
    assert seen == {"calling": "WAYSTATION", "contexts": 3, "dataset": data, "context": 3}


def test_a_rejection_says_who_and_why() -> None:
    def scp(sock: socket.socket, request: A_ASSOCIATE) -> None:
        reject = A_ASSOCIATE()
        reject.result, reject.result_source, reject.diagnostic = 1, 1, 3
        pdu.send_buffers(sock, [A_ASSOCIATE_RJ(reject).encode()], None)

    with acceptor(scp) as (port, errors), pytest.raises(AssociationRejected) as caught:
        open_scu(port)
    assert (caught.value.result, caught.value.source, caught.value.reason) == (1, 1, 3)
    assert not errors


def _store(scu: Association, deadline: float = 5.0) -> int | None:
    message_id = scu.next_message_id()
    answer = scu.exchange(
        scu.context_id(CT, EXPLICIT) or 0,
        commands.c_store_rq(message_id, CT, INSTANCE),
        message_id=message_id,
        response_field=commands.C_STORE_RSP,
        dataset=b"\0\0",
        deadline=time.monotonic() + deadline,
    )
    return answer.command.status


def _scp_then(action: Callable[[socket.socket, Association], None]) -> Acceptor:
    def scp(sock: socket.socket, request: A_ASSOCIATE) -> None:
        assoc = answer_ac(sock, request, max_pdu=16384, accept={(CT, EXPLICIT)})
        assoc.receive(time.monotonic() + 5)
        action(sock, assoc)

    return scp


def _read_abort(sock: socket.socket) -> pdu.Pdu:
    return pdu.read_pdu(sock, max_pdata=1 << 20, deadline=time.monotonic() + 5)


def test_peer_abort_while_waiting() -> None:
    def abort(sock: socket.socket, assoc: Association) -> None:
        assoc.abort(source=2, reason=0)

    with acceptor(_scp_then(abort)) as (port, errors):
        scu = open_scu(port)
        with pytest.raises(PeerAborted) as caught:
            _store(scu)
        assert caught.value.source == 2
        assert not scu.is_open
    assert not errors


def test_peer_release_request_while_waiting_is_answered() -> None:
    got: list[int] = []

    def release(sock: socket.socket, assoc: Association) -> None:
        pdu.send_buffers(sock, [pdu.RELEASE_RQ], None)
        got.append(_read_abort(sock).type)

    with acceptor(_scp_then(release)) as (port, errors):
        scu = open_scu(port)
        with pytest.raises(PeerReleased):
            _store(scu)
    assert got == [pdu.A_RELEASE_RP_TYPE] and not errors


def test_an_answer_to_another_message_breaks_the_exchange_and_aborts() -> None:
    got: list[int] = []

    def wrong_id(sock: socket.socket, assoc: Association) -> None:
        assoc.send(1, commands.c_store_rsp(999, CT, INSTANCE, 0), deadline=None)
        got.append(_read_abort(sock).type)

    with acceptor(_scp_then(wrong_id)) as (port, errors):
        scu = open_scu(port, [(CT, [EXPLICIT])])
        with pytest.raises(UnexpectedMessage, match="answering 999"):
            _store(scu)
        assert not scu.is_open
    assert got == [pdu.A_ABORT] and not errors


@pytest.mark.parametrize(
    ("raw", "error", "reason"),
    [
        (struct.pack(">BxI", 0x04, 1 << 30), PduTooLarge, 6),
        (struct.pack(">BxI", 0x0A, 4) + b"\0" * 4, UnknownPdu, 1),
        (struct.pack(">BxI", 0x01, 4) + b"\0" * 4, UnexpectedPdu, 2),
    ],
)
def test_hostile_or_unexpected_pdus_abort_with_the_right_reason(
    raw: bytes, error: type, reason: int
) -> None:
    aborts: list[bytes] = []

    def send_raw(sock: socket.socket, assoc: Association) -> None:
        sock.sendall(raw)
        aborts.append(bytes(_read_abort(sock).body))

    with acceptor(_scp_then(send_raw)) as (port, errors):
        scu = open_scu(port, [(CT, [EXPLICIT])])
        with pytest.raises(error):
            _store(scu)
        assert not scu.is_open
    assert aborts == [bytes([0, 0, 2, reason])] and not errors


def test_silence_is_a_timeout_and_a_dropped_idle_association_is_noticed() -> None:
    closing = threading.Event()

    def silent(sock: socket.socket, assoc: Association) -> None:
        closing.wait(10)

    with acceptor(_scp_then(silent)) as (port, errors):
        scu = open_scu(port, [(CT, [EXPLICIT])])
        started = time.monotonic()
        with pytest.raises(NetworkTimeout):
            _store(scu, deadline=0.5)
        assert time.monotonic() - started < 3
        assert scu.is_open  # the caller decides; the sender aborts
        scu.abort()
        closing.set()

    def drop(sock: socket.socket, assoc: Association) -> None:
        assoc.send(1, commands.c_store_rsp(1, CT, INSTANCE, 0), deadline=None)
        assoc.close()

    with acceptor(_scp_then(drop)) as (port, errors):
        scu = open_scu(port, [(CT, [EXPLICIT])])
        assert _store(scu) == 0
        deadline = time.monotonic() + 5
        while not scu.peer_gone() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not scu.is_open
    assert not errors
