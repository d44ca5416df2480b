"""A PACS with Nagle's algorithm on (Debian's DCMTK without TCP_NODELAY=1, as many are in the
field) answers each message in pieces, the rest held until our ACK of the first: without an
immediate ACK every answer waits for the delayed-ACK timer (~40 ms). The router acknowledges
at once while it waits for an answer (router/dicom/association.py, _quick_ack)."""

from __future__ import annotations

import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ImplicitVRLittleEndian

from router.config.model import DimseDestination
from router.delivery.dimse import Timeouts, open_association
from router.dicom import association, commands
from tests.support.peers import free_port, loopback_only_env, require

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's"
)


def _echo_times(port: int, count: int) -> list[float]:
    """Seconds per C-ECHO exchange on one association."""
    destination = DimseDestination(
        name="pacs", type="dimse", ae_title="STORESCP", host="127.0.0.1", port=port
    )
    proposals = [(commands.VERIFICATION_SOP_CLASS, [str(ImplicitVRLittleEndian)])]
    opened = open_association(destination, "WAYSTATION", Timeouts(5, 5), proposals)
    assert not hasattr(opened, "kind"), opened
    assert isinstance(opened, association.Association)
    context = opened.context_id(commands.VERIFICATION_SOP_CLASS, str(ImplicitVRLittleEndian))
    assert context is not None
    times = []
    for _ in range(count):
        message_id = opened.next_message_id()
        started = time.monotonic()
        answer = opened.exchange(
            context,
            commands.c_echo_rq(message_id),
            message_id=message_id,
            response_field=commands.C_ECHO_RSP,
            deadline=time.monotonic() + 10,
        )
        times.append(time.monotonic() - started)
        assert answer.command.status == 0
    opened.release(5)
    return times


@pytest.fixture
def nagle_storescp(tmp_path: Path) -> Iterator[int]:
    env = loopback_only_env()
    del env["TCP_NODELAY"]  # DCMTK's default on Debian: Nagle on
    port = free_port()
    (tmp_path / "in").mkdir()
    proc = subprocess.Popen(
        [require("storescp"), "-aet", "STORESCP", "-od", str(tmp_path / "in"), str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


def test_answers_from_a_nagle_peer_do_not_wait_for_a_delayed_ack(nagle_storescp: int) -> None:
    times = _echo_times(nagle_storescp, 40)
    # Waiting for the delayed-ACK timer costs >= 40 ms per answer on Linux; the median (not
    # the worst, the machine may be loaded) stays well below it.
    assert statistics.median(times) < 0.02, sorted(times)
