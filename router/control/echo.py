"""C-ECHO a destination with the unit's AE title and the destination's timeouts: the quickest
way for a technician to see whether the PACS answers this unit at all.

The DICOM exchange is the delivery sender's own (:func:`router.delivery.dimse.echo`, on
router/dicom); this module only puts its result into words for the control API."""

from __future__ import annotations

from router.config.model import DimseDestination
from router.control.schema import EchoResult
from router.core.retry import classify
from router.delivery import dimse
from router.delivery.dimse import Timeouts


def echo(destination: DimseDestination, *, unit_ae: str, timeouts: Timeouts) -> EchoResult:
    """Associate, send one C-ECHO, release; the answer in plain words."""
    name = destination.name
    result = dimse.echo(destination, unit_ae, timeouts)
    outcome = result.outcome
    if result.ok:
        message = f"{name} answered the echo: it is reachable and accepts this unit."
    elif outcome.kind == "status":
        message = f"{name} answered the echo with status 0x{result.status or 0:04X}."
    elif outcome.kind == "no-context":
        message = f"{name} does not accept the echo (Verification) from this unit."
    else:
        verdict = classify(outcome, destination=name, unit_ae=unit_ae, dest_ae=destination.ae_title)
        message = verdict.reason
    return EchoResult(
        destination=name,
        ok=result.ok,
        status=result.status,
        elapsed_ms=round(result.elapsed * 1000, 1),
        message=message,
    )
