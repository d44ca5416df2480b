"""A scripted destination that is also a Storage Commitment (Push Model) SCP.

``CommitmentSCP`` is a :class:`~tests.support.scripted_scp.ScriptedSCP` (C-STORE as scripted
there) that answers every N-ACTION-RQ with success and then reports the result as told by
``report``:

* ``"same"`` - an N-EVENT-REPORT on the N-ACTION's own association, shortly after the response;
* ``"new"`` - on a new association to ``report_to`` (host, port, AE title), proposing the SCP
  role for the Storage Commitment Push Model (SCP/SCU role selection), as Orthanc does;
* ``"never"`` - no report at all.

An instance is committed only if it was received (C-STORE kept), else it fails with 0x0112
(no such object). ``fail_once`` names SOP Instance UIDs that fail with 0x0110 (processing
failure) the first time they are asked about. ``report`` can be changed while running.
Requests and the router's answers to reports are recorded (thread-safe).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.events import EventHandlerType

from tests.support.scripted_scp import ScriptedSCP

SCPM = "1.2.840.10008.1.20.1"
SCPM_INSTANCE = "1.2.840.10008.1.20.1.1"


@dataclass(frozen=True)
class CommitRequest:
    """One N-ACTION received: its Transaction UID, the instances named and who asked."""

    transaction_uid: str
    instances: tuple[str, ...]
    calling_ae: str


class CommitmentSCP(ScriptedSCP):
    """A Storage SCP and Storage Commitment SCP on 127.0.0.1; see the module docstring."""

    def __init__(
        self,
        *,
        report: str = "same",
        report_to: tuple[str, int, str] | None = None,
        report_delay: float = 0.3,
        fail_once: Iterable[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.report = report
        self.report_to = report_to
        self.report_delay = report_delay
        self._fail_once = set(fail_once)
        self._requests: list[CommitRequest] = []
        self._answers: list[int | None] = []
        self._reporters: list[threading.Thread] = []
        self._ae.add_supported_context(SCPM)

    def _handlers(self) -> list[EventHandlerType]:
        return [*super()._handlers(), (evt.EVT_N_ACTION, self._on_action)]

    def fail_next(self, sop_instance_uid: str) -> None:
        """Report this instance failed (0x0110) the next time it is asked about."""
        with self._lock:
            self._fail_once.add(sop_instance_uid)

    # -- observations ------------------------------------------------------------------------
    def requests(self) -> list[CommitRequest]:
        """N-ACTIONs received so far."""
        with self._lock:
            return list(self._requests)

    def answers(self) -> list[int | None]:
        """The statuses the router answered to reports (None: no answer or not sent)."""
        with self._lock:
            return list(self._answers)

    def wait_for_requests(self, count: int, timeout: float = 30.0) -> list[CommitRequest]:
        """Wait until ``count`` N-ACTIONs came; raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while len(found := self.requests()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)} of {count} commitment requests in {timeout} s")
            time.sleep(0.05)
        return found

    def close(self) -> None:
        """Stop, after any report being sent."""
        for thread in list(self._reporters):
            thread.join(10)
        super().close()

    # -- handlers ----------------------------------------------------------------------------
    def _on_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        info = event.action_information
        request = CommitRequest(
            transaction_uid=str(info.TransactionUID),
            instances=tuple(str(i.ReferencedSOPInstanceUID) for i in info.ReferencedSOPSequence),
            calling_ae=str(event.assoc.requestor.ae_title),
        )
        classes = {
            str(i.ReferencedSOPInstanceUID): str(i.ReferencedSOPClassUID)
            for i in info.ReferencedSOPSequence
        }
        with self._lock:
            self._requests.append(request)
        mode = self.report
        if mode != "never":
            result = self._result(request, classes)
            thread = threading.Thread(
                target=self._send_report, args=(mode, event.assoc, result), daemon=True
            )
            self._reporters.append(thread)
            thread.start()
        return 0x0000, None

    def _result(self, request: CommitRequest, classes: dict[str, str]) -> tuple[int, Dataset]:
        received = self.received()
        result = Dataset()
        result.TransactionUID = request.transaction_uid
        committed, failed = [], []
        for uid in request.instances:
            item = Dataset()
            item.ReferencedSOPClassUID = classes[uid]
            item.ReferencedSOPInstanceUID = uid
            with self._lock:
                fail = uid in self._fail_once
                self._fail_once.discard(uid)
            if fail or uid not in received:
                item.FailureReason = 0x0110 if fail else 0x0112
                failed.append(item)
            else:
                committed.append(item)
        if committed:
            result.ReferencedSOPSequence = committed
        if failed:
            result.FailedSOPSequence = failed
        return (2 if failed else 1), result

    def _send_report(self, mode: str, assoc: Any, result: tuple[int, Dataset]) -> None:
        time.sleep(self.report_delay)
        event_type, dataset = result
        answer: int | None = None
        if mode == "same":
            if assoc.is_established:
                answer = _status(
                    assoc.send_n_event_report(dataset, event_type, SCPM, SCPM_INSTANCE)
                )
        elif mode == "new" and self.report_to is not None:
            host, port, ae_title = self.report_to
            ae = AE(ae_title=self.ae_title)
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
            ae.add_requested_context(SCPM)
            try:
                theirs = ae.associate(
                    host, port, ae_title=ae_title, ext_neg=[build_role(SCPM, scp_role=True)]
                )
            except (OSError, RuntimeError):
                theirs = None
            if theirs is not None and theirs.is_established:
                answer = _status(
                    theirs.send_n_event_report(dataset, event_type, SCPM, SCPM_INSTANCE)
                )
                theirs.release()
        with self._lock:
            self._answers.append(answer)


def send_report(
    port: int, *, calling_ae: str, transaction_uid: str, instances: dict[str, str]
) -> int | None:
    """Send one N-EVENT-REPORT (all committed) to a router at 127.0.0.1:``port`` on a new
    association as ``calling_ae``; returns the router's status (None: no association)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(SCPM)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title="WAYSTATION", ext_neg=[build_role(SCPM, scp_role=True)]
    )
    if not assoc.is_established:
        return None
    dataset = Dataset()
    dataset.TransactionUID = transaction_uid
    items = []
    for instance, sop_class in instances.items():
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = instance
        items.append(item)
    dataset.ReferencedSOPSequence = items
    try:
        return _status(assoc.send_n_event_report(dataset, 1, SCPM, SCPM_INSTANCE))
    finally:
        assoc.release()


def _status(answer: Any) -> int | None:
    status = answer[0] if isinstance(answer, tuple) else answer
    code = getattr(status, "Status", None)
    return None if code is None else int(code)
