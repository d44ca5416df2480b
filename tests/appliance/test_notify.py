"""sd_notify against a fake NOTIFY_SOCKET, and the watchdog that stops when a worker hangs."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.config.load import parse_config
from router.daemon import Router
from router.delivery.commitment import CommitmentManager
from router.delivery.dimse import DimseSender
from router.health.notify import Notifier
from tests.support.dicomgen import make_tiny_objects
from tests.support.peers import free_port
from tests.support.router_proc import destination_toml, route_toml, wait_for
from tests.support.sender import send


class FakeManager:
    """A datagram socket standing in for systemd's notify socket; records every message."""

    def __init__(self, path: Path | None = None, abstract: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract is not None:
            self.sock.bind(b"\0" + abstract.encode())
            self.address = "@" + abstract
        else:
            assert path is not None
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(fields)

    def having(self, key: str) -> list[dict[str, str]]:
        return [m for m in list(self.messages) if key in m]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[FakeManager]:
    fake = FakeManager(tmp_path / "notify.sock")
    yield fake
    fake.close()


def test_notifier_sends_ready_status_watchdog_stopping(manager: FakeManager) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "2000000"})
    assert notifier.watchdog_seconds == 2.0
    assert notifier.ready("up and\nlistening")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert wait_for(lambda: len(manager.messages) == 3, timeout=5)
    assert manager.messages == [
        {"READY": "1", "STATUS": "up and listening"},
        {"WATCHDOG": "1"},
        {"STOPPING": "1", "STATUS": "stopping"},
    ]


def test_notifier_reaches_an_abstract_socket() -> None:
    fake = FakeManager(abstract=f"waystation-test-{time.monotonic_ns()}")
    try:
        assert Notifier({"NOTIFY_SOCKET": fake.address}).status("hello")
        assert wait_for(lambda: fake.messages == [{"STATUS": "hello"}], timeout=5)
    finally:
        fake.close()


