"""C-ECHO a destination with the unit's AE title and the destination's timeouts: the quickest
way for a technician to see whether the PACS answers this unit at all."""

from __future__ import annotations

import time
from typing import Any

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from router.config.model import DimseDestination
from router.control.schema import EchoResult
from router.core.retry import Outcome, classify
from router.delivery.dimse import Timeouts


def echo(destination: DimseDestination, *, unit_ae: str, timeouts: Timeouts) -> EchoResult:
    """Associate, send one C-ECHO, release; the answer in plain words."""
    ae = AE(ae_title=unit_ae)
    ae.acse_timeout = timeouts.connect
    ae.network_timeout = timeouts.response_base
    ae.connection_timeout = timeouts.connect
    ae.dimse_timeout = timeouts.response_base
    ae.add_requested_context(Verification)
    name = destination.name
    started = time.monotonic()

    def done(ok: bool, message: str, status: int | None = None) -> EchoResult:
        elapsed = round((time.monotonic() - started) * 1000, 1)
        return EchoResult(
            destination=name, ok=ok, status=status, elapsed_ms=elapsed, message=message
        )

    try:
        assoc: Any = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    except (OSError, RuntimeError, ValueError):
        return done(False, f"{name} cannot be reached on the network.")
    try:
        if assoc.is_rejected:
            primitive: Any = assoc.acceptor.primitive
            outcome = Outcome(
                "rejected",
                result=int(primitive.result or 0),
                source=int(primitive.result_source or 0),
                reason=int(primitive.diagnostic or 0),
            )
            verdict = classify(
                outcome, destination=name, unit_ae=unit_ae, dest_ae=destination.ae_title
            )
            return done(False, verdict.reason)
        if not assoc.is_established:
            return done(False, f"{name} did not accept a connection from this unit.")
        status: Any = assoc.send_c_echo()
        code = int(status.Status) if status is not None and "Status" in status else None
        if code == 0:
            return done(
                True, f"{name} answered the echo: it is reachable and accepts this unit.", 0
            )
        if code is None:
            return done(False, f"{name} did not answer the echo in time.")
        return done(False, f"{name} answered the echo with status 0x{code:04X}.", code)
    finally:
        if assoc.is_established:
            assoc.release()
