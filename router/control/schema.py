"""The control API's wire schema (version 1): what the daemon answers and what it accepts.

The console and the CLI import only this module and the client, never router internals, so
the shapes here are the contract. Times are Unix seconds (float, UTC); sizes are bytes. Text
meant for people (``reason``, ``message``, ``banner.text``) is plain words a clinic technician
can act on. Patient names and IDs appear only where the caller asked for them and the daemon
allowed it (``masked`` says which); otherwise they are masked by the daemon, not the client.

Endpoints (HTTP/1.1 + JSON on the daemon's Unix socket, all under ``/v1``):

    GET  /v1/status                          UnitStatus
    GET  /v1/destinations                    list[DestinationView]
    GET  /v1/studies?state=&q=&since=&limit=&offset=&sort=   list[StudySummary]
    GET  /v1/studies/{study_id}              StudyDetail
    GET  /v1/objects/{object_id}/history     list[HistoryEvent]
    GET  /v1/alarms                          list[AlarmView]
    GET  /v1/audit?limit=&before=            list[AuditEntry]
    POST /v1/destinations/{name}/pause       ActionRequest -> ActionResult
    POST /v1/destinations/{name}/resume      ActionRequest -> ActionResult
    POST /v1/destinations/{name}/retry       ActionRequest -> ActionResult (retry now)
    POST /v1/destinations/{name}/retry-failed  ActionRequest -> ActionResult
    POST /v1/destinations/{name}/echo        ActionRequest -> EchoResult
    POST /v1/studies/{study_id}/priority     ActionRequest(priority) -> ActionResult
    POST /v1/studies/{study_id}/resend       ActionRequest(destination, pin) -> ActionResult
    POST /v1/studies/{study_id}/discard      ActionRequest(reason, pin) -> ActionResult
    POST /v1/pin/check                       ActionRequest(pin) -> {"ok": bool}

Reads that may show patient data (studies, study detail) unmask it only when the request
carries the operator PIN in the ``X-Waystation-PIN`` header.

Errors answer 4xx/5xx with an ApiError body.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

API_VERSION = 1
API_PREFIX = f"/v{API_VERSION}"

Priority = Literal["stat", "urgent", "routine", "bulk"]
PRIORITIES: tuple[Priority, ...] = ("stat", "urgent", "routine", "bulk")
DestinationState = Literal["idle", "sending", "waiting", "paused", "down", "blocked"]
DeliveryState = Literal["pending", "inflight", "delivered", "failed", "discarded", "committing"]
BannerLevel = Literal["ok", "sending", "attention", "unknown"]
StudyState = Literal["delivered", "sending", "waiting", "failed", "unrouted", "discarded"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Banner(_Model):
    """The one line a technician reads first, e.g. "ALL STUDIES DELIVERED"."""

    level: BannerLevel
    text: str


class AlarmView(_Model):
    """An active alarm: a condition somebody must see."""

    code: str
    message: str
    raised_at: float
    count: int = 1


class HealthItem(_Model):
    """One health aspect (spool, link, clock, power, ...), ``state`` ok|warn|fault|unknown."""

    name: str
    state: Literal["ok", "warn", "fault", "unknown"]
    detail: str = ""


class SpoolUsage(_Model):
    """Space on the spool's file system and how long it lasts at today's rate."""

    total_bytes: int
    free_bytes: int
    held_bytes: int
    held_objects: int
    min_free_bytes: int
    days_left: float | None = None  # None: no receiving today to project from


class DestinationView(_Model):
    """One destination as the console's destination row shows it."""

    name: str
    kind: str = "dimse"
    address: str = ""  # "AE@host:port" for DIMSE
    state: DestinationState
    reason: str = ""  # plain words, with what to do where that is known
    since: float
    queued: dict[Priority, int] = Field(default_factory=dict)  # pending, by priority
    queued_total: int = 0
    inflight: int = 0
    committing: int = 0  # stored there, awaiting its Storage Commitment result
    failed: int = 0  # refused for good; waiting for an operator
    oldest_waiting_at: float | None = None  # receive time of the oldest undelivered object
    studies_waiting: int = 0  # studies with a copy for it not yet delivered (added in v1)
    last_success_at: float | None = None
    next_retry_at: float | None = None
    last_error: str = ""
    paused: bool = False
    paused_by: str = ""
    paused_reason: str = ""
    # Hub destinations only (kind "hub"): the link in one word - "up", "degraded" (attempts
    # are failing, copies wait) or "down" (the hub cannot be reached or refuses this unit;
    # ``reason`` says which, ``since`` since when) - and what the hub's receipts say.
    link: str = ""
    at_hub: int = 0  # held at the hub, not yet confirmed at the provider's PACS
    at_provider: int = 0  # delivered to the provider's PACS


