"""A fake control API for console tests: canned answers for each unit state, fixed times.

It has the methods of ``router.control.client.ControlClient`` (the console's ControlSource
protocol), records every call, masks patient data unless the right PIN is given (as the daemon
does), and can be made unreachable. Times are fixed (NOW) so snapshots are deterministic.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from router.control.client import ControlError, ControlUnreachable
from router.control.schema import (
    ActionResult,
    AlarmView,
    ApiError,
    AuditEntry,
    Banner,
    DeliveryCounts,
    DeliveryView,
    DestinationView,
    EchoResult,
    HealthItem,
    HistoryEvent,
    ObjectView,
    Priority,
    SpoolUsage,
    StudyDetail,
    StudySummary,
    UnitStatus,
)

NOW = 1795773600.0  # 2026-11-27 10:00:00 UTC
PIN = "2468"
GB = 1024**3
MIN = 60.0

HEALTH = [
    HealthItem(name="link", state="ok", detail="eth0 up, 1000 Mb/s"),
    HealthItem(name="clock", state="ok", detail="synchronised"),
    HealthItem(name="power", state="ok", detail="mains"),
]


def _spool(free_gb: float = 20.0, days_left: float | None = 41.0) -> SpoolUsage:
    return SpoolUsage(
        total_bytes=int(29 * GB),
        free_bytes=int(free_gb * GB),
        held_bytes=int(2.1 * GB),
        held_objects=1480,
        min_free_bytes=int(1 * GB),
        days_left=days_left,
    )


def _pacs(**changes: object) -> DestinationView:
    base: dict[str, object] = dict(
        name="PACS",
        address="PACS@10.0.0.5:104",
        state="idle",
        since=NOW - 3600,
        last_success_at=NOW - 4 * MIN,
    )
    base.update(changes)
    return DestinationView.model_validate(base)


def _archive(**changes: object) -> DestinationView:
    base: dict[str, object] = dict(
        name="ARCHIVE",
        address="ARCHIVE@10.0.0.9:11112",
        state="idle",
        since=NOW - 7200,
        last_success_at=NOW - 3 * MIN,
    )
    base.update(changes)
    return DestinationView.model_validate(base)


def unit_status(state: str = "healthy") -> UnitStatus:
    """A canned unit status: healthy, sending, destination-down or disk-nearly-full."""
    destinations = [_pacs(), _archive()]
    banner = Banner(level="ok", text="ALL STUDIES DELIVERED")
    spool = _spool()
    alarms: list[AlarmView] = []
    if state == "sending":
        destinations[0] = _pacs(
            state="sending",
            queued={"stat": 1, "routine": 3},
            queued_total=4,
            inflight=1,
            oldest_waiting_at=NOW - 6 * MIN,
        )
        banner = Banner(level="sending", text="SENDING 4 - oldest waiting 6 min")
    elif state == "destination-down":
        destinations[0] = _pacs(
            state="down",
            since=NOW - 46 * MIN,
            queued={"routine": 212},
            queued_total=212,
            studies_waiting=12,
            failed=2,
            oldest_waiting_at=NOW - 46 * MIN,
            last_success_at=NOW - 47 * MIN,
            next_retry_at=NOW + 40,
            reason="The PACS does not answer at 10.0.0.5 port 104. Check that the PACS is on "
            "and its network cable is in. If it stays down, call IT.",
            last_error="connection refused",
        )
        banner = Banner(
            level="attention", text="ATTENTION: PACS unreachable since 09:14 - 12 studies safe"
        )
        alarms = [
            AlarmView(
                code="destination-down",
                message="PACS does not answer since 09:14. Call IT if it stays down.",
                raised_at=NOW - 46 * MIN,
            )
        ]
    elif state == "disk-nearly-full":
        spool = _spool(free_gb=1.6, days_left=0.8)
        banner = Banner(level="attention", text="ATTENTION: DISK NEARLY FULL - about 19 hours left")
        alarms = [
            AlarmView(
                code="spool-low",
                message="Less than 2 GB free. Check that the destinations take studies.",
                raised_at=NOW - 20 * MIN,
                count=3,
            )
        ]
    return UnitStatus(
        unit_name="clinic-north",
        ae_title="WAYSTATION",
        listen="0.0.0.0:11112",
        addresses=["192.168.1.20"],
        version="0.1.0",
        now=NOW,
        started_at=NOW - 86400,
        banner=banner,
        received_today=34,
        delivered_today=30 if state != "healthy" else 34,
        last_received_at=NOW - 2 * MIN,
        spool=spool,
        health=HEALTH,
        alarms=alarms,
        destinations=destinations,
    )


def _study(n: int, priority: Priority, state: str, name: str, desc: str) -> StudySummary:
    return StudySummary.model_validate(
        dict(
            study_id=f"st{n}",
            masked=False,
            patient_name=name,
            patient_id=f"PID{n:04d}",
            study_date="20261127",
            description=desc,
            accession=f"ACC{n}",
            modalities=["CT"] if n % 2 else ["CR"],
            objects=10 * n,
            first_received_at=NOW - n * 10 * MIN,
            last_received_at=NOW - n * 9 * MIN,
            priority=priority,
            state=state,
            destinations={"PACS": DeliveryCounts(delivered=n, pending=9 * n)},
        )
    )


STUDIES = [
    _study(1, "stat", "sending", "DOE^JANE", "CT HEAD"),
    _study(2, "routine", "delivered", "ROE^RICHARD", "CHEST PA"),
    _study(3, "routine", "waiting", "POE^EDGAR", "CT ABDOMEN"),
]


def _masked(study: StudySummary) -> StudySummary:
    return study.model_copy(
        update={"masked": True, "patient_name": "*****", "patient_id": "*****", "accession": ""}
    )


def _error(status: int, code: str, message: str) -> ControlError:
    return ControlError(status, ApiError(error=code, message=message))


@dataclass
class FakeControl:
    """Canned answers for ``state``; ``reachable=False`` makes every call fail to connect."""

    state: str = "healthy"
    reachable: bool = True
    calls: list[tuple[str, tuple[object, ...]]] = field(default_factory=list)
    audit_entries: list[AuditEntry] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _call(self, name: str, *args: object) -> None:
        with self.lock:
            self.calls.append((name, args))
        if not self.reachable:
            raise ControlUnreachable("no answer on /run/waystation/control.sock")

    def called(self, name: str) -> list[tuple[object, ...]]:
        """The arguments of every call of ``name``."""
        with self.lock:
            return [args for n, args in self.calls if n == name]

    def status(self) -> UnitStatus:
        self._call("status")
        return unit_status(self.state)

    def destinations(self) -> list[DestinationView]:
        self._call("destinations")
        return unit_status(self.state).destinations

    def studies(
        self,
        *,
        state: str | None = None,
        query: str | None = None,
        since: float | None = None,
        limit: int = 200,
        offset: int = 0,
        sort: str = "-last_received",
        pin: str | None = None,
    ) -> list[StudySummary]:
        self._call("studies", state, query, sort, pin)
        rows = [s for s in STUDIES if state is None or s.state == state]
        if query:
            rows = [s for s in rows if query.lower() in s.description.lower()]
        rows.sort(key=lambda s: s.last_received_at, reverse=sort.startswith("-"))
        return rows if pin == PIN else [_masked(s) for s in rows]

    def study(self, study_id: str, *, pin: str | None = None) -> StudyDetail:
        self._call("study", study_id, pin)
        summary = next((s for s in STUDIES if s.study_id == study_id), None)
        if summary is None:
            raise _error(404, "not-found", "No such study on this unit.")
        objects = [
            ObjectView(
                object_id=f"{study_id}-o{i}",
                sop_class="CT Image Storage",
                modality="CT",
                size=524288,
                received_at=summary.first_received_at + i,
                calling_ae="CT_SCANNER",
                state="held",
                deliveries=[
                    DeliveryView(
                        destination="PACS",
                        rule="ct-to-pacs",
                        priority=summary.priority,
                        state="delivered" if i == 0 else "pending",
                        attempts=1 if i == 0 else 3,
                        next_attempt_at=None if i == 0 else NOW + 40,
                        last_error="" if i == 0 else "connection refused",
                        updated_at=NOW - 60,
                    )
                ],
            )
            for i in range(2)
        ]
        history = [
            HistoryEvent(object_id=o.object_id, at=o.received_at, event="received") for o in objects
        ] + [
            HistoryEvent(
                object_id=objects[0].object_id,
                at=objects[0].received_at + 5,
                event="delivered",
                detail={"destination": "PACS", "status": 0},
            )
        ]
        shown = summary if pin == PIN else _masked(summary)
        return StudyDetail(summary=shown, objects=objects, history=history)

    def history(self, object_id: str) -> list[HistoryEvent]:
        self._call("history", object_id)
        return []

    def alarms(self) -> list[AlarmView]:
        self._call("alarms")
        return unit_status(self.state).alarms

    def audit(self, limit: int = 100, before: int | None = None) -> list[AuditEntry]:
        self._call("audit", limit, before)
        return list(self.audit_entries)

    def _act(self, action: str, target: str, reason: str = "", affected: int = 3) -> ActionResult:
        with self.lock:
            seq = len(self.audit_entries) + 1
            self.audit_entries.append(
                AuditEntry(
                    seq=seq,
                    at=NOW,
                    user="tech",
                    uid=1000,
                    action=action,
                    target=target,
                    reason=reason,
                    outcome="ok",
                )
            )
        return ActionResult(
            ok=True, affected=affected, message=f"{action} {target}: done", audit_seq=seq
        )

    def pause(self, destination: str, reason: str = "") -> ActionResult:
        self._call("pause", destination, reason)
        return self._act("pause", destination, reason)

    def resume(self, destination: str, reason: str = "") -> ActionResult:
        self._call("resume", destination, reason)
        return self._act("resume", destination, reason)

    def retry(self, destination: str, reason: str = "") -> ActionResult:
        self._call("retry", destination, reason)
        return self._act("retry", destination, reason)

    def retry_failed(self, destination: str, reason: str = "") -> ActionResult:
        self._call("retry_failed", destination, reason)
        return self._act("retry-failed", destination, reason)

    def echo(self, destination: str) -> EchoResult:
        self._call("echo", destination)
        return EchoResult(
            destination=destination,
            ok=True,
            status=0,
            elapsed_ms=12.0,
            message=f"{destination} answered the echo test in 12 ms.",
        )

    def set_priority(self, study_id: str, priority: Priority, reason: str = "") -> ActionResult:
        self._call("set_priority", study_id, priority, reason)
        return self._act("priority", study_id, reason)

    def resend(
        self, study_id: str, destination: str, *, pin: str, reason: str = ""
    ) -> ActionResult:
        self._call("resend", study_id, destination, pin, reason)
        if pin != PIN:
            raise _error(403, "forbidden", "Wrong PIN: nothing was sent again.")
        return self._act("resend", study_id, reason)

    def discard(self, study_id: str, *, pin: str, reason: str) -> ActionResult:
        self._call("discard", study_id, pin, reason)
        if pin != PIN:
            raise _error(403, "forbidden", "Wrong PIN: nothing was discarded.")
        return self._act("discard", study_id, reason)

    def check_pin(self, pin: str) -> bool:
        self._call("check_pin", pin)
        return pin == PIN
