"""What the router (daemon.py) and the hub (hub/service.py) build alike: the spool after
recovery, the routing planner, and the delivery queue with one worker per destination.

Both composition roots call these, so the two can never differ in how recovery is reported,
how objects are routed, or how delivery is wired.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import datetime

from router.alarms import Alarms
from router.config.model import Config, StowDestination
from router.config.rules import build_rules
from router.core.objects import ObjectAttributes, PlannedDelivery, Source
from router.core.retry import BackoffPolicy
from router.core.routing import plan, wanted_keywords
from router.delivery.dimse import Timeouts
from router.delivery.queue import DeliveryQueue
from router.delivery.stow_worker import StowWorker
from router.delivery.worker import DestinationWorker
from router.spool.recovery import RecoveryReport, recover
from router.spool.retention import expire
from router.spool.spool import Spool

_RETENTION_BATCH = 500  # router/spool/retention.py expire()'s default limit


def open_recovered_spool(config: Config, alarms: Alarms) -> tuple[Spool, RecoveryReport]:
    """Open the spool and run recovery, raising an alarm for everything it found.

    Why first: nothing may be received or committed until the journal and the blobs agree."""
    spool = Spool(config.spool)
    report = recover(spool)
    for object_id, reason in report.quarantined:
        alarms.raise_("objects-quarantined", f"object {object_id}: {reason}")
    if not report.journal_ok:
        alarms.raise_("journal-damaged", "The journal failed its integrity check.")
    if report.set_aside:
        alarms.raise_(
            "blobs-set-aside", f"{report.set_aside} stored objects are not in the journal."
        )
    return spool, report


class RoutingPlanner:
    """The configured routes as a planner for ingest: attributes and source in, deliveries out."""

    def __init__(self, config: Config) -> None:
        self._rules = build_rules(config.routes)
        self._first = config.routing.mode == "first"
        self.wanted_keywords = wanted_keywords(self._rules)

    def __call__(self, attributes: ObjectAttributes, source: Source) -> list[PlannedDelivery]:
        # Time windows are in the unit's local time, as people at the site read the clock.
        return plan(self._rules, attributes, source, first_match=self._first, now=datetime.now())


def backoff_policy(config: Config) -> BackoffPolicy:
    """The retry policy the delivery settings describe."""
    return BackoffPolicy(first=config.delivery.retry_first, cap=config.delivery.retry_max)


def delivery_workers(
    config: Config, spool: Spool
) -> tuple[DeliveryQueue, dict[str, DestinationWorker]]:
    """The delivery queue and one (not yet started) worker per configured destination."""
    delivery = config.delivery
    timeouts = Timeouts(connect=delivery.connect_timeout, response_base=delivery.response_timeout)
    queue = DeliveryQueue(spool, study_quiet_seconds=config.routing.study_quiet_period)
    policy = backoff_policy(config)
    workers: dict[str, DestinationWorker] = {}
    for destination in config.destinations:
        threads = destination.associations
        unit_ae = config.unit.ae_title
        # STOW-RS sends batches in requests; the others object by object.
        workers[destination.name] = (
            StowWorker(
                destination,
                unit_ae=unit_ae,
                spool=spool,
                queue=queue,
                policy=policy,
                timeouts=timeouts,
                threads=threads,
            )
            if isinstance(destination, StowDestination)
            else DestinationWorker(
                destination,
                unit_ae=unit_ae,
                spool=spool,
                queue=queue,
                policy=policy,
                timeouts=timeouts,
                threads=threads,
            )
        )
    return queue, workers


def wake_workers(
    workers: Mapping[str, DestinationWorker], deliveries: Sequence[PlannedDelivery]
) -> None:
    """Newly committed deliveries: their destinations' workers look at the queue now."""
    for delivery in deliveries:
        worker = workers.get(delivery.destination)
        if worker is not None:
            worker.wake()


def expire_delivered(spool: Spool, retention: float, stopping: threading.Event) -> None:
    """Delete objects delivered everywhere longer than ``retention`` ago, in batches so one
    pass never holds the journal for long."""
    while expire(spool, retention) == _RETENTION_BATCH:
        if stopping.is_set():
            return
