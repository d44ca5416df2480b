"""The delivery worker of a `type = "stow"` destination: a claimed batch goes as STOW-RS
requests (per study, within the size limits, most urgent first; router/core/stow.py plans
them), and each object is recorded by the server's own answer for it.

Everything else - the queue, priorities, backoff, pause, the watchdog - is the
DestinationWorker's. What differs: a request's whole-request answer (down, refused
credentials, busy with Retry-After, a rate gate holding back) makes the destination wait and
gives the objects not yet sent back uncounted; a STAT object waits at most for the request
in flight; one gate (cap, calendar, budgets) serves all the destination's threads.
"""

from __future__ import annotations

import logging
import time

from router.config.model import StowDestination
from router.core.retry import BackoffPolicy, Classification, Outcome
from router.core.stow import Item
from router.delivery.dimse import Timeouts
from router.delivery.queue import Claimed, DeliveryQueue
from router.delivery.shared_gate import SharedGate
from router.delivery.stow_sender import Part, StowSender
from router.delivery.worker import DESTINATION_DOWN, DestinationWorker, Sender
from router.spool.spool import Spool

log = logging.getLogger("waystation.delivery")

# Claimed but not yet sent costs nothing at a crash (it is simply pending again).
_CLAIM_REQUESTS = 4
_CLAIM_MAX = 500


class StowWorker(DestinationWorker):
    """Delivers one STOW-RS destination's queue in batched requests."""

    def __init__(
        self,
        destination: StowDestination,
        *,
        unit_ae: str,
        spool: Spool,
        queue: DeliveryQueue,
        policy: BackoffPolicy | None = None,
        timeouts: Timeouts | None = None,
        threads: int = 1,
    ) -> None:
        super().__init__(
            destination,
            unit_ae=unit_ae,
            spool=spool,
            queue=queue,
            policy=policy,
            timeouts=timeouts,
            threads=threads,
        )
        self.stow = destination
        # The cap and budgets hold for all the destination's threads together.
        self.gate = SharedGate(spool, destination.name, destination.rate)

    def _make_sender(self) -> Sender:
        return StowSender(
            self.stow, spool=self.spool, connect_timeout=self.timeouts.connect, gate=self.gate
        )

    def _claim_size(self) -> int:
        """A few requests' worth, so objects of studies received interleaved still fill
        their requests - or, with concurrent requests, one request's worth, so the other
        threads find work too."""
        requests = _CLAIM_REQUESTS if self.stow.requests == 1 else 1
        return min(requests * self.stow.max_instances, _CLAIM_MAX)

    def _deliver_batch(self, sender: Sender, batch: list[Claimed]) -> None:
        assert isinstance(sender, StowSender)
        name = self.destination.name
        try:
            self._deliver_requests(sender, batch)
        except Exception as exc:  # never leave a batch stuck in flight
            log.error(
                "delivery to %s: unexpected %s; objects retried later", name, type(exc).__name__
            )
            sender.close()
            outcome = Outcome("aborted", detail=type(exc).__name__)
            verdict = Classification("transient", f"{name}: unexpected problem.")
            for claimed in batch:  # only those still in flight change
                self._settle(claimed, verdict, outcome)

    def _deliver_requests(self, sender: StowSender, batch: list[Claimed]) -> None:
        """Send a claimed batch as STOW-RS requests (per study, within the size limits,
        most urgent first), recording each object by the server's answer for it."""
        name = self.destination.name
        by_id = {claimed.object_id: claimed for claimed in batch}
        parts: dict[str, Part] = {}
        for claimed in batch:
            held = self.spool.get(claimed.object_id)
            if held is None or held.state not in ("held", "superseded"):
                gone = Outcome("unreadable", detail="the object is no longer held")
                self._settle(claimed, self._classify(gone), gone)
                del by_id[claimed.object_id]
                continue
            parts[held.id] = Part(sender.item_of(held, claimed.priority), held)
        requests = sender.plan([part.item for part in parts.values()])
        for index, request in enumerate(requests):
            later = [by_id[item.object_id] for rest in requests[index:] for item in rest]
            if self._stop.is_set():
                self._watch(self.queue.release(name, later, time.time()), later)
                return
            if index and self.queue.has_more_urgent(name, request[0].priority):
                # A more urgent object waits: give these back (uncounted) and claim again.
                self._watch(self.queue.release(name, later, time.time()), later)
                return
            size = sum(item.size for item in request)
            self._heartbeat().working(sender.allowance(size) * 2)
            outcomes = sender.send([parts[item.object_id] for item in request])
            unsent = later[len(request) :]
            if self._request_failed(request, outcomes, by_id, unsent):
                return
            if self._consecutive_failures:
                log.info("%s accepts requests again: delivering", name)
            self._consecutive_failures = 0
            for item in request:
                outcome = outcomes[item.object_id]
                self._settle(by_id[item.object_id], self._classify(outcome), outcome)

    def _request_failed(
        self,
        request: list[Item],
        outcomes: dict[str, Outcome],
        by_id: dict[str, Claimed],
        unsent: list[Claimed],
    ) -> bool:
        """When the server is down, refuses us, or asks us to wait (429, 5xx), the whole
        destination waits and the objects not yet sent go back uncounted. Returns whether
        it does."""
        first = outcomes[request[0].object_id]
        verdict = self._classify(first)
        claimed = [by_id[item.object_id] for item in request]
        if first.kind == "held":
            # The rate gate holds sending back (a used-up budget, a paused window): the
            # objects wait, uncounted, until the gate opens. The worker itself does not: a
            # STAT object arriving meanwhile is exempt from budgets and goes at once.
            until = time.time() + (first.retry_after or 60.0)
            back = claimed + unsent
            self._watch(self.queue.release(self.destination.name, back, until), back)
            self._set("waiting", verdict.reason, next_retry_at=until)
            return True
        if first.kind in DESTINATION_DOWN:
            self._destination_down(verdict, claimed[0], claimed[1:] + unsent)
            return True
        busy = first.kind == "http" and verdict.verdict == "transient"
        if not busy or any(outcomes[item.object_id] != first for item in request):
            return False
        self._consecutive_failures += 1
        delay = self.policy.delay(self._consecutive_failures)
        if first.retry_after is not None:  # the server said when (Retry-After)
            delay = max(delay, first.retry_after)
        retry_at = time.time() + delay
        with self._lock:
            self._down_until = retry_at
        for item in claimed:
            recorded = self.queue.record(self.destination.name, item, verdict, retry_at=retry_at)
            self._watch(recorded, [item])
        if unsent:
            self._watch(self.queue.release(self.destination.name, unsent, retry_at), unsent)
        self._set("waiting", verdict.reason, next_retry_at=retry_at)
        log.warning("%s: %s next try in %.0f s", self.destination.name, verdict.reason, delay)
        return True
