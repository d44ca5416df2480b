"""STOW-RS delivery through faults, in process: a real spool, the real delivery queue and
worker, and scripted STOW-RS servers on loopback (tests/support/stow_server.py).

For each fault: every object is eventually delivered when the fault clears (bytes equal to
what the spool holds), nothing is lost, duplicates stay within one request, and a second,
healthy STOW-RS destination delivers everything meanwhile, unaffected."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import itertools
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from router.config.model import SpoolConfig, StowDestination
from router.control.echo import check_stow
from router.core.objects import PlannedDelivery
from router.core.retry import BackoffPolicy
from router.core.stow import Item
from router.delivery.dimse import Timeouts
from router.delivery.queue import DeliveryQueue
from router.delivery.stow_sender import StowSender
from router.delivery.stow_worker import StowWorker
from router.ingest.attributes import read_attributes
from router.spool.spool import HeldObject, Spool
from tests.support import dicomgen
from tests.support.certs import TestCA
from tests.support.hub import SOURCE, plaintext
from tests.support.router_proc import free_port, wait_for
from tests.support.stow_server import Answer, StowServer

COUNT = 24  # tiny objects over 4 studies
MAX_INSTANCES = 5


def stow_destination(name: str, url: str, **extra: Any) -> StowDestination:
    """A `type = "stow"` destination on plain HTTP (tests only)."""
    settings = {
        "name": name,
        "type": "stow",
        "url": url,
        "insecure_plain_http": True,
        "max_instances": MAX_INSTANCES,
        "timeout": 5.0,
        **extra,
    }
    return StowDestination.model_validate(settings)


def hold_all(spool: Spool, files: list[Path], destinations: list[str], priority: str) -> list[str]:
    """Store each file in the spool, routed to every destination; their object ids."""
    ids = []
    for path in files:
        incoming = spool.begin()
        incoming.write(path.read_bytes())
        incoming.finish()
        with incoming.reader() as reader:
            attributes = read_attributes(
                reader,  # type: ignore[arg-type]
                command_sop_class="",
                command_sop_instance="",
            )
        planned = [PlannedDelivery(d, "all", priority) for d in destinations]  # type: ignore[arg-type]
        ids.append(spool.store(incoming, attributes, SOURCE, planned).object_id)
    return ids


@dataclass
class Rig:
    spool: Spool
    queue: DeliveryQueue
    pacs: StowServer
    archive: StowServer
    workers: dict[str, StowWorker]
    files: list[Path]

    def states(self, destination: str) -> dict[str, int]:
        rows = self.spool.reader_connection().execute(
            "SELECT state, count(*) FROM deliveries WHERE destination = ? GROUP BY state",
            (destination,),
        )
        return {str(state): int(count) for state, count in rows}

    def errors(self, destination: str) -> set[str]:
        rows = self.spool.reader_connection().execute(
            "SELECT DISTINCT last_error FROM deliveries WHERE destination = ?"
            " AND last_error IS NOT NULL",
            (destination,),
        )
        return {str(r[0]) for r in rows}

    def hold(self, files: list[Path], priority: str = "routine") -> list[str]:
        ids = hold_all(self.spool, files, ["pacs", "archive"], priority)
        for worker in self.workers.values():
            worker.wake()
        return ids

    def delivered_everywhere(self, count: int) -> bool:
        return all(self.states(d) == {"delivered": count} for d in ("pacs", "archive"))


@contextmanager
def rig(
    tmp_path: Path,
    *,
    pacs: StowServer | None = None,
    count: int = COUNT,
    ct: bool = False,
    **settings: Any,
) -> Iterator[Rig]:
    files = (
        dicomgen.make_ct_series(tmp_path / "ct", count=count)
        if ct
        else dicomgen.make_tiny_objects(tmp_path / "tiny", count=count)
    )
    spool = Spool(SpoolConfig(path=tmp_path / "spool", min_free=0))
    queue = DeliveryQueue(spool, study_quiet_seconds=1)
    policy = BackoffPolicy(first=0.2, cap=1.0)
    with pacs or StowServer() as scripted, StowServer() as archive:
        workers = {
            "pacs": StowWorker(
                stow_destination("pacs", scripted.url, **settings),
                unit_ae="WAYSTATION",
                spool=spool,
                queue=queue,
                policy=policy,
                threads=int(settings.get("requests", 1)),
            ),
            "archive": StowWorker(
                stow_destination("archive", archive.url),
                unit_ae="WAYSTATION",
                spool=spool,
                queue=queue,
                policy=policy,
            ),
        }
        for worker in workers.values():
            worker.start()
        try:
            yield Rig(spool, queue, scripted, archive, workers, files)
        finally:
            for worker in workers.values():
                worker.stop(timeout=10)
            spool.close()


def check_outcome(r: Rig, *, duplicates: int = 0) -> None:
    """Everything at both servers, each object's bytes exactly the spool's."""
    total = len(r.files)
    assert wait_for(lambda: r.delivered_everywhere(total), timeout=60), (
        r.states("pacs"),
        r.states("archive"),
        r.errors("pacs"),
    )
    expected = {
        hashlib.sha256(plaintext(r.spool, held)).hexdigest()
        for held in r.spool.held_objects(("held",))
    }
    assert len(expected) == total
    for server in (r.pacs, r.archive):
        assert len(server.stored) == total  # 0 lost
        assert {d for entry in server.stored.values() for d in entry.sha256} == expected
    assert r.archive.duplicates() == 0
    assert r.pacs.duplicates() <= duplicates, r.pacs.duplicates()


def test_objects_go_in_batches_per_study(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        r.hold(r.files)
        check_outcome(r)
        log = list(r.pacs.log)
    # 24 objects of 4 studies, at most 5 per request: 4 studies x 2 requests, each to its
    # study's URL; never more than max_instances in a request.
    assert all(entry.path.startswith("/dicom-web/studies/1.") for entry in log)
    assert max(entry.instances for entry in log) <= MAX_INSTANCES
    assert sum(entry.instances for entry in log) == COUNT
    assert len(log) <= 8 + 2  # claims may cut a study's run once or twice


@pytest.mark.parametrize(
    ("retry_after", "status"),
    [("1", 503), ("date", 429)],
    ids=["503-retry-after-seconds", "429-retry-after-http-date"],
)
def test_busy_answers_are_retried_after_the_time_the_server_asks(
    tmp_path: Path, retry_after: str, status: int
) -> None:
    # An HTTP date has whole seconds and is written before the request arrives: ask for a time
    # far enough ahead that at least 0.9 s of it remains on a loaded machine.
    wait = "1" if retry_after == "1" else email.utils.formatdate(time.time() + 4, usegmt=True)
    with rig(tmp_path) as r:
        r.pacs.script(Answer(status, retry_after=wait))
        r.hold(r.files)
        check_outcome(r)
        log = list(r.pacs.log)
        assert r.states("pacs") == {"delivered": COUNT}
    refused = next(i for i, entry in enumerate(log) if entry.status == status)
    # Nothing more was sent until the time the server asked for (Retry-After).
    assert log[refused + 1].at - log[refused].at >= 0.9


def test_partial_success_delivers_the_stored_and_retries_the_rest(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        r.pacs.script(Answer(fail_every=2, reason=0xA700), Answer(fail_every=2, reason=0xA7FE))
        r.hold(r.files)
        check_outcome(r)  # failed instances were not stored: no duplicates
        assert any(entry.status == 202 for entry in r.pacs.log)


def test_permanent_failures_wait_for_an_operator_then_deliver(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        r.pacs.script(Answer(fail_every=2, reason=0xA900), Answer(409, reason=0xC000))
        r.hold(r.files)
        assert wait_for(lambda: r.states("archive") == {"delivered": COUNT}, timeout=60)
        assert wait_for(lambda: r.pacs.pending_answers() == 0 and not r.states("pacs").get(
            "pending") and not r.states("pacs").get("inflight"), timeout=60)  # fmt: skip
        failed = r.states("pacs").get("failed", 0)
        assert failed >= 2, r.states("pacs")  # at least one of each answer
        reasons = r.errors("pacs")
        assert any("does not match its type (0xA900)" in e for e in reasons), reasons
        assert any("could not understand the image (0xC000)" in e for e in reasons), reasons
        assert r.queue.retry_failed("pacs") == failed  # the operator's retry
        r.workers["pacs"].wake()
        check_outcome(r)


def test_a_request_too_large_is_split_and_the_limit_learnt(tmp_path: Path) -> None:
    size = max(p.stat().st_size for p in dicomgen.make_tiny_objects(tmp_path / "probe", 2))
    with rig(tmp_path, pacs=StowServer(max_body=2 * size + 2000)) as r:
        r.hold(r.files)
        check_outcome(r)
        log = list(r.pacs.log)
    assert any(entry.status == 413 for entry in log)
    assert all(entry.instances <= 2 for entry in log if entry.status == 200)
    # Learnt: after the first splits, requests fit; far fewer 413s than requests.
    assert sum(entry.status == 413 for entry in log) < len(log) / 2


def test_a_413_with_a_reset_before_the_body_is_read_still_splits(tmp_path: Path) -> None:
    """Some servers answer 413 from the headers and reset the connection with the body
    unread; the reset may even discard the answer. Either way the sender learns to send
    smaller requests: everything arrives bit-exact, once, and the requests come to fit."""
    # CT slices (~526 kB): a request's body is far more than the socket buffers hold, so the
    # reset arrives while the body is still being written.
    size = 530 * 1024
    pacs = StowServer(max_body=2 * size, abrupt=True)
    with rig(tmp_path, pacs=pacs, count=40, ct=True, max_request_size="32 MiB") as r:
        r.hold(r.files)
        check_outcome(r)
        log = list(r.pacs.log)
    assert any(entry.status == 413 for entry in log)
    assert all(entry.status == 200 for entry in log[-10:]), log


def test_an_object_too_large_alone_waits_for_an_operator(tmp_path: Path) -> None:
    with rig(tmp_path, pacs=StowServer(max_body=1000), count=2) as r:
        r.hold(r.files)
        assert wait_for(lambda: r.states("pacs") == {"failed": 2}, timeout=60), r.states("pacs")
        assert wait_for(lambda: r.states("archive") == {"delivered": 2}, timeout=60)
        assert any("refuses an object this large" in e for e in r.errors("pacs"))


def test_a_reset_mid_request_is_sent_again(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        r.pacs.script(Answer(reset=True), Answer(reset=True))
        r.hold(r.files)
        check_outcome(r)  # a reset before the answer stored nothing: no duplicates


def test_an_answer_too_slow_is_given_up_and_sent_again(tmp_path: Path) -> None:
    with rig(tmp_path, timeout=1.0, min_rate="1 GiB") as r:
        r.pacs.script(Answer(delay=3.0))
        r.hold(r.files)
        # The slow request was stored but not answered in time: sent again, so its objects
        # (one request) may be duplicated, nothing more.
        check_outcome(r, duplicates=MAX_INSTANCES)
        assert r.pacs.duplicates() >= 1


def test_refused_credentials_block_the_destination_until_fixed(tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("wrong\n")
    expected = "Basic " + base64.b64encode(b"unit:right").decode()
    settings = {"auth": "basic", "username": "unit", "password_file": str(password)}
    with rig(tmp_path, pacs=StowServer(authorization=expected), **settings) as r:
        r.hold(r.files)
        worker = r.workers["pacs"]
        assert wait_for(lambda: worker.status.state == "blocked", timeout=30)
        assert "refuses our credentials (HTTP 401" in worker.status.reason
        assert "wrong" not in worker.status.reason
        assert wait_for(lambda: r.states("archive") == {"delivered": COUNT}, timeout=60)
        assert r.states("pacs").get("delivered", 0) == 0
        password.write_text("right\n")  # read at every request: no restart needed
        worker.retry_now()
        check_outcome(r)


def test_a_stat_object_is_not_held_behind_a_bulk_backlog(tmp_path: Path) -> None:
    with rig(tmp_path, count=30) as r:
        bulk, stat = r.files[:29], r.files[29:]
        # Every bulk request is slow: the backlog takes about 6 requests x 0.5 s.
        r.pacs.script(*[Answer(delay=0.5) for _ in range(8)])
        r.hold(bulk, priority="bulk")
        assert wait_for(lambda: len(r.pacs.log) >= 1, timeout=30)
        [stat_id] = r.hold(stat, priority="stat")
        assert wait_for(
            lambda: r.spool.reader_connection().execute(
                "SELECT state FROM deliveries WHERE object_id = ? AND destination = 'pacs'",
                (stat_id,)).fetchone()[0] == "delivered",
            timeout=30,
        )  # fmt: skip
        bulk_done = r.states("pacs").get("delivered", 0) - 1
        check_outcome(r)
    # It went after at most the request in flight and the one just claimed.
    assert bulk_done <= 2 * MAX_INSTANCES, bulk_done


def _tls_server(tmp_path: Path) -> tuple[StowServer, TestCA]:
    """An HTTPS STOW-RS server whose certificate a private CA signed; it requires a client
    certificate from the same CA."""
    ca = TestCA(tmp_path / "pki")
    server = ca.issue("localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert))
    context.load_cert_chain(str(server.cert), str(server.key))
    context.verify_mode = ssl.CERT_REQUIRED
    return StowServer(tls=context), ca


def test_tls_with_a_private_ca_and_a_client_certificate(tmp_path: Path) -> None:
    pacs, ca = _tls_server(tmp_path)
    unit = ca.issue("unit")
    settings = {"ca_file": str(ca.cert), "client_cert": str(unit.cert), "client_key": str(unit.key)}
    with rig(tmp_path, pacs=pacs, count=6, **settings) as r:
        assert r.pacs.url.startswith("https://")
        r.hold(r.files)
        check_outcome(r)


def test_a_server_certificate_not_trusted_blocks_the_destination(tmp_path: Path) -> None:
    pacs, ca = _tls_server(tmp_path)
    unit = ca.issue("unit")
    settings = {"client_cert": str(unit.cert), "client_key": str(unit.key)}  # no ca_file
    with rig(tmp_path, pacs=pacs, count=2, **settings) as r:
        r.hold(r.files)
        worker = r.workers["pacs"]
        assert wait_for(lambda: worker.status.state == "blocked", timeout=30)
        assert "certificate is not trusted" in worker.status.reason
        assert "Check ca_file" in worker.status.reason
        assert wait_for(lambda: r.states("archive") == {"delivered": 2}, timeout=30)
        assert r.states("pacs") == {"pending": 2} and not r.pacs.stored


def test_concurrent_requests_overlap(tmp_path: Path) -> None:
    with rig(tmp_path, requests=3) as r:
        r.pacs.script(*[Answer(delay=0.6) for _ in range(6)])
        r.hold(r.files)
        check_outcome(r)
        log = sorted(r.pacs.log, key=lambda entry: entry.at)
    # Answers held back 0.6 s each came close together: requests were in flight at once.
    slow = [entry.at for entry in log[:6]]
    assert min(b - a for a, b in itertools.pairwise(slow)) < 0.4, slow


def test_an_unexpected_error_leaves_nothing_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = StowSender.item_of
    calls = {"n": 0}

    def flaky(self: StowSender, held: HeldObject, priority: int) -> Item:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("unexpected")
        return real(self, held, priority)

    monkeypatch.setattr(StowSender, "item_of", flaky)
    with rig(tmp_path, count=6) as r:
        r.hold(r.files)
        check_outcome(r)
        assert calls["n"] > 6  # the batch was retried after the error


def test_the_time_limit_grows_with_size_and_follows_the_measured_rate() -> None:
    destination = stow_destination("x", "http://127.0.0.1:9/dicom-web", timeout=10.0)
    sender = StowSender(destination, spool=cast(Spool, None))
    kib16 = 16 * 1024
    assert sender.allowance(0) == 10.0
    assert sender.allowance(100 * kib16) == pytest.approx(110.0)  # at min_rate, 16 KiB/s
    sender.rate.observe(4_000_000, 1.0)  # 4 MB/s measured: a quarter of it is assumed
    assert sender.allowance(4_000_000) == pytest.approx(14.0)
    for _ in range(30):  # the link got slow: the limit follows, never below min_rate's
        sender.rate.observe(1_000, 1.0)
    assert sender.allowance(100 * kib16) == pytest.approx(110.0)


def test_the_connection_test_stores_nothing_and_says_what_is_wrong(tmp_path: Path) -> None:
    timeouts = Timeouts(connect=5.0)
    password = tmp_path / "password"
    password.write_text("right\n")
    expected = "Basic " + base64.b64encode(b"unit:right").decode()
    basic = {"auth": "basic", "username": "unit", "password_file": str(password)}
    with StowServer(authorization=expected) as server:
        good = check_stow(stow_destination("pacs", server.url, **basic), timeouts=timeouts)
        assert good.ok and good.status == 200, good
        assert "reachable, trusted and does not refuse this unit" in good.message
        password.write_text("wrong\n")
        refused = check_stow(stow_destination("pacs", server.url, **basic), timeouts=timeouts)
        assert not refused.ok and "refuses our credentials (HTTP 401" in refused.message
        assert not server.stored  # nothing was posted
    closed = f"http://127.0.0.1:{free_port()}/dicom-web"
    nobody = check_stow(stow_destination("pacs", closed), timeouts=timeouts)
    assert not nobody.ok and "not accepting connections" in nobody.message
    tls_server, _ = _tls_server(tmp_path)
    with tls_server:
        untrusted = check_stow(stow_destination("pacs", tls_server.url), timeouts=timeouts)
    assert not untrusted.ok and "certificate is not trusted" in untrusted.message


def test_a_daily_budget_holds_sending_back_except_stat(tmp_path: Path) -> None:
    with rig(tmp_path, count=25, rate={"daily_budget": "40 KB"}) as r:
        routine, stat = r.files[:24], r.files[24:]
        r.hold(routine)
        worker = r.workers["pacs"]
        assert wait_for(lambda: "data budget is used up" in worker.status.reason, timeout=30)
        assert worker.status.state == "waiting"
        sent = sum(entry.body_bytes for entry in r.pacs.log)
        one_request = max(entry.body_bytes for entry in r.pacs.log)
        # Checked before each request: overshoot at most one request.
        assert 40_000 <= sent <= 40_000 + one_request, (sent, one_request)
        states = r.states("pacs")
        assert states.get("failed", 0) == 0 and states.get("pending", 0) > 0  # waiting, not lost
        assert wait_for(lambda: r.states("archive") == {"delivered": 24}, timeout=30)
        # STAT goes even with the budget used up (stat_exempt, the default), at once.
        [stat_id] = r.hold(stat, priority="stat")
        assert wait_for(
            lambda: r.spool.reader_connection().execute(
                "SELECT state FROM deliveries WHERE object_id = ? AND destination = 'pacs'",
                (stat_id,)).fetchone()[0] == "delivered",
            timeout=30,
        )  # fmt: skip


def test_a_cap_paces_the_requests(tmp_path: Path) -> None:
    with rig(tmp_path, rate={"cap": "400 kbit/s", "burst": "16 KiB"}) as r:
        started = time.monotonic()
        r.hold(r.files)
        check_outcome(r)
        elapsed = time.monotonic() - started
        sent = sum(entry.body_bytes for entry in r.pacs.log)
    # 50 kB/s after a 16 KiB burst (a loaded machine is only slower).
    assert elapsed >= (sent - 16 * 1024) / 50_000 * 0.9, (elapsed, sent)
