"""The UPS sequence against a real daemon, driven by the file UPS (the fake): mains lost ->
keep running and show it -> low battery -> new associations refused, the one in flight
finishes, clean stop (exit 75) -> mains back, the router resumes; no acknowledged object lost."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from pathlib import Path

from pydicom import dcmread

from hardware.ups import write_state
from router.spool import keys
from tests.support.dicomgen import make_tiny_objects
from tests.support.peers import free_port
from tests.support.router_proc import RouterProcess, wait_for, write_config
from tests.support.sender import SendResult, send


def _sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _alarm_codes(router: RouterProcess) -> set[str]:
    return {a.code for a in router.client().status().alarms}


def _power(router: RouterProcess) -> str:
    item = next(h for h in router.client().status().health if h.name == "power")
    return f"{item.state}: {item.detail}"


def test_ups_sequence_loses_no_acknowledged_object(tmp_path: Path) -> None:
    ups = tmp_path / "ups.json"
    write_state(ups, mains=True, charge=100)
    port = free_port()
    extra = f"""
[appliance]
ups = "file"
ups_state_file = "{ups}"
ups_low_battery = 20
health_interval = "0.3 s"
"""
    config = write_config(tmp_path, port=port, extra=extra)
    files = make_tiny_objects(tmp_path / "in", count=400, studies=2)
    router = RouterProcess(config).start()
    try:
        assert wait_for(lambda: _power(router).startswith("ok: mains (100%)"), timeout=30)

        write_state(ups, mains=False, charge=80)
        assert wait_for(lambda: "on-battery" in _alarm_codes(router), timeout=30)
        assert _power(router) == "warn: on battery (80%)"
        # On battery the unit keeps receiving.
        first = send(files[:50], port)
        assert len(first.acknowledged) == 50

        # A long association is in flight when the battery runs low.
        during = SendResult()
        progress = threading.Event()

        def on_ack(path: Path, status: int) -> None:
            if status == 0:
                progress.set()
            time.sleep(0.03)  # a slow modality: the association outlasts the refusal below

        def long_send() -> None:
            nonlocal during
            during = send(files[50:], port, on_ack=on_ack)

        sender = threading.Thread(target=long_send)
        sender.start()
        assert progress.wait(30)
        write_state(ups, mains=False, charge=15)
        assert router.proc is not None
        assert router.log_shows("UPS battery low", 30)
        # While the association in flight finishes, a new one is refused.
        assert sender.is_alive(), "the sender finished too early to show the refusal"
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
        assert router.proc.poll() is None  # still finishing the association in flight
        code = router.proc.wait(timeout=120)
        sender.join(timeout=120)
        assert code == 75, router.read_log()
        log = router.read_log()
        assert "UPS battery low" in log
        # After the stop nothing listens: modalities see a refusal and retry later.
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
    finally:
        router.stop()

    acknowledged = len(first.acknowledged) + len(during.acknowledged)
    assert len(during.acknowledged) > 0
    print(
        f"acknowledged on battery: {len(first.acknowledged)}, during the low-battery stop: "
        f"{len(during.acknowledged)} of {len(files) - 50} ({during.error or 'no error'})"
    )

    # Mains returns: the unit boots and the router resumes on its own spool.
    write_state(ups, mains=True, charge=40)
    with RouterProcess(config) as again:
        assert wait_for(lambda: _power(again).startswith("ok: mains"), timeout=30)
        assert "on-battery" not in _alarm_codes(again)
        assert len(send(files[:1], port).acknowledged) == 1
    # Every acknowledged object is held: looked up by its SOP Instance UID's keyed tag.
    keyring = keys.load(tmp_path / "keys" / "unit.keys", "aes-256-gcm")
    journal = tmp_path / "spool" / "journal.sqlite"
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        held = {bytes(row[0]) for row in conn.execute("SELECT sop_tag FROM objects")}
    acked = [*first.acknowledged, *during.acknowledged]
    assert len(acked) == acknowledged
    missing = [p for p in acked if keyring.lookup_tag("sop", _sop_uid(p)) not in held]
    assert missing == []
