"""The hub and the hub sender in one process over loopback: resume, idempotence, scoping,
hostile input. (Daemon-level tests - kill -9, the PACS behind the hub - are in
test_hub_daemon.py.)"""

from __future__ import annotations

import base64
import hashlib
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from router.delivery.http_connection import set_bbr
from router.delivery.hub_sender import HubSender
from router.hub.service import Hub
from router.spool.spool import Spool
from tests.support.faultproxy import FaultProxy
from tests.support.hub import (
    hold,
    hub_config,
    hub_destination,
    hub_objects,
    make_objects,
    plaintext,
    request,
    self_signed,
    start_hub,
)

CT = Path(str(get_testdata_file("CT_small.dcm")))
MR = Path(str(get_testdata_file("MR_small.dcm")))
CHUNK = 16 * 1024


def _token(hub: Hub, tmp_path: Path, unit: str = "CLINIC1") -> Path:
    path = tmp_path / f"{unit}.token"
    path.write_text(hub.units.enroll(unit) + "\n")
    return path


def _sender(
    unit: Spool, port: int, token: Path, *, envelope: bool = False, **kwargs: object
) -> HubSender:
    # Without the envelope unless asked: byte counts at the hub are then the object's.
    destination = hub_destination(
        f"http://127.0.0.1:{port}", token, min_chunk=CHUNK, max_chunk=CHUNK, envelope=envelope
    )
    return HubSender(destination, spool=unit, **kwargs)  # type: ignore[arg-type]


