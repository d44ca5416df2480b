"""A hub stream writes its next object behind the answer it awaits (HTTP pipelining), over
loopback: the answers are read apart even when they arrive together, the next object is at
the hub before its own send() is called, and an answer lost with its connection costs no
duplicate."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.delivery.http_pipeline import Exchange
from router.delivery.hub_sender import HubSender
from router.delivery.queue import DeliveryQueue
from router.delivery.worker import DestinationWorker
from router.hub.service import Hub
from router.spool.spool import HeldObject, Spool
from tests.support.hub import hold, hub_destination, hub_objects, make_objects, plaintext
from tests.support.router_proc import wait_for


def _token(hub: Hub, tmp_path: Path) -> Path:
    path = tmp_path / "unit.token"
    path.write_text(hub.units.enroll("CLINIC1") + "\n")
    return path


def _sender(unit: Spool, hub: Hub, token: Path, lookahead: object = None) -> HubSender:
    destination = hub_destination(f"http://127.0.0.1:{hub.port}", token)
    return HubSender(destination, spool=unit, lookahead=lookahead)  # type: ignore[arg-type]


def _held(unit: Spool, tmp_path: Path, count: int) -> list[HeldObject]:
    return [hold(unit, path.read_bytes()) for path in make_objects(tmp_path, count, size=64)]


@pytest.fixture
def two_answers_at_once() -> Iterator[int]:
    """A server that reads two requests, then sends both answers in one write (so they reach
    the client in one segment)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            seen = b""
            while seen.count(b"\r\n\r\n") < 2:
                seen += conn.recv(4096)
            answers = [
                b'HTTP/1.1 201 Created\r\nContent-Length: 9\r\nX-N: 1\r\n\r\n{"n": 1}\n',
                b"HTTP/1.1 204 No Content\r\nX-N: 2\r\n\r\n",
            ]
            conn.sendall(b"".join(answers))
            conn.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    server.close()


def test_answers_that_arrive_together_are_read_apart(two_answers_at_once: int) -> None:
    with socket.create_connection(("127.0.0.1", two_answers_at_once), timeout=10) as sock:
        exchange = Exchange(sock, "hub")
        exchange.write("POST", "/a", {"Content-Length": "0"}, b"")
        exchange.write("HEAD", "/b", {}, b"")
        first = exchange.read("POST")
        second = exchange.read("HEAD")
    assert (first.status, first.headers["x-n"], first.body) == (201, "1", b'{"n": 1}\n')
    assert (second.status, second.headers["x-n"], second.body) == (204, "2", b"")


def test_the_next_object_reaches_the_hub_while_the_last_ones_answer_is_awaited(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    first, second = _held(unit, tmp_path, 2)
    begun: list[bool] = []
    sender = _sender(unit, hub, _token(hub, tmp_path), lambda s: begun.append(s.begin(second, 2)))
    assert sender.send(first, 2).kind == "status"
    assert begun == [True]
    # The second object is committed at the hub before its own send() asks for anything.
    assert wait_for(lambda: hub.server.stats.commits == 2, timeout=10)
    sent = sender.bytes_sent
    sender._lookahead = None
    outcome = sender.send(second, 2)
    assert (outcome.kind, outcome.status) == ("status", 0)
    assert sender.bytes_sent == sent  # its answer was read: nothing sent again
    held = {plaintext(hub.spool, copy) for copy in hub_objects(hub)}
    assert held == {plaintext(unit, first), plaintext(unit, second)}
    assert hub.server.stats.already_committed == 0
    sender.close()


def test_an_answer_lost_with_its_connection_costs_no_duplicate(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    first, second = _held(unit, tmp_path, 2)
    sender = _sender(unit, hub, _token(hub, tmp_path), lambda s: s.begin(second, 2))
    assert sender.send(first, 2).kind == "status"
    assert wait_for(lambda: hub.server.stats.commits == 2, timeout=10)
    sender.close()  # the second object's answer is never read
    sender._lookahead = None
    outcome = sender.send(second, 2)
    assert (outcome.kind, outcome.status) == ("status", 0)
    assert len(hub_objects(hub)) == 2
    assert (hub.server.stats.commits, hub.server.stats.already_committed) == (2, 1)
    sender.close()


def test_two_objects_on_their_way_never_exceed_one_chunk(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    # A break costs at most one chunk per stream: an object goes out behind another only
    # if both fit in one chunk. Here each fits alone (about 64 KiB of 96 KiB), not both.
    first, second = _held(unit, tmp_path, 2)
    chunk = 96 * 1024
    destination = hub_destination(
        f"http://127.0.0.1:{hub.port}", _token(hub, tmp_path), min_chunk=chunk, max_chunk=chunk
    )
    begun: list[bool] = []
    sender = HubSender(destination, spool=unit)
    sender._lookahead = lambda s: begun.append(s.begin(second, 2))
    assert sender.send(first, 2).kind == "status"
    assert begun == [False]  # asked, while the first object's answer was awaited
    assert hub.server.stats.commits == 1
    sender._lookahead = None
    assert sender.send(second, 2).kind == "status"
    assert hub.server.stats.commits == 2
    sender.close()


def test_a_hub_worker_pipelines_its_queue_and_delivers_each_object_once(
    hub: Hub, unit: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's hook, not a test's: one stream claims its next object while the last
    # one's answer is on its way, and that object's state changes only on its own answer.
    held = _held(unit, tmp_path, 6)
    begun: list[bool] = []
    plain_begin = HubSender.begin

    def counted(self: HubSender, obj: HeldObject, priority: int) -> bool:
        begun.append(plain_begin(self, obj, priority))
        return begun[-1]

    monkeypatch.setattr(HubSender, "begin", counted)
    destination = hub_destination(f"http://127.0.0.1:{hub.port}", _token(hub, tmp_path))
    worker = DestinationWorker(
        destination, unit_ae="UNIT", spool=unit, queue=DeliveryQueue(unit), threads=1
    )
    worker.start()
    try:
        assert wait_for(lambda: worker.status.delivered == len(held), timeout=60)
    finally:
        worker.stop()
    assert any(begun)  # at least one object went out behind another's answer
    assert (hub.server.stats.commits, hub.server.stats.already_committed) == (len(held), 0)
    states = unit.reader_connection().execute("SELECT state FROM deliveries").fetchall()
    assert sorted(state for (state,) in states) == ["delivered"] * len(held)
    copies = {plaintext(hub.spool, copy) for copy in hub_objects(hub)}
    assert copies == {plaintext(unit, obj) for obj in held}
