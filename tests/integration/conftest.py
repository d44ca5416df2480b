"""Fixtures: a real router subprocess on loopback with a temporary spool; a hub and a unit's
spool for the hub tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from router.hub.service import Hub
from router.spool.spool import Spool
from tests.support.hub import hub_config, start_hub, unit_spool
from tests.support.router_proc import RouterProcess, free_port, write_config


@pytest.fixture
def router(tmp_path: Path) -> Iterator[RouterProcess]:
    """A running router accepting any caller, with a small min_free."""
    config = write_config(tmp_path, port=free_port())
    with RouterProcess(config) as proc:
        yield proc


def router_port(proc: RouterProcess) -> int:
    """The port the router listens on, read back from its configuration."""
    for line in proc.config.read_text().splitlines():
        if line.startswith("listen"):
            return int(line.split(":")[-1].strip('" '))
    raise AssertionError("no listen line")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    """A running hub on loopback (plain HTTP, its spool under tmp_path)."""
    running = start_hub(hub_config(tmp_path))
    yield running
    running.stop()


@pytest.fixture
def unit(tmp_path: Path) -> Iterator[Spool]:
    """A clinic unit's spool, for driving the hub sender directly."""
    spool = unit_spool(tmp_path)
    yield spool
    spool.close()