class UnitStatus(_Model):
    """Everything the console's first screen needs, in one answer."""

    api_version: int = API_VERSION
    unit_name: str
    ae_title: str
    listen: str
    addresses: list[str] = Field(default_factory=list)
    version: str
    now: float
    started_at: float
    banner: Banner
    received_today: int = 0
    delivered_today: int = 0
    last_received_at: float | None = None
    unrouted: int = 0
    spool: SpoolUsage
    health: list[HealthItem] = Field(default_factory=list)
    alarms: list[AlarmView] = Field(default_factory=list)
    destinations: list[DestinationView] = Field(default_factory=list)


class DeliveryCounts(_Model):
    """How a study's (or object's) copies for one destination stand."""

    delivered: int = 0
    pending: int = 0
    inflight: int = 0
    failed: int = 0
    discarded: int = 0
    committing: int = 0  # stored at the destination, awaiting its Storage Commitment


class StudySummary(_Model):
    """One study in the studies list. ``study_id`` is opaque (never the Study Instance UID)."""

    study_id: str
    masked: bool = True
    patient_name: str = ""
    patient_id: str = ""
    study_date: str = ""
    description: str = ""
    accession: str = ""
    modalities: list[str] = Field(default_factory=list)
    objects: int = 0
    first_received_at: float
    last_received_at: float
    priority: Priority = "routine"
    state: StudyState
    destinations: dict[str, DeliveryCounts] = Field(default_factory=dict)


class DeliveryView(_Model):
    """One object's copy for one destination."""

    destination: str
    rule: str
    priority: Priority
    state: DeliveryState
    attempts: int = 0
    next_attempt_at: float | None = None
    last_status: int | None = None
    last_error: str = ""
    updated_at: float


class HistoryEvent(_Model):
    """One line of an object's history: received, routed, attempt, delivered, deleted..."""

    object_id: str
    at: float
    event: str
    detail: dict[str, object] = Field(default_factory=dict)


class ObjectView(_Model):
    """One held object of a study."""

    object_id: str
    sop_class: str  # a name where known ("CT Image Storage"), else the UID
    modality: str
    size: int
    received_at: float
    calling_ae: str
    state: str
    deliveries: list[DeliveryView] = Field(default_factory=list)


class StudyDetail(_Model):
    """A study with every object and every object's history."""

    summary: StudySummary
    objects: list[ObjectView] = Field(default_factory=list)
    history: list[HistoryEvent] = Field(default_factory=list)


class AuditEntry(_Model):
    """One operator action, from the append-only audit log."""

    seq: int
    at: float
    user: str  # the Unix user of the peer, from the socket's credentials
    uid: int
    action: str
    target: str
    reason: str = ""
    outcome: str = ""


class ActionRequest(_Model):
    """The body of every action. ``pin`` is required where the action says so
    (discard, resend, unmasking patient data); ``reason`` is required for discard."""

    reason: str = ""
    pin: str = ""
    destination: str = ""  # resend: where to; retry: one destination or all
    priority: Priority | None = None  # priority action


class ActionResult(_Model):
    """What an action did, in plain words, and to how many objects."""

    ok: bool
    affected: int = 0
    message: str
    audit_seq: int | None = None


class EchoResult(_Model):
    """A C-ECHO test of a destination."""

    destination: str
    ok: bool
    status: int | None = None
    elapsed_ms: float | None = None
    message: str


class ApiError(_Model):
    """Every error answer: an HTTP status plus this body."""

    error: str  # a stable code: bad-request, not-found, forbidden, pin-required, ...
    message: str  # plain words
    hint: str = ""