def _big_object() -> bytes:
    """CT_small grown to 512 x 512 (about 520 KB): many 16 KiB chunks."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    ds = dcmread(CT)
    ds.Rows = ds.Columns = 512
    ds.PixelData = bytes(range(256)) * 2048
    out = DicomBytesIO()
    ds.save_as(out, enforce_file_format=True)
    return bytes(out.getvalue())


def test_an_object_arrives_bit_exact_and_committed_once(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    data = CT.read_bytes()
    held = hold(unit, data)
    sender = _sender(unit, hub.port, _token(hub, tmp_path))
    outcome = sender.send(held, 2)
    assert (outcome.kind, outcome.status) == ("status", 0)
    [copy] = hub_objects(hub)
    assert hashlib.sha256(plaintext(hub.spool, copy)).digest() == hashlib.sha256(data).digest()
    # BBR on the sender's connection wherever this kernel lets a socket choose it.
    with socket.socket() as probe:
        bbr_available = set_bbr(probe)
    conn = sender._conn
    assert conn is not None and conn.sock is not None
    chosen = conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0")
    assert (chosen == b"bbr") == bbr_available
    # Sent again with the unit's record gone (e.g. an operator's resend): at most the first
    # chunk travels (it rides on the create, which the hub answers "already committed"),
    # nothing is duplicated.
    with sqlite3.connect(unit.root / "journal.sqlite") as conn:
        conn.execute("DELETE FROM hub_uploads")
    before = hub.server.stats.body_bytes
    again = sender.send(held, 2)
    assert (again.kind, again.status) == ("status", 0)
    assert hub.server.stats.body_bytes - before <= CHUNK
    assert len(hub_objects(hub)) == 1
    assert hub.server.stats.already_committed == 1


def test_an_object_that_compresses_travels_enveloped_and_arrives_bit_exact(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    data = _big_object()
    held = hold(unit, data)
    outcome = _sender(unit, hub.port, _token(hub, tmp_path), envelope=True).send(held, 2)
    assert (outcome.kind, outcome.status) == ("status", 0)
    assert hub.server.stats.body_bytes < len(data) / 2
    [copy] = hub_objects(hub)
    assert plaintext(hub.spool, copy) == data


def test_a_link_drop_mid_object_resumes_and_resends_at_most_one_chunk(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    data = _big_object()
    held = hold(unit, data)
    with FaultProxy(hub.port) as proxy:
        sender = _sender(unit, proxy.port, _token(hub, tmp_path))
        proxy.reset_after(len(data) // 2, direction="up", times=1)
        first = sender.send(held, 2)
        assert first.kind == "aborted"
        confirmed = unit.reader_connection().execute("SELECT confirmed FROM hub_uploads").fetchone()
        assert 0 < confirmed[0] < len(data)
        second = sender.send(held, 2)
    assert (second.kind, second.status) == ("status", 0)
    received = hub.server.stats.body_bytes
    assert len(data) <= received <= len(data) + CHUNK, (received, len(data))
    [copy] = hub_objects(hub)
    assert plaintext(hub.spool, copy) == data


def test_the_hub_restarting_mid_object_loses_no_confirmed_byte(tmp_path: Path, unit: Spool) -> None:
    config = hub_config(tmp_path)
    first_hub = start_hub(config)
    token = _token(first_hub, tmp_path)
    data = _big_object()
    held = hold(unit, data)
    calls = {"n": 0}

    def stop_after_five(priority: int) -> bool:
        calls["n"] += 1
        return calls["n"] > 5

    outcome = _sender(unit, first_hub.port, token, more_urgent=stop_after_five).send(held, 3)
    assert outcome.kind == "preempted"
    sent_before = first_hub.server.stats.body_bytes
    assert sent_before == 5 * CHUNK
    port = first_hub.port
    first_hub.stop()
    second_hub = start_hub(hub_config(tmp_path, port=port))
    try:
        done = _sender(unit, port, token).send(held, 3)
        assert (done.kind, done.status) == ("status", 0)
        # Nothing re-sent: the second hub took over at the first one's confirmed offset.
        assert sent_before + second_hub.server.stats.body_bytes == len(data)
        [copy] = hub_objects(second_hub)
        assert plaintext(second_hub.spool, copy) == data
    finally:
        second_hub.stop()


def test_a_more_urgent_object_preempts_at_a_chunk_boundary(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    data = _big_object()
    held = hold(unit, data)
    urgent = threading.Event()
    sender = _sender(unit, hub.port, _token(hub, tmp_path), more_urgent=lambda p: urgent.is_set())
    urgent.set()
    paused = sender.send(held, 3)
    assert paused.kind == "preempted"
    assert hub.server.stats.body_bytes % CHUNK == 0  # stopped between chunks, not inside one
    urgent.clear()
    assert sender.send(held, 3).kind == "status"
    assert hub.server.stats.body_bytes == len(data)


def test_repeated_commits_and_creates_answer_already_committed(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    token = _token(hub, tmp_path).read_text().strip()
    data = MR.read_bytes()
    upload = _create(hub.port, token, data)
    status, headers, _ = request(
        hub.port,
        "PATCH",
        upload,
        token=token,
        headers={"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        body=data,
    )
    assert status == 204 and headers["upload-offset"] == str(len(data))
    answers = [request(hub.port, "POST", upload + "/commit", token=token) for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert [a[2]["already"] for a in answers] == [False, True, True]
    status, headers, body = request(
        hub.port, "POST", "/v1/uploads", token=token, headers=_create_headers(data)
    )
    assert status == 200 and body["already"] is True
    assert len(hub_objects(hub)) == 1


def test_hostile_requests_get_clear_errors_and_import_nothing(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    token = _token(hub, tmp_path).read_text().strip()
    data = MR.read_bytes()
    upload = _create(hub.port, token, data)
    octet = {"Content-Type": "application/offset+octet-stream"}

    def patch(offset: int, body: bytes, **headers: str) -> tuple[int, dict[str, str], dict]:
        return request(
            hub.port,
            "PATCH",
            upload,
            token=token,
            headers={"Upload-Offset": str(offset), **octet, **headers},
            body=body,
        )

    assert request(hub.port, "HEAD", upload)[0] == 401  # no token
    assert request(hub.port, "HEAD", upload, token="wst_nope")[0] == 401
    status, headers, body = patch(100, data[:10])
    assert status == 409 and headers["upload-offset"] == "0" and "offset 0" in body["error"]
    status, _, body = patch(0, data + b"x")
    assert status == 413 and "past the upload's length" in body["error"]
    checksum = "sha256 " + base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    assert patch(0, data[:100], **{"Upload-Checksum": checksum})[0] == 460
    status, _, body = patch(0, data[:100], **{"Content-Encoding": "gzip"})
    assert status == 415 and "Content-Encoding" in body["error"]
    status, _, body = request(
        hub.port,
        "POST",
        "/v1/uploads",
        token=token,
        headers={**_create_headers(data), "Upload-Length": str(2**40)},
    )
    assert status == 400 and "over the limit" in body["error"]
    status, _, body = request(
        hub.port,
        "POST",
        "/v1/uploads",
        token=token,
        headers={"Upload-Length": "10", "Upload-Metadata": "sop Li4v"},  # "../"
    )
    assert status == 400 and "not base64" not in body["error"]
    # Complete the upload with the wrong bytes: the SHA-256 check refuses it at commit.
    wrong = bytearray(data)
    wrong[-1] ^= 0xFF
    assert patch(0, bytes(wrong))[0] == 204
    status, _, body = request(hub.port, "POST", upload + "/commit", token=token)
    assert status == 410 and "SHA-256" in body["error"]
    assert hub_objects(hub) == []
    # The hub still serves: the right bytes commit.
    assert patch(0, data)[0] == 204
    assert request(hub.port, "POST", upload + "/commit", token=token)[0] == 200
    assert len(hub_objects(hub)) == 1


def test_a_unit_sees_and_touches_only_its_own_uploads(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    mine = _token(hub, tmp_path, "CLINIC1").read_text().strip()
    theirs = _token(hub, tmp_path, "CLINIC2").read_text().strip()
    data = MR.read_bytes()
    upload = _create(hub.port, mine, data)
    octet = {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    assert request(hub.port, "HEAD", upload, token=theirs)[0] == 404
    assert request(hub.port, "PATCH", upload, token=theirs, headers=octet, body=data)[0] == 404
    assert request(hub.port, "POST", upload + "/commit", token=theirs)[0] == 404
    upload_id = upload.rsplit("/", 1)[1]
    _, _, body = request(hub.port, "GET", f"/v1/receipts?upload={upload_id}", token=theirs)
    assert body["receipts"] == [{"upload": upload_id, "state": "unknown"}]
    _, _, body = request(hub.port, "GET", f"/v1/receipts?upload={upload_id}", token=mine)
    assert body["receipts"] == [{"upload": upload_id, "state": "uploading"}]


def test_a_revoked_unit_is_refused_in_plain_words(hub: Hub, unit: Spool, tmp_path: Path) -> None:
    token_file = _token(hub, tmp_path)
    held = hold(unit, CT.read_bytes())
    assert hub.units.revoke("CLINIC1")
    outcome = _sender(unit, hub.port, token_file).send(held, 2)
    assert outcome.kind == "hub-token" and outcome.status == 403
    assert "revoked" in outcome.detail
    assert hub_objects(hub) == []


def test_a_slow_client_is_cut_and_others_are_served(hub: Hub, unit: Spool, tmp_path: Path) -> None:
    token = _token(hub, tmp_path).read_text().strip()
    data = MR.read_bytes()
    upload = _create(hub.port, token, data)
    slow = socket.create_connection(("127.0.0.1", hub.port))
    slow.sendall(
        (
            f"PATCH {upload} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            f"Authorization: Bearer {token}\r\nUpload-Offset: 0\r\n"
            "Content-Type: application/offset+octet-stream\r\nContent-Length: 1000\r\n\r\n"
        ).encode()
    )
    started = time.monotonic()
    answer = b""
    slow.settimeout(0.5)
    while time.monotonic() - started < 20:
        assert request(hub.port, "HEAD", upload, token=token)[0] == 200  # others are served
        try:
            slow.sendall(b"x")
            chunk = slow.recv(4096)
        except (TimeoutError, OSError):
            continue
        if not chunk:
            break
        answer += chunk
        if b"\r\n\r\n" in answer:
            break
    slow.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert time.monotonic() - started < 15
    _, headers, _ = request(hub.port, "HEAD", upload, token=token)
    assert headers["upload-offset"] == "0"  # nothing of the slow body was kept


def test_a_manifest_reports_how_much_of_a_study_arrived(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    from pydicom import dcmread

    token_file = _token(hub, tmp_path)
    token = token_file.read_text().strip()
    study = str(dcmread(CT).StudyInstanceUID)
    status, _, body = request(
        hub.port,
        "POST",
        "/v1/manifests",
        token=token,
        headers={"Content-Type": "application/json"},
        body=f'{{"study_uid": "{study}", "expected": 3}}'.encode(),
    )
    assert status == 200 and body["summary"] == "0 of 3 received"
    held = hold(unit, CT.read_bytes())
    assert _sender(unit, hub.port, token_file).send(held, 2).kind == "status"
    _, _, body = request(
        hub.port,
        "POST",
        "/v1/manifests",
        token=token,
        body=f'{{"study_uid": "{study}"}}'.encode(),
    )
    assert body["summary"] == "1 of 3 received"


def _create_headers(data: bytes) -> dict[str, str]:
    from pydicom import dcmread

    from router.hub.protocol import UploadMetadata

    ds = dcmread(__import__("io").BytesIO(data))
    meta = UploadMetadata(
        str(ds.SOPInstanceUID),
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        hashlib.sha256(data).hexdigest(),
    )
    return {"Upload-Length": str(len(data)), "Upload-Metadata": meta.header()}


def _create(port: int, token: str, data: bytes) -> str:
    status, headers, _ = request(
        port, "POST", "/v1/uploads", token=token, headers=_create_headers(data)
    )
    assert status == 201, status
    return headers["location"]


def test_a_daily_budget_holds_sending_back_within_one_chunk(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    budget = 100 * 1024
    destination = hub_destination(
        f"http://127.0.0.1:{hub.port}",
        _token(hub, tmp_path),
        min_chunk=CHUNK,
        max_chunk=CHUNK,
        envelope=False,
        rate={"daily_budget": budget, "timezone": "UTC"},
    )
    held = hold(unit, _big_object())
    outcome = HubSender(destination, spool=unit).send(held, 2)
    assert outcome.kind == "held" and "budget is used up" in outcome.detail
    assert outcome.retry_after is not None and outcome.retry_after > 30
    sent = hub.server.stats.body_bytes
    assert budget - CHUNK <= sent <= budget + CHUNK
    # The counters survive a restart of the sender (once their last write is committed):
    # it still holds back.
    unit.journal.run(lambda conn: None)
    again = HubSender(destination, spool=unit).send(held, 2)
    assert again.kind == "held"
    assert hub.server.stats.body_bytes == sent


def test_polite_mode_paces_chunks_and_still_delivers_bit_exact(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    # On loopback the RTT has no queue to show; this proves the paced path sends every byte
    # in order and keeps under its cap (the link emulator measures politeness: bench-wan).
    destination = hub_destination(
        f"http://127.0.0.1:{hub.port}",
        _token(hub, tmp_path),
        min_chunk=4 * CHUNK,
        max_chunk=4 * CHUNK,
        envelope=False,
        rate={"polite": True, "cap": "8 Mbit/s", "timezone": "UTC"},
    )
    data = _big_object()
    held = hold(unit, data)
    sender = HubSender(destination, spool=unit)
    started = time.monotonic()
    assert sender.send(held, 2).kind == "status"
    elapsed = time.monotonic() - started
    assert elapsed >= len(data) * 8 / 8_000_000 * 0.8  # never faster than the cap
    [copy] = hub_objects(hub)
    assert plaintext(hub.spool, copy) == data


def test_over_tls_a_trusted_hub_works_and_plaintext_or_untrusted_is_refused(
    tmp_path: Path, unit: Spool
) -> None:
    cert, key = self_signed(tmp_path)
    config = hub_config(tmp_path)
    assert config.hub is not None
    tls = config.hub.model_copy(
        update={"insecure_plain_http": False, "tls_cert": cert, "tls_key": key}
    )
    secure = start_hub(config.model_copy(update={"hub": tls}))
    try:
        token = _token(secure, tmp_path)
        # A plaintext client on the TLS port gets nothing, and the hub goes on serving.
        with socket.create_connection(("127.0.0.1", secure.port), timeout=10) as plain:
            plain.sendall(b"HEAD /v1/uploads HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                answer = plain.recv(100)
            except ConnectionResetError:
                answer = b""
            assert not answer.startswith(b"HTTP/")
        held = hold(unit, CT.read_bytes())
        url = f"https://127.0.0.1:{secure.port}"
        untrusted = HubSender(hub_destination(url, token), spool=unit).send(held, 2)
        assert untrusted.kind == "hub-tls"
        trusted = HubSender(hub_destination(url, token, ca_file=str(cert)), spool=unit)
        assert trusted.send(held, 2).kind == "status"
        [copy] = hub_objects(secure)
        assert plaintext(secure.spool, copy) == CT.read_bytes()
    finally:
        secure.stop()


def test_a_client_trickling_its_headers_is_cut_at_the_deadline(hub: Hub) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", hub.port), timeout=2) as slow:
        slow.sendall(b"PATCH /v1/uploads/x HTTP/1.1\r\n")
        closed = False
        while time.monotonic() - started < 20:
            try:
                slow.sendall(b"X-Slow: 1\r\n")
                if slow.recv(100) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
    assert closed
    assert time.monotonic() - started < 10  # request_timeout is 3 s in these tests


def test_the_unit_announces_its_studies_so_the_hub_can_count_them(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    from pydicom import dcmread

    files = make_objects(tmp_path / "study", 3, size=16)
    held = [hold(unit, f.read_bytes()) for f in files]
    token_file = _token(hub, tmp_path)
    sender = _sender(unit, hub.port, token_file)
    assert sender.send(held[0], 2).kind == "status"
    study = str(dcmread(files[0]).StudyInstanceUID)

    def summary() -> str:
        _, _, body = request(
            hub.port, "POST", "/v1/manifests", token=token_file.read_text().strip(),
            body=f'{{"study_uid": "{study}"}}'.encode(),
        )  # fmt: skip
        return str(body["summary"])

    assert summary() == "1 of 3 received"
    for item in held[1:]:
        assert sender.send(item, 2).kind == "status"
    assert summary() == "3 of 3 received"


def test_an_upload_the_hub_had_to_discard_is_sent_again_from_the_start(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    data = _big_object()
    held = hold(unit, data)
    token = _token(hub, tmp_path)
    calls = {"n": 0}

    def stop_after_three(priority: int) -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    assert _sender(unit, hub.port, token, more_urgent=stop_after_three).send(held, 3).kind == (
        "preempted"
    )
    [segment, *_] = sorted((hub.spool.root / "uploads").glob("*/*.seg"))
    segment.unlink()  # e.g. a disk fault at the hub
    sender = _sender(unit, hub.port, token)
    lost = sender.send(held, 3)
    assert lost.kind == "aborted" and lost.status == 410 and "missing" in lost.detail
    assert hub_objects(hub) == []  # nothing half-imported
    assert (sender.send(held, 3).kind, len(hub_objects(hub))) == ("status", 1)
    [copy] = hub_objects(hub)
    assert plaintext(hub.spool, copy) == data


def test_no_patient_data_in_plaintext_anywhere_on_the_hub(
    hub: Hub, unit: Spool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pydicom import dcmread

    caplog.set_level("DEBUG", logger="waystation")
    token_file = _token(hub, tmp_path)
    token = token_file.read_text().strip()
    # One object committed through the sender, one upload left half-way (its segments stay).
    assert _sender(unit, hub.port, token_file).send(hold(unit, MR.read_bytes()), 2).kind == (
        "status"
    )
    data = CT.read_bytes()
    upload = _create(hub.port, token, data)
    octet = {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    half = data[: len(data) // 2]
    status, _, _ = request(hub.port, "PATCH", upload, token=token, headers=octet, body=half)
    assert status == 204
    needles: set[str] = set()
    for path in (MR, CT):
        ds = dcmread(path, stop_before_pixels=True)
        needles |= {str(ds.PatientName), str(ds.PatientID)}
        needles |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    hub_root = tmp_path / "hub-spool"
    files = [p for p in hub_root.rglob("*") if p.is_file()]
    assert any(p.name == "journal.sqlite" for p in files)
    assert any(p.suffix == ".seg" for p in files)  # the unfinished upload's sealed segment
    assert caplog.text  # the hub and the sender did log
    for path in files:
        content = path.read_bytes()
        for needle in needles:
            assert needle.encode() not in content, f"{needle} in plaintext in {path}"
    for needle in needles:
        assert needle not in caplog.text, f"{needle} in the log"
