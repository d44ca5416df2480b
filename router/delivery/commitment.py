"""Storage Commitment Push Model SCU: ask destinations to commit to the objects they stored,
and count an object delivered only when they do.

For each destination with ``storage_commitment = true`` one thread:

1. batches the destination's "committing" deliveries (stored, C-STORE success) into a
   transaction, recorded in the journal first (commitment_ledger.py);
2. sends it as an N-ACTION-RQ (action type 1, Transaction UID, Referenced SOP Sequence) on an
   association of its own, and waits a few seconds there for an N-EVENT-REPORT;
3. otherwise waits for the report on a new association the destination opens to the ingest
   SCP (router/ingest/scp.py hands it to :meth:`CommitmentManager.handle_report`);
4. when no result comes within ``commitment_timeout``, asks again once, and after a second
   silence as long puts the objects back in the queue to be sent again.

Everything lives in the journal, so after a crash or restart the open requests are simply
picked up again: a request not yet accepted is sent, a waiting one keeps its deadline.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt

from router.config.model import DimseDestination
from router.core.commitment import (
    ACTION_REQUEST_COMMIT,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    BadReport,
    Reference,
    Report,
    batch_due,
    build_request,
    failure_words,
    read_report,
    resolve,
)
from router.core.retry import BackoffPolicy
from router.delivery.commitment_ledger import CommitmentLedger, Transaction
from router.health.liveness import Heartbeat
from router.ingest import pynetdicom_setup
from router.spool.spool import Spool

log = logging.getLogger("waystation.commitment")

# References per N-ACTION: a CT series in one request, well below what SCPs accept.
MAX_BATCH = 500
# A batch goes once nothing was stored for this long (the series went out) ...
_LINGER_SECONDS = 2.0
# ... or its oldest object has waited this long.
_MAX_WAIT_SECONDS = 30.0
# How long to keep the N-ACTION's association open for a report sent on it.
_SAME_ASSOCIATION_WAIT = 5.0
_POLL_SECONDS = 1.0

STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110
STATUS_NOT_AUTHORISED = 0x0124


@dataclass
class CommitmentStatus:
    """What the console needs about one destination's commitments, in plain words."""

    name: str
    problem: str = ""  # why requests are not getting through, when they are not
    last_committed_at: float | None = None
    committed: int = 0
    resent: int = 0


@dataclass
class _Waiter:
    done: threading.Event = field(default_factory=threading.Event)


