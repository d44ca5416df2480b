"""The receiver's upper layer against broken and hostile peers on real sockets.

Each case asserts what the peer gets (an abort or a closed connection, quickly) and that the
router goes on serving a legitimate sender with nothing lost."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.dicom import commands
from tests.integration.conftest import router_port
from tests.support import dicomgen
from tests.support.router_proc import RouterProcess, free_port, write_config
from tests.support.sender import send
from tests.unit.test_ingest_protocol import CT, EXPLICIT, _request

ACSE_TIMEOUT = 3.0


@pytest.fixture
def strict_router(tmp_path: Path) -> Iterator[RouterProcess]:
    """A router with short association and network timeouts and 4 association slots."""
    config = write_config(tmp_path, port=free_port())
    text = config.read_text().replace(
        "max_pdu = 262144",
        f"max_pdu = 16384\nacse_timeout = {ACSE_TIMEOUT}\nnetwork_timeout = 5\n"
        "max_associations = 4",
    )
    config.write_text(text)
    with RouterProcess(config) as proc:
        yield proc


def _connect(proc: RouterProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", router_port(proc)), timeout=15)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Read until the router closes; (closed in time, what it sent)."""
    sock.settimeout(seconds)
    received = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                return True, received
            received += chunk
    except (TimeoutError, ConnectionResetError):
        return False, received
    return False, received


def _rss_kib(proc: RouterProcess) -> int:
    assert proc.proc is not None
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _still_serves(proc: RouterProcess, tmp_path: Path, name: str) -> None:
    files = dicomgen.make_tiny_objects(tmp_path / name, count=3)
    result = send(files, router_port(proc))
    assert result.error is None and result.acknowledged == files


def _associate(sock: socket.socket) -> None:
    sock.sendall(_request([(1, CT, [EXPLICIT])]))
    answer = sock.recv(65536)
    assert answer[0] == 0x02, f"not accepted: {answer[:10]!r}"


def test_a_pdu_claiming_4_gib_is_refused_without_allocating(
    strict_router: RouterProcess, tmp_path: Path
) -> None:
    before = _rss_kib(strict_router)
    sock = _connect(strict_router)
    sock.sendall(struct.pack(">BxI", 0x01, 0xFFFFFFFF) + b"junk" * 100)
    closed, answer = _closed_within(sock, 5)
    assert closed and answer[:1] == b"\x07", answer[:10]  # A-ABORT, then closed
    assert _rss_kib(strict_router) - before < 20 * 1024
    _still_serves(strict_router, tmp_path, "after")


def test_a_trickled_association_request_is_cut_at_the_acse_deadline(
    strict_router: RouterProcess, tmp_path: Path
) -> None:
    request = _request([(1, CT, [EXPLICIT])])
    sock = _connect(strict_router)
    started = time.monotonic()
    cut = False
    for byte in request:  # one byte every 0.5 s: far longer than the deadline in all
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            cut = True
            break
        sock.settimeout(0.5)
        try:
            sock.recv(64)  # an A-ABORT or the end of the connection: either way, cut
        except TimeoutError:
            continue
        cut = True
        break
    elapsed = time.monotonic() - started
    assert cut, "the router never cut the trickling peer"
    assert elapsed < ACSE_TIMEOUT + 3, elapsed
    _still_serves(strict_router, tmp_path, "after")


def test_idle_connections_do_not_take_the_association_slots(
    strict_router: RouterProcess, tmp_path: Path
) -> None:
    idle = [_connect(strict_router) for _ in range(6)]  # more than the 4 slots
    try:
        _still_serves(strict_router, tmp_path, "during")
    finally:
        for sock in idle:
            sock.close()


def test_a_p_data_pdu_over_the_agreed_maximum_is_aborted(
    strict_router: RouterProcess, tmp_path: Path
) -> None:
    sock = _connect(strict_router)
    _associate(sock)
    sock.sendall(struct.pack(">BxI", 0x04, 16384 + 1000))
    closed, answer = _closed_within(sock, 5)
    assert closed and answer[:1] == b"\x07"
    _still_serves(strict_router, tmp_path, "after")


@pytest.mark.parametrize(
    "pdu",
    [
        # a data set fragment with no C-STORE request before it
        struct.pack(">BxI", 0x04, 10) + struct.pack(">IBB", 4, 1, 0x02) + b"\x00\x00\x00\x00",
        # a PDV on a presentation context that was never accepted
        struct.pack(">BxI", 0x04, 10) + struct.pack(">IBB", 4, 9, 0x03) + b"\x00\x00\x00\x00",
        # a PDV whose length runs past its PDU
        struct.pack(">BxI", 0x04, 10) + struct.pack(">IBB", 400, 1, 0x03) + b"\x00\x00\x00\x00",
        # an unknown PDU type
        struct.pack(">BxI", 0x42, 4) + b"\x00\x00\x00\x00",
        # a second association request on an established association
        _request([(1, CT, [EXPLICIT])]),
        # an undecodable command set
        struct.pack(">BxI", 0x04, 14) + struct.pack(">IBB", 8, 1, 0x03) + b"\xff" * 8,
    ],
    ids=["data-first", "bad-context", "pdv-overrun", "unknown-pdu", "second-rq", "bad-command"],
)
def test_protocol_violations_abort_and_the_service_goes_on(
    strict_router: RouterProcess, tmp_path: Path, pdu: bytes
) -> None:
    sock = _connect(strict_router)
    _associate(sock)
    sock.sendall(pdu)
    closed, answer = _closed_within(sock, 5)
    assert closed and answer[:1] == b"\x07", answer[:10]
    _still_serves(strict_router, tmp_path, "after")


def test_an_object_cut_off_mid_data_set_is_not_kept(
    strict_router: RouterProcess, tmp_path: Path
) -> None:
    # A C-STORE whose data set never finishes: the connection drops, nothing is held.
    command = commands.c_store_rq(1, CT, "1.2.3")
    sock = _connect(strict_router)
    _associate(sock)
    item = struct.pack(">IBB", len(command) + 2, 1, 0x03) + command
    data = struct.pack(">IBB", 1002, 1, 0x00) + b"\x08" * 1000
    sock.sendall(struct.pack(">BxI", 0x04, len(item)) + item)
    sock.sendall(struct.pack(">BxI", 0x04, len(data)) + data)
    sock.close()
    time.sleep(1)
    _still_serves(strict_router, tmp_path, "after")
    spool = Path(strict_router.config.parent / "spool")
    assert not list(spool.rglob("*.part"))
