"""A multi-frame object of over 200 MB is streamed, never held whole in memory."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pynetdicom import _config

from tests.integration.conftest import router_port
from tests.support import dicomgen
from tests.support.router_proc import RouterProcess, waystation
from tests.support.sender import send


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_big_multiframe_ingests_with_small_resident_set(
    router: RouterProcess, tmp_path: Path
) -> None:
    big = (
        dicomgen.cached_dataset(
            "multiframe-210mb", lambda d: dicomgen.make_multiframe(d / "mf.dcm", size_mb=210)
        )
        / "mf.dcm"
    )
    assert big.stat().st_size > 200 * 1024 * 1024
    _config.STORE_SEND_CHUNKED_DATASET = True
    assert router.proc is not None
    before = peak_rss_mib(router.proc.pid)
    assert send([big], router_port(router)).acknowledged == [big]
    peak = peak_rss_mib(router.proc.pid)
    print(f"router peak RSS {before:.0f} MiB idle, {peak:.0f} MiB after a 210 MB object")
    # Far below the object's size: the object streams through ~1 MiB buffers.
    assert peak - before < 64, (before, peak)
    out = tmp_path / "out"
    done = waystation("spool", "export", "--config", str(router.config), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    [exported] = list(out.rglob("*.dcm"))
    assert dicomgen.dataset_sha256(exported) == dicomgen.dataset_sha256(big)
    assert (
        dcmread(exported, stop_before_pixels=True).NumberOfFrames
        == dcmread(big, stop_before_pixels=True).NumberOfFrames
    )