class CommitmentManager:
    """Storage Commitment for every destination that asks for it."""

    def __init__(
        self,
        destinations: Sequence[DimseDestination],
        *,
        unit_ae: str,
        spool: Spool,
        policy: BackoffPolicy | None = None,
        connect_timeout: float = 15.0,
        response_timeout: float = 30.0,
        same_association_wait: float = _SAME_ASSOCIATION_WAIT,
    ) -> None:
        pynetdicom_setup.configure()
        self.destinations = {d.name: d for d in destinations if d.storage_commitment}
        self.unit_ae = unit_ae
        self.spool = spool
        self.ledger = CommitmentLedger(spool)
        self.policy = policy or BackoffPolicy()
        # Plain numbers (delivery.connect_timeout, response_timeout): independent of the
        # C-STORE sender's own types.
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.same_association_wait = same_association_wait
        self.status = {name: CommitmentStatus(name) for name in self.destinations}
        self._stop = threading.Event()
        self._wake = {name: threading.Event() for name in self.destinations}
        self._waiters: dict[str, _Waiter] = {}
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(d,), name=f"commit-{d.name}", daemon=True)
            for d in self.destinations.values()
        ]
        # The watchdog watches these threads like the delivery workers (router/daemon.py).
        self.heartbeats = {thread.name: Heartbeat() for thread in self._threads}

    @property
    def threads(self) -> list[threading.Thread]:
        """The per-destination threads (for the watchdog)."""
        return list(self._threads)

    @property
    def report_callers(self) -> list[str]:
        """The AE titles that may send Storage Commitment reports to the ingest SCP."""
        return sorted({d.ae_title for d in self.destinations.values()})

    def start(self) -> None:
        """Start one thread per destination."""
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop after the request in progress (open requests stay in the journal)."""
        self._stop.set()
        for event in self._wake.values():
            event.set()
        for thread in self._threads:
            thread.join(timeout=timeout)

    def wake(self, destination: str) -> None:
        """Look at a destination's committing objects now."""
        event = self._wake.get(destination)
        if event is not None:
            event.set()

    # -- the per-destination loop ------------------------------------------------------------

    def _heartbeat(self) -> Heartbeat:
        return self.heartbeats.get(threading.current_thread().name) or Heartbeat()

    def _allowance(self) -> float:
        # One request: connect, the N-ACTION's answer, the wait for a report on the same
        # association, and the release; each bounded by its own timeout.
        return 2 * self.connect_timeout + 2 * self.response_timeout + self.same_association_wait

    def _run(self, destination: DimseDestination) -> None:
        wake = self._wake[destination.name]
        beat = self._heartbeat()
        while not self._stop.is_set():
            beat.working(self._allowance())
            try:
                self.step(destination)
            except Exception:  # contained: a commitment thread must never die
                log.exception("storage commitment for %s hit an error", destination.name)
            beat.waiting()
            wake.wait(_POLL_SECONDS)
            wake.clear()

    def step(self, destination: DimseDestination, now: float | None = None) -> None:
        """One pass: expire, (re)send due requests, batch new committing objects."""
        name = destination.name
        at = time.time() if now is None else now
        for txn in self.ledger.open_transactions(name):
            if self._stop.is_set():
                return
            if txn.state == "waiting" and txn.deadline is not None and txn.deadline <= at:
                self._expire(destination, txn)
            elif txn.state == "requesting" and txn.next_attempt_at <= at:
                self._request(destination, txn)
        count, oldest, newest = self.ledger.unrequested(name)
        due = batch_due(
            count=count,
            quiet_for=at - (newest or at),
            waited=at - (oldest or at),
            max_batch=MAX_BATCH,
            linger=_LINGER_SECONDS,
            max_wait=_MAX_WAIT_SECONDS,
        )
        if due and not self._stop.is_set():
            uid = generate_uid()
            if self.ledger.open_transaction(name, uid, MAX_BATCH, now=at):
                created = self.ledger.transaction(uid)
                if created is not None:
                    self._request(destination, created)

    def _expire(self, destination: DimseDestination, txn: Transaction) -> None:
        name = destination.name
        reason = (
            f"{name} sent no Storage Commitment result within "
            f"{destination.commitment_timeout:.0f} s."
        )
        outcome = self.ledger.expire(txn, generate_uid(), reason)
        if outcome == "ask-again":
            log.warning("%s Asking again (transaction %s).", reason, txn.uid)
        elif outcome == "resend":
            log.warning(
                "%s Asked twice: its objects are sent again (transaction %s).", reason, txn.uid
            )
            with self._lock:
                self.status[name].resent += 1

    # -- N-ACTION ----------------------------------------------------------------------------

    def _request(self, destination: DimseDestination, txn: Transaction) -> None:
        name = destination.name
        self._heartbeat().working(self._allowance())  # each request is a piece of work
        references = self._references(txn.uid)
        if not references:
            self.ledger.close(txn.uid, "nothing left to ask about")
            return
        dataset = build_request(txn.uid, references)
        waiter = _Waiter()
        with self._lock:
            self._waiters[txn.uid] = waiter
        try:
            problem = self._send_action(destination, txn, dataset, waiter)
        finally:
            with self._lock:
                self._waiters.pop(txn.uid, None)
        with self._lock:
            self.status[name].problem = problem
        if problem:
            retry_at = time.time() + self.policy.delay(txn.attempts + 1)
            self.ledger.request_failed(txn.uid, retry_at, problem)
            log.warning("%s Commitment asked again in %.0f s.", problem, retry_at - time.time())

    def _references(self, uid: str) -> list[Reference]:
        references = []
        for object_id, sop_class, _tag in self.ledger.items(uid):
            held = self.spool.get(object_id)
            if held is None:
                continue
            try:
                instance = self.spool.metadata(held)["sop_instance_uid"]
            except Exception as exc:  # a deleted or unreadable object cannot be referenced
                log.error("object %s cannot be named in a commitment request: %s", object_id, exc)
                continue
            references.append(Reference(sop_class, instance))
        return references

    def _send_action(
        self, destination: DimseDestination, txn: Transaction, dataset: Dataset, waiter: _Waiter
    ) -> str:
        """Send the N-ACTION; returns "" when the destination accepted it, else the problem."""
        name = destination.name
        ae = AE(ae_title=self.unit_ae)
        ae.acse_timeout = self.connect_timeout
        ae.connection_timeout = self.connect_timeout
        ae.network_timeout = self.response_timeout
        ae.dimse_timeout = self.response_timeout
        ae.add_requested_context(
            STORAGE_COMMITMENT_PUSH_MODEL, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        handlers: list[Any] = [(evt.EVT_N_EVENT_REPORT, self._same_association_handler(name))]
        try:
            assoc: Any = ae.associate(
                destination.host,
                destination.port,
                ae_title=destination.ae_title,
                evt_handlers=handlers,
            )
        except (OSError, RuntimeError, ValueError) as exc:
            return f"{name} cannot be reached for Storage Commitment ({type(exc).__name__})."
        if not assoc.is_established:
            if assoc.is_rejected:
                return f"{name} refused the connection for Storage Commitment."
            return f"{name} cannot be reached for Storage Commitment."
        try:
            if not assoc.accepted_contexts:
                return (
                    f"{name} does not offer Storage Commitment. Set storage_commitment = false "
                    "for it, or call IT."
                )
            status, _reply = assoc.send_n_action(
                dataset,
                ACTION_REQUEST_COMMIT,
                STORAGE_COMMITMENT_PUSH_MODEL,
                STORAGE_COMMITMENT_INSTANCE,
            )
            code = getattr(status, "Status", None)
            if code is None:
                return f"{name} did not answer the Storage Commitment request."
            if int(code) != STATUS_SUCCESS:
                return f"{name} refused the Storage Commitment request (0x{int(code):04X})."
            deadline = time.time() + destination.commitment_timeout
            self.ledger.requested(txn.uid, deadline)
            log.info(
                "%s: commitment asked for %d objects (transaction %s, round %d)",
                name,
                len(dataset.ReferencedSOPSequence),
                txn.uid,
                txn.round,
            )
            # Some destinations report on this association; most open one of their own.
            waiter.done.wait(self.same_association_wait)
            return ""
        finally:
            with contextlib.suppress(Exception):
                if assoc.is_established:
                    assoc.release()

    def _same_association_handler(self, name: str) -> Any:
        destination = self.destinations[name]

        def handler(event: evt.Event) -> tuple[int, None]:
            request: Any = event.request
            try:
                information = event.event_information
            except Exception:  # undecodable: read_report says so
                information = None
            return self._receive(destination, int(request.EventTypeID or 0), information), None

        return handler

    # -- N-EVENT-REPORT ----------------------------------------------------------------------

    def handle_report(
        self, calling_ae: str, address: str, event_type: int, information: Dataset | None
    ) -> int:
        """A report that came to the ingest SCP on an association the destination opened.
        Only a destination with storage_commitment, by calling AE title and address, may
        send one; others are refused (0x0124)."""
        destination = self._sender(calling_ae, address)
        if destination is None:
            log.warning(
                "Storage Commitment report from %s at %s refused: no destination with "
                "storage_commitment has that AE title and address",
                calling_ae,
                address,
            )
            return STATUS_NOT_AUTHORISED
        return self._receive(destination, event_type, information)

    def _sender(self, calling_ae: str, address: str) -> DimseDestination | None:
        for destination in self.destinations.values():
            if destination.ae_title == calling_ae and address in _addresses(destination.host):
                return destination
        return None

    def _receive(
        self, destination: DimseDestination, event_type: int, information: Dataset | None
    ) -> int:
        try:
            report = read_report(event_type, information)
        except BadReport as exc:
            log.warning("Storage Commitment report from %s not usable: %s", destination.name, exc)
            return exc.status
        except Exception as exc:  # a malformed data set; its text may quote values
            log.warning(
                "Storage Commitment report from %s could not be read (%s)",
                destination.name,
                type(exc).__name__,
            )
            return STATUS_PROCESSING_FAILURE
        return self.apply_report(destination, report)

    def apply_report(self, destination: DimseDestination, report: Report) -> int:
        """Apply a report from ``destination``; answered 0x0000 even when it is ignored."""
        name = destination.name
        # Runs in pynetdicom's association threads: read through the journal's connection.
        txn, items_of = self.ledger.snapshot(report.transaction_uid)
        if txn is None or txn.destination != name:
            log.info(
                "Storage Commitment report from %s for a transaction this unit did not ask it "
                "about (%s): ignored",
                name,
                report.transaction_uid,
            )
            return STATUS_SUCCESS
        items = {tag: object_id for object_id, _cls, tag in items_of}
        resolution = resolve(report, lambda uid: self.spool.keyring.lookup_tag("sop", uid), items)
        reasons = {code: failure_words(name, code) for _oid, code in resolution.failed}
        applied = self.ledger.apply(txn.uid, resolution, reasons)
        if applied.ignored:
            log.info(
                "Storage Commitment report from %s for finished transaction %s: ignored",
                name,
                txn.uid,
            )
        else:
            log.info(
                "%s committed %d objects; %d sent again, %d failed, %d references not ours "
                "(transaction %s)",
                name,
                applied.committed,
                applied.resend,
                applied.failed,
                resolution.not_ours,
                txn.uid,
            )
            for object_id, code in resolution.failed:
                log.warning("object %s: %s", object_id, reasons[code][0])
            with self._lock:
                status = self.status[name]
                status.committed += applied.committed
                if applied.committed:
                    status.last_committed_at = time.time()
        with self._lock:
            waiter = self._waiters.get(txn.uid)
        if waiter is not None:
            waiter.done.set()
        self.wake(name)  # objects not named in the report are asked about again
        return STATUS_SUCCESS


def _addresses(host: str) -> set[str]:
    """The IP addresses a destination's host names (empty if it does not resolve)."""
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return set()
