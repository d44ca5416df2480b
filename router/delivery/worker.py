"""One destination's delivery worker: isolated, so a down, slow or rejecting destination never
delays another. Each worker runs in its own thread(s) with its own association."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from router.config.model import AnyDestination, DimseDestination, HubDestination
from router.core.retry import BackoffPolicy, Classification, Outcome, classify
from router.delivery.dimse import DimseSender, Timeouts
from router.delivery.hub_sender import HubSender, hub_link
from router.delivery.queue import Claimed, DeliveryQueue
from router.delivery.stow_sender import StowSender
from router.health.liveness import Heartbeat
from router.spool.spool import Spool

log = logging.getLogger("waystation.delivery")

# Outcomes that say the destination itself is unavailable (not this object): the rest of the
# batch goes back to the queue and the whole destination backs off. A timeout or an abort
# while one object is being sent is that object's problem first: it waits for its own retry
# and the others go on, so one object the destination chokes on never blocks the queue.
# A rejected association - even a permanent rejection such as "calling AE title not
# recognised" - is the destination's configuration, not the object's: objects stay queued and
# the destination shows as blocked until it accepts this unit.
# A hub refusing this unit's token, or a hub certificate not trusted, is the same.
# A STOW-RS server refusing our credentials (HTTP 401/403) or not trusted is the same.
DESTINATION_DOWN = {
    "refused",
    "unreachable",
    "rejected",
    "hub-token",
    "hub-tls",
    "http-auth",
    "http-tls",
}
_RECEIPT_POLL_SECONDS = 10.0
# Below the association's network timeout, so an idle association is released, not aborted.
_IDLE_RELEASE_SECONDS = 10.0
_BATCH = 8
_IDLE_POLL_SECONDS = 1.0
# What a worker thread sends with (a STOW-RS worker's is a StowSender).
Sender = DimseSender | HubSender | StowSender
# C-STORE priority (PS3.7): stat and urgent HIGH (1), routine MEDIUM (0), bulk LOW (2).
_DICOM_PRIORITY = {0: 1, 1: 1, 2: 0, 3: 2}


@dataclass
class DestinationStatus:
    """What the console and health need to know about one destination, in plain words."""

    name: str
    state: str = "idle"  # idle | sending | waiting | paused | down | blocked
    reason: str = ""
    since: float = field(default_factory=time.time)
    last_success_at: float | None = None
    next_retry_at: float | None = None
    delivered: int = 0
    failed: int = 0


def _what_was_changed(outcome: Outcome) -> dict[str, object]:
    """History detail for a copy that differs from the stored bytes (keywords, no values)."""
    extra: dict[str, object] = {}
    if outcome.changed:
        extra["changed"] = list(outcome.changed)
    if outcome.converted:
        extra["converted_to"] = outcome.converted
    return extra


class DestinationWorker:
    """Delivers one destination's queue, most urgent first, until stopped."""

    def __init__(
        self,
        destination: AnyDestination,
        *,
        unit_ae: str,
        spool: Spool,
        queue: DeliveryQueue,
        policy: BackoffPolicy | None = None,
        timeouts: Timeouts | None = None,
        threads: int = 1,
    ) -> None:
        self.destination = destination
        self.unit_ae = unit_ae
        self.spool = spool
        self.queue = queue
        self.policy = policy or BackoffPolicy()
        self.timeouts = timeouts or Timeouts()
        self.status = DestinationStatus(destination.name)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._down_until = 0.0
        # Until when, and why, the rate gate last held objects back (a used-up budget...).
        self._hold: tuple[float, str] = (0.0, "")
        self._consecutive_failures = 0
        self._receipts_polled = 0.0
        # Deliveries a failed journal write may have left in flight (see _watch).
        self._orphans: set[str] = set()
        # Per hub stream (thread name): the object claimed while the last one's answer was
        # on its way (see _begin_next), delivered next.
        self._ahead: dict[str, Claimed] = {}
        self._threads = [
            threading.Thread(target=self._run, name=f"deliver-{destination.name}-{i}", daemon=True)
            for i in range(max(1, threads))
        ]
        # The service watchdog checks them: one per thread, keyed by thread name.
        self.heartbeats = {thread.name: Heartbeat() for thread in self._threads}
        # A hub's streams (one per thread) share its rate gate and priorities in flight.
        self._hub_link = (
            hub_link(destination, spool) if isinstance(destination, HubDestination) else None
        )

    @property
    def threads(self) -> list[threading.Thread]:
        """The worker's threads (for the service watchdog)."""
        return list(self._threads)

    def _heartbeat(self) -> Heartbeat:
        return self.heartbeats.get(threading.current_thread().name) or Heartbeat()

    def start(self) -> None:
        """Start the worker thread(s)."""
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """New work arrived: look at the queue now (a destination that is down keeps its
        backoff; ``retry_now`` is the operator's way to cut it short)."""
        self._wake.set()

    def retry_now(self) -> None:
        """Forget the destination's backoff and try at once."""
        with self._lock:
            self._down_until = 0.0
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the object in flight (if any) has been answered."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=timeout)

    def _make_sender(self) -> Sender:
        """This thread's sender for the destination (one per thread)."""
        sender: Sender
        if isinstance(self.destination, HubDestination):
            name = self.destination.name
            sender = HubSender(
                self.destination,
                spool=self.spool,
                more_urgent=lambda priority: self.queue.has_more_urgent(name, priority),
                link=self._hub_link,
                lookahead=self._begin_next,
            )
        elif isinstance(self.destination, DimseDestination):
            sender = DimseSender(
                self.destination, unit_ae=self.unit_ae, spool=self.spool, timeouts=self.timeouts
            )
        else:  # assembly.delivery_workers gives these a StowWorker
            raise TypeError(f"{self.destination.name}: a STOW-RS destination needs a StowWorker")
        return sender

    def _run(self) -> None:
        sender = self._make_sender()
        try:
            while not self._stop.is_set():
                self._heartbeat().working()
                try:
                    self._step(sender)
                except Exception:  # contained: a worker must never die
                    log.exception("delivery worker for %s hit an error", self.destination.name)
                    self._sleep(5.0)
        finally:
            sender.close()
            self._release_ahead()

    def _step(self, sender: Sender) -> None:
        name = self.destination.name
        self._requeue_orphans()
        if self.queue.is_paused(name):
            self._set("paused", "Paused by an operator.")
            sender.close()
            self._release_ahead()
            self._sleep(5.0)
            return
        wait = self._down_until - time.time()
        if wait > 0:
            self._release_ahead(self._down_until)
            self._sleep(wait)
            return
        ahead = self._ahead.pop(threading.current_thread().name, None)
        batch = [ahead] if ahead is not None else self.queue.claim(name, self._claim_size())
        if not batch:
            self._poll_receipts(sender)
            if sender.idle_for() > _IDLE_RELEASE_SECONDS:
                sender.close()
            held_until, held_reason = self._hold
            if held_until > time.time():
                # Objects still wait for the rate gate (an exempt STAT object may just have
                # gone through it): keep saying why, not "idle".
                self._set("waiting", held_reason, next_retry_at=held_until)
            elif self.status.state in ("sending", "paused"):
                self._set("idle", "")
            # New work is noticed within a second; a retry as soon as it is due.
            due = self.queue.next_due(name)
            self._sleep(min(_IDLE_POLL_SECONDS, max(0.05, due - time.time())) if due else 1.0)
            return
        self._set("sending", "")
        try:
            self._deliver_batch(sender, batch)
        except BaseException:
            # Whatever was not recorded stays in flight: queue it again once the journal
            # works (rows already recorded are no longer in flight and are left alone).
            self._note_orphans(batch)
            raise

    def _deliver_batch(self, sender: Sender, batch: list[Claimed]) -> None:
        """Send a claimed batch object by object, most urgent first, recording each."""
        name = self.destination.name
        for index, claimed in enumerate(batch):
            self._heartbeat().working()  # one object answered: progress
            if self._stop.is_set():
                self._watch(self.queue.release(name, batch[index:], time.time()), batch[index:])
                return
            try:
                upcoming = batch[index + 1].object_id if index + 1 < len(batch) else None
                verdict, outcome = self._deliver(sender, claimed, upcoming)
            except Exception as exc:  # never leave a batch stuck in flight
                log.error(
                    "delivery to %s: unexpected %s; object retried later",
                    name,
                    type(exc).__name__,
                )
                sender.close()
                outcome = Outcome("aborted", detail=type(exc).__name__)
                verdict = Classification("transient", f"{name}: unexpected problem.")
            if outcome.kind in DESTINATION_DOWN:
                self._destination_down(verdict, claimed, batch[index + 1 :])
                return
            if outcome.kind == "preempted":
                # A more urgent object waits: put these back (not counted as attempts) and
                # claim again, most urgent first. The upload resumes where it stopped.
                self._watch(self.queue.release(name, batch[index:], time.time()), batch[index:])
                return
            if outcome.kind == "held":
                # The rate gate holds sending back (a used-up budget, a paused window): the
                # batch waits, uncounted, until the gate opens. The worker itself does not: a
                # STAT object arriving meanwhile may be exempt from budgets and goes at once.
                until = time.time() + (outcome.retry_after or 60.0)
                self._watch(self.queue.release(name, batch[index:], until), batch[index:])
                self._hold = (until, verdict.reason)
                self._set("waiting", verdict.reason, next_retry_at=until)
                return
            if self._consecutive_failures:
                log.info("%s accepts connections again: delivering", name)
            self._consecutive_failures = 0
            self._settle(claimed, verdict, outcome)

    def _claim_size(self) -> int:
        """How many due deliveries to take at once. Hub streams take one at a time, so a
        STAT study spreads over the streams as they come free instead of queueing behind
        one of them; each claims its next object while the last one's answer is on its way
        (_begin_next)."""
        return 1 if self._hub_link is not None else _BATCH

    def _begin_next(self, sender: HubSender) -> None:
        """Called by a hub stream while it waits for the answer that commits an object:
        claim the next due object and let the stream write its upload behind (HTTP
        pipelining), so the stream's share of the link is not idle for that round trip.
        Why safe: the next object's delivery state changes only on its own answer, read
        when it is delivered next (_step); if that answer never comes, it is sent again,
        and the hub answers a repeated create "already committed"."""
        name = self.destination.name
        thread = threading.current_thread().name
        try:
            ahead = self._ahead.get(thread)
            if ahead is None:
                if self._stop.is_set() or self.queue.is_paused(name):
                    return
                claimed = self.queue.claim(name, 1)
                if not claimed:
                    return
                ahead = self._ahead[thread] = claimed[0]
            held = self.spool.get(ahead.object_id)
            if held is not None and held.state in ("held", "superseded"):
                sender.begin(held, ahead.priority)
        except Exception as exc:  # the object in flight must still get its answer
            log.warning("%s: next object not begun early: %s", name, type(exc).__name__)

    def _release_ahead(self, retry_at: float | None = None) -> None:
        """Put this stream's object claimed ahead back in the queue (not sent after all)."""
        ahead = self._ahead.pop(threading.current_thread().name, None)
        if ahead is not None:
            at = time.time() if retry_at is None else retry_at
            self._watch(self.queue.release(self.destination.name, [ahead], at), [ahead])

    def _settle(self, claimed: Claimed, verdict: Classification, outcome: Outcome) -> None:
        """Record one object's outcome: delivered, retried later, or waiting for a person."""
        name = self.destination.name
        if verdict.verdict == "transient":
            delay = self.policy.delay(claimed.attempts)
            if outcome.retry_after is not None:  # the destination said when (Retry-After)
                delay = max(delay, outcome.retry_after)
            retry_at = time.time() + delay
            self._watch(self.queue.record(name, claimed, verdict, retry_at=retry_at), [claimed])
            log.info("object %s: %s Retried later.", claimed.object_id, verdict.reason)
            return
        recorded = self.queue.record(
            name,
            claimed,
            verdict,
            extra=_what_was_changed(outcome),
            awaiting_commitment=self.destination.storage_commitment,
        )
        self._watch(recorded, [claimed])
        self._count(verdict)
        if verdict.verdict == "permanent":
            # Object ids and reasons only: the reason names the destination and the kind of
            # image, never patient data.
            log.warning(
                "object %s NOT delivered to %s: %s Waiting for an operator.",
                claimed.object_id,
                name,
                verdict.reason,
            )

    def _classify(self, outcome: Outcome) -> Classification:
        return classify(
            outcome,
            destination=self.destination.name,
            unit_ae=self.unit_ae,
            dest_ae=getattr(self.destination, "ae_title", self.destination.name),
        )

    def _deliver(
        self, sender: Sender, claimed: Claimed, upcoming: str | None = None
    ) -> tuple[Classification, Outcome]:
        held = self.spool.get(claimed.object_id)
        if held is None or held.state not in ("held", "superseded"):
            outcome = Outcome("unreadable", detail="the object is no longer held")
        elif isinstance(sender, HubSender):
            outcome = sender.send(held, claimed.priority)
        elif isinstance(sender, StowSender):  # never: STOW-RS objects go in requests
            outcome = Outcome("unreadable", detail="sent one by one")
        else:
            sop_class, syntax = self._context_of(held.id)
            # The send has its own deadline: the watchdog allows it before calling it a hang.
            allowance = self.timeouts.connect + self.timeouts.response(held.size)
            self._heartbeat().working(allowance)
            outcome = sender.send(
                held, sop_class, syntax, _DICOM_PRIORITY[claimed.priority], upcoming=upcoming
            )
        return self._classify(outcome), outcome

    def _poll_receipts(self, sender: Sender) -> None:
        """When idle, ask a hub which objects reached the provider's PACS."""
        if not isinstance(sender, HubSender):
            return
        if time.monotonic() - self._receipts_polled < _RECEIPT_POLL_SECONDS:
            return
        self._receipts_polled = time.monotonic()
        try:
            sender.poll_receipts()
        except Exception as exc:  # receipts are news, not delivery: never stop the worker
            log.info("receipts from %s not read: %s", self.destination.name, type(exc).__name__)

    def _context_of(self, object_id: str) -> tuple[str, str]:
        row = (
            self.spool.reader_connection()
            .execute(
                "SELECT sop_class_uid, transfer_syntax FROM objects WHERE id = ?", (object_id,)
            )
            .fetchone()
        )
        return str(row[0]), str(row[1])

    def _watch(self, future: Future[Any], items: list[Claimed]) -> None:
        """Why: records and releases commit asynchronously. One the journal fails to commit
        (a failed write or fsync) leaves its deliveries in flight, and nothing claims an
        in-flight delivery again before a restart's recovery: the object would wait forever.
        Note them; the next step queues them again."""

        def done(result: Future[Any]) -> None:
            if not result.cancelled() and result.exception() is not None:
                self._note_orphans(items)

        future.add_done_callback(done)

    def _note_orphans(self, items: list[Claimed]) -> None:
        with self._lock:
            self._orphans.update(item.object_id for item in items)

    def _requeue_orphans(self) -> None:
        """Queue again the deliveries a failed journal write left in flight (raises, and
        keeps them noted, while the journal still fails)."""
        with self._lock:
            orphans = sorted(self._orphans)
        if not orphans:
            return
        requeued = self.queue.requeue(self.destination.name, orphans)
        with self._lock:
            self._orphans.difference_update(orphans)
        if requeued:
            log.warning(
                "%s: %d deliveries left in flight by a failed journal write are queued again",
                self.destination.name,
                requeued,
            )

    def _destination_down(
        self, verdict: Classification, claimed: Claimed, rest: list[Claimed]
    ) -> None:
        self._consecutive_failures += 1
        blocked = verdict.verdict == "permanent"
        # A blocked destination needs a person; it is still retried, at the slowest pace.
        delay = self.policy.cap if blocked else self.policy.delay(self._consecutive_failures)
        retry_at = time.time() + delay
        with self._lock:
            self._down_until = retry_at
        waiting = Classification("transient", verdict.reason, verdict.status)
        self._watch(
            self.queue.record(self.destination.name, claimed, waiting, retry_at=retry_at),
            [claimed],
        )
        if rest:
            self._watch(self.queue.release(self.destination.name, rest, retry_at), rest)
        self._release_ahead(retry_at)
        state = "blocked" if blocked else "down"
        self._set(state, verdict.reason, next_retry_at=retry_at)
        log.warning("%s: %s next try in %.0f s", self.destination.name, verdict.reason, delay)

    def _count(self, verdict: Classification) -> None:
        with self._lock:
            if verdict.verdict == "delivered":
                self.status.delivered += 1
                self.status.last_success_at = time.time()
            else:
                self.status.failed += 1
                self.status.reason = verdict.reason

    def _set(self, state: str, reason: str, next_retry_at: float | None = None) -> None:
        with self._lock:
            if self.status.state != state:
                self.status.since = time.time()
            self.status.state = state
            self.status.reason = reason
            self.status.next_retry_at = next_retry_at

    def _sleep(self, seconds: float) -> None:
        beat = self._heartbeat()
        beat.waiting()
        self._wake.wait(timeout=max(0.0, seconds))
        self._wake.clear()
        beat.working()
