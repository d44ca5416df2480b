"""The ``waystation`` command line. Exit codes: 0 ok, 1 error, 69 daemon unreachable,
78 bad configuration."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from datetime import datetime
from pathlib import Path

from router import __version__
from router.config import load_config, load_default_config
from router.config.model import Config
from router.errors import ConfigError, WaystationError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNREACHABLE = 69
EXIT_CONFIG = 78
EXIT_UPS_STOP = 75


def _config(path: Path | None) -> Config:
    return load_config(path) if path is not None else load_default_config(Path.cwd())


def _setup_logging(level: str) -> None:
    from router.health.journald import JournaldHandler, use_journald

    if use_journald():
        # Under systemd: native journal records with stable MESSAGE_IDs and priorities.
        handler: logging.Handler = JournaldHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.basicConfig(level=level.upper(), handlers=[handler])
        return
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_run(args: argparse.Namespace) -> int:
    from router.daemon import Router

    config = _config(args.config)
    _setup_logging(config.logging.level)
    router = Router(config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: router.request_stop("signal"))
    router.start()
    ingest = config.ingest
    print(
        f"waystation ready: unit {config.unit.name}, AE title {config.unit.ae_title}, "
        f"listening on {ingest.host}:{router.ingest.port}, spool {config.spool.path}",
        flush=True,
    )
    if args.config is None:
        print(
            "Send a first study with DCMTK:\n"
            f"  storescu -aec {config.unit.ae_title} {ingest.host} {router.ingest.port} FILE.dcm\n"
            "See where everything stands:  waystation status   (another terminal)\n"
            "Check what is held:  waystation spool verify   (Ctrl-C stops the router)",
            flush=True,
        )
    router.stop_requested.wait()
    router.stop()
    runtime = os.environ.get("RUNTIME_DIRECTORY", "")
    if router.stop_reason == "ups" and runtime:
        # waystation-ups-poweroff.path powers the unit off; the HAT restarts it on mains.
        (Path(runtime.split(":")[0]) / "poweroff").touch()
    # A UPS stop is not a failure, but systemd must not restart the router on a dying battery
    # (RestartPreventExitStatus=75 in waystation.service).
    return EXIT_UPS_STOP if router.stop_reason == "ups" else EXIT_OK


def cmd_config_check(args: argparse.Namespace) -> int:
    config = load_config(args.path)
    print(f"{args.path}: ok ({len(config.destinations)} destinations, {len(config.routes)} routes)")
    return EXIT_OK


def cmd_spool_verify(args: argparse.Namespace) -> int:
    from router.spool.spool import Spool
    from router.spool.verify import verify

    spool = Spool(_config(args.config).spool, create=False)
    try:
        report = verify(spool)
    finally:
        spool.close()
    print(
        f"journal: {'ok' if report.journal_ok else 'DAMAGED'}; "
        f"{report.checked} objects checked ({report.bytes_checked} bytes), "
        f"{len(report.damaged)} damaged"
    )
    for object_id, reason in report.damaged:
        print(f"DAMAGED {object_id}: {reason}")
    return EXIT_OK if report.ok else EXIT_ERROR


def cmd_spool_export(args: argparse.Namespace) -> int:
    from router.spool.export import export
    from router.spool.spool import Spool

    spool = Spool(_config(args.config).spool, create=False)
    try:
        report = export(spool, args.out, study_uid=args.study)
    finally:
        spool.close()
    print(f"exported {len(report.exported)} objects to {args.out}; {len(report.failed)} failed")
    for object_id, reason in report.failed:
        print(f"NOT EXPORTED {object_id}: {reason}")
    return EXIT_OK if not report.failed else EXIT_ERROR


def _local_time(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'{text!r} is not a local date and time such as "2026-11-27 14:00"'
        ) from None


def cmd_route_test(args: argparse.Namespace) -> int:
    """Dry-run the routing rules on files: which rules match, and where each file would go.

    Prints only file names, modality and SOP class: never patient names or IDs."""
    from router.ingest import pynetdicom_setup

    pynetdicom_setup.configure()  # silences pydicom warnings, which can quote values
    from router.config.dicom_names import sop_class_name
    from router.config.rules import build_rules
    from router.core.objects import Source
    from router.core.routing import explain, plan, wanted_keywords
    from router.ingest.attributes import UnreadableObject, read_attributes

    config = load_config(args.config)
    rules = build_rules(config.routes)
    first = config.routing.mode == "first"
    now: datetime = args.at or datetime.now()
    source = Source(args.calling_ae, args.called_ae or config.unit.ae_title, "dry-run")
    how = "only the first matching route applies" if first else "every matching route applies"
    print(
        f"{len(rules)} routes, mode {config.routing.mode} ({how}); at {now:%a %Y-%m-%d %H:%M}; "
        f"calling AE {source.calling_ae}, called AE {source.called_ae}"
    )
    unreadable: list[tuple[str, str]] = []
    for path in args.files:
        try:
            with open(path, "rb") as stream:
                attributes = read_attributes(
                    stream,
                    command_sop_class="",
                    command_sop_instance="",
                    wanted_keywords=wanted_keywords(rules),
                )
        except OSError as exc:
            unreadable.append((str(path), exc.strerror or type(exc).__name__))
            continue
        except UnreadableObject as exc:  # its message may quote values: print only the kind
            unreadable.append((str(path), f"not a readable DICOM file ({exc.kind})"))
            continue
        sop_class = sop_class_name(attributes.sop_class_uid)
        print(f"\n{path}: modality {attributes.modality or '(none)'}, {sop_class}")
        for decision in explain(rules, attributes, source, now=now, first_match=first):
            if decision.applied:
                print(f"  rule {decision.rule}: matched")
            elif decision.matched:
                print(f"  rule {decision.rule}: matched, not applied (an earlier rule matched)")
            else:
                print(f"  rule {decision.rule}: no: {'; '.join(decision.reasons)}")
        deliveries = plan(rules, attributes, source, first_match=first, now=now)
        for d in deliveries:
            print(f"  -> {d.destination}: {d.priority}, send per {d.send} (rule {d.rule})")
        if not deliveries:
            print("  UNROUTED: no rule matched")
    if unreadable:
        count = f"{len(unreadable)} file" + ("s" if len(unreadable) > 1 else "")
        print(f"\n{count} could not be read:")
        for path_text, reason in unreadable:
            print(f"  UNREADABLE {path_text}: {reason}")
        return EXIT_ERROR
    return EXIT_OK


def cmd_console(args: argparse.Namespace) -> int:
    """The technician's console. Imported lazily: the router itself never loads Textual."""
    from tui.main import run

    notice = args.setup_notice
    if args.socket is None:
        config = _config(args.config)
        socket = config.control_socket
        notice = notice or config.state_dir / "firstboot" / "notice.json"
    else:
        socket = args.socket
    return run(
        str(socket), relock_seconds=args.relock, setup_notice=notice, setup_inbox=args.setup_inbox
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="waystation", description="Waystation DICOM router")
    parser.add_argument("--version", action="version", version=f"waystation {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the router")
    run.add_argument(
        "--config", type=Path, help="configuration file (default: the embedded demo config)"
    )
    run.set_defaults(func=cmd_run)

    config = sub.add_parser("config", help="configuration tools").add_subparsers(
        dest="config_command", required=True
    )
    check = config.add_parser("check", help="validate a configuration file")
    check.add_argument("path", type=Path)
    check.set_defaults(func=cmd_config_check)

    spool = sub.add_parser("spool", help="spool tools").add_subparsers(
        dest="spool_command", required=True
    )
    verify = spool.add_parser("verify", help="check every held object")
    verify.add_argument("--config", type=Path)
    verify.set_defaults(func=cmd_spool_verify)
    export = spool.add_parser("export", help="decrypt held objects to DICOM files")
    export.add_argument("--config", type=Path)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--study", help="only this Study Instance UID")
    export.set_defaults(func=cmd_spool_export)

    route = sub.add_parser("route", help="routing tools").add_subparsers(
        dest="route_command", required=True
    )
    route_test = route.add_parser(
        "test", help="show which rules send each file where (dry-run: nothing is sent)"
    )
    route_test.add_argument("--config", type=Path, required=True)
    route_test.add_argument(
        "--calling-ae", default="MODALITY", help="the sender's AE title (default: MODALITY)"
    )
    route_test.add_argument("--called-ae", help="the AE title called (default: the unit's)")
    route_test.add_argument(
        "--at", type=_local_time, help='local time to route at, e.g. "2026-11-27 14:00"'
    )
    route_test.add_argument("files", nargs="+", type=Path, metavar="FILE")
    route_test.set_defaults(func=cmd_route_test)

    console = sub.add_parser("console", help="the technician's full-screen console")
    where = console.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, help="the daemon's control socket")
    where.add_argument("--config", type=Path, help="read the control socket from this config")
    console.add_argument(
        "--relock",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="lock again after this many seconds without a key press (default 120)",
    )
    console.add_argument(
        "--setup-notice",
        type=Path,
        metavar="FILE",
        help="first boot's notice.json: its problems are shown while the router is not up",
    )
    console.add_argument(
        "--setup-inbox",
        type=Path,
        metavar="DIR",
        help="where the commissioning screen leaves its answers for the first-boot step",
    )
    console.set_defaults(func=cmd_console)

    from router.control.commands import add_commands
    from router.hub.cli import add_hub_parser

    add_commands(sub)
    add_hub_parser(sub)
    from appliance.cli import add_commands as add_appliance_commands

    add_appliance_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``waystation`` console script."""
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print("configuration is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except WaystationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
