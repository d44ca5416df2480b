"""Fixtures: a real router subprocess on loopback with a temporary spool."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
