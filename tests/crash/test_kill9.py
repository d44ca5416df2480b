"""kill -9 at random moments of ingest: every acknowledged object is held and verifies."""

from __future__ import annotations

from pathlib import Path

from tests.crash.conftest import soak
from tests.crash.harness import run_trials
from tests.support.router_proc import free_port, write_config


def test_no_acknowledged_object_lost_across_kill9(tmp_path: Path, templates: list[Path]) -> None:
    port = free_port()
    trials = 200 if soak() else 15
    figures = run_trials(
        write_config(tmp_path, port=port), port, templates, trials=trials, seed=3, crashfs=None
    )
    print(figures.summary())
    assert figures.acknowledged > trials
    assert figures.lost == [] and figures.corrupt == []
