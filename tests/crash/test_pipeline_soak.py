"""Promises 1-6 across the whole pipeline: modalities -> router (on CrashFS) -> local PACS and
-> flapping link -> hub (on CrashFS) -> provider's PACS, with random power cuts and kill -9s of
the router and the hub, and a full disk and an fsync EIO on the router's file system.

CI runs a short soak inside `make test`; `make soak` runs 1000 cuts. Parameters (environment):
WAYSTATION_SOAK_CUTS (cuts), WAYSTATION_SOAK_MINUTES (stop cutting after this long; 0: never),
WAYSTATION_SOAK_TRAFFIC (at most this many seconds of modality traffic before each cut; fewer
objects per cut make a shorter drain at the end), WAYSTATION_SOAK_REPORT (also write the figures
to this file).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.crash.conftest import soak
from tests.crash.pipeline import pipeline
from tests.crash.soak import run_soak
from tests.support.crashfs import crashfs_unavailable_reason

pytestmark = pytest.mark.fuse


def test_whole_pipeline_keeps_every_promise_across_cuts(
    tmp_path: Path, mixed_templates: list[Path]
) -> None:
    reason = crashfs_unavailable_reason()
    if reason is not None:
        if os.environ.get("WAYSTATION_REQUIRE_PEERS") == "1":
            pytest.fail(f"crash file system unavailable: {reason}")
        pytest.skip(reason)
    cuts = int(os.environ.get("WAYSTATION_SOAK_CUTS", "1000" if soak() else "16"))
    minutes = float(os.environ.get("WAYSTATION_SOAK_MINUTES", "0"))
    traffic = float(os.environ.get("WAYSTATION_SOAK_TRAFFIC", "1.0" if soak() else "0.6"))
    with pipeline(tmp_path) as rig:
        figures = run_soak(rig, mixed_templates, cuts=cuts, minutes=minutes, max_traffic=traffic)
    report = figures.report()
    print(report)
    if os.environ.get("WAYSTATION_SOAK_REPORT"):
        Path(os.environ["WAYSTATION_SOAK_REPORT"]).write_text(report + "\n")
    failures = figures.failures()
    assert not failures, "\n".join([report, *failures[:50]])
    if minutes <= 0:
        assert len(figures.cuts) == cuts
    assert figures.acknowledged > len(figures.cuts)  # the cuts fell among acknowledged traffic
    assert figures.count("router") and figures.count("hub")


def test_control_the_soak_catches_a_spool_without_directory_fsync(
    tmp_path: Path, mixed_templates: list[Path]
) -> None:
    """The soak has teeth: a router that skips the directory fsync loses acknowledged objects
    at power cuts, and the soak names them."""
    reason = crashfs_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with pipeline(tmp_path, {"WAYSTATION_TEST_FAULT": "skip-dir-fsync"}) as rig:
        figures = run_soak(
            rig, mixed_templates, cuts=4, weights={"router-power": 1.0}, storage_faults=False,
            drain_timeout=20, max_traffic=1.0,
        )  # fmt: skip
    print(figures.report())
    assert figures.lost, "power cuts should lose objects when the directory is not fsynced"
    assert all(line.startswith("object #") and "before cut" in line for line in figures.lost)
