"""Health items for the unit's TLS certificates: days until each expires, warned ahead.

A certificate that expires stops DICOM TLS outright (callers refuse it, or the destination
refuses the unit), so the console shows it weeks before: ``warn`` within
``ingest.tls.expiry_warning_days`` (default 30), ``fault`` once expired or unreadable. The
same goes for the callers' certificate revocation list (``ingest.tls.crl``): once out of date
it refuses every TLS caller, so it is warned a day before it falls due.
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
    items = [_item(name, path, warning_days, now) for name, path in certificates]
    if config.ingest.tls is not None and config.ingest.tls.crl is not None:
        items.append(_revocation_item(config.ingest.tls.crl, now))
    return items


# A CA publishes a new list every few days; warn a day before this one falls due.
CRL_WARNING_DAYS = 1.0


def _revocation_item(path: Path, now: datetime.datetime | None) -> HealthItem:
    name = "tls revocation list"
    try:
        days = tls.crl_days_left(path, now)
    except (OSError, ValueError) as exc:
        return HealthItem(name=name, state="fault", detail=f"cannot read it: {type(exc).__name__}")
    if days < 0:
        return HealthItem(
            name=name,
            state="fault",
            detail=f"out of date for {-days:.1f} days: every TLS caller is refused until it "
            "is replaced",
        )
    if days < CRL_WARNING_DAYS:
        return HealthItem(
            name=name,
            state="warn",
            detail=f"falls due in {days * 24:.0f} hours: put the CA's new list in place",
        )
    return HealthItem(name=name, state="ok", detail=f"next update due in {days:.1f} days")


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
