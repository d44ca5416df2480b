"""Control API benchmark: status and studies listing with 100,000 objects held.

The journal is seeded through the spool's own record path (router.spool.spool._record, the
ingest transaction, triggers included) in large batches, without encrypting blobs: the API
never reads them. Then the real control server answers on a Unix socket and the real client
asks; each figure is p50/p99 over many calls, and the same queries in-process (no HTTP) show
what the socket adds. Target (issue 4): under 50 ms at p99.

    python -m bench.control --out docs/benchmarks.md [--objects 100000] [--calls 300]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import measure
from router.alarms import Alarms
from router.config.model import Config
from router.control.auth import PinStore
from router.control.client import ControlClient
from router.control.context import ControlContext, ReaderPool
from router.control.server import ControlServer
from router.control.study_views import studies
from router.control.views import status
from router.core.objects import ObjectAttributes, PlannedDelivery, Source
from router.delivery.queue import DeliveryQueue
from router.spool.spool import Spool, _record

SECTION = "control"
TARGET_MS = 50.0
OBJECTS_PER_STUDY = 10
_DESTINATIONS = ("pacs", "archive")


def _log(message: str) -> None:
    print(f"[bench.control {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class _Incoming:
    """What _record reads of an IncomingObject."""

    object_id: str
    size: int
    chunk_size: int = 65536


@dataclass
class Results:
    """Timings in milliseconds, by figure."""

    command: str
    objects: int
    studies: int
    seed_seconds: float
    timings: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    environment: list[tuple[str, str]] = field(default_factory=list)


def seed(spool: Spool, objects: int, *, batch: int = 2000) -> None:
    """Hold ``objects`` objects in studies of 10, spread over 7 days; 90% delivered to both
    destinations, the rest pending, in flight or failed (a realistic week with a backlog)."""
    rng = random.Random(7)
    source = Source("CT01", "WAYSTATION", "127.0.0.1")
    plan = [PlannedDelivery(d, "everything") for d in _DESTINATIONS]
    for start in range(0, objects, batch):
        rows = []
        for index in range(start, min(objects, start + batch)):
            study = f"1.2.826.0.1.3680043.9.{index // OBJECTS_PER_STUDY}"
            attributes = ObjectAttributes(
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                sop_instance_uid=f"{study}.{index}",
                study_instance_uid=study,
                series_instance_uid=f"{study}.1",
                transfer_syntax="1.2.840.10008.1.2.1",
                modality=rng.choice(("CT", "CT", "MR", "CR", "US")),
                phi={
                    "patient_name": f"DOE^JANE{index // OBJECTS_PER_STUDY}",
                    "patient_id": f"PID{index // OBJECTS_PER_STUDY:07d}",
                },
            )
            rows.append((_Incoming(uuid.uuid4().hex, rng.randint(4_000, 600_000)), attributes))

        def transaction(conn: Any, rows: list[tuple[_Incoming, ObjectAttributes]] = rows) -> None:
            for incoming, attributes in rows:
                meta = spool.keyring.seal_record(
                    incoming.object_id, json.dumps(attributes.phi).encode()
                )
                _record(
                    conn,
                    incoming=incoming,  # type: ignore[arg-type]
                    attributes=attributes,
                    source=source,
                    deliveries=plan,
                    sop_tag=spool.keyring.lookup_tag("sop", attributes.sop_instance_uid),
                    digest=os.urandom(32),
                    root=spool.root,
                    study_tag=spool.study_tag(attributes.study_instance_uid),
                    key_id="bench",
                    wrapped=b"\0" * 60,
                    meta=meta,
                    blob=f"blobs/bench/{incoming.object_id}.blob",
                    inline=None,
                )

        spool.journal.run(transaction)
    now = time.time()

    def spread(conn: Any) -> None:
        # A week of receiving, oldest first; then the outcomes, through the triggers.
        conn.execute(
            "UPDATE objects SET received_at = ? + rowid * ?", (now - 7 * 86400, 7 * 86400 / objects)
        )
        conn.execute(
            "UPDATE studies SET first_received_at = (SELECT min(received_at) FROM objects o"
            " WHERE o.study_tag = studies.study_tag), last_received_at = (SELECT"
            " max(received_at) FROM objects o WHERE o.study_tag = studies.study_tag)"
        )
        conn.execute(
            "UPDATE deliveries SET state = 'delivered', updated_at = ?"
            " WHERE object_id IN (SELECT id FROM objects WHERE rowid <= ?)",
            (now, int(objects * 0.9)),
        )
        conn.execute(
            "UPDATE deliveries SET state = 'failed', last_error = 'refused'"
            " WHERE state = 'pending' AND abs(random()) % 50 = 0"
        )
        conn.execute(
            "UPDATE deliveries SET state = 'inflight'"
            " WHERE state = 'pending' AND destination = 'pacs' AND abs(random()) % 100 = 0"
        )

    spool.journal.run(spread)


def _percentiles(values: Sequence[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered), p99, ordered[-1]


def _time(call: Callable[[], object], calls: int) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds per call. CPU time is the whole process's (the server's
    threads and the client's): on a shared machine the wall time's tail is mostly waiting for
    a core, which the CPU time shows apart."""
    call()  # warm the page cache and the statement cache
    wall, cpu = [], []
    for _ in range(calls):
        started, started_cpu = time.perf_counter(), time.process_time()
        call()
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
    return wall, cpu


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.control",
        description="Control API latency (status, studies) with 100,000 objects held.",
    )
    parser.add_argument("--out", type=Path, help="Markdown file whose Control section is replaced")
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=300, help="calls per figure")
    return parser


