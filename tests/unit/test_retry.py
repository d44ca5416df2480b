"""Retry classification and backoff: every outcome has a verdict and a plain reason."""

from __future__ import annotations

import random

import pytest

from router.core.retry import BackoffPolicy, Outcome, classify


def verdict(outcome: Outcome) -> tuple[str, str]:
    c = classify(outcome, destination="PACS", unit_ae="WAYSTATION", dest_ae="PACSAE")
    return c.verdict, c.reason


@pytest.mark.parametrize(
    ("outcome", "expected", "words"),
    [
        (Outcome("status", status=0x0000), "delivered", "delivered"),
        (Outcome("status", status=0xB000), "delivered", "warning"),
        (Outcome("status", status=0xA700), "transient", "out of storage"),
        (Outcome("status", status=0xA7FF), "transient", "busy"),
        (Outcome("status", status=0xA900), "permanent", "does not match"),
        (Outcome("status", status=0xC000), "permanent", "could not understand"),
        (Outcome("status", status=0x0122), "permanent", "does not support"),
        (Outcome("status", status=0x0211), "permanent", "refused the image"),
        (Outcome("refused"), "transient", "not accepting connections"),
        (Outcome("unreachable"), "transient", "cannot be reached"),
        (Outcome("aborted"), "transient", "broke off"),
        (Outcome("no-response"), "transient", "did not answer"),
        (Outcome("rejected", result=2, source=3, reason=1), "transient", "too busy"),
        (
            Outcome("rejected", result=1, source=1, reason=3),
            "permanent",
            "does not know this unit's name WAYSTATION. Call IT.",
        ),
        (
            Outcome("rejected", result=1, source=1, reason=7),
            "permanent",
            "does not know its own name PACSAE",
        ),
        (
            Outcome("no-context", detail="CT Image Storage as JPEG 2000"),
            "permanent",
            "does not accept this kind of image (CT Image Storage as JPEG 2000)",
        ),
        (Outcome("unreadable", detail="chunk 3 failed"), "permanent", "cannot be read"),
    ],
)
def test_classification(outcome: Outcome, expected: str, words: str) -> None:
    got, reason = verdict(outcome)
    assert got == expected
    assert words in reason


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 10, 50])
def test_backoff_is_jittered_exponential_and_capped(attempt: int) -> None:
    policy = BackoffPolicy(first=5.0, cap=300.0)
    rng = random.Random(attempt)
    delays = [policy.delay(attempt, rng) for _ in range(200)]
    step = min(300.0, 5.0 * 2 ** (attempt - 1))
    assert all(step / 2 <= d <= step for d in delays)
    assert len({round(d, 3) for d in delays}) > 100  # jittered, not a fixed schedule


def test_tenacity_backoff_without_rng_is_also_capped() -> None:
    policy = BackoffPolicy(first=1.0, cap=60.0)
    assert all(0.5 <= policy.delay(a) <= 60.0 for a in range(1, 40))
