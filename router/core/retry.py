"""What a delivery attempt's outcome means, and when to try again. Pure: no I/O.

Every outcome is classified as delivered, transient (try again after a backoff) or permanent
(wait for an operator), with a reason a clinic technician can read.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from tenacity import RetryCallState, wait_exponential, wait_random_exponential

Verdict = Literal["delivered", "transient", "permanent"]


@dataclass(frozen=True)
class Outcome:
    """What happened when one object was offered to a destination.

    ``kind`` is one of: "status" (the destination answered ``status``), "refused" (TCP
    connection refused), "unreachable" (timeout or no route while connecting), "rejected"
    (association rejected: ``result`` 1 permanent or 2 transient, ``reason`` code, ``source``),
    "aborted" (association aborted or closed mid-transfer), "no-response" (no answer within
    the timeout), "no-context" (the destination accepted no presentation context for the
    object's SOP class and transfer syntax), "unreadable" (the held object cannot be read),
    "stored" (a STOW-RS server stored it; ``status`` its WarningReason, if any), "http" (an
    HTTP answer ``status``), "http-auth" (HTTP 401/403: credentials refused), "http-tls" (the
    server's certificate is not trusted, or TLS failed).
    """

    kind: str
    status: int | None = None
    result: int | None = None
    source: int | None = None
    reason: int | None = None
    detail: str = ""
    changed: tuple[str, ...] = ()  # tag changes applied for this destination (keywords)
    converted: str = ""  # the transfer syntax it was converted to, if it was
    retry_after: float | None = None  # seconds the destination asked us to wait (HTTP)


@dataclass(frozen=True)
class Classification:
    """The verdict on an outcome and the reason in plain words."""

    verdict: Verdict
    reason: str
    status: int | None = None


# ACSE rejection reasons (PS3.8 Table 9-21) by (source, reason).
_REJECTIONS = {
    (1, 2): "does not accept the application context",
    (1, 3): "does not know this unit's name {unit_ae}",
    (1, 7): "does not know its own name {dest_ae} (the called AE title is wrong)",
    (2, 1): "refused the connection: the DICOM protocol version is not supported",
    (3, 1): "is too busy right now (too many connections)",
    (3, 2): "refused the connection: local limit exceeded",
}


def classify(outcome: Outcome, *, destination: str, unit_ae: str, dest_ae: str) -> Classification:
    """Classify ``outcome`` for ``destination``; reasons name the destination and what to do."""
    name = destination
    kind = outcome.kind
    if kind == "status":
        return _classify_status(int(outcome.status or 0), name)
    if kind == "refused":
        return Classification("transient", f"{name} is not accepting connections (refused).")
    if kind == "unreachable" and (outcome.detail or "").startswith("TLS "):
        # A certificate or protocol mismatch: retried (nothing is dropped), but the reason
        # says what to fix, e.g. "TLS certificate not trusted: ...".
        return Classification("transient", f"{name}: {outcome.detail}.")
    if kind == "unreachable":
        return Classification("transient", f"{name} cannot be reached on the network.")
    if kind == "aborted":
        return Classification("transient", f"{name} broke off the transfer.")
    if kind == "no-response":
        return Classification("transient", f"{name} did not answer in time.")
    if kind == "rejected":
        text = _REJECTIONS.get((outcome.source or 0, outcome.reason or 0), "refused the connection")
        text = text.format(unit_ae=unit_ae, dest_ae=dest_ae)
        if outcome.result == 2:
            return Classification("transient", f"{name} {text}.")
        advice = " Call IT." if (outcome.source, outcome.reason) in ((1, 3), (1, 7)) else ""
        return Classification("permanent", f"The {name} {text}.{advice}")
    if kind == "no-context":
        return Classification(
            "permanent",
            f"{name} does not accept this kind of image ({outcome.detail}). Call IT.",
        )
    if kind == "unpreparable":
        return Classification(
            "permanent",
            f"The copy for {name} could not be made ({outcome.detail}); check its tag "
            "changes. Call IT.",
        )
    if kind == "http":
        return _classify_http(int(outcome.status or 0), name, outcome.detail)
    if kind == "hub-token":
        return Classification(
            "permanent",
            f"{name} refuses this unit's token ({outcome.detail or 'not accepted'}). "
            "Ask the provider to enrol the unit again.",
            outcome.status,
        )
    if kind == "stored":
        return _classify_stored(outcome)
    if kind == "http-auth" and outcome.status is None:  # our own credentials file
        return Classification(
            "permanent",
            f"{name}: {outcome.detail}. Check the destination's password_file or token_file. "
            "Call IT.",
        )
    if kind == "http-auth":
        return Classification(
            "permanent",
            f"{name}: the server refuses our credentials "
            f"({outcome.detail or f'HTTP {outcome.status}'}). Check the destination's "
            "username and password_file or token_file. Call IT.",
            outcome.status,
        )
    if kind == "http-tls":
        return Classification(
            "permanent",
            f"{name}: {outcome.detail}. Check ca_file (and client_cert). Call IT.",
        )
    if kind == "hub-tls":
        return Classification(
            "permanent",
            f"{name}'s certificate is not trusted ({outcome.detail}). Check ca_file. Call IT.",
        )
    if kind == "held":
        return Classification("transient", f"{name}: {outcome.detail or 'held back'}.")
    if kind == "preempted":
        return Classification("transient", f"{name}: paused for a more urgent study.")
    if kind == "unreadable":
        return Classification(
            "permanent", f"The stored copy cannot be read ({outcome.detail}). Call support."
        )
    return Classification("transient", f"{name}: unexpected problem ({kind}).")


def _classify_status(status: int, name: str) -> Classification:
    if status == 0x0000:
        return Classification("delivered", "delivered", status)
    if status in (0xB000, 0xB006, 0xB007):
        return Classification("delivered", f"delivered with warning 0x{status:04X}", status)
    if 0xA700 <= status <= 0xA7FF:
        return Classification("transient", f"{name} is out of storage space or busy.", status)
    if status == 0x0122:
        return Classification(
            "permanent", f"{name} does not support this kind of image. Call IT.", status
        )
    if 0xA900 <= status <= 0xA9FF:
        return Classification(
            "permanent", f"{name} says the image does not match its type (0x{status:04X}).", status
        )
    if 0xC000 <= status <= 0xCFFF:
        return Classification(
            "permanent", f"{name} could not understand the image (0x{status:04X}).", status
        )
    return Classification("permanent", f"{name} refused the image (0x{status:04X}).", status)


def _classify_stored(outcome: Outcome) -> Classification:
    """A STOW-RS server stored the object (``status``: its WarningReason, if any)."""
    if outcome.status:
        return Classification(
            "delivered", f"delivered with warning 0x{outcome.status:04X}", outcome.status
        )
    return Classification(
        "delivered", f"delivered ({outcome.detail})" if outcome.detail else "delivered", 0
    )


def _classify_http(status: int, name: str, detail: str) -> Classification:
    """A hub's HTTP answer: 2xx delivered; 408, 429 and 5xx transient; other 4xx permanent."""
    said = f" ({detail})" if detail else ""
    if 200 <= status < 300:
        return Classification("delivered", "delivered", status)
    if status == 507:
        return Classification("transient", f"{name} is out of storage space{said}.", status)
    if status in (408, 429) or status >= 500:
        return Classification("transient", f"{name} is busy or having trouble{said}.", status)
    if status == 413:
        return Classification(
            "permanent", f"{name} refuses an object this large{said}. Call IT.", status
        )
    if status == 409:
        return Classification("permanent", f"{name} refused to store the object{said}.", status)
    return Classification("permanent", f"{name} refused the object{said}.", status)


@dataclass(frozen=True)
class BackoffPolicy:
    """Jittered exponential backoff, capped: ``first`` seconds, doubling, at most ``cap``."""

    first: float = 5.0
    cap: float = 300.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` counts from 1).

        "Equal jitter": half of the exponential step is fixed, half random (tenacity's
        exponential wait plus its random exponential wait), so retries from many units
        spread out yet never come back sooner than half the step."""
        step = float(min(self.cap, self.first * 2.0 ** (max(1, attempt) - 1)))
        if rng is not None:  # deterministic for tests
            return step / 2 + rng.uniform(0, step / 2)
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = max(1, attempt)
        half = self.first / 2
        wait = wait_exponential(multiplier=half, max=self.cap / 2) + wait_random_exponential(
            multiplier=half, max=self.cap / 2
        )
        return float(wait(state))
