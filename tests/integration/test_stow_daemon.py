"""A real router daemon delivering with STOW-RS: to Orthanc with Debian's DICOMweb plugin
(stored files compared bit for bit with what the unit holds), and to scripted STOW-RS
servers through a kill -9 of the router in the middle of a request."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from router.config.load import load_config
from router.spool.spool import Spool
from tests.support import dicomgen
from tests.support.hub import (
    hub_config,
    hub_destination_toml,
    make_objects,
    plaintext,
    start_hub,
    unit_journal_rows,
)
from tests.support.peers import Orthanc, storescu
from tests.support.router_proc import (
    RouterProcess,
    delivery_states,
    fast_retry_toml,
    free_port,
    route_toml,
    wait_for,
    write_config,
)
from tests.support.stow_server import Answer, StowServer

MAX_INSTANCES = 5


def stow_toml(name: str, url: str, **extra: object) -> str:
    """A `type = "stow"` [[destinations]] table on plain HTTP (tests only)."""
    lines = [
        f'name = "{name}"',
        'type = "stow"',
        f'url = "{url}"',
        "insecure_plain_http = true",
        f"max_instances = {MAX_INSTANCES}",
        *(f"{key} = {value}" for key, value in extra.items()),
    ]
    return "\n[[destinations]]\n" + "\n".join(lines) + "\n"


def unit_digests(config: Path) -> dict[str, str]:
    """SOP Instance UID -> SHA-256 of the bytes the unit holds. Call after the router stopped.
    (storescu re-encodes a file's data set as it sends, so the files are not the reference.)"""
    spool = Spool(load_config(config).spool, create=False)
    try:
        return {
            spool.metadata(held)["sop_instance_uid"]: hashlib.sha256(
                plaintext(spool, held)
            ).hexdigest()
            for held in spool.held_objects(("held",))
        }
    finally:
        spool.close()


def test_orthanc_stores_every_object_bit_exact(tmp_path: Path) -> None:
    tiny = dicomgen.make_tiny_objects(tmp_path / "tiny", count=12)
    # Bigger than a request's limit (4 MiB): it goes alone.
    big = make_objects(tmp_path / "big", 1, size=5 * 1024, seed=7)
    with Orthanc(tmp_path / "orthanc", dicomweb=True) as orthanc:
        port = free_port()
        (tmp_path / "unit").mkdir()
        config = write_config(
            tmp_path / "unit",
            port=port,
            destinations=stow_toml("orthanc", orthanc.dicomweb_url),
            extra=fast_retry_toml() + route_toml("all", "orthanc"),
        )
        with RouterProcess(config) as router:
            assert storescu([*tiny, *big], port=port, aec="WAYSTATION").ok
            assert wait_for(
                lambda: delivery_states(config, "orthanc") == {"delivered": 13}, timeout=90
            ), delivery_states(config, "orthanc")
            # The console sees it as any destination: its kind, address and state.
            [view] = router.client().destinations()
            assert (view.kind, view.address) == ("stow", orthanc.dicomweb_url)
            assert view.state in ("idle", "sending") and view.failed == 0
            # The console's "test the connection": an HTTP check, storing nothing.
            tested = router.client().echo("orthanc")
            assert tested.ok and tested.status == 200, tested
        expected = unit_digests(config)
        assert len(expected) == 13
        log = (config.parent / "router.log").read_text()
        assert "orthanc" in log and not any(uid in log for uid in expected)  # no UIDs logged
        stored = {}
        for orthanc_id in orthanc.instances():
            uid = str(orthanc.instance_tags(orthanc_id)["SOPInstanceUID"])
            stored[uid] = hashlib.sha256(orthanc.instance_file(orthanc_id)).hexdigest()
    assert stored == expected


def test_kill9_mid_request_then_complete_delivery(tmp_path: Path) -> None:
    files = dicomgen.make_tiny_objects(tmp_path / "tiny", count=20)
    with StowServer() as pacs, StowServer() as archive:
        # The first request is stored, then its answer is held back: the router is killed
        # while it waits for it.
        pacs.script(Answer(delay=30.0))
        port = free_port()
        (tmp_path / "unit").mkdir()
        config = write_config(
            tmp_path / "unit",
            port=port,
            destinations=stow_toml("pacs", pacs.url) + stow_toml("archive", archive.url),
            extra=fast_retry_toml() + route_toml("all", "pacs", "archive"),
        )
        router = RouterProcess(config).start()
        try:
            assert storescu(files, port=port, aec="WAYSTATION").ok
            assert wait_for(lambda: len(pacs.stored) > 0, timeout=60)
            time.sleep(0.5)  # the server records the whole request, then holds its answer
            router.kill9()
            router = RouterProcess(config).start()
            assert wait_for(
                lambda: delivery_states(config, "pacs") == {"delivered": 20}, timeout=90
            ), delivery_states(config, "pacs")
            assert wait_for(lambda: delivery_states(config, "archive") == {"delivered": 20})
        finally:
            router.stop()
        expected = set(unit_digests(config).values())
        for server in (pacs, archive):
            assert len(server.stored) == 20  # nothing lost
            assert {d for entry in server.stored.values() for d in entry.sha256} == expected
        # Sent again: at most the request that was waiting for its answer at the kill.
        assert 1 <= pacs.duplicates() <= MAX_INSTANCES
        assert archive.duplicates() <= MAX_INSTANCES


def test_the_hub_forwards_to_the_providers_pacs_with_stow_rs(tmp_path: Path) -> None:
    files = dicomgen.make_tiny_objects(tmp_path / "tiny", count=6)
    with StowServer() as pacs:
        extra = {
            "destinations": [{"name": "pacs", "type": "stow", "url": pacs.url,
                              "insecure_plain_http": True}],
            "routes": [{"name": "all", "to": ["pacs"]}],
            "delivery": {"retry_first": "0.5 s", "retry_max": "2 s"},
        }  # fmt: skip
        provider = start_hub(hub_config(tmp_path, extra=extra))
        try:
            token = tmp_path / "unit.token"
            token.write_text(provider.units.enroll("CLINIC1") + "\n")
            port = free_port()
            (tmp_path / "unit").mkdir()
            config = write_config(
                tmp_path / "unit",
                port=port,
                destinations=hub_destination_toml(provider.port, token, envelope="false"),
                extra=fast_retry_toml() + route_toml("all", "hub"),
            )
            with RouterProcess(config):
                assert storescu(files, port=port, aec="WAYSTATION").ok
                # The unit hears from the hub's receipts: delivered to the provider's PACS.
                assert wait_for(
                    lambda: [s for (s,) in unit_journal_rows(
                        config, "SELECT state FROM hub_uploads")] == ["delivered"] * 6,
                    timeout=90,
                )  # fmt: skip
        finally:
            provider.stop()
        expected = set(unit_digests(config).values())
        assert {d for entry in pacs.stored.values() for d in entry.sha256} == expected
        assert len(pacs.stored) == 6 and pacs.duplicates() == 0
