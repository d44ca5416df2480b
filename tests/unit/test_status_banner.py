"""The banner and days-left decisions, as tables: what a technician reads first."""

from __future__ import annotations

import pytest

from router.core.status import BannerText, DestinationFacts, UnitFacts, banner, days_left

NOW = 1_000_000.0


def clock(at: float) -> str:
    minutes = int(at // 60) % (24 * 60)
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def dest(
    state: str = "idle",
    *,
    since: float = NOW - 600,
    waiting: int = 0,
    failed: int = 0,
    name: str = "PACS",
) -> DestinationFacts:
    return DestinationFacts(name, state, since, waiting, failed)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (UnitFacts(NOW, [dest()], 0, None), BannerText("ok", "ALL STUDIES DELIVERED")),
        (UnitFacts(NOW, [], 0, None), BannerText("ok", "ALL STUDIES DELIVERED")),
        (
            UnitFacts(NOW, [dest("sending", waiting=4)], 4, NOW - 6 * 60 - 5),
            BannerText("sending", "SENDING 4 - oldest waiting 6 min"),
        ),
        (
            UnitFacts(NOW, [dest("sending", waiting=1)], 1, NOW - 30),
            BannerText("sending", "SENDING 1 - oldest waiting 30 s"),
        ),
        (
            UnitFacts(NOW, [dest("down", since=9 * 3600 + 14 * 60, waiting=12)], 12, 0.0),
            BannerText(
                "attention",
                "ATTENTION: PACS unreachable since 09:14 - 12 studies safe on this unit",
            ),
        ),
        (
            UnitFacts(NOW, [dest("down", since=9 * 3600 + 14 * 60, waiting=1)], 1, 0.0),
            BannerText(
                "attention", "ATTENTION: PACS unreachable since 09:14 - 1 study safe on this unit"
            ),
        ),
        (
            UnitFacts(NOW, [dest("blocked", since=3600, waiting=2)], 2, 0.0),
            BannerText(
                "attention",
                "ATTENTION: PACS refuses this unit since 01:00 - 2 studies safe on this unit",
            ),
        ),
        (
            # Down beats refused objects and faults: it is the bigger problem.
            UnitFacts(
                NOW,
                [dest("down", since=0, waiting=3), dest(failed=2, name="AI")],
                3,
                0.0,
                faults=["Spool full"],
            ),
            BannerText(
                "attention", "ATTENTION: PACS unreachable since 00:00 - 3 studies safe on this unit"
            ),
        ),
        (
            UnitFacts(NOW, [dest(failed=2)], 0, None),
            BannerText(
                "attention", "ATTENTION: 2 objects refused by PACS - waiting for an operator"
            ),
        ),
        (
            UnitFacts(NOW, [dest()], 0, None, faults=["The journal failed its integrity check."]),
            BannerText("attention", "ATTENTION: The journal failed its integrity check."),
        ),
        (
            UnitFacts(NOW, [dest("paused", waiting=5)], 5, NOW - 60),
            BannerText("attention", "ATTENTION: PACS paused - 5 studies waiting"),
        ),
        (
            # Paused with nothing waiting is not worth an attention banner.
            UnitFacts(NOW, [dest("paused")], 0, None),
            BannerText("ok", "ALL STUDIES DELIVERED"),
        ),
        (
            UnitFacts(NOW, [dest()], 0, None, unrouted_studies=2),
            BannerText(
                "attention",
                "ATTENTION: 2 studies matched no route - kept on this unit, sent nowhere",
            ),
        ),
    ],
)
def test_banner(facts: UnitFacts, expected: BannerText) -> None:
    assert banner(facts, clock) == expected


@pytest.mark.parametrize(
    ("free", "min_free", "today", "elapsed", "expected"),
    [
        (100, 0, 0, 43_200, None),  # nothing received today: no rate
        (100 * 2**30, 0, 50 * 2**30, 43_200, 1.0),  # 50 GiB in half a day = 100 GiB a day
        (110 * 2**30, 10 * 2**30, 50 * 2**30, 43_200, 1.0),  # min_free is not usable
        (2**30, 0, 2**30, 60, 1 / 24),  # first minute: counted as an hour, not a minute
        (5 * 2**30, 10 * 2**30, 2**30, 3600, 0.0),  # already below min_free
        (300 * 2**30, 0, 10 * 2**30, 86_400, 30.0),
    ],
)
def test_days_left(
    free: int, min_free: int, today: int, elapsed: float, expected: float | None
) -> None:
    got = days_left(
        free_bytes=free,
        min_free_bytes=min_free,
        received_today_bytes=today,
        seconds_since_midnight=elapsed,
    )
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=0.05)
