"""Rate control: the cap holds to within one chunk, the calendar follows local time, budgets
stop at most one chunk over and survive a restart."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from router.config.rate import RateConfig, parse_days, parse_rate
from router.wan.rate import BudgetCounters, CapWindow, RateGate, RatePolicy, chunk_size_for

NAIROBI = ZoneInfo("Africa/Nairobi")  # UTC+3, no daylight saving
MONDAY_9 = dt.datetime(2026, 11, 23, 9, 0, tzinfo=NAIROBI)  # a Monday
WORKDAY = CapWindow(frozenset(range(5)), 8 * 60, 17 * 60, 1_000_000)


def _run(gate: RateGate, start: dt.datetime, seconds: float, chunk: int, *, stat: bool = False
         ) -> list[tuple[dt.datetime, int]]:  # fmt: skip
    """A greedy sender: send whenever allowed, else sleep as told. Returns (time, bytes)."""
    now, end, sends = start, start + dt.timedelta(seconds=seconds), []
    while now < end:
        decision = gate.ask(chunk, now, stat=stat)
        if decision.allowed:
            gate.sent(chunk, now, stat=stat)
            sends.append((now, chunk))
            now += dt.timedelta(milliseconds=1)
        else:
            assert decision.wait > 0 and decision.reason
            now += dt.timedelta(seconds=decision.wait)
    return sends


def test_unlimited_never_waits() -> None:
    gate = RateGate(RatePolicy())
    sends = _run(gate, MONDAY_9, 1, 1 << 20)
    assert len(sends) > 900


@pytest.mark.parametrize("cap", [64_000, 1_000_000, 10_000_000])
@pytest.mark.parametrize("chunk", [16 * 1024, 256 * 1024, 2 << 20])
def test_a_cap_holds_the_long_run_rate_within_one_chunk(cap: int, chunk: int) -> None:
    policy = RatePolicy(bits_per_second=cap, burst_bytes=64 * 1024)
    sends = _run(RateGate(policy), MONDAY_9, 120, chunk)
    total = sum(n for _, n in sends)
    allowed = cap / 8 * 120 + policy.burst_bytes + chunk
    assert total <= allowed
    assert total >= cap / 8 * 120 - chunk  # and it does use the link


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        (dt.datetime(2026, 11, 23, 9, 0), 1_000_000),  # Monday in hours
        (dt.datetime(2026, 11, 23, 7, 59), None),  # Monday before
        (dt.datetime(2026, 11, 23, 17, 0), None),  # Monday at the end (excluded)
        (dt.datetime(2026, 11, 27, 16, 59), 1_000_000),  # Friday
        (dt.datetime(2026, 11, 28, 9, 0), None),  # Saturday
    ],
)
def test_the_calendar_follows_local_time(local: dt.datetime, expected: int | None) -> None:
    policy = RatePolicy(windows=(WORKDAY,), zone=NAIROBI)
    # Asked in UTC, answered in Nairobi time.
    assert policy.cap_at(local.replace(tzinfo=NAIROBI).astimezone(dt.UTC)) == expected


def test_a_window_past_midnight_and_the_lowest_of_overlapping_caps() -> None:
    night = CapWindow(frozenset({4}), 22 * 60, 6 * 60, 5_000_000)  # Friday 22:00 - Sat 06:00
    lunch = CapWindow(frozenset(range(7)), 0, 24 * 60, 2_000_000)
    policy = RatePolicy(bits_per_second=100, windows=(night,), zone=NAIROBI)
    saturday_3 = dt.datetime(2026, 11, 28, 3, 0, tzinfo=NAIROBI)
    assert policy.cap_at(saturday_3) == 5_000_000
    assert policy.cap_at(saturday_3 + dt.timedelta(hours=4)) == 100
    assert policy.cap_at(saturday_3 - dt.timedelta(days=1)) == 100  # Thursday night
    both = RatePolicy(windows=(night, lunch), zone=NAIROBI)
    assert both.cap_at(saturday_3) == 2_000_000


def test_a_paused_window_waits_until_it_ends() -> None:
    paused = CapWindow(frozenset(range(5)), 8 * 60, 17 * 60, 0)
    gate = RateGate(RatePolicy(windows=(paused,), zone=NAIROBI))
    decision = gate.ask(1000, MONDAY_9)
    assert not decision.allowed and decision.reason == "sending is paused now"
    assert decision.wait == pytest.approx(8 * 3600)
    assert gate.ask(1000, MONDAY_9 + dt.timedelta(seconds=decision.wait)).allowed


def test_the_workday_cap_then_full_speed_after_five() -> None:
    gate = RateGate(RatePolicy(windows=(WORKDAY,), burst_bytes=64 * 1024, zone=NAIROBI))
    before_five = dt.datetime(2026, 11, 23, 16, 59, tzinfo=NAIROBI)
    sends = _run(gate, before_five, 120, 256 * 1024)
    in_hours = sum(n for t, n in sends if t.astimezone(NAIROBI).hour < 17)
    after = sum(n for t, n in sends if t.astimezone(NAIROBI).hour >= 17)
    assert in_hours <= 125_000 * 60 + 64 * 1024 + 256 * 1024
    assert after > 100 * 125_000 * 60  # unlimited: far more than the cap would allow


def test_a_daily_budget_overshoots_at_most_one_chunk_and_resets_at_local_midnight() -> None:
    policy = RatePolicy(daily_budget=1_000_000, zone=NAIROBI)
    gate = RateGate(policy)
    evening = dt.datetime(2026, 11, 23, 23, 0, tzinfo=NAIROBI)
    sends = _run(gate, evening, 60, 300_000)
    assert sum(n for _, n in sends) == 1_200_000  # 4 chunks: the 4th starts under budget
    decision = gate.ask(300_000, evening + dt.timedelta(minutes=1))
    assert not decision.allowed and decision.reason == "today's data budget is used up"
    midnight = evening + dt.timedelta(minutes=1, seconds=decision.wait)
    assert midnight == dt.datetime(2026, 11, 24, 0, 0, tzinfo=NAIROBI)
    assert gate.ask(300_000, midnight).allowed


def test_stat_goes_over_budget_when_exempt_and_its_bytes_count() -> None:
    for exempt in (True, False):
        gate = RateGate(RatePolicy(daily_budget=1000, stat_exempt=exempt, zone=NAIROBI))
        gate.sent(1000, MONDAY_9)
        assert not gate.ask(500, MONDAY_9).allowed
        assert gate.ask(500, MONDAY_9, stat=True).allowed is exempt
    gate.sent(500, MONDAY_9, stat=True)
    assert gate.counters.day_bytes == 1500


def test_a_monthly_budget_waits_for_the_first_of_the_next_month() -> None:
    gate = RateGate(RatePolicy(monthly_budget=10_000, zone=NAIROBI))
    gate.sent(10_000, dt.datetime(2026, 12, 3, 10, 0, tzinfo=NAIROBI))
    decision = gate.ask(1, dt.datetime(2026, 12, 31, 23, 0, tzinfo=NAIROBI))
    assert decision.reason == "this month's data budget is used up"
    assert decision.wait == pytest.approx(3600)


def test_budget_counters_survive_a_restart() -> None:
    policy = RatePolicy(daily_budget=1000, monthly_budget=5000, zone=NAIROBI)
    gate = RateGate(policy)
    gate.sent(1200, MONDAY_9)
    stored = gate.counters.to_dict()
    assert stored == {"day": "2026-11-23", "day_bytes": 1200, "month": "2026-11",
                      "month_bytes": 1200}  # fmt: skip
    restarted = RateGate(policy, BudgetCounters.from_dict(stored))
    assert not restarted.ask(1, MONDAY_9 + dt.timedelta(hours=1)).allowed
    tomorrow = restarted.ask(1, MONDAY_9 + dt.timedelta(days=1))
    assert tomorrow.allowed and restarted.counters.month_bytes == 1200


@settings(max_examples=200, deadline=None)
@given(
    cap=st.integers(8_000, 50_000_000),
    chunks=st.lists(st.integers(1, 4 << 20), min_size=1, max_size=60),
    pauses=st.lists(st.floats(0, 5), min_size=60, max_size=60),
)
def test_any_sender_stays_under_the_cap_plus_burst_plus_one_chunk(
    cap: int, chunks: list[int], pauses: list[float]
) -> None:
    policy = RatePolicy(bits_per_second=cap, burst_bytes=64 * 1024)
    gate, now = RateGate(policy), MONDAY_9
    sent: list[tuple[dt.datetime, int]] = []
    for chunk, pause in zip(chunks, pauses, strict=False):
        now += dt.timedelta(seconds=pause)
        decision = gate.ask(chunk, now)
        while not decision.allowed:
            now += dt.timedelta(seconds=decision.wait)
            decision = gate.ask(chunk, now)
        gate.sent(chunk, now)
        sent.append((now, chunk))
    for i, (start, _) in enumerate(sent):  # every interval of sends, not just the whole run
        window = sent[i:]
        span = (window[-1][0] - start).total_seconds()
        assert sum(n for _, n in window) <= policy.burst_bytes + cap / 8 * span + max(chunks)


# --- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bits"),
    [("2 Mbit/s", 2_000_000), ("512 kbit/s", 512_000), ("1.5 Mbps", 1_500_000), (64000, 64000),
     ("unlimited", None), (0, 0)],
)  # fmt: skip
def test_rates(text: str | int, bits: int | None) -> None:
    assert parse_rate(text) == bits


def test_days() -> None:
    assert parse_days("Mon-Fri") == frozenset(range(5))
    assert parse_days("Sat,Sun") == frozenset({5, 6})
    assert parse_days("Fri-Mon") == frozenset({4, 5, 6, 0})
    assert parse_days(["monday", "Wed"]) == frozenset({0, 2})
    assert parse_days("every day") == frozenset(range(7))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"cap": "2 MB/s"}, '"2 Mbit/s"'),
        ({"cap": -1}, "cannot be negative"),
        ({"calendar": [{"days": "Mon-Fry", "hours": "08:00-17:00", "cap": 0}]}, "not a day"),
        ({"calendar": [{"hours": "8-17", "cap": 0}]}, "HH:MM-HH:MM"),
        ({"calendar": [{"hours": "08:00-17:00"}]}, "Field required"),
        ({"daily_budget": "lots"}, "not a size"),
        ({"timezone": "Mars/Olympus"}, "not a time zone"),
        ({"stat_exempt": "yes"}, "valid boolean"),
        ({"cpa": "1 Mbit/s"}, "Extra inputs"),
        ({"polite_delay": "1 ms"}, "not a duration"),
        ({"polite_delay": 10}, "less than or equal to 5"),
    ],
)
def test_bad_rate_settings_are_explained(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RateConfig.model_validate(raw)


def test_a_config_becomes_a_policy() -> None:
    config = RateConfig.model_validate(
        {
            "cap": "2 Mbit/s",
            "daily_budget": "3 GB",
            "timezone": "Africa/Nairobi",
            "calendar": [{"days": "Mon-Fri", "hours": "08:00-17:00", "cap": "1 Mbit/s"}],
        }
    )
    policy = config.policy()
    assert policy.cap_at(MONDAY_9) == 1_000_000
    assert policy.cap_at(MONDAY_9 + dt.timedelta(hours=9)) == 2_000_000
    assert policy.daily_budget == 3_000_000_000 and policy.stat_exempt
    assert RateConfig().policy().cap_at(MONDAY_9) is None
    # A window without hours is the whole day (e.g. a weekend cap), midnight included.
    weekend = RateConfig.model_validate(
        {"timezone": "Africa/Nairobi", "calendar": [{"days": "Sat,Sun", "cap": "1 Mbit/s"}]}
    )
    saturday = MONDAY_9 + dt.timedelta(days=5)
    assert weekend.policy().cap_at(saturday.replace(hour=0, minute=0)) == 1_000_000
    assert weekend.policy().cap_at(saturday.replace(hour=23, minute=59)) == 1_000_000
    assert weekend.policy().cap_at(MONDAY_9) is None


def test_a_daily_budget_resets_at_local_midnight_across_a_daylight_saving_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")  # clocks go back at 03:00 on 2026-10-25
    gate = RateGate(RatePolicy(daily_budget=10, zone=berlin))
    evening = dt.datetime(2026, 10, 24, 22, 0, tzinfo=berlin)
    gate.sent(10, evening)
    decision = gate.ask(1, evening)
    assert decision.wait == pytest.approx(2 * 3600)
    sunday = dt.datetime(2026, 10, 25, 0, 30, tzinfo=berlin)
    gate.sent(10, sunday)
    # Sunday has 25 hours: from 00:30 to midnight is 24.5 hours of real time (not 23.5).
    assert gate.ask(1, sunday).wait == pytest.approx(24.5 * 3600)
    assert gate.ask(1, dt.datetime(2026, 10, 25, 1, 0, tzinfo=dt.UTC)).wait == pytest.approx(
        22 * 3600
    )


@pytest.mark.parametrize(
    ("bits", "expected"),
    [(None, 256 * 1024), (64_000, 256 * 1024), (2_000_000, 1_966_080), (1e9, 16 << 20)],
)
def test_chunk_size_follows_the_rate(bits: float | None, expected: int) -> None:
    assert chunk_size_for(bits) == expected
