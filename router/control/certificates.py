"""Health items for the unit's TLS certificates: days until each expires, warned ahead.

A certificate that expires stops DICOM TLS outright (callers refuse it, or the destination
refuses the unit), so the console shows it weeks before: ``warn`` within
``ingest.tls.expiry_warning_days`` (default 30), ``fault`` once expired or unreadable.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from router.config.model import Config
from router.control.schema import HealthItem
from router.dicom import tls

DEFAULT_WARNING_DAYS = 30


def certificate_health(config: Config, now: datetime.datetime | None = None) -> list[HealthItem]:
    """One item per configured certificate: the receiver's, and each destination's client
    certificate. None when TLS is not configured."""
    warning_days = (
        config.ingest.tls.expiry_warning_days if config.ingest.tls else DEFAULT_WARNING_DAYS
    )
    certificates: list[tuple[str, Path]] = []
    if config.ingest.tls is not None:
        certificates.append(("tls certificate", config.ingest.tls.cert))
    for destination in config.destinations:
        settings = getattr(destination, "tls", None)
        if settings is not None and settings.cert is not None:
            certificates.append((f"tls certificate ({destination.name})", settings.cert))
        client_cert = getattr(destination, "client_cert", None)  # STOW-RS destinations
        if client_cert is not None:
            certificates.append((f"tls certificate ({destination.name})", client_cert))
    return [_item(name, path, warning_days, now) for name, path in certificates]


def _item(name: str, path: Path, warning_days: int, now: datetime.datetime | None) -> HealthItem:
    try:
        days = tls.days_to_expiry(path, now)
    except (OSError, ValueError) as exc:
        return HealthItem(name=name, state="fault", detail=f"cannot read it: {type(exc).__name__}")
    if days < 0:
        return HealthItem(name=name, state="fault", detail=f"expired {-days:.0f} days ago")
    whole = int(days)
    detail = f"expires in {whole} day{'s' if whole != 1 else ''}"
    if days < warning_days:
        return HealthItem(name=name, state="warn", detail=detail + ": renew it")
    return HealthItem(name=name, state="ok", detail=detail)
