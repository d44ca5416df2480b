"""A real router daemon sending to a hub over loopback through the fault proxy: kill -9
mid-object, repeated flaps, STAT preemption, and the provider's PACS (DCMTK storescp)
behind the hub. The hub runs in the test's process so its counters can be read."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import time
from pathlib import Path

from pydicom import dcmread

from router.config.load import load_config
from router.hub.service import Hub
from router.spool.spool import Spool
from tests.support.dicomgen import dataset_sha256
from tests.support.faultproxy import FaultProxy
from tests.support.hub import (
    hub_config,
    hub_destination_toml,
    hub_objects,
    make_objects,
    plaintext,
    start_hub,
    unit_journal_rows,
)
from tests.support.peers import Storescp, storescu
from tests.support.router_proc import (
    RouterProcess,
    delivery_states,
    fast_retry_toml,
    free_port,
    route_toml,
    wait_for,
    write_config,
)

MAX_CHUNK = 64 * 1024


def _unit(
    tmp_path: Path, hub: Hub, hub_port: int, routes: str = "", **extra: object
) -> tuple[Path, int]:
    token = tmp_path / "unit.token"
    token.write_text(hub.units.enroll("CLINIC1") + "\n")
    port = free_port()
    (tmp_path / "unit").mkdir(exist_ok=True)
    destination = hub_destination_toml(
        hub_port,
        token,
        min_chunk='"16 KiB"',
        max_chunk='"64 KiB"',
        envelope="false",
        timeout='"5 s"',
        **extra,
    )
    config = write_config(
        tmp_path / "unit",
        port=port,
        destinations=destination,
        extra=fast_retry_toml() + (routes or route_toml("all", "hub")),
    )
    return config, port


def _hub_commits(hub: Hub) -> int:
    return int(
        hub.spool.reader_connection().execute("SELECT count(*) FROM hub_commits").fetchone()[0]
    )


def _digests(spool: Spool) -> set[str]:
    """SHA-256 of every held object's bytes."""
    return {
        hashlib.sha256(plaintext(spool, held)).hexdigest() for held in spool.held_objects(("held",))
    }


def _same_objects(hub: Hub, config: Path, count: int) -> None:
    """The hub holds exactly the bytes the unit holds (what storescu sent it), bit for bit.
    (DCMTK's storescu re-encodes a file's data set as it sends, so the files themselves are
    not the reference.) Call after the router stopped."""
    unit = Spool(load_config(config).spool, create=False)
    try:
        expected = _digests(unit)
    finally:
        unit.close()
    assert len(expected) == count
    assert _digests(hub.spool) == expected


def test_kill9_of_the_router_mid_object_resumes_at_the_confirmed_offset(
    tmp_path: Path, hub: Hub
) -> None:
    [big] = make_objects(tmp_path / "in", 1, size=1536)
    with FaultProxy(hub.port) as proxy:
        proxy.rate(150_000, direction="up")
        config, port = _unit(tmp_path, hub, proxy.port)
        router = RouterProcess(config).start()
        try:
            assert storescu([big], port=port, aec="WAYSTATION").ok
            assert wait_for(
                lambda: any(c > 200_000 for (c,) in unit_journal_rows(
                    config, "SELECT confirmed FROM hub_uploads")),
                timeout=60,
            )  # fmt: skip
            router.kill9()
            proxy.rate(None)
            router = RouterProcess(config).start()
            assert wait_for(lambda: delivery_states(config).get("delivered") == 1, timeout=120)
        finally:
            router.stop()
    [(size,)] = unit_journal_rows(config, "SELECT size FROM hub_uploads")
    # Bytes re-sent: at most the chunk that was in flight at the kill.
    assert size <= hub.server.stats.body_bytes <= size + MAX_CHUNK
    assert _hub_commits(hub) == 1 and hub.server.stats.commits == 1
    _same_objects(hub, config, 1)


def test_repeated_flaps_lose_nothing_and_commit_nothing_twice(tmp_path: Path, hub: Hub) -> None:
    files = make_objects(tmp_path / "in", 12, size=192)
    with FaultProxy(hub.port) as proxy:
        proxy.rate(250_000, direction="up")
        config, port = _unit(tmp_path, hub, proxy.port)
        with RouterProcess(config):
            assert storescu(files, port=port, aec="WAYSTATION").ok
            proxy.flap(1.5, 1.0, cycles=6)
            assert wait_for(lambda: delivery_states(config).get("delivered") == 12, timeout=180)
            assert proxy.statistics().down_phases >= 3
    assert _hub_commits(hub) == 12
    assert hub.server.stats.commits == 12  # each object stored once; repeats were "already"
    assert len(hub_objects(hub)) == 12
    _same_objects(hub, config, 12)


