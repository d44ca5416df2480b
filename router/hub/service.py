"""The hub's composition root: spool, recovery, routing, delivery onward, and the server.

The hub is a Waystation router whose receiving edge is HTTPS uploads instead of C-STORE:
the same spool (encrypted at rest), the same routes and destinations, the same delivery
queue and workers forward each committed object to the provider's PACS.
"""

from __future__ import annotations

import logging
import threading
import time

from router.alarms import Alarms
from router.assembly import (
    RoutingPlanner,
    delivery_workers,
    expire_delivered,
    open_recovered_spool,
    wake_workers,
)
from router.config.model import Config, HubServerConfig
from router.hub.server import HubServer
from router.hub.store import HubStore
from router.hub.tokens import UnitRegistry

log = logging.getLogger("waystation.hub")

_HOUSEKEEPING_INTERVAL = 600.0


class Hub:
    """One hub: recovery first, then the workers, then the listening server."""

    def __init__(self, config: Config) -> None:
        if config.hub is None:
            raise ValueError("the configuration has no [hub] table")
        self.config = config
        self.hub_config: HubServerConfig = config.hub
        self.alarms = Alarms()
        self.spool, _ = open_recovered_spool(config, self.alarms)
        self._planner = RoutingPlanner(config)
        self.queue, self.workers = delivery_workers(config, self.spool)
        self.store = HubStore(
            self.spool,
            planner=self._planner,
            on_stored=lambda deliveries: wake_workers(self.workers, deliveries),
            wanted_keywords=self._planner.wanted_keywords,
            max_object=self.hub_config.max_object,
        )
        self.store.recover()
        self.units = UnitRegistry(self.spool.journal, self.spool.reader_connection)
        self.server = HubServer(self.hub_config, self.store, self.units, self.alarms)
        self._stopping = threading.Event()
        self._housekeeping = threading.Thread(target=self._tidy, name="hub-tidy", daemon=True)

    @property
    def port(self) -> int:
        """The port the hub listens on."""
        return self.server.port

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
                expire_delivered(self.spool, self.config.spool.retention, self._stopping)
            except Exception:  # housekeeping must never stop the hub
                log.exception("hub housekeeping failed; will try again")
