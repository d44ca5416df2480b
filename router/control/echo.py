"""C-ECHO a destination with the unit's AE title and the destination's timeouts: the quickest
way for a technician to see whether the PACS answers this unit at all.

The DICOM exchange is the delivery sender's own (:func:`router.delivery.dimse.echo`, on
router/dicom); this module only puts its result into words for the control API."""

from __future__ import annotations

from router.config.model import DimseDestination, StowDestination
from router.control.schema import EchoResult
from router.core.retry import classify
from router.delivery import dimse
from router.delivery.dimse import Timeouts
from router.delivery.stow_client import StowClient


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


def check_stow(destination: StowDestination, *, timeouts: Timeouts) -> EchoResult:
    """Test a STOW-RS server the way delivery connects to it, storing nothing: TLS, the
    credentials, and an answer to a harmless GET; the result in plain words."""
    name = destination.name
    outcome, elapsed = StowClient(destination, connect_timeout=timeouts.connect).check()
    status = outcome.status if outcome.kind == "http" else None
    # Any answer but a refusal of this unit or a server error shows the way open (a server
    # without the search service answers 404, 405 or 501: still reachable).
    ok = outcome.kind == "http" and status is not None and (status < 500 or status == 501)
    if ok:
        message = (
            f"{name} answered ({outcome.detail}): it is reachable, trusted and does not "
            "refuse this unit."
        )
    else:
        message = classify(outcome, destination=name, unit_ae="", dest_ae=name).reason
    return EchoResult(
        destination=name,
        ok=ok,
        status=status,
        elapsed_ms=round(elapsed * 1000, 1),
        message=message,
    )