def test_without_a_manager_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert notifier.watchdog_seconds is None
    # A watchdog meant for another process (WATCHDOG_PID) is not ours to feed.
    other = Notifier(
        {"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}
    )
    assert other.watchdog_seconds is None


def _config(tmp: Path, dest_port: int, extra: str = "", **destination: object) -> str:
    return f"""
[unit]
name = "notify-test"
ae_title = "WAYSTATION"
[ingest]
listen = "127.0.0.1:{free_port()}"
[spool]
path = "{tmp / "spool"}"
min_free = "1 MiB"
[appliance]
stall_limit = "1 s"
health_interval = "0.3 s"
{extra}
[delivery]
connect_timeout = "1 s"
response_timeout = "1 s"
{destination_toml("pacs", "PACS", dest_port, **destination)}
{route_toml("all", "pacs")}
"""


def _router(tmp: Path, manager: FakeManager, dest_port: int, **destination: object) -> Router:
    text = _config(tmp, dest_port, "", **destination)
    config = parse_config(text, source="test.toml", base=tmp)
    notifier = Notifier({"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "600000"})
    return Router(config, notifier=notifier)


def test_router_says_ready_status_and_feeds_the_watchdog(
    tmp_path: Path, manager: FakeManager
) -> None:
    router = _router(tmp_path, manager, free_port())
    router.start()
    try:
        assert wait_for(lambda: len(manager.having("WATCHDOG")) >= 3, timeout=20)
        ready = manager.having("READY")
        assert len(ready) == 1
        assert "listening on 127.0.0.1:" in ready[0]["STATUS"]
        # READY comes after the socket listens: a modality connecting then is answered.
        with socket.create_connection(("127.0.0.1", router.ingest.port), timeout=5):
            pass
        assert any("destinations" in m["STATUS"] for m in manager.having("STATUS")[1:])
        # The status LEDs' steady green, once the probe connection above is gone.
        assert wait_for(lambda: router.look() == "delivered", timeout=10)
    finally:
        router.stop(grace=1)
    assert manager.having("STOPPING")


def test_watchdog_stops_when_a_delivery_worker_hangs(
    tmp_path: Path, manager: FakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    hang = threading.Event()
    entered = threading.Event()

    def wedged_send(self: DimseSender, *args: object, **kwargs: object) -> object:
        entered.set()
        hang.wait(120)  # a call that never returns on its own: no timeout reaches it
        raise RuntimeError("released")

    monkeypatch.setattr(DimseSender, "send", wedged_send)
    router = _router(tmp_path, manager, free_port())
    router.start()
    try:
        assert wait_for(lambda: len(manager.having("WATCHDOG")) >= 2, timeout=20)
        files = make_tiny_objects(tmp_path / "in", count=1, studies=1)
        assert send(files, router.ingest.port).acknowledged == files
        assert entered.wait(20), "the worker never started sending"
        # The send's own allowance (connect 1 s + response 1 s + size) plus the 1 s stall limit.
        assert wait_for(lambda: "router-wedged" in {a.code for a in router.alarms.active()}, 30)
        pings = len(manager.having("WATCHDOG"))
        time.sleep(2.0)  # several health intervals (0.2 s: a third of WATCHDOG_USEC)
        assert len(manager.having("WATCHDOG")) == pings, "the watchdog was fed while wedged"
        liveness = next(c for c in router.monitor.checks if c.name == "router")
        assert liveness.state == "fault" and "delivery deliver-pacs-0 stuck" in liveness.detail
        assert router.look() == "fault"
    finally:
        hang.set()
        router.stop(grace=1)


def test_watchdog_stops_when_a_storage_commitment_thread_hangs(
    tmp_path: Path, manager: FakeManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    hang = threading.Event()
    entered = threading.Event()

    def wedged_step(self: CommitmentManager, *args: object, **kwargs: object) -> None:
        entered.set()
        hang.wait(120)  # a request that never returns on its own

    monkeypatch.setattr(CommitmentManager, "step", wedged_step)
    router = _router(tmp_path, manager, free_port(), storage_commitment="true")
    router.start()
    try:
        assert entered.wait(20), "the commitment thread never started"
        assert wait_for(lambda: len(manager.having("WATCHDOG")) >= 1, timeout=20)
        # The request's allowance (2 x connect 1 s + 2 x response 1 s + 5 s same-association
        # wait) plus the 1 s stall limit: about 10 s.
        assert wait_for(lambda: "router-wedged" in {a.code for a in router.alarms.active()}, 40)
        pings = len(manager.having("WATCHDOG"))
        time.sleep(2.0)  # several health intervals
        assert len(manager.having("WATCHDOG")) == pings, "the watchdog was fed while wedged"
        liveness = next(c for c in router.monitor.checks if c.name == "router")
        assert liveness.state == "fault"
        assert "storage commitment commit-pacs stuck" in liveness.detail
        # The delivery threads are fine: only the commitment thread is named.
        assert "delivery" not in liveness.detail
    finally:
        hang.set()
        router.stop(grace=1)


def test_metrics_file_and_loopback_endpoint(tmp_path: Path, manager: FakeManager) -> None:
    import urllib.request

    metrics_port = free_port()
    extra = f'metrics_file = "metrics.prom"\nmetrics_listen = "127.0.0.1:{metrics_port}"'
    config = parse_config(_config(tmp_path, free_port(), extra), source="t.toml", base=tmp_path)
    router = Router(config, notifier=Notifier({"NOTIFY_SOCKET": manager.address}))
    router.start()
    try:
        prom = tmp_path / "metrics.prom"
        assert wait_for(prom.exists, timeout=10)
        text = prom.read_text()
        assert 'waystation_health{aspect="router"} 0' in text
        assert "waystation_spool_free_bytes" in text
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            served = answer.read().decode()
        assert 'waystation_health{aspect="clock"}' in served
    finally:
        router.stop(grace=1)
