"""The hub's composition root: spool, recovery, routing, delivery onward, and the server.

The hub is a Waystation router whose receiving edge is HTTPS uploads instead of C-STORE:
the same spool (encrypted at rest), the same routes and destinations, the same delivery
queue and workers forward each committed object to the provider's PACS.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime

from router.alarms import Alarms
from router.config.model import Config, HubServerConfig
from router.config.rules import build_rules
from router.core.objects import ObjectAttributes, PlannedDelivery, Source
from router.core.retry import BackoffPolicy
from router.core.routing import plan, wanted_keywords
from router.delivery.dimse import Timeouts
from router.delivery.queue import DeliveryQueue
from router.delivery.worker import DestinationWorker
from router.hub.server import HubServer
from router.hub.store import HubStore
from router.hub.tokens import UnitRegistry
from router.spool.recovery import recover
from router.spool.retention import expire
from router.spool.spool import Spool

log = logging.getLogger("waystation.hub")

_HOUSEKEEPING_INTERVAL = 600.0
_RETENTION_BATCH = 500  # router/spool/retention.py expire()'s default limit


class Hub:
    """One hub: recovery first, then the workers, then the listening server."""

    def __init__(self, config: Config) -> None:
        if config.hub is None:
            raise ValueError("the configuration has no [hub] table")
        self.config = config
        self.hub_config: HubServerConfig = config.hub
        self.alarms = Alarms()
        self.spool = Spool(config.spool)
        # Why before serving: journal and blobs must agree before anything is committed.
        report = recover(self.spool)
        for object_id, reason in report.quarantined:
            self.alarms.raise_("objects-quarantined", f"object {object_id}: {reason}")
        self._rules = build_rules(config.routes)
        delivery = config.delivery
        policy = BackoffPolicy(first=delivery.retry_first, cap=delivery.retry_max)
        timeouts = Timeouts(
            connect=delivery.connect_timeout, response_base=delivery.response_timeout
        )
        self.queue = DeliveryQueue(
            self.spool, study_quiet_seconds=config.routing.study_quiet_period
        )
        self.workers = {
            d.name: DestinationWorker(
                d,
                unit_ae=config.unit.ae_title,
                spool=self.spool,
                queue=self.queue,
                policy=policy,
                timeouts=timeouts,
                threads=d.associations,
            )
            for d in config.destinations
        }
        self.store = HubStore(
            self.spool,
            planner=self._plan,
            on_stored=self._wake,
            wanted_keywords=wanted_keywords(self._rules),
            max_object=self.hub_config.max_object,
        )
        self.store.recover()
        self.units = UnitRegistry(self.spool.journal, self.spool.reader_connection)
        self.server = HubServer(self.hub_config, self.store, self.units)
        self._stopping = threading.Event()
        self._housekeeping = threading.Thread(target=self._tidy, name="hub-tidy", daemon=True)

    @property
    def port(self) -> int:
        """The port the hub listens on."""
        return self.server.port

    def _plan(self, attributes: ObjectAttributes, source: Source) -> list[PlannedDelivery]:
        first = self.config.routing.mode == "first"
        return plan(self._rules, attributes, source, first_match=first, now=datetime.now())

    def _wake(self, deliveries: Sequence[PlannedDelivery]) -> None:
        for delivery in deliveries:
            worker = self.workers.get(delivery.destination)
            if worker is not None:
                worker.wake()

    def start(self) -> None:
        """Start the workers, then serve."""
        for worker in self.workers.values():
            worker.start()
        self.server.start()
        self._housekeeping.start()

    def stop(self) -> None:
        """Stop serving, stop the workers, close the spool."""
        self._stopping.set()
        self.server.stop()
        for worker in self.workers.values():
            worker.stop()
        self.spool.close()

    def _tidy(self) -> None:
        while not self._stopping.wait(_HOUSEKEEPING_INTERVAL):
            try:
                removed = self.store.expire(time.time() - self.hub_config.upload_expiry)
                if removed:
                    log.info("%d unfinished uploads expired", removed)
                # Objects delivered to every destination go after spool.retention, as on a
                # unit; their (SOP Instance UID, SHA-256) keys stay, so a repeat is still
                # "already committed".
                while expire(self.spool, self.config.spool.retention) == _RETENTION_BATCH:
                    if self._stopping.is_set():
                        break
            except Exception:  # housekeeping must never stop the hub
                log.exception("hub housekeeping failed; will try again")
