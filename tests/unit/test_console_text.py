"""The console's wording: times, sizes, days left, state words, masking (pure functions)."""

from __future__ import annotations

from datetime import UTC

import pytest

from router.control.schema import Banner
from tests.support.fake_control import NOW, unit_status
from tui.text import ago, banner_line, clock_time, days_left, mask, size, spool_line


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (59.9, "59 s"), (60, "1 min"), (3599, "59 min"), (3600, "1 h"),
     (3660, "1 h 1 min"), (49 * 3600, "2 days"), (-5, "0 s")],
)  # fmt: skip
def test_ago(seconds: float, text: str) -> None:
    assert ago(seconds) == text


def test_clock_time_adds_the_date_when_not_today() -> None:
    assert clock_time(NOW - 60, NOW, UTC) == "09:59"
    assert clock_time(NOW - 86400, NOW, UTC) == "26 Nov 10:00"
    assert clock_time(None, NOW, UTC) == "-"


def test_size() -> None:
    assert [size(n) for n in (512, 2048, 5 * 1024**2, 3 * 1024**3)] == [
        "512 B", "2.0 KB", "5.0 MB", "3.0 GB",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("days", "text"),
    [(0.3, "less than a day"), (1.2, "about 1 day"), (18.4, "about 18 days"),
     (4000, "more than a year")],
)  # fmt: skip
def test_days_left(days: float, text: str) -> None:
    assert days_left(days) == text


def test_banner_level_is_written_not_only_coloured() -> None:
    assert banner_line(Banner(level="attention", text="X")) == "!! X"
    assert banner_line(Banner(level="ok", text="Y")) == "OK Y"
    assert banner_line(Banner(level="sending", text="Z")) == ">> Z"


def test_disk_words() -> None:
    assert spool_line(unit_status("healthy").spool).startswith("20.0 GB free")
    assert spool_line(unit_status("disk-nearly-full").spool).startswith("DISK NEARLY FULL")


def test_masked_fields_never_show_blank() -> None:
    assert mask("", True) == "*****"
    assert mask("D*** J***", True) == "D*** J***"
    assert mask("", False) == "-"
