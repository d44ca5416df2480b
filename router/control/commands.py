"""The CLI's control commands: status, queue, studies, history and the operator actions.

Each talks to the running router through the control API (router/control/client.py); each
has ``--json`` for scripts. Exit codes: 0 ok, 1 error or refused, 69 router unreachable, 78
bad configuration. Nothing here prompts unless stdin is a terminal: the operator PIN comes from
``--pin-stdin`` (one line on stdin) or the WAYSTATION_PIN environment variable.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from router.control import render
from router.control.client import ControlClient, ControlError, ControlUnreachable
from router.control.schema import PRIORITIES, StudySummary

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_UNREACHABLE = 69
PIN_ENV = "WAYSTATION_PIN"


class CommandError(Exception):
    """A command cannot go on; the message says what to do (exit code 1)."""


def socket_path(args: argparse.Namespace) -> Path:
    """``--socket``, else the socket the configuration names (``--config`` or the default)."""
    if args.socket is not None:
        return Path(args.socket)
    from router.config import load_config, load_default_config

    config = load_config(args.config) if args.config else load_default_config(Path.cwd())
    return config.control_socket


def read_pin(args: argparse.Namespace, what: str) -> str:
    """The operator PIN: --pin-stdin, else $WAYSTATION_PIN, else a prompt on a terminal."""
    if getattr(args, "pin_stdin", False):
        pin = sys.stdin.readline().strip()
    elif os.environ.get(PIN_ENV):
        pin = os.environ[PIN_ENV].strip()
    elif sys.stdin.isatty():
        pin = getpass.getpass(f"Operator PIN ({what}): ").strip()
    else:
        raise CommandError(f"{what} needs the operator PIN: give it with --pin-stdin or {PIN_ENV}")
    if not pin:
        raise CommandError("an empty PIN was given")
    return pin


def _emit(args: argparse.Namespace, value: Any, text: Callable[[], str]) -> None:
    if args.json:
        data = (
            [v.model_dump(mode="json") for v in value]
            if isinstance(value, list)
            else value.model_dump(mode="json")
            if isinstance(value, BaseModel)
            else value
        )
        print(json.dumps(data, indent=2))
    else:
        sys.stdout.write(text())


def _study_id(client: ControlClient, given: str) -> str:
    """A full study id from an id or a prefix of one (as the studies table shows them)."""
    if len(given) >= 32:
        return given
    found: list[StudySummary] = client.studies(query=given, limit=3)
    matching = [s for s in found if s.study_id.startswith(given.lower())]
    if len(matching) != 1:
        raise CommandError(
            f"no study id starts with {given!r}"
            if not matching
            else f"{given!r} names more than one study; give more of its id"
        )
    return matching[0].study_id


# -- commands --------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace, client: ControlClient) -> int:
    unit = client.status()
    _emit(args, unit, lambda: render.status(unit))
    return EXIT_OK


def cmd_queue(args: argparse.Namespace, client: ControlClient) -> int:
    views = client.destinations()
    _emit(args, views, lambda: render.destinations(views))
    return EXIT_OK


def cmd_studies(args: argparse.Namespace, client: ControlClient) -> int:
    pin = read_pin(args, "showing patient names") if args.unmask else None
    rows = client.studies(
        state=args.state,
        query=args.query,
        since=args.since,
        limit=args.limit,
        offset=args.offset,
        sort=args.sort,
        pin=pin,
    )
    _emit(args, rows, lambda: render.studies(rows))
    return EXIT_OK


def cmd_history(args: argparse.Namespace, client: ControlClient) -> int:
    try:
        events = client.history(args.id)
    except ControlError as exc:
        if exc.http_status != 404:
            raise
        pin = read_pin(args, "showing patient names") if args.unmask else None
        detail = client.study(_study_id(client, args.id), pin=pin)
        _emit(args, detail, lambda: render.study(detail))
        return EXIT_OK
    _emit(args, events, lambda: render.history(events))
    return EXIT_OK


def _result(args: argparse.Namespace, result: BaseModel, message: str, ok: bool) -> int:
    _emit(args, result, lambda: message + "\n")
    return EXIT_OK if ok else EXIT_ERROR


def cmd_pause(args: argparse.Namespace, client: ControlClient) -> int:
    result = client.pause(args.destination, args.reason)
    return _result(args, result, result.message, result.ok)


def cmd_resume(args: argparse.Namespace, client: ControlClient) -> int:
    result = client.resume(args.destination, args.reason)
    return _result(args, result, result.message, result.ok)


def cmd_retry(args: argparse.Namespace, client: ControlClient) -> int:
    retry = client.retry_failed if args.failed else client.retry
    result = retry(args.destination, args.reason)
    return _result(args, result, result.message, result.ok)


def cmd_priority(args: argparse.Namespace, client: ControlClient) -> int:
    result = client.set_priority(_study_id(client, args.study), args.priority, args.reason)
    return _result(args, result, result.message, result.ok)


def cmd_resend(args: argparse.Namespace, client: ControlClient) -> int:
    pin = read_pin(args, "resend")
    study = _study_id(client, args.study)
    result = client.resend(study, args.destination, pin=pin, reason=args.reason)
    return _result(args, result, result.message, result.ok)


def cmd_discard(args: argparse.Namespace, client: ControlClient) -> int:
    if not args.reason.strip():
        raise CommandError("discard needs --reason: say why these objects will never be sent")
    pin = read_pin(args, "discard")
    result = client.discard(_study_id(client, args.study), pin=pin, reason=args.reason)
    return _result(args, result, result.message, result.ok)


def cmd_echo(args: argparse.Namespace, client: ControlClient) -> int:
    result = client.echo(args.destination)
    elapsed = f" ({result.elapsed_ms:.0f} ms)" if result.elapsed_ms is not None else ""
    return _result(args, result, result.message + elapsed, result.ok)


def run_control(args: argparse.Namespace) -> int:
    """Run one control command; maps the client's exceptions to exit codes."""
    client = ControlClient(socket_path(args), timeout=args.timeout)
    try:
        result: int = args.control(args, client)
        return result
    except ControlUnreachable as exc:
        print(f"error: the router is not running or not answering: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except ControlError as exc:
        if getattr(args, "json", False):
            print(json.dumps(exc.error.model_dump(), indent=2))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR


def cmd_pin_set(args: argparse.Namespace) -> int:
    """Set the operator PIN (stored as a salted scrypt hash, mode 0600)."""
    from router.config import load_config, load_default_config
    from router.control.auth import PinRefused, write_pin

    config = load_config(args.config) if args.config else load_default_config(Path.cwd())
    if args.stdin:
        pin = sys.stdin.readline().strip()
    elif sys.stdin.isatty():
        pin = getpass.getpass("New operator PIN (digits): ").strip()
        if getpass.getpass("The same PIN again: ").strip() != pin:
            print("error: the two PINs differ; nothing changed", file=sys.stderr)
            return EXIT_ERROR
    else:
        print("error: stdin is not a terminal: give the PIN with --stdin", file=sys.stderr)
        return EXIT_ERROR
    try:
        write_pin(config.pin_file, pin)
    except PinRefused as exc:
        print(f"error: {exc}; nothing changed", file=sys.stderr)
        return EXIT_ERROR
    print(f"operator PIN set ({config.pin_file})")
    return EXIT_OK


def add_commands(sub: Any) -> None:
    """Add the control commands to the CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    common.add_argument("--socket", type=Path, help="the control socket (default: from config)")
    common.add_argument("--config", type=Path, help="configuration file naming the socket")
    common.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    pin = argparse.ArgumentParser(add_help=False)
    pin.add_argument(
        "--pin-stdin", action="store_true", help=f"read the operator PIN from stdin ({PIN_ENV})"
    )
    reason = argparse.ArgumentParser(add_help=False)
    reason.add_argument("--reason", default="", help="why (recorded in the audit log)")

    def command(name: str, func: Callable[..., int], help: str, *parents: Any) -> Any:
        parser = sub.add_parser(name, help=help, parents=[common, *parents])
        parser.set_defaults(func=run_control, control=func)
        return parser

    command("status", cmd_status, "the unit at a glance")
    command("queue", cmd_queue, "each destination's queue and state")
    studies = command("studies", cmd_studies, "studies held on the unit", pin)
    studies.add_argument("--state", help="delivered|sending|waiting|failed|unrouted|discarded")
    studies.add_argument("--query", "-q", help="text to look for (patient data needs --unmask)")
    studies.add_argument("--since", type=float, help="received since (Unix seconds)")
    studies.add_argument("--limit", type=int, default=50)
    studies.add_argument("--offset", type=int, default=0)
    studies.add_argument("--sort", default="-last_received")
    studies.add_argument("--unmask", action="store_true", help="show names and IDs (PIN)")
    history = command("history", cmd_history, "an object's history, or a study's", pin)
    history.add_argument("id", help="object id, or study id (or the start of one)")
    history.add_argument("--unmask", action="store_true", help="show names and IDs (PIN)")
    for name, func, text in (
        ("pause", cmd_pause, "stop sending to a destination (objects stay queued)"),
        ("resume", cmd_resume, "send to a paused destination again"),
        ("retry", cmd_retry, "try a destination now (--failed: requeue refused objects)"),
        ("echo", cmd_echo, "C-ECHO a destination from this unit"),
    ):
        parser = command(name, func, text, reason)
        parser.add_argument("destination")
        if name == "retry":
            parser.add_argument("--failed", action="store_true", help="requeue refused objects")
    priority = command("priority", cmd_priority, "set a study's priority", reason)
    priority.add_argument("study")
    priority.add_argument("priority", choices=list(PRIORITIES))
    resend = command("resend", cmd_resend, "send a study again (PIN)", reason, pin)
    resend.add_argument("study")
    resend.add_argument("destination")
    discard = command("discard", cmd_discard, "give up a study's undelivered copies (PIN)", pin)
    discard.add_argument("study")
    discard.add_argument("--reason", required=True, help="why (recorded in the audit log)")

    pin_parser = sub.add_parser("pin", help="the operator PIN").add_subparsers(
        dest="pin_command", required=True
    )
    pin_set = pin_parser.add_parser("set", help="set the operator PIN")
    pin_set.add_argument("--config", type=Path)
    pin_set.add_argument("--stdin", action="store_true", help="read the PIN from stdin, once")
    pin_set.set_defaults(func=cmd_pin_set)
