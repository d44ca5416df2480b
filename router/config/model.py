"""The configuration model: what each TOML key means, its default and its limits.

docs/configuration.md is the reference for people; this module is the reference for code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from router.config.units import parse_size

_AE_ALLOWED = re.compile(r"^[\x20-\x5b\x5d-\x7e]+$")  # default character repertoire, no "\"


def _check_ae_title(value: str) -> str:
    if not 1 <= len(value) <= 16:
        raise ValueError(f"an AE title has 1 to 16 characters; {value!r} has {len(value)}")
    if not _AE_ALLOWED.match(value) or not value.strip():
        raise ValueError(
            f"{value!r} is not a valid AE title: use letters, digits, spaces and punctuation "
            "other than backslash, and not only spaces"
        )
    return value.strip()


AETitle = Annotated[str, BeforeValidator(_check_ae_title)]
ByteSize = Annotated[int, BeforeValidator(parse_size)]


class _Strict(BaseModel):
    # forbid: a misspelt key must be an error with a did-you-mean, never silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class UnitConfig(_Strict):
    """Who this unit is."""

    name: str = Field(default="waystation", min_length=1, max_length=64)
    ae_title: AETitle = "WAYSTATION"


class IngestConfig(_Strict):
    """The C-STORE/C-ECHO receiver the modalities send to."""

    listen: str = "127.0.0.1:11112"
    allowed_callers: list[AETitle] = Field(default_factory=list)
    max_associations: int = Field(default=16, ge=1, le=256)
    max_pdu: int = Field(default=262_144, ge=0, le=16_777_216)
    acse_timeout: float = Field(default=30.0, gt=0, le=3600)
    dimse_timeout: float = Field(default=120.0, gt=0, le=86_400)
    network_timeout: float = Field(default=120.0, gt=0, le=86_400)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f'{value!r} is not host:port, e.g. "0.0.0.0:104"')
        return value

    @property
    def host(self) -> str:
        """The address to bind (IPv6 brackets removed)."""
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        """The TCP port to listen on."""
        return int(self.listen.rpartition(":")[2])


class SpoolConfig(_Strict):
    """Where received objects are held, encrypted, until every destination has them."""

    path: Path = Path("var/spool")
    min_free: ByteSize = 1024**3
    key_file: Path | None = None
    cipher: Literal["auto", "aes-256-gcm", "chacha20-poly1305"] = "auto"
    # Objects whose encrypted size is at most this are held inside the journal, so one journal
    # commit is their only fsync; larger ones become blob files (3 syncs, shared by a batch).
    inline_limit: ByteSize = Field(default=1024 * 1024, ge=0, le=16 * 1024 * 1024)

    @property
    def resolved_key_file(self) -> Path:
        """The key file: configured, or ``keys/unit.keys`` beside the spool directory."""
        return self.key_file or self.path.parent / "keys" / "unit.keys"


class LoggingConfig(_Strict):
    """Log verbosity. Logs never carry patient data at any level."""

    level: Literal["debug", "info", "warning", "error"] = "info"


class RoutingConfig(_Strict):
    """How the routes combine: every matching route applies, or only the first."""

    mode: Literal["all", "first"] = "all"


class DimseDestination(_Strict):
    """A DICOM C-STORE destination (a PACS, an archive, a workstation)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    type: Literal["dimse"]
    ae_title: AETitle
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)


Priority = Literal["stat", "urgent", "routine", "bulk"]


class Route(_Strict):
    """A routing rule: which objects go to which destinations, at what priority."""

    name: str = Field(min_length=1, max_length=64)
    to: list[str] = Field(min_length=1)
    priority: Priority = "routine"


class Config(_Strict):
    """The whole configuration file."""

    unit: UnitConfig = Field(default_factory=UnitConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    destinations: list[DimseDestination] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)

    def resolve_paths(self, base: Path) -> Config:
        """Return a copy whose relative paths are made absolute against ``base``."""
        spool = self.spool.model_copy(
            update={
                "path": (base / self.spool.path).resolve(),
                "key_file": (base / self.spool.key_file).resolve() if self.spool.key_file else None,
            }
        )
        return self.model_copy(update={"spool": spool})