def _config(root: Path) -> Config:
    destinations = [
        {"name": d, "type": "dimse", "ae_title": d.upper(), "host": "127.0.0.1", "port": 104}
        for d in _DESTINATIONS
    ]
    return Config.model_validate(
        {"spool": {"path": str(root / "spool"), "min_free": 0}, "destinations": destinations}
    )


def run(args: argparse.Namespace, argv: Sequence[str]) -> Results:
    """Seed, serve, measure."""
    load_start = measure.load_average()
    with tempfile.TemporaryDirectory(prefix="bench-control-") as directory:
        root = Path(directory)
        config = _config(root)
        spool = Spool(config.spool)
        started = time.monotonic()
        _log(f"seeding {args.objects} objects")
        seed(spool, args.objects)
        seeded = time.monotonic() - started
        _log(f"seeded in {seeded:.0f} s")
        ctx = ControlContext(
            config=config,
            spool=spool,
            queue=DeliveryQueue(spool),
            workers={},
            alarms=Alarms(),
            pins=PinStore(root / "operator.pin"),
            readers=ReaderPool(spool),
        )
        server = ControlServer(root / "control.sock", ctx)
        server.start()
        gc.freeze()  # as router/daemon.py does once started
        client = ControlClient(root / "control.sock")
        count = spool.reader_connection().execute("SELECT count(*) FROM studies").fetchone()[0]
        results = Results(
            command="python -m bench.control " + " ".join(argv),
            objects=args.objects,
            studies=int(count),
            seed_seconds=seeded,
        )

        def in_process(query: Callable[[Any], object]) -> Callable[[], object]:
            def call() -> object:
                with ctx.readers.snapshot() as conn:
                    return query(conn)

            return call

        def listing(conn: Any, state: str | None = None) -> object:
            return studies(
                ctx,
                conn,
                state=state,
                query=None,
                since=None,
                limit=200,
                offset=0,
                sort="-last_received",
                unmask=False,
            )

        figures: dict[str, Callable[[], object]] = {
            "status (socket)": client.status,
            "studies, newest 200 (socket)": client.studies,
            "studies, waiting, 200 (socket)": lambda: client.studies(state="waiting"),
            "studies, page 20 of 200 (socket)": lambda: client.studies(offset=4000),
            "destinations (socket)": client.destinations,
            "status (in process)": in_process(lambda conn: status(ctx, conn)),
            "studies, newest 200 (in process)": in_process(listing),
        }
        try:
            for name, call in figures.items():
                _log(f"measuring {name}")
                results.timings[name], results.cpu[name] = _time(call, args.calls)
        finally:
            server.stop()
            ctx.readers.close()
            spool.close()
        results.environment = [
            ("CPU", f"{measure.cpu_model()} ({os.cpu_count()} cores, shared)"),
            ("memory", f"{measure.mem_total_gib():.1f} GiB"),
            ("file system", measure.filesystem_of(Path(directory))),
            ("load average at start / end", f"{load_start} / {measure.load_average()}"),
            ("source", measure.source_revision(Path(__file__).resolve().parents[1])),
            ("measured", measure.utc_now()),
        ]
    return results


def render(results: Results) -> str:
    """The Markdown section."""
    lines = [
        f"<!-- bench:{SECTION}:start -->",
        "## Control API",
        "",
        f"Status and studies listing with {results.objects:,} objects held in "
        f"{results.studies:,} studies (10 objects each, 2 destinations, 90% delivered, the "
        "rest pending, in flight or failed), measured through the real control server on its "
        "Unix socket with the real client (one connection per call, as the console and CLI "
        f"make them) and in process. Target: under {TARGET_MS:.0f} ms at p99. "
        f"Seeding took {results.seed_seconds:.0f} s.",
        "",
        "| call | p50 ms | p99 ms | max ms | CPU p50 ms | CPU p99 ms | calls | p99 target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, values in results.timings.items():
        p50, p99, worst = _percentiles(values)
        cpu50, cpu99, _ = _percentiles(results.cpu[name])
        verdict = "met" if p99 < TARGET_MS else "**missed**"
        lines.append(
            f"| {name} | {p50:.1f} | {p99:.1f} | {worst:.1f} | {cpu50:.1f} | {cpu99:.1f} "
            f"| {len(values)} | {verdict} |"
        )
    lines += [
        "",
        "Wall time is what a caller waits; CPU time is what the call costs the unit (server "
        "and client threads together). On this shared 2-core machine other work was running "
        "(see the load average): the gap between the two, and most of the p99 tail, is time "
        "spent waiting for a core.",
        "",
        f"Command: `{results.command}`",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in results.environment]
    lines += ["", f"<!-- bench:{SECTION}:end -->", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run, then write the section (or print it)."""
    return measure.bench_main(
        name="bench.control",
        title="Control API",
        section=SECTION,
        argv=argv,
        build_parser=build_parser,
        run=run,
        render=render,
        raw=lambda results: {
            "command": results.command,
            "timings_ms": results.timings,
            "cpu_ms": results.cpu,
        },
        log=_log,
        stopped="the control server was stopped",
    )


if __name__ == "__main__":
    sys.exit(main())
