"""The composition root: builds the spool, recovery, routing and ingest from a Config."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Sequence

from hardware import leds
from hardware.leds import Look
from router.alarms import Alarms
from router.assembly import (
    RoutingPlanner,
    backoff_policy,
    delivery_workers,
    expire_delivered,
    open_recovered_spool,
    wake_workers,
)
from router.config.model import Config, DimseDestination
from router.control.auth import PinStore
from router.control.context import ControlContext, ReaderPool
from router.control.server import ControlServer, SocketInUse
from router.core.objects import PlannedDelivery
from router.delivery.commitment import CommitmentManager
from router.errors import ControlSocketError
from router.health.devices import build_leds, build_ups
from router.health.liveness import Watched
from router.health.metrics import MetricsServer
from router.health.monitor import Monitor, MonitorInputs
from router.health.notify import Notifier
from router.ingest.scp import IngestServer

log = logging.getLogger("waystation")

_HEALTH_INTERVAL = 5.0
_RETENTION_INTERVAL = 600.0


class Router:
    """One Waystation router: spool first, then recovery, then the receiver."""

    def __init__(self, config: Config, *, notifier: Notifier | None = None) -> None:
        self.config = config
        self.alarms = Alarms()
        self.notifier = notifier or Notifier()
        # Set when the router must stop: a signal, or the UPS battery running low.
        self.stop_requested = threading.Event()
        self.stop_reason = ""
        # Why before ingest: nothing may be received until the journal and blobs agree.
        self.spool, self.recovery = open_recovered_spool(config, self.alarms)
        self._planner = RoutingPlanner(config)
        delivery = config.delivery
        policy = backoff_policy(config)
        # Only when a destination asks for it: then the ingest SCP also takes the reports.
        self.commitment: CommitmentManager | None = None
        if any(d.storage_commitment for d in config.destinations):
            self.commitment = CommitmentManager(
                [d for d in config.destinations if isinstance(d, DimseDestination)],
                unit_ae=config.unit.ae_title,
                spool=self.spool,
                policy=policy,
                connect_timeout=delivery.connect_timeout,
                response_timeout=delivery.response_timeout,
            )
        self.ingest = IngestServer(
            config.ingest,
            ae_title=config.unit.ae_title,
            spool=self.spool,
            planner=self._planner,
            alarm=self.alarms.raise_,
            wanted_keywords=self._planner.wanted_keywords,
            on_stored=self._wake_workers,
            commitment_reports=self.commitment.handle_report if self.commitment else None,
            report_callers=self.commitment.report_callers if self.commitment else (),
        )
        self._stopping = threading.Event()
        self._health = threading.Thread(target=self._watch_health, name="health", daemon=True)
        self.queue, self.workers = delivery_workers(config, self.spool)

        self.started_at = time.time()
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self.leds = build_leds(config)
        self.monitor = Monitor(
            config.appliance,
            self.alarms,
            MonitorInputs(
                watched=self.watched,
                summary=self.summary,
                gauges=self._gauges,
                latest_received=lambda: self.ingest.last_received_at,
                on_low_battery=self._low_battery,
                on_tick=self._show_on_leds,
                spool_path=config.spool.path,
            ),
            notifier=self.notifier,
            ups=build_ups(config),
        )

    def watched(self) -> list[Watched]:
        """The threads the service watchdog depends on: ingest's accept loop (while it is
        meant to accept), every delivery thread, every Storage Commitment thread and the journal
        committer."""
        found: list[Watched] = []
        accept = self.ingest.accept_thread
        if accept is not None and self.ingest.accepting:
            found.append(Watched("ingest", accept, self.ingest.heartbeat))
        for worker in self.workers.values():
            for thread in worker.threads:
                found.append(
                    Watched(f"delivery {thread.name}", thread, worker.heartbeats[thread.name])
                )
        if self.commitment is not None:
            for thread in self.commitment.threads:
                heartbeat = self.commitment.heartbeats[thread.name]
                found.append(Watched(f"storage commitment {thread.name}", thread, heartbeat))
        journal = self.spool.journal
        found.append(Watched("journal committer", journal.committer, journal.heartbeat))
        return found

    def summary(self) -> str:
        """One line for ``systemctl status``: counts only, never patient data."""
        states = [w.status.state for w in self.workers.values()]
        down = sum(s in ("down", "blocked") for s in states)
        alarms = len(self.alarms.active())
        return (
            f"listening on {self.config.ingest.listen}; {self.ingest.stored} received since "
            f"start; {len(states)} destinations, {down} down; {alarms} alarms"
        )

    def _gauges(self) -> dict[str, float]:
        return {
            "received_since_start": float(self.ingest.stored),
            "spool_free_bytes": float(self.spool.free_bytes()),
            "associations_active": float(self.ingest.active_associations()),
            "uptime_seconds": time.time() - self.started_at,
        }

    def look(self) -> Look:
        """What the status LEDs show: fault, attention, sending or all delivered."""
        codes = {a.code for a in self.alarms.active()}
        states = [w.status.state for w in self.workers.values()]
        attention = sum(s in ("down", "blocked") for s in states) + ("on-battery" in codes)
        busy = sum(s in ("sending", "waiting") for s in states)
        return leds.look(
            faults=len(codes - {"on-battery"}),
            attention=attention,
            waiting=busy + self.ingest.active_associations(),
        )

    def _show_on_leds(self) -> None:
        if self.leds is not None:
            self.leds.look = self.look()

    def _low_battery(self) -> None:
        # Transient refusal first, so nothing new starts; stop() then lets the objects in
        # flight finish and flushes the journal before the process exits.
        self.ingest.refuse_new_associations()
        self.request_stop("ups")

    def request_stop(self, reason: str) -> None:
        """Ask the main thread to stop the router cleanly."""
        if not self.stop_requested.is_set():
            self.stop_reason = reason
            self.stop_requested.set()

    def _wake_workers(self, deliveries: Sequence[PlannedDelivery]) -> None:
        wake_workers(self.workers, deliveries)

    def start(self) -> None:
        """Start receiving and delivering, and serve the control API."""
        # The control socket first: if another router already answers on it, this one must
        # not start receiving (two routers on one spool would send everything twice).
        context = ControlContext(
            config=self.config,
            spool=self.spool,
            queue=self.queue,
            workers=self.workers,
            alarms=self.alarms,
            pins=PinStore(self.config.pin_file),
            readers=ReaderPool(self.spool),
            started_at=self.started_at,
            health=lambda: self.monitor.checks,
        )
        socket_path = self.config.control_socket
        try:
            self.control = ControlServer(socket_path, context)
        except SocketInUse as exc:
            context.readers.close()
            raise ControlSocketError(f"cannot serve the control API: {exc}") from exc
        except OSError as exc:
            # Receiving and delivering matter more than the console: run without the API, and
            # say so loudly (e.g. a file system that cannot hold a socket).
            context.readers.close()
            log.error("cannot serve the control API on %s: %s", socket_path, exc)
            self.alarms.raise_(
                "control-api-down",
                f"The control API cannot start ({exc.strerror or exc}); the console and the "
                "status commands will not work. Check [control] socket.",
            )
        self.ingest.start()
        for worker in self.workers.values():
            worker.start()
        if self.commitment is not None:
            self.commitment.start()
        self._health.start()
        if self.control is not None:
            self.control.start()
        if self.leds is not None:
            self.leds.start()
        self.monitor.start()
        listen = self.config.appliance.metrics_listen
        if listen is not None:
            try:
                self.metrics = MetricsServer(listen, lambda: self.monitor.metrics_text)
                self.metrics.start()
            except OSError as exc:  # metrics are a convenience: never stop the router
                log.error("cannot serve metrics on %s: %s", listen, exc)
        # Why here: recovery finished in __init__ and ingest listens now; systemd starts the
        # units ordered after this one only when this is said.
        self.notifier.ready(self.summary())
        log.info("ready: %s", self.summary(), extra={"message_id": "ready"})
        # Why: pydicom's and pynetdicom's dictionaries are hundreds of thousands of objects that
        # live as long as the process; each full garbage collection walked them all (~30 ms of
        # CPU at random moments, in whichever thread allocated). Frozen, they are skipped.
        gc.freeze()

    def stop(self, grace: float = 30.0) -> None:
        """Refuse new associations, let ongoing ones finish for up to ``grace`` seconds, stop."""
        self._stopping.set()
        self.notifier.stopping(f"stopping ({self.stop_reason or 'asked to'})")
        log.info("stopping (%s)", self.stop_reason or "asked to", extra={"message_id": "stopping"})
        self.monitor.stop()
        if self.leds is not None:
            self.leds.stop()
        if self.metrics is not None:
            self.metrics.stop()
        if self.control is not None:
            self.control.stop()  # removes the socket: clients see "not running" at once
            self.control.ctx.readers.close()
        self.ingest.refuse_new_associations()
        deadline = time.monotonic() + grace
        while self.ingest.active_associations() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.ingest.stop()
        for worker in self.workers.values():
            worker.stop()
        if self.commitment is not None:
            self.commitment.stop()
        self.spool.close()

    def _watch_health(self) -> None:
        last_expiry = 0.0
        while not self._stopping.wait(_HEALTH_INTERVAL):
            if self.spool.free_bytes() >= self.config.spool.min_free:
                self.alarms.clear("spool-full")
            if time.monotonic() - last_expiry > _RETENTION_INTERVAL:
                last_expiry = time.monotonic()
                try:
                    expire_delivered(self.spool, self.config.spool.retention, self._stopping)
                except Exception:  # retention must never stop the router
                    log.exception("retention pass failed; will try again")
