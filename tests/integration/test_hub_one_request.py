"""A small object to a hub in one request (create + whole body + commit), over loopback: no
segment at the hub, wrong bytes sent again with a verified envelope, and the sender's token
read again when the file changes; answers on a kept connection without a delayed-ACK stall."""

from __future__ import annotations

import http.client
import statistics
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from router.delivery.hub_sender import HubSender
from router.hub.service import Hub
from router.spool.spool import Spool
from router.wan import envelope
from tests.support.hub import hold, hub_destination, hub_objects, plaintext

CT = Path(str(get_testdata_file("CT_small.dcm")))


def _sender(unit: Spool, hub: Hub, token: Path) -> HubSender:
    destination = hub_destination(f"http://127.0.0.1:{hub.port}", token)
    return HubSender(destination, spool=unit)


def _token(hub: Hub, tmp_path: Path) -> Path:
    path = tmp_path / "unit.token"
    path.write_text(hub.units.enroll("CLINIC1") + "\n")
    return path


def _rows(hub: Hub, table: str) -> int:
    query = f"SELECT count(*) FROM {table}"
    return int(hub.spool.reader_connection().execute(query).fetchone()[0])


def test_a_small_object_is_committed_in_one_request_without_a_segment(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    data = CT.read_bytes()
    sender = _sender(unit, hub, _token(hub, tmp_path))
    before = hub.spool.journal.stats.commits
    outcome = sender.send(hold(unit, data), 2)
    assert (outcome.kind, outcome.status) == ("status", 0)
    [copy] = hub_objects(hub)
    assert plaintext(hub.spool, copy) == data
    assert hub.server.stats.commits == 1 and _rows(hub, "hub_commits") == 1
    assert not any((hub.spool.root / "uploads").iterdir())  # nothing staged
    # One journal commit for the object (the segment path takes four: the create's row,
    # the study manifest, the segment's offset, the object); one more is allowed for
    # anything else the hub commits meanwhile.
    assert hub.spool.journal.stats.commits - before <= 2


def test_an_envelope_the_hub_refuses_is_sent_again_verified(
    hub: Hub, unit: Spool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = CT.read_bytes()
    held = hold(unit, data)
    real_wrap = envelope.wrap

    def faulty_wrap(original: bytes, *, verify: bool = True) -> bytes:
        # An encoder fault: an envelope of other bytes (the hub's SHA-256 check fails).
        wrong = bytearray(original)
        wrong[-1] ^= 0xFF
        return real_wrap(bytes(wrong), verify=verify) if not verify else real_wrap(original)

    monkeypatch.setattr(envelope, "wrap", faulty_wrap)
    sender = _sender(unit, hub, _token(hub, tmp_path))
    first = sender.send(held, 2)
    assert first.kind == "aborted" and first.status == 410
    assert held.id in sender.link.verify_envelope and _rows(hub, "objects") == 0
    second = sender.send(held, 2)  # wrapped again with verification
    assert (second.kind, second.status) == ("status", 0)
    [copy] = hub_objects(hub)
    assert plaintext(hub.spool, copy) == data


def test_the_sender_reads_a_replaced_token_file(hub: Hub, unit: Spool, tmp_path: Path) -> None:
    token = _token(hub, tmp_path)
    good = token.read_text()
    sender = _sender(unit, hub, token)
    assert sender.send(hold(unit, CT.read_bytes()), 2).kind == "status"
    token.write_text("wst_not-a-token\n")
    held = hold(unit, Path(str(get_testdata_file("MR_small.dcm"))).read_bytes())
    refused = sender.send(held, 2)
    assert refused.kind == "hub-token" and refused.status == 401
    token.write_text(good)
    assert sender.send(held, 2).kind == "status"
    assert len(hub_objects(hub)) == 2


def test_answers_on_a_kept_connection_do_not_wait_for_a_delayed_ack(
    hub: Hub, tmp_path: Path
) -> None:
    # An answer is written as headers, then body: with Nagle's algorithm on the hub's side
    # the body would wait for the unit's delayed ACK of the headers (>= 40 ms on Linux).
    token = _token(hub, tmp_path).read_text().strip()
    conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=10)
    times = []
    for _ in range(30):
        started = time.monotonic()
        conn.request("GET", "/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        answer = conn.getresponse()
        assert answer.status == 200 and b"CLINIC1" in answer.read()
        times.append(time.monotonic() - started)
    conn.close()
    assert statistics.median(times) < 0.02, sorted(times)
