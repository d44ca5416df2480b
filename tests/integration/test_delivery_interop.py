"""The sender's own upper layer against real peers at both ends of the maximum PDU range:
DCMTK storescp announcing its smallest maximum (4096 bytes) and a pynetdicom SCP announcing
none (0, unlimited), byte-exact; and the C-ECHO test of a destination."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread

from router.config.model import DimseDestination
from router.core.retry import Outcome, classify
from router.delivery.dimse import Timeouts, echo
from tests.support import dicomgen
from tests.support.peers import Storescp
from tests.support.router_proc import (
    RouterProcess,
    delivery_states,
    destination_toml,
    fast_retry_toml,
    free_port,
    route_toml,
    wait_for,
    write_config,
)
from tests.support.scripted_scp import REJECT_CALLING_AE, ScriptedSCP
from tests.support.sender import send


def test_smallest_and_unlimited_max_pdu_peers_get_every_byte(tmp_path: Path) -> None:
    files = [
        *dicomgen.make_ct_series(tmp_path / "ct", count=4),
        *dicomgen.make_tiny_objects(tmp_path / "tiny", count=6),
        # Larger than one read (1 MiB), so unlimited PDUs still come in several pieces.
        dicomgen.make_multiframe(tmp_path / "mf" / "big.dcm", size_mb=3),
    ]
    with (
        Storescp(tmp_path / "small", extra_args=["--max-pdu", "4096"]) as small,
        ScriptedSCP(ae_title="PACS") as unlimited,  # pynetdicom, maximum_pdu_size = 0
    ):
        port = free_port()
        (tmp_path / "unit").mkdir()
        config = write_config(
            tmp_path / "unit",
            port=port,
            destinations=destination_toml("small", "STORESCP", small.port)
            + destination_toml("unlimited", "PACS", unlimited.port)
            + route_toml("both", "small", "unlimited"),
        )
        with RouterProcess(config):
            assert send(files, port).acknowledged == files
            assert wait_for(
                lambda: delivery_states(config).get("delivered", 0) == 2 * len(files), 120
            )
        assert sorted(dicomgen.dataset_sha256(p) for p in small.files()) == sorted(
            dicomgen.dataset_sha256(p) for p in files
        )
        received = unlimited.received()
        assert len(received) == len(files)
        for path in files:
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert received[uid].data == dicomgen.dataset_bytes(path)
            assert received[uid].count == 1
            assert received[uid].calling_ae == "WAYSTATION"


def _destination(port: int, ae_title: str = "STORESCP") -> DimseDestination:
    return DimseDestination(
        name="pacs", type="dimse", ae_title=ae_title, host="127.0.0.1", port=port
    )


def _reason(outcome: Outcome, ae_title: str) -> str:
    verdict = classify(outcome, destination="pacs", unit_ae="WAYSTATION", dest_ae=ae_title)
    return verdict.reason


def test_echo_answers_success_refusal_and_rejection(tmp_path: Path) -> None:
    timeouts = Timeouts(connect=5, response_base=5)
    with Storescp(tmp_path / "scp") as scp:
        result = echo(_destination(scp.port), "WAYSTATION", timeouts)
    assert result.ok and result.status == 0x0000, result
    assert 0 < result.elapsed < 5

    closed = echo(_destination(free_port()), "WAYSTATION", timeouts)
    assert not closed.ok and closed.outcome.kind == "refused"
    assert "not accepting connections" in _reason(closed.outcome, "STORESCP")

    with ScriptedSCP(ae_title="PACS") as pacs:
        pacs.set_association_default(REJECT_CALLING_AE)
        rejected = echo(_destination(pacs.port, "PACS"), "WAYSTATION", timeouts)
    assert rejected.outcome.kind == "rejected"
    assert "does not know this unit's name WAYSTATION" in _reason(rejected.outcome, "PACS")


def _rss_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


def test_a_big_object_is_streamed_out_never_held_whole(tmp_path: Path) -> None:
    big = dicomgen.make_multiframe(tmp_path / "mf" / "big.dcm", size_mb=120)
    dest_port = free_port()
    port = free_port()
    (tmp_path / "unit").mkdir()
    config = write_config(
        tmp_path / "unit",
        port=port,
        destinations=destination_toml("pacs", "STORESCP", dest_port)
        + route_toml("all", "pacs")
        + fast_retry_toml(),
    )
    with RouterProcess(config) as router:
        assert router.proc is not None
        pid = router.proc.pid
        assert send([big], port).acknowledged == [big]
        # Held and queued (the destination is down); forget the peak ingest reached.
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        before = _rss_mib(pid, "VmRSS")
        with Storescp(tmp_path / "dest", port=dest_port) as scp:
            assert wait_for(lambda: delivery_states(config) == {"delivered": 1}, 120)
            [received] = scp.files()
        peak = _rss_mib(pid, "VmHWM")
    assert dicomgen.dataset_sha256(received) == dicomgen.dataset_sha256(big)
    assert peak - before < 40, (before, peak)  # a 120 MiB object, sent in 1 MiB pieces
