"""`waystation hub`: run the hub, enrol and revoke units, list them."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from router.config.load import load_config

if TYPE_CHECKING:
    from router.spool.spool import Spool

EXIT_OK = 0
EXIT_ERROR = 1


def cmd_hub(args: argparse.Namespace) -> int:
    """Dispatch `waystation hub [run|enroll|revoke|units]`."""
    action = args.hub_command or "run"
    config = load_config(args.config)
    if action == "run":
        return _run(args.config)
    from router.hub.tokens import UnitRegistry
    from router.spool.spool import Spool

    spool = Spool(config.spool)
    try:
        registry = UnitRegistry(spool.journal, spool.reader_connection)
        if action == "enroll":
            token = registry.enroll(args.unit)
            print(
                f"unit {args.unit} enrolled. Its token, shown only this once - put it in the "
                "unit's token_file:",
                file=sys.stderr,
            )
            print(token)
            return EXIT_OK
        if action == "revoke":
            if not registry.revoke(args.unit):
                print(f"no enrolled, unrevoked unit {args.unit!r}", file=sys.stderr)
                return EXIT_ERROR
            print(f"unit {args.unit} revoked: its token is refused from now on")
            return EXIT_OK
        if action == "status":
            _print_status(spool)
            return EXIT_OK
        for unit in registry.units():
            state = "revoked " + _when(unit.revoked_at) if unit.revoked_at else "active"
            print(f"{unit.unit:<16}  enrolled {_when(unit.enrolled_at)}  {state}")
        return EXIT_OK
    finally:
        spool.close()


def _print_status(spool: Spool) -> None:
    """Per unit: uploads in progress, objects held, delivered onward, studies incomplete."""
    conn = spool.reader_connection()
    units = [str(u) for (u,) in conn.execute("SELECT unit FROM hub_units ORDER BY unit")]
    print(f"{'unit':<16}  {'uploading':>9}  {'received':>9}  {'delivered':>9}  studies")
    for unit in units:
        uploading, got, size = conn.execute(
            "SELECT count(*), coalesce(sum(received), 0), coalesce(sum(size), 0)"
            " FROM hub_incoming WHERE unit = ? AND state = 'uploading'",
            (unit,),
        ).fetchone()
        received = conn.execute(
            "SELECT count(*) FROM hub_commits WHERE unit = ?", (unit,)
        ).fetchone()[0]
        delivered = conn.execute(
            "SELECT count(*) FROM hub_commits c WHERE c.unit = ? AND NOT EXISTS (SELECT 1"
            " FROM deliveries d WHERE d.object_id = c.object_id AND d.state != 'delivered')"
            " AND EXISTS (SELECT 1 FROM deliveries d WHERE d.object_id = c.object_id)",
            (unit,),
        ).fetchone()[0]
        studies = conn.execute(
            "SELECT count(*), sum((SELECT count(*) FROM hub_commits c WHERE c.unit = m.unit"
            " AND c.study_tag = m.study_tag) < m.expected) FROM hub_manifests m"
            " WHERE m.unit = ?",
            (unit,),
        ).fetchone()
        partial = f"{studies[0]} announced, {int(studies[1] or 0)} incomplete"
        progress = f"{uploading} ({got * 100 // size if size else 0}%)"
        print(f"{unit:<16}  {progress:>9}  {received:>9}  {delivered:>9}  {partial}")


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at or 0))


def _run(path: Path) -> int:
    import logging

    from router.hub.service import Hub

    config = load_config(path)
    logging.basicConfig(
        level=config.logging.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    hub = Hub(config)
    hub.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    assert config.hub is not None
    scheme = "http" if config.hub.insecure_plain_http else "https"
    print(
        f"waystation hub ready: {scheme}://{config.hub.host}:{hub.port}/, "
        f"spool {config.spool.path}",
        flush=True,
    )
    stop.wait()
    hub.stop()
    return EXIT_OK


def add_hub_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `hub` and its actions to the `waystation` parser."""
    hub = sub.add_parser("hub", help="the teleradiology hub: run it, enrol and revoke units")
    hub.add_argument("--config", type=Path, required=True, help="the hub's configuration file")
    actions = hub.add_subparsers(dest="hub_command")
    actions.add_parser("run", help="run the hub (the default)")
    enroll = actions.add_parser("enroll", help="enrol a unit; prints its token once")
    enroll.add_argument("unit", help="the unit's id (1-16 letters, digits, _ . -)")
    revoke = actions.add_parser("revoke", help="revoke a unit's token")
    revoke.add_argument("unit")
    actions.add_parser("units", help="list enrolled units")
    actions.add_parser(
        "status", help="per unit: uploads in progress, objects received and delivered onward"
    )
    hub.set_defaults(func=cmd_hub)
