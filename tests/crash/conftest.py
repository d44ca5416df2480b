"""Fixtures for crash tests: templates of mixed sizes, and the crash file system."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import dicomgen
from tests.support.crashfs import CrashFS, crashfs_unavailable_reason, mounted


def soak() -> bool:
    """True under `make soak` (long runs)."""
    return os.environ.get("WAYSTATION_SOAK") == "1"


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Tiny objects, a 512x512 CT slice and a 1024x1024 slice (2 MB): the first two are held
    inline in the journal, the last one takes the blob-file path (fsync, rename, dir fsync)."""
    base = tmp_path_factory.mktemp("templates")
    tiny = dicomgen.make_tiny_objects(base / "tiny", count=1)
    ct = dicomgen.make_ct_series(base / "ct", count=1)
    large = dicomgen.make_ct_series(base / "large", count=1, rows=1024, cols=1024)
    assert large[0].stat().st_size > 2 * 1024 * 1024 > 1024 * 1024 > ct[0].stat().st_size
    return tiny * 3 + ct + large


@pytest.fixture(scope="session")
def mixed_templates(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Tiny objects (held inline in the journal), 256x256 and 512x512 CT slices (the blob-file
    path: the rig's inline limit is 64 KiB), in the proportions 4:2:1."""
    base = tmp_path_factory.mktemp("pipeline-templates")
    tiny = dicomgen.make_tiny_objects(base / "tiny", count=1)
    small = dicomgen.make_ct_series(base / "ct256", count=1, rows=256, cols=256)
    large = dicomgen.make_ct_series(base / "ct512", count=1)
    assert small[0].stat().st_size > 64 * 1024
    return tiny * 4 + small * 2 + large


@pytest.fixture
def crashfs(tmp_path: Path) -> Iterator[CrashFS]:
    """A mounted power-loss file system, unmounted afterwards whatever happens."""
    reason = crashfs_unavailable_reason()
    if reason is not None:
        if os.environ.get("WAYSTATION_REQUIRE_PEERS") == "1":
            pytest.fail(f"crash file system unavailable: {reason}")
        pytest.skip(reason)
    with mounted(tmp_path / "mnt") as fs:
        yield fs
