"""Promise 1 and 2 under power loss: nothing acknowledged is lost or torn, across random cuts.

The spool and keys live on CrashFS, which keeps only what was fsynced. The control run proves
the test has teeth: a spool that skips the directory fsync loses acknowledged objects.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.crash.conftest import soak
from tests.crash.harness import run_trials
from tests.support.crashfs import CrashFS
from tests.support.router_proc import free_port, write_config

pytestmark = pytest.mark.fuse


def config_on(crashfs: CrashFS, tmp_path: Path, port: int, *, inline_limit: str = "") -> Path:
    """A router configuration with spool and key file on the crash file system."""
    directory = tmp_path / "unit"
    directory.mkdir()
    config = write_config(directory, port=port, spool=crashfs.mountpoint / "spool")
    text = config.read_text().replace(str(directory / "keys"), str(crashfs.mountpoint / "keys"))
    if inline_limit:
        text = text.replace("[spool]\n", f'[spool]\ninline_limit = "{inline_limit}"\n')
    config.write_text(text)
    return config


def test_no_acknowledged_object_lost_across_power_cuts(
    crashfs: CrashFS, tmp_path: Path, templates: list[Path]
) -> None:
    port = free_port()
    trials = 1000 if soak() else 50
    figures = run_trials(
        config_on(crashfs, tmp_path, port), port, templates, trials=trials, seed=1, crashfs=crashfs
    )
    print(figures.summary())
    assert figures.trials == trials
    assert figures.acknowledged > trials  # the cuts really fell among acknowledged traffic
    assert figures.lost == [] and figures.corrupt == []


def test_control_a_spool_without_directory_fsync_is_caught(
    crashfs: CrashFS, tmp_path: Path, templates: list[Path]
) -> None:
    port = free_port()
    # Every object on the blob-file path: the path the directory fsync protects.
    figures = run_trials(
        config_on(crashfs, tmp_path, port, inline_limit="0"),
        port,
        templates,
        trials=8,
        seed=2,
        crashfs=crashfs,
        env={"WAYSTATION_TEST_FAULT": "skip-dir-fsync"},
    )
    print(figures.summary())
    assert figures.lost, "power cuts should lose objects when the directory is not fsynced"
