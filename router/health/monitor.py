"""The router's own watch: feeds systemd's watchdog only while every watched thread is alive,
looks at clock, link, storage and power, raises and clears alarms, writes metrics, and
starts the clean stop when the UPS battery runs low."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hardware.ups import PowerState, Ups, decide
from router.alarms import Alarms
from router.config.model import ApplianceConfig
from router.health import checks, probes, smart
from router.health.checks import Check, ClockSample
from router.health.liveness import Watched, wedged
from router.health.metrics import render, write_textfile
from router.health.notify import Notifier

log = logging.getLogger("waystation.health")

_STORAGE_EVERY = 3600.0  # wear changes over months: once an hour is plenty
_CLOCK_ALARMS = ("clock-implausible", "clock-jumped")


@dataclass
class MonitorInputs:
    """What the monitor reads from the router (callables: always the current value)."""

    watched: Callable[[], list[Watched]]
    summary: Callable[[], str]
    gauges: Callable[[], dict[str, float]] = dict
    latest_received: Callable[[], float | None] = lambda: None
    on_low_battery: Callable[[], None] = lambda: None
    on_tick: Callable[[], None] = lambda: None
    spool_path: Path = Path(".")
    rtc_present: Callable[[], bool] = probes.rtc_present
    ntp_synchronized: Callable[[], bool | None] = probes.ntp_synchronized
    clock: Callable[[], ClockSample] = probes.clock_sample
    undervoltage: Callable[[], bool | None] = probes.undervoltage
    extra: dict[str, object] = field(default_factory=dict)


class Monitor:
    """One thread; ``checks`` holds the latest health items for the control API."""

    def __init__(
        self,
        config: ApplianceConfig,
        alarms: Alarms,
        inputs: MonitorInputs,
        *,
        notifier: Notifier | None = None,
        ups: Ups | None = None,
    ) -> None:
        self.config = config
        self.alarms = alarms
        self.inputs = inputs
        self.notifier = notifier or Notifier()
        self.ups = ups
        self.checks: list[Check] = []
        self.metrics_text = ""
        self.power: PowerState | None = None
        self.fed = 0  # watchdog pings sent (tests and metrics read it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-monitor", daemon=True)
        self._previous_clock: ClockSample | None = None
        self._storage: Check | None = None
        self._storage_at = 0.0
        self._shutdown_started = False
        interval = config.health_interval
        if self.notifier.watchdog_seconds is not None:
            # sd_watchdog_enabled(3): ping at least twice per period; three times for slack.
            interval = min(interval, self.notifier.watchdog_seconds / 3)
        self.interval = interval

    def start(self) -> None:
        """Look once at once (the first answer must not wait), then keep looking."""
        self.tick()
        self._thread.start()

    def stop(self) -> None:
        """Stop looking (the watchdog is no longer fed)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # the watch must not die; a dead watch stops the pings anyway
                log.exception("health check failed; looking again")

    def tick(self) -> None:
        """One look: liveness first (it decides the watchdog ping), then the rest."""
        problems = wedged(self.inputs.watched(), self.config.stall_limit)
        if problems:
            self.alarms.raise_(
                "router-wedged",
                "Part of the router stopped working (" + "; ".join(problems) + "). "
                "systemd restarts it; if this repeats, see docs/operations.md.",
            )
        elif self.notifier.watchdog_seconds is not None and not self._stop.is_set():
            self.notifier.watchdog()
            self.fed += 1
        found = [checks.liveness(problems), self._clock(), self._link(), self._storage_check()]
        power = self._power()
        if power is not None:
            found.append(power)
        self.checks = found
        self.inputs.on_tick()
        self.notifier.status(self.inputs.summary())
        gauges = {**self.inputs.gauges(), "watchdog_pings": float(self.fed)}
        self.metrics_text = render(found, gauges, [a.code for a in self.alarms.active()])
        if self.config.metrics_file is not None:
            try:
                write_textfile(self.config.metrics_file, self.metrics_text)
            except OSError as exc:
                log.warning("cannot write metrics to %s: %s", self.config.metrics_file, exc)

    def _clock(self) -> Check:
        now = self.inputs.clock()
        verdict = checks.clock(
            checks.ClockFacts(
                now=now,
                previous=self._previous_clock,
                synchronized=self.inputs.ntp_synchronized(),
                rtc_present=self.inputs.rtc_present(),
                latest_known=self.inputs.latest_received(),
            )
        )
        self._previous_clock = now
        for code in _CLOCK_ALARMS:
            if code in verdict.alarms:
                self.alarms.raise_(code, verdict.alarms[code])
            elif code == "clock-implausible":
                # A jump is an event: it stays until someone has seen it (cleared at restart
                # or by the operator). An implausible time clears when the time is right.
                self.alarms.clear(code)
        return verdict.check

    def _link(self) -> Check:
        return checks.link(probes.default_route(), probes.source_address())

    def _storage_check(self) -> Check:
        now = time.monotonic()
        if self._storage is None or now - self._storage_at > _STORAGE_EVERY:
            disk = probes.block_device_of(self.inputs.spool_path)
            if disk is None:
                self._storage = checks.storage_wear(None, None, "spool device")
            else:
                used, pre_eol = probes.emmc_wear(disk)
                if used is None and pre_eol is None:
                    # Not an eMMC: a SATA or NVMe drive says it through SMART, when
                    # smartmontools is installed: the root helper's snapshot, or smartctl
                    # itself where this process may open the device.
                    document = smart.snapshot(disk.name) or smart.read(f"/dev/{disk.name}")
                    facts = smart.parse(document) if document is not None else None
                    self._storage = smart.judge(facts, disk.name)
                else:
                    self._storage = checks.storage_wear(used, pre_eol, disk.name)
            self._storage_at = now
        return self._storage

    def _power(self) -> Check | None:
        if self.ups is None:
            # Without a UPS, a Pi still says when its supply sags (flaky power, bad cable).
            low = self.inputs.undervoltage()
            if low is None:
                return None
            if low:
                return Check("power", "warn", "under-voltage: use the board's own power supply")
            return Check("power", "ok", "mains, voltage ok")
        state = self.ups.read()
        self.power = state
        action = decide(state, self.config.ups_low_battery)
        charge = f" ({state.charge_percent:.0f}%)" if state.charge_percent is not None else ""
        if action == "unknown":
            return Check("power", "unknown", state.detail or "UPS not answering")
        if action == "normal":
            self.alarms.clear("on-battery")
            return Check("power", "ok", f"mains{charge}")
        self.alarms.raise_(
            "on-battery",
            f"Mains power is off; running on the UPS battery{charge}. Everything still works; "
            f"below {self.config.ups_low_battery:.0f}% the unit stops cleanly.",
        )
        if action == "shutdown" and not self._shutdown_started:
            self._shutdown_started = True
            # Refuse first: by the time anyone reads the alarm, nothing new is accepted.
            self.inputs.on_low_battery()
            self.alarms.raise_(
                "battery-low",
                f"UPS battery low{charge}: new associations refused, finishing and stopping.",
            )
            log.critical(
                "UPS battery low%s: refusing new associations, finishing, stopping",
                charge,
                extra={"message_id": "ups-shutdown"},
            )
            return Check("power", "fault", f"battery low{charge}: stopping")
        return Check("power", "warn", f"on battery{charge}")