def test_a_stat_study_preempts_a_bulk_backlog(tmp_path: Path, hub: Hub) -> None:
    bulk = make_objects(tmp_path / "bulk", 4, size=768, modality="MR", seed=1)
    stat = make_objects(tmp_path / "stat", 1, size=64, modality="CT", seed=2)
    routes = (
        '\n[[routes]]\nname = "stat"\nto = ["hub"]\npriority = "stat"\n'
        '[routes.when]\nmodality = "CT"\n'
        '\n[[routes]]\nname = "bulk"\nto = ["hub"]\npriority = "bulk"\n'
        '[routes.when]\nmodality = "MR"\n'
    )
    with FaultProxy(hub.port) as proxy:
        proxy.rate(200_000, direction="up")
        config, port = _unit(tmp_path, hub, proxy.port, routes)
        with RouterProcess(config):
            assert storescu(bulk, port=port, aec="WAYSTATION").ok
            assert wait_for(
                lambda: bool(unit_journal_rows(
                    config, "SELECT 1 FROM hub_uploads WHERE confirmed > 100000")),
                timeout=60,
            )  # fmt: skip
            started = time.monotonic()
            assert storescu(stat, port=port, aec="WAYSTATION").ok
            assert wait_for(lambda: _stat_arrived(hub), timeout=60)
            latency = time.monotonic() - started
            bulk_done = _hub_commits(hub) - 1
            assert wait_for(lambda: delivery_states(config).get("delivered") == 5, timeout=180)
    # The STAT object overtook the backlog: most of the bulk was still to go.
    assert bulk_done <= 2, bulk_done
    assert latency < 20, latency
    _same_objects(hub, config, 5)


def test_a_used_up_budget_holds_routine_objects_but_not_an_exempt_stat_study(
    tmp_path: Path, hub: Hub
) -> None:
    routine = make_objects(tmp_path / "routine", 4, size=256, modality="MR", seed=3)
    stat = make_objects(tmp_path / "stat", 1, size=64, modality="CT", seed=4)
    routes = (
        '\n[[routes]]\nname = "stat"\nto = ["hub"]\npriority = "stat"\n'
        '[routes.when]\nmodality = "CT"\n'
        '\n[[routes]]\nname = "routine"\nto = ["hub"]\npriority = "routine"\n'
        '[routes.when]\nmodality = "MR"\n'
    )
    rate = '{ daily_budget = "300 KiB", stat_exempt = true, timezone = "UTC" }'
    config, port = _unit(tmp_path, hub, hub.port, routes, rate=rate, streams=1)
    with RouterProcess(config):
        assert storescu(routine, port=port, aec="WAYSTATION").ok
        # The budget runs out part way: the rest waits for local midnight, hours away.
        assert wait_for(lambda: 1 <= _hub_commits(hub) < 4, timeout=60)
        assert wait_for(lambda: "budget" in _reasons(config), timeout=60)
        assert storescu(stat, port=port, aec="WAYSTATION").ok
        # The worker is not asleep until midnight: the exempt STAT object goes at once.
        assert wait_for(lambda: _stat_arrived(hub), timeout=60)
        assert _hub_commits(hub) < 5  # the routine rest still waits
        # ... and the console still says why, not "idle", once the STAT object has gone.
        time.sleep(3)
        assert "budget" in _reasons(config) and '"idle"' not in _reasons(config)


def _reasons(config: Path) -> str:
    """The unit's destination state, as its control API reports it."""
    status = subprocess.run(
        [sys.executable, "-m", "router.cli", "status", "--json", "--config", str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return status.stdout.lower()


def _stat_arrived(hub: Hub) -> bool:
    return any(
        dcmread(io.BytesIO(plaintext(hub.spool, held))).Modality == "CT"
        for held in hub_objects(hub)
    )


def test_objects_reach_the_providers_pacs_bit_exact_and_the_unit_hears_of_it(
    tmp_path: Path,
) -> None:
    files = make_objects(tmp_path / "in", 3, size=256)
    with Storescp(tmp_path / "pacs") as pacs:
        extra = {
            "destinations": [
                {"name": "pacs", "type": "dimse", "ae_title": "STORESCP", "host": "127.0.0.1",
                 "port": pacs.port}
            ],
            "routes": [{"name": "all", "to": ["pacs"]}],
            "delivery": {"retry_first": "0.5 s", "retry_max": "2 s"},
        }  # fmt: skip
        provider = start_hub(hub_config(tmp_path, extra=extra))
        try:
            config, port = _unit(tmp_path, provider, provider.port)
            with RouterProcess(config):
                assert storescu(files, port=port, aec="WAYSTATION").ok
                assert wait_for(lambda: len(pacs.files()) == 3, timeout=90)
                # The unit polls receipts: "delivered to the provider" for every object.
                assert wait_for(
                    lambda: [s for (s,) in unit_journal_rows(
                        config, "SELECT state FROM hub_uploads")] == ["delivered"] * 3,
                    timeout=60,
                )  # fmt: skip
                events = unit_journal_rows(
                    config, "SELECT count(*) FROM history WHERE event = 'delivered-to-provider'"
                )
                assert events == [(3,)]
            # What the PACS received is, data set for data set, what the unit received.
            unit = Spool(load_config(config).spool, create=False)
            try:
                held = [plaintext(unit, h) for h in unit.held_objects(("held",))]
            finally:
                unit.close()
            reference = tmp_path / "unit-held"
            reference.mkdir()
            for index, data in enumerate(held):
                (reference / f"{index}.dcm").write_bytes(data)
            assert {dataset_sha256(f) for f in pacs.files()} == {
                dataset_sha256(f) for f in reference.iterdir()
            }
            assert len(held) == 3
        finally:
            provider.stop()
