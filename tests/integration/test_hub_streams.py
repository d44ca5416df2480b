"""Parallel upload streams to a hub: each stream re-sends at most one chunk per interruption
(a link drop, a kill -9 of the router), a STAT object gets a stream and the others yield,
budgets hold across streams, and the pipelined protocol (first chunk on the create, commit on
the last chunk) keeps every promise of the plain one."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

from router.delivery.hub_sender import HubSender, hub_link
from router.hub.service import Hub
from router.spool.spool import Spool
from tests.support.faultproxy import FaultProxy
from tests.support.hub import (
    hold,
    hub_destination,
    hub_destination_toml,
    hub_objects,
    make_objects,
    plaintext,
    request,
    unit_journal_rows,
)
from tests.support.router_proc import (
    RouterProcess,
    delivery_states,
    fast_retry_toml,
    free_port,
    route_toml,
    wait_for,
    write_config,
)

CHUNK = 32 * 1024
STREAMS = 3


def _token(hub: Hub, tmp_path: Path) -> Path:
    path = tmp_path / "unit.token"
    path.write_text(hub.units.enroll("CLINIC1") + "\n")
    return path


def _unit(tmp_path: Path, hub: Hub, hub_port: int, routes: str = "") -> tuple[Path, int]:
    port = free_port()
    (tmp_path / "unit").mkdir(exist_ok=True)
    destination = hub_destination_toml(
        hub_port,
        _token(hub, tmp_path),
        min_chunk='"32 KiB"',
        max_chunk='"32 KiB"',
        envelope="false",
        timeout='"5 s"',
        streams=STREAMS,
    )
    config = write_config(
        tmp_path / "unit",
        port=port,
        destinations=destination,
        extra=fast_retry_toml() + (routes or route_toml("all", "hub")),
    )
    return config, port


def _in_flight(config: Path, at_least: int) -> bool:
    rows = unit_journal_rows(
        config, "SELECT count(*) FROM hub_uploads WHERE state = 'uploading' AND confirmed > 0"
    )
    return rows[0][0] >= at_least


def _commits(hub: Hub) -> int:
    row = hub.spool.reader_connection().execute("SELECT count(*) FROM hub_commits").fetchone()
    return int(row[0])


def test_each_stream_resends_at_most_one_chunk_after_a_link_drop_and_a_kill9(
    tmp_path: Path, hub: Hub
) -> None:
    files = make_objects(tmp_path / "in", STREAMS, size=640)
    total = 0
    with FaultProxy(hub.port) as proxy:
        proxy.rate(120_000, direction="up")
        config, port = _unit(tmp_path, hub, proxy.port)
        router = RouterProcess(config).start()
        try:
            from tests.support.peers import storescu

            assert storescu(files, port=port, aec="WAYSTATION").ok
            # Every stream has an object part-way: then the link drops (connections reset).
            assert wait_for(lambda: _in_flight(config, STREAMS), timeout=60)
            proxy.flap(0.0, 1.5, cycles=1)
            assert wait_for(lambda: proxy.statistics().down_phases == 1, timeout=10)
            assert wait_for(lambda: not proxy.flapping, timeout=20)
            # They resume; then the router is killed with every stream part-way again.
            moved = hub.server.stats.accepted_bytes
            assert wait_for(lambda: hub.server.stats.accepted_bytes > moved + 3 * CHUNK, 60)
            assert wait_for(lambda: _in_flight(config, STREAMS), timeout=60)
            router.kill9()
            proxy.rate(None)
            router = RouterProcess(config).start()
            assert wait_for(lambda: delivery_states(config).get("delivered") == STREAMS, 120)
        finally:
            router.stop()
        total = sum(size for (size,) in unit_journal_rows(config, "SELECT size FROM hub_uploads"))
    # Two interruptions, each costing at most the chunk in flight on each stream (a create
    # repeated after a lost answer carries a chunk the hub does not need: also one chunk).
    resent = hub.server.stats.body_bytes - total
    assert 0 <= resent <= 2 * STREAMS * CHUNK, resent
    assert _commits(hub) == STREAMS and hub.server.stats.commits == STREAMS
    assert len(hub_objects(hub)) == STREAMS


def test_a_stat_object_takes_a_stream_and_the_bulk_streams_yield(tmp_path: Path, hub: Hub) -> None:
    bulk = make_objects(tmp_path / "bulk", 2 * STREAMS, size=512, modality="MR", seed=1)
    stat = make_objects(tmp_path / "stat", 1, size=256, modality="CT", seed=2)
    routes = (
        '\n[[routes]]\nname = "stat"\nto = ["hub"]\npriority = "stat"\n'
        '[routes.when]\nmodality = "CT"\n'
        '\n[[routes]]\nname = "bulk"\nto = ["hub"]\npriority = "bulk"\n'
        '[routes.when]\nmodality = "MR"\n'
    )
    from tests.support.peers import storescu

    with FaultProxy(hub.port) as proxy:
        proxy.rate(150_000, direction="up")
        config, port = _unit(tmp_path, hub, proxy.port, routes)
        with RouterProcess(config):
            assert storescu(bulk, port=port, aec="WAYSTATION").ok
            assert wait_for(lambda: _in_flight(config, STREAMS), timeout=60)
            started = time.monotonic()
            bulk_bytes = hub.server.stats.accepted_bytes
            assert storescu(stat, port=port, aec="WAYSTATION").ok
            assert wait_for(lambda: _commits(hub) >= 1 and _stat_at_hub(hub), timeout=60)
            latency = time.monotonic() - started
            bulk_meanwhile = hub.server.stats.accepted_bytes - bulk_bytes
            assert wait_for(lambda: delivery_states(config).get("delivered") == 7, timeout=180)
    stat_size = stat[0].stat().st_size
    # At 150 kB/s shared by 3 streams the STAT object alone would take ~4.5 s on one stream's
    # share; with the bulk streams yielding it gets the whole link (~2 s) after at most the
    # chunks in flight finish.
    assert latency < 15, latency
    # Meanwhile the bulk streams sent at most the chunks they had in flight (and the STAT's).
    assert bulk_meanwhile <= stat_size + 2 * STREAMS * CHUNK, bulk_meanwhile
    assert hub.server.stats.commits == 7


def _stat_at_hub(hub: Hub) -> bool:
    import io

    from pydicom import dcmread

    return any(
        dcmread(io.BytesIO(plaintext(hub.spool, held))).Modality == "CT"
        for held in hub_objects(hub)
    )


def test_a_budget_holds_across_parallel_streams_within_one_chunk(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    budget = 200 * 1024
    destination = hub_destination(
        f"http://127.0.0.1:{hub.port}",
        _token(hub, tmp_path),
        min_chunk=CHUNK,
        max_chunk=CHUNK,
        envelope=False,
        streams=4,
        rate={"daily_budget": budget, "timezone": "UTC"},
    )
    objects = [hold(unit, path.read_bytes()) for path in make_objects(tmp_path / "in", 4)]
    link = hub_link(destination, unit)
    outcomes: list[str] = []
    start = threading.Barrier(4)

    def stream(index: int) -> None:
        sender = HubSender(destination, spool=unit, link=link)
        start.wait()
        outcomes.append(sender.send(objects[index], 2).kind)
        sender.close()

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes.count("held") >= 3, outcomes
    # Four streams together: at most one chunk (and its request headers) past the budget.
    assert hub.server.stats.body_bytes <= budget + CHUNK, hub.server.stats.body_bytes


def test_the_pipelined_protocol_commits_once_and_an_old_client_still_works(
    hub: Hub, unit: Spool, tmp_path: Path
) -> None:
    token_file = _token(hub, tmp_path)
    token = token_file.read_text().strip()
    status, headers, _ = request(hub.port, "OPTIONS", "/v1/uploads", token=token)
    assert status == 204
    assert {"creation-with-upload", "waystation-commit"} <= set(headers["tus-extension"].split(","))
    small, big = make_objects(tmp_path / "in", 2, size=200)
    # A small object: one request (create, the whole body, commit).
    data = small.read_bytes()
    held = hold(unit, data)
    sender = HubSender(
        hub_destination(f"http://127.0.0.1:{hub.port}", token_file, envelope=False),
        spool=unit,
    )
    requests_before = hub.server.stats.accepted_bytes
    assert sender.send(held, 2).kind == "status"
    assert hub.server.stats.accepted_bytes - requests_before == len(data)
    assert hub.server.stats.commits == 1 and _commits(hub) == 1
    [copy] = hub_objects(hub)
    assert hashlib.sha256(plaintext(hub.spool, copy)).digest() == hashlib.sha256(data).digest()
    # The same create+commit again (its answer lost): "already committed", nothing stored.
    headers = _create_headers(data, commit=True)
    status, answer, body = request(
        hub.port, "POST", "/v1/uploads", token=token, headers=headers, body=data
    )
    assert status == 200 and answer["waystation-upload-state"] == "committed"
    assert hub.server.stats.commits == 1 and len(hub_objects(hub)) == 1
    # A create with a first chunk whose answer was lost, repeated: the hub returns the same
    # upload at its offset and ignores the repeated chunk.
    data = big.read_bytes()
    first = _create_headers(data, commit=False)
    status, one, _ = request(
        hub.port, "POST", "/v1/uploads", token=token, headers=first, body=data[:CHUNK]
    )
    status2, two, _ = request(
        hub.port, "POST", "/v1/uploads", token=token, headers=first, body=data[:CHUNK]
    )
    assert status == status2 == 201 and one["location"] == two["location"]
    assert one["upload-offset"] == two["upload-offset"] == str(CHUNK)
    # The last chunk with Waystation-Commit: committed in the same answer.
    status, _, body = request(
        hub.port,
        "PATCH",
        one["location"],
        token=token,
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Offset": str(CHUNK),
            "Content-Type": "application/offset+octet-stream",
            "Waystation-Commit": "1",
        },
        body=data[CHUNK:],
    )
    assert status == 200 and body["state"] == "committed" and body["already"] is False
    assert hub.server.stats.commits == 2 and len(hub_objects(hub)) == 2


def _create_headers(data: bytes, *, commit: bool) -> dict[str, str]:
    import io

    from pydicom import dcmread

    from router.hub.protocol import UploadMetadata

    ds = dcmread(io.BytesIO(data))
    meta = UploadMetadata(
        str(ds.SOPInstanceUID),
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        hashlib.sha256(data).hexdigest(),
    )
    headers = {
        "Tus-Resumable": "1.0.0",
        "Upload-Length": str(len(data)),
        "Upload-Metadata": meta.header(),
        "Content-Type": "application/offset+octet-stream",
    }
    if commit:
        headers["Waystation-Commit"] = "1"
    return headers
