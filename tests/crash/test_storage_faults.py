"""Promise 3 and 6: a failed fsync or a full disk acknowledges nothing affected, answers
0xA700 with an alarm, loses nothing already held, and service returns when the fault clears."""

from __future__ import annotations

from pathlib import Path

import pytest
from pynetdicom import _config

from tests.crash.harness import check_held
from tests.crash.test_powerloss import config_on
from tests.support import dicomgen
from tests.support.crashfs import CrashFS
from tests.support.router_proc import RouterProcess, free_port
from tests.support.sender import send

pytestmark = pytest.mark.fuse


def uids(files: list[Path]) -> set[str]:
    from pydicom import dcmread

    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}


@pytest.mark.parametrize("fault", ["fsync-eio", "enospc"])
def test_storage_fault_refuses_then_recovers_and_loses_nothing(
    crashfs: CrashFS, tmp_path: Path, fault: str
) -> None:
    _config.STORE_SEND_CHUNKED_DATASET = True
    files = dicomgen.make_tiny_objects(tmp_path / "tiny", count=30)
    before, during, after = files[:10], files[10:20], files[20:]
    port = free_port()
    config = config_on(crashfs, tmp_path, port)
    router = RouterProcess(config).start()
    try:
        assert send(before, port).acknowledged == before
        crashfs.inject(fault)  # type: ignore[arg-type]
        result = send(during, port)
        assert set(result.statuses.values()) == {0xA700}, result.statuses
        crashfs.inject("none")
        assert send(after, port).acknowledged == after
    finally:
        router.kill9()
    log = router.read_log()
    expected_alarm = "storage-fault" if fault == "fsync-eio" else "spool-full"
    assert f"ALARM {expected_alarm}" in log
    crashfs.cut_power()
    RouterProcess(config).start().stop()  # recovery after the cut
    lost, corrupt = check_held(config, uids(before + after), set())
    assert lost == [] and corrupt == []
    held_extra, _ = check_held(config, uids(during), set())
    assert sorted(held_extra) == sorted(uids(during)), "refused objects must not be held"


def test_full_disk_refuses_and_resumes_when_space_returns(crashfs: CrashFS, tmp_path: Path) -> None:
    _config.STORE_SEND_CHUNKED_DATASET = True
    files = dicomgen.make_tiny_objects(tmp_path / "tiny", count=20)
    port = free_port()
    config = config_on(crashfs, tmp_path, port)
    with RouterProcess(config) as router:
        assert send(files[:10], port).acknowledged == files[:10]
        used = crashfs.stats().used_bytes
        crashfs.set_capacity(used + 8 * 1024 * 1024)  # below the router's 16 MiB min_free
        assert set(send(files[10:15], port).statuses.values()) == {0xA700}
        crashfs.set_capacity(64 * 1024**3)
        assert send(files[15:], port).acknowledged == files[15:]
    assert router.log_shows("ALARM spool-full")
    lost, _ = check_held(config, uids(files[:10] + files[15:]), set())
    assert lost == []
