"""The configuration model: what each TOML key means, its default and its limits.

docs/configuration.md is the reference for people; this module is the reference for code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from router.config.dicom_names import check_keyword, check_modality, resolve_sop_class
from router.config.rate import RateConfig
from router.config.units import parse_duration, parse_hours, parse_size
from router.dicom.depth import DEFAULT_MAX_SEQUENCE_DEPTH

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


class IngestTlsConfig(_Strict):
    """DICOM TLS on the receiver (PS3.15 BCP 195: TLS 1.2 minimum, 1.3 preferred).

    When present, the listen port speaks only TLS; a plaintext caller is refused."""

    cert: Path
    key: Path
    # CA certificates that sign callers' certificates (needed to verify them).
    ca: Path | None = None
    require_client_cert: bool = Field(default=False, strict=True)
    # Calling AE title -> the certificates it may use: each entry is a subject common name
    # ("CN=CT1") or a SHA-256 fingerprint ("sha256:ab12..."). An AE title listed here is
    # accepted only with one of its certificates; callers not listed are not bound.
    ae_certificates: dict[str, list[str]] = Field(default_factory=dict)
    # The health item warns this many days before the unit's certificate expires.
    expiry_warning_days: int = Field(default=30, ge=1, le=3650)
    # The CA's certificate revocation list (PEM): revoked callers are refused. Replacing the
    # file takes effect without a restart; an out-of-date list refuses every certificate.
    crl: Path | None = None

    @model_validator(mode="after")
    def _client_verification_needs_ca(self) -> IngestTlsConfig:
        if (self.require_client_cert or self.ae_certificates or self.crl) and self.ca is None:
            raise ValueError(
                "require_client_cert, ae_certificates and crl need ca (the CA file that signs "
                "callers' certificates)"
            )
        for ae, identities in self.ae_certificates.items():
            _check_ae_title(ae)
            for identity in identities:
                if not (identity.startswith("CN=") or identity.startswith("sha256:")):
                    raise ValueError(
                        f'ae_certificates.{ae}: {identity!r} is neither "CN=name" '
                        'nor "sha256:<fingerprint>"'
                    )
        return self


class DestinationTlsConfig(_Strict):
    """DICOM TLS to a DIMSE destination. The destination's certificate is verified against
    ``ca`` (or the system's CAs) and its name against ``server_name`` (default: host)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None
    # Turning verification off allows a man in the middle; it exists for test set-ups only.
    verify: bool = Field(default=True, strict=True)

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> DestinationTlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together (the unit's client certificate)")
        return self


_Files = TypeVar("_Files", bound=BaseModel)


def _resolve_files(settings: _Files, base: Path, names: tuple[str, ...]) -> _Files:
    """A copy of ``settings`` whose path fields ``names`` are absolute against ``base``."""
    update = {
        name: (base / value).resolve()
        for name in names
        if (value := getattr(settings, name)) is not None
    }
    return settings.model_copy(update=update)


class IngestConfig(_Strict):
    """The C-STORE/C-ECHO receiver the modalities send to."""

    listen: str = "127.0.0.1:11112"
    allowed_callers: list[AETitle] = Field(default_factory=list)
    max_associations: int = Field(default=16, ge=1, le=256)
    # Associations one caller address may hold at once (0: only max_associations applies).
    max_associations_per_peer: int = Field(default=0, ge=0, le=256)
    # Largest object accepted; a larger one is read and dropped, answered 0xA700 (0: none).
    max_object_size: ByteSize = Field(default=0, ge=0)
    # Deepest nesting of sequences accepted in an object; a deeper one is answered 0xC210.
    # At most 200: pydicom parses nesting recursively (a few hundred levels exhaust it).
    max_sequence_depth: int = Field(default=DEFAULT_MAX_SEQUENCE_DEPTH, ge=1, le=200)
    tls: IngestTlsConfig | None = None
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
    # How long an object is kept after every destination confirmed it; then it is deleted and
    # its data key destroyed. Objects not yet delivered everywhere are never deleted.
    retention: Annotated[float, BeforeValidator(parse_duration)] = Field(
        default=7 * 86400, ge=0, le=3650 * 86400
    )

    @property
    def resolved_key_file(self) -> Path:
        """The key file: configured, or ``keys/unit.keys`` beside the spool directory."""
        return self.key_file or self.path.parent / "keys" / "unit.keys"


class LoggingConfig(_Strict):
    """Log verbosity. Logs never carry patient data at any level."""

    level: Literal["debug", "info", "warning", "error"] = "info"


class RoutingConfig(_Strict):
    """How the routes combine (every matching route applies, or only the first) and when a
    study counts as complete for routes with ``send = "study"``."""

    mode: Literal["all", "first"] = "all"
    # Seconds without a new object of a study before the study is complete.
    study_quiet_period: Annotated[float, BeforeValidator(parse_duration)] = 300.0

    @field_validator("study_quiet_period")
    @classmethod
    def _quiet_period(cls, value: float) -> float:
        if not 1 <= value <= 7 * 86400:
            raise ValueError('the quiet period must be between "1 s" and "7 d"')
        return value


DicomKeyword = Annotated[str, AfterValidator(check_keyword)]


class TagChanges(_Strict):
    """Governed changes to the header sent to one destination (the spool keeps the original).

    Off unless configured; every object changed records which attributes were changed."""

    set: dict[DicomKeyword, str] = Field(default_factory=dict)
    remove: list[DicomKeyword] = Field(default_factory=list)
    map: dict[DicomKeyword, dict[str, str]] = Field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Whether any change is configured."""
        return bool(self.set or self.remove or self.map)


class DimseDestination(_Strict):
    """A DICOM C-STORE destination (a PACS, an archive, a workstation)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    type: Literal["dimse"]
    ae_title: AETitle
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    # Concurrent associations to this destination (each sends the queue in priority order).
    associations: int = Field(default=1, ge=1, le=8)
    changes: TagChanges = Field(default_factory=TagChanges)
    tls: DestinationTlsConfig | None = None
    # Count an object delivered only once the destination commits to keeping it (Storage
    # Commitment Push Model); until then it stays "committing" and is never deleted.
    storage_commitment: bool = Field(default=False, strict=True)  # true or false, not "yes"
    # How long to wait for the commitment result before asking again (and, after a second
    # silence as long, sending the objects again).
    commitment_timeout: Annotated[float, BeforeValidator(parse_duration)] = Field(
        default=3600.0, ge=1, le=7 * 86400
    )


Seconds = Annotated[float, BeforeValidator(parse_duration)]


def _https_unless_insecure(url: str, info: ValidationInfo, what: str) -> str:
    """Refuse a plain http:// URL unless the destination says ``insecure_plain_http = true``:
    over http:// its credentials and the images would cross the network in clear."""
    if url.startswith("http://") and not info.data.get("insecure_plain_http"):
        raise ValueError(
            f"{what} is reached over https:// (an http:// URL needs "
            "insecure_plain_http = true, for tests only)"
        )
    return url


class HubDestination(_Strict):
    """A Waystation hub over HTTPS: resumable chunked uploads (docs/hub-protocol.md)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    type: Literal["hub"]
    # Tests only: allow an http:// URL (the token and images would travel in clear).
    insecure_plain_http: bool = Field(default=False, strict=True)
    url: str = Field(pattern=r"^https?://[^/\s]+/?$")
    # The unit's bearer token, as printed by `waystation hub enroll` (one line).
    token_file: Path
    # The CA that signed the hub's certificate; the system's CAs when absent.
    ca_file: Path | None = None
    # Chunks are sized to about 8 s of measured link time within these bounds.
    min_chunk: ByteSize = Field(default=256 * 1024, ge=16 * 1024, le=64 * 1024 * 1024)
    max_chunk: ByteSize = Field(default=8 * 1024 * 1024, ge=16 * 1024, le=64 * 1024 * 1024)
    timeout: Seconds = Field(default=60.0, ge=1, le=3600)
    # Objects that compress travel in the lossless envelope (router/wan/envelope.py).
    envelope: bool = Field(default=True, strict=True)
    # Caps, a weekly calendar of caps and byte budgets on the wire (router/wan/rate.py).
    rate: RateConfig = Field(default_factory=RateConfig)
    # Parallel upload streams (connections), each one object at a time: they overlap each
    # other's round trips and loss recovery on long, lossy links (docs/wan.md).
    streams: int = Field(default=8, ge=1, le=16)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        return _https_unless_insecure(value, info, "a hub")

    @property
    def associations(self) -> int:
        """One delivery thread per upload stream."""
        return self.streams

    @property
    def storage_commitment(self) -> bool:
        """Hubs confirm by receipts, not by DICOM Storage Commitment."""
        return False


class StowDestination(_Strict):
    """A DICOMweb STOW-RS origin server (PS3.18): batched multipart/related POSTs to
    ``{url}/studies`` (docs/delivery.md#stow-rs-destinations).

    Fields that depend on others are declared after them, so each check runs on the key it
    is about and its error names that key's line."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    type: Literal["stow"]
    # Tests only: allow an http:// URL (credentials and images would travel in clear).
    insecure_plain_http: bool = Field(default=False, strict=True)
    # The DICOMweb service root, e.g. "https://pacs.example.org/dicom-web" (no query).
    url: str
    username: str | None = Field(default=None, min_length=1, max_length=256)
    # One line each; read at every request, never logged.
    password_file: Path | None = None
    token_file: Path | None = None
    auth: Literal["none", "basic", "bearer"] = Field(default="none", validate_default=True)
    # The CA that signed the server's certificate; the system's CAs when absent.
    ca_file: Path | None = None
    # The unit's client certificate and key (mutual TLS), if the server asks for one.
    client_cert: Path | None = None
    client_key: Path | None = Field(default=None, validate_default=True)
    # One request carries at most this many bytes of objects and this many objects; a
    # larger object goes alone.
    max_request_size: ByteSize = Field(default=4 * 1024 * 1024, ge=64 * 1024, le=1024**3)
    max_instances: int = Field(default=50, ge=1, le=1000)
    # "study": POST /studies/{StudyInstanceUID}, one study per request; "any": POST /studies.
    batch: Literal["study", "any"] = "study"
    # Requests in flight at once to this server (each its own connection).
    requests: int = Field(default=1, ge=1, le=8)
    # A request may take this long plus its size at the slower of min_rate and a quarter
    # of the measured rate before it is given up (and sent again later).
    timeout: Seconds = Field(default=60.0, ge=1, le=3600)
    min_rate: ByteSize = Field(default=16 * 1024, ge=1024)
    # Cap, weekly calendar of caps and byte budgets on the wire, as for hub destinations
    # (polite mode is the hub sender's only).
    rate: RateConfig = Field(default_factory=RateConfig)

    @field_validator("rate")
    @classmethod
    def _no_polite(cls, value: RateConfig) -> RateConfig:
        if value.polite:
            raise ValueError("polite mode is for hub destinations only")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str, info: ValidationInfo) -> str:
        if not re.match(r"^https?://[^/\s?#@]+(/[^\s?#]*)?$", value):
            # The value is not echoed: it may hold a password.
            raise ValueError(
                "this is not a DICOMweb service URL such as "
                '"https://pacs.example.org/dicom-web" (no credentials, query or fragment: '
                "credentials go in password_file or token_file)"
            )
        return _https_unless_insecure(value, info, "a STOW-RS destination")

    @field_validator("auth")
    @classmethod
    def _auth(cls, value: str, info: ValidationInfo) -> str:
        given = {k for k in ("username", "password_file", "token_file") if info.data.get(k)}
        if value == "basic" and not {"username", "password_file"} <= given:
            raise ValueError('auth = "basic" needs username and password_file')
        if value == "bearer" and "token_file" not in given:
            raise ValueError('auth = "bearer" needs token_file')
        if value != "basic" and given & {"username", "password_file"}:
            raise ValueError('username and password_file apply to auth = "basic" only')
        if value != "bearer" and "token_file" in given:
            raise ValueError('token_file applies to auth = "bearer" only')
        return value

    @field_validator("client_key")
    @classmethod
    def _client_key(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if (info.data.get("client_cert") is None) != (value is None):
            raise ValueError("client_cert and client_key go together (the unit's certificate)")
        return value

    @property
    def associations(self) -> int:
        """Worker threads: one per concurrent request."""
        return self.requests

    @property
    def storage_commitment(self) -> bool:
        """A STOW-RS answer is the server's confirmation; no DICOM Storage Commitment."""
        return False


AnyDestination = DimseDestination | HubDestination | StowDestination
Destination = Annotated[AnyDestination, Field(discriminator="type")]


class HubServerConfig(_Strict):
    """The hub service (`waystation hub`): where it listens and how clients are limited."""

    listen: str = "0.0.0.0:8443"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Tests only: serve plain HTTP. Never on a network.
    insecure_plain_http: bool = Field(default=False, strict=True)
    max_object: ByteSize = Field(default=4 * 1024**3, ge=1024)
    max_chunk: ByteSize = Field(default=64 * 1024 * 1024, ge=16 * 1024, le=256 * 1024 * 1024)
    # A request's headers and body must arrive within this, plus 1 s per 16 KiB of body
    # (slow clients are cut, not waited for).
    request_timeout: Seconds = Field(default=60.0, ge=1, le=3600)
    # Uncommitted uploads untouched for this long are removed.
    upload_expiry: Seconds = Field(default=7 * 86400.0, ge=60)

    @model_validator(mode="after")
    def _tls_or_plain(self) -> HubServerConfig:
        if not self.insecure_plain_http and (self.tls_cert is None or self.tls_key is None):
            raise ValueError(
                "the hub serves HTTPS: set tls_cert and tls_key (insecure_plain_http = true "
                "is for tests only)"
            )
        return self

    @property
    def host(self) -> str:
        """The address to bind."""
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        """The TCP port to bind."""
        return int(self.listen.rsplit(":", 1)[1])


class DeliveryConfig(_Strict):
    """Retry timing for every destination: jittered exponential backoff, capped."""

    retry_first: Seconds = Field(default=5.0, ge=0.1, le=3600)
    retry_max: Seconds = Field(default=300.0, ge=1, le=86_400)
    # The answer to an object may take this long plus its size at 64 KiB/s.
    response_timeout: Seconds = Field(default=30.0, ge=1, le=3600)
    connect_timeout: Seconds = Field(default=15.0, ge=1, le=600)


class ControlConfig(_Strict):
    """The control API on a Unix socket (the console, the CLI and scripts use it).

    Only root, the daemon's own user and members of ``operators_group`` may use it."""

    # Default: ``control.sock`` in the state directory (the spool directory's parent).
    socket: Path | None = None
    operators_group: str = Field(default="waystation", min_length=1, max_length=32)
    # The operator PIN's salted hash; default ``operator.pin`` in the state directory.
    pin_file: Path | None = None


_SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
)


def _check_ssh_key(value: str) -> str:
    """One public key line: a known type, base64 key data, an optional comment; no options
    (``command=...``) and no line breaks, which could smuggle other settings in."""
    parts = value.strip().split()
    if (
        "\n" in value
        or len(parts) < 2
        or parts[0] not in _SSH_KEY_TYPES
        or not re.fullmatch(r"[A-Za-z0-9+/]+={0,3}", parts[1])
    ):
        raise ValueError(
            "not an OpenSSH public key line: expected e.g. "
            '"ssh-ed25519 AAAAC3Nza... engineer@laptop" (the contents of id_ed25519.pub)'
        )
    return " ".join(parts)


class ApplianceConfig(_Strict):
    """The router as an appliance service: its watchdog, health checks, metrics and UPS."""

    # A receiving, delivering or journal thread busy on one piece of work this long past that
    # work's own deadline counts as hung: systemd's watchdog is no longer fed and restarts it.
    stall_limit: Seconds = Field(default=600.0, ge=1, le=86_400)
    # How often health (clock, link, storage, power) is looked at.
    health_interval: Seconds = Field(default=5.0, ge=0.2, le=3600)
    # Prometheus text for node_exporter's textfile collector (written atomically), if set.
    metrics_file: Path | None = None
    # An optional metrics endpoint, loopback only, e.g. "127.0.0.1:9105".
    metrics_listen: str | None = None
    # The board profile (hardware/profiles.toml): watchdog, RTC, cipher advice, LEDs.
    board: Literal["auto", "pi4", "pi5", "x86"] = "auto"
    # The UPS: none, a HAT (x728, waveshare) or "file": a state file another program writes.
    ups: Literal["none", "x728", "waveshare", "file"] = "none"
    ups_state_file: Path | None = None
    # At or below this charge (percent) on battery: refuse new associations, finish, stop.
    ups_low_battery: float = Field(default=20.0, ge=1, le=90)
    # Blink the status LEDs on the board profile's GPIO lines (hardware/README.md).
    status_led: bool = Field(default=False, strict=True)
    # On the image: SSH runs (keys only) while this lists at least one public key, one
    # OpenSSH authorized_keys line each ("ssh-ed25519 AAAA... who@where"); empty: SSH is off.
    ssh_authorized_keys: list[Annotated[str, AfterValidator(_check_ssh_key)]] = Field(
        default_factory=list
    )

    @field_validator("metrics_listen")
    @classmethod
    def _metrics_listen(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or host not in ("127.0.0.1", "[::1]", "localhost") or not port.isdigit():
            raise ValueError(
                f'{value!r}: the metrics endpoint listens on loopback only, e.g. "127.0.0.1:9105"'
            )
        return value

    @model_validator(mode="after")
    def _ups_file(self) -> ApplianceConfig:
        if self.ups == "file" and self.ups_state_file is None:
            raise ValueError('ups = "file" needs ups_state_file')
        return self


Priority = Literal["stat", "urgent", "routine", "bulk"]


def _as_list(value: object) -> object:
    """A single value stands for a list of one ("CT" is ["CT"])."""
    return [value] if isinstance(value, str) else value


def _as_text(value: object) -> object:
    """Numbers compare as the text DICOM holds (``1`` is "1"); true/false stay errors."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _not_empty(value: str) -> str:
    if not value:
        raise ValueError(
            "an empty value never matches: an absent or empty attribute is matched by "
            "{ present = false }"
        )
    return value


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from None
    return value


def _check_hours(value: str) -> str:
    parse_hours(value)
    return value.replace(" ", "")


def _day(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


Text = Annotated[str, BeforeValidator(_as_text), AfterValidator(_not_empty)]
DayName = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
# A string or a non-empty list of strings (one of them).
AETitles = Annotated[list[AETitle], BeforeValidator(_as_list), Field(min_length=1)]
Modalities = Annotated[
    list[Annotated[str, AfterValidator(check_modality)]],
    BeforeValidator(_as_list),
    Field(min_length=1),
]
SopClasses = Annotated[
    list[Annotated[str, AfterValidator(resolve_sop_class)]],
    BeforeValidator(_as_list),
    Field(min_length=1),
]
Days = Annotated[
    list[Annotated[DayName, BeforeValidator(_day)]], BeforeValidator(_as_list), Field(min_length=1)
]


class AttributeCondition(_Strict):
    """One test on an attribute, e.g. ``{ equals = "HEAD" }``: exactly one of equals, one_of,
    regex (Python ``re.search``: matches anywhere unless anchored) or present."""

    equals: Text | None = None
    one_of: list[Text] | None = Field(default=None, min_length=1)
    regex: Annotated[str, AfterValidator(_check_regex)] | None = None
    present: bool | None = None
    ignore_case: bool = False

    @model_validator(mode="after")
    def _one_test(self) -> AttributeCondition:
        tests = [
            k for k in ("equals", "one_of", "regex", "present") if getattr(self, k) is not None
        ]
        if len(tests) != 1:
            found = ", ".join(tests) or "none"
            raise ValueError(
                f"give exactly one of equals, one_of, regex or present (found: {found})"
            )
        if self.ignore_case and self.present is not None:
            raise ValueError("ignore_case applies to equals, one_of and regex, not to present")
        return self


class When(_Strict):
    """A route's conditions; all that are given must hold. A list means "one of"."""

    calling_ae: AETitles | None = None
    called_ae: AETitles | None = None
    modality: Modalities | None = None
    sop_class: SopClasses | None = None
    attributes: dict[DicomKeyword, AttributeCondition] = Field(default_factory=dict)
    # Local time of the unit; "22:00-06:00" wraps past midnight and belongs to its start day.
    hours: Annotated[str, AfterValidator(_check_hours)] | None = None
    days: Days | None = None


class Route(_Strict):
    """A routing rule: which objects go to which destinations, at what priority."""

    name: str = Field(min_length=1, max_length=64)
    to: list[str] = Field(min_length=1)
    priority: Priority = "routine"
    # "object": deliver each object as it arrives; "study": once its study is complete.
    send: Literal["object", "study"] = "object"
    when: When = Field(default_factory=When)


class Config(_Strict):
    """The whole configuration file."""

    unit: UnitConfig = Field(default_factory=UnitConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    appliance: ApplianceConfig = Field(default_factory=ApplianceConfig)
    destinations: list[Destination] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    # Only for `waystation hub`: the hub service's own settings.
    hub: HubServerConfig | None = None

    def resolve_paths(self, base: Path) -> Config:
        """Return a copy whose relative paths are made absolute against ``base``."""
        spool = self.spool.model_copy(
            update={
                "path": (base / self.spool.path).resolve(),
                "key_file": (base / self.spool.key_file).resolve() if self.spool.key_file else None,
            }
        )
        control = self.control.model_copy(
            update={
                "socket": (base / self.control.socket).resolve() if self.control.socket else None,
                "pin_file": (base / self.control.pin_file).resolve()
                if self.control.pin_file
                else None,
            }
        )
        appliance = self.appliance.model_copy(
            update={
                name: (base / value).resolve()
                for name in ("metrics_file", "ups_state_file")
                if (value := getattr(self.appliance, name)) is not None
            }
        )
        destinations = [_resolve_destination(d, base) for d in self.destinations]
        hub = self.hub
        if hub is not None:
            hub = hub.model_copy(
                update={
                    "tls_cert": (base / hub.tls_cert).resolve() if hub.tls_cert else None,
                    "tls_key": (base / hub.tls_key).resolve() if hub.tls_key else None,
                }
            )
        ingest = self.ingest
        if ingest.tls is not None:
            ingest = ingest.model_copy(
                update={"tls": _resolve_files(ingest.tls, base, ("cert", "key", "ca", "crl"))}
            )
        return self.model_copy(
            update={
                "spool": spool,
                "control": control,
                "appliance": appliance,
                "destinations": destinations,
                "hub": hub,
                "ingest": ingest,
            }
        )

    @property
    def state_dir(self) -> Path:
        """The unit's state directory: the spool directory's parent."""
        return self.spool.path.parent

    @property
    def control_socket(self) -> Path:
        """The control API's socket: configured, or ``control.sock`` in the state directory."""
        return self.control.socket or self.state_dir / "control.sock"

    @property
    def pin_file(self) -> Path:
        """The operator PIN's hash file: configured, or ``operator.pin`` in the state dir."""
        return self.control.pin_file or self.state_dir / "operator.pin"


def _resolve_destination(destination: AnyDestination, base: Path) -> AnyDestination:
    if isinstance(destination, StowDestination):
        names = ("password_file", "token_file", "ca_file", "client_cert", "client_key")
        return _resolve_files(destination, base, names)
    if not isinstance(destination, HubDestination):
        if destination.tls is None:
            return destination
        tls = _resolve_files(destination.tls, base, ("ca", "cert", "key"))
        return destination.model_copy(update={"tls": tls})
    update: dict[str, Path | None] = {"token_file": (base / destination.token_file).resolve()}
    if destination.ca_file is not None:
        update["ca_file"] = (base / destination.ca_file).resolve()
    return destination.model_copy(update=update)
