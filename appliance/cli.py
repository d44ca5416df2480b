"""The appliance's commands: firstboot, commission, backup, restore, factory-reset."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from router.errors import WaystationError

DEFAULT_STATE = Path("/var/lib/waystation")
EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 78


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config) if args.config else DEFAULT_STATE / "waystation.toml"


def _secret(env: str, prompt: str, given: str | None) -> str:
    if given:
        return given
    if os.environ.get(env):
        return os.environ[env]
    return getpass.getpass(prompt)


def _check_pin(pin_file: Path, given: str | None) -> None:
    """A set operator PIN must be given; wrong PINs are refused (and rate-limited)."""
    from router.control.auth import PinStore

    store = PinStore(pin_file)
    if not store.is_set():
        return
    pin = _secret("WAYSTATION_PIN", "Operator PIN: ", given)
    if not store.verify(pin):
        raise WaystationError("wrong operator PIN")


def _router_running(socket_path: Path) -> bool:
    from router.control.client import ControlClient

    try:
        ControlClient(socket_path, timeout=2).status()
    except Exception:
        return False
    return True


def cmd_firstboot(args: argparse.Namespace) -> int:
    from appliance.firstboot import firstboot

    result = firstboot(
        Path(args.boot), Path(args.state), only_if_unconfigured=args.only_if_unconfigured
    )
    if result.outcome == "installed":
        print(f"configuration installed (fingerprint {result.fingerprint})")
    elif result.outcome == "already-configured":
        print("already configured; no new file on the boot partition")
    else:
        for problem in result.problems:
            print(problem, file=sys.stderr)
    return EXIT_CONFIG if result.outcome == "invalid" else EXIT_OK


def cmd_commission(args: argparse.Namespace) -> int:
    from appliance import commission as c

    path = _config_path(args)
    if args.report:
        from router.config import load_config

        directory = load_config(path).state_dir / c.REPORT_DIR
        if not (directory / "report.json").exists():
            raise WaystationError("not commissioned yet: run `waystation commission` first")
        report = c.load(directory)
        c.save(report, directory)  # re-rendered with this version's layout
        print(c.render_text(report))
        print(f"Printable copy: {directory / 'report.html'}")
        return EXIT_OK
    test = None
    if args.test_object:
        from appliance.testobject import send_test_object

        test = send_test_object
    report = c.commission(path, test_object=test)
    print(c.render_text(report))
    print(f"Printable copy: {path.parent / c.REPORT_DIR / 'report.html'}")
    return EXIT_OK if report.passed else EXIT_ERROR


def cmd_backup(args: argparse.Namespace) -> int:
    from appliance.audit import audit
    from appliance.backup import Paths, create_backup
    from router.config import load_config

    path = _config_path(args)
    config = load_config(path)
    _check_pin(config.pin_file, args.pin)
    passphrase = _secret("WAYSTATION_BACKUP_PASSPHRASE", "Backup passphrase: ", None)
    members = create_backup(Paths.of(config, path), Path(args.out), passphrase)
    journal = config.spool.path / "journal.sqlite"
    audit(config.state_dir, journal, "backup", str(args.out), f"ok: {', '.join(members)}")
    print(f"backup written to {args.out}: {', '.join(members)}")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace) -> int:
    from appliance.audit import audit
    from appliance.backup import restore_backup
    from router.config import load_config

    state = Path(args.state)
    current = state / "waystation.toml"
    if current.exists():
        config = load_config(current)
        if _router_running(config.control_socket):
            raise WaystationError("stop the router first: systemctl stop waystation")
        _check_pin(config.pin_file, args.pin)
    passphrase = _secret("WAYSTATION_BACKUP_PASSPHRASE", "Backup passphrase: ", None)
    paths = restore_backup(Path(args.file), passphrase, state)
    audit(state, paths.spool / "journal.sqlite", "restore", str(args.file), "ok")
    print(f"restored into {state}; start the router: systemctl start waystation")
    return EXIT_OK


def cmd_factory_reset(args: argparse.Namespace) -> int:
    from appliance.audit import audit
    from appliance.backup import Paths, factory_reset
    from router.config import load_config

    path = _config_path(args)
    config = load_config(path)
    if args.confirm != config.unit.name:
        raise WaystationError(
            f"a factory reset destroys every held object: confirm with --confirm {config.unit.name}"
        )
    if _router_running(config.control_socket):
        raise WaystationError("stop the router first: systemctl stop waystation")
    _check_pin(config.pin_file, args.pin)
    journal = config.spool.path / "journal.sqlite"
    audit(config.state_dir, journal, "factory-reset", config.unit.name, "started")
    removed = factory_reset(Paths.of(config, path))
    audit(config.state_dir, None, "factory-reset", config.unit.name, "ok: spool crypto-shredded")
    for item in removed:
        print(f"removed {item}")
    return EXIT_OK


def cmd_access(args: argparse.Namespace) -> int:
    from appliance.access import apply_access, describe, plan_access

    plan = plan_access(Path(args.state), Path(args.hub_config) if args.hub_config else None)
    for problem in plan.problems:
        print(f"waystation-access: configuration not loaded: {problem}", file=sys.stderr)
    apply_access(plan, Path(args.ssh_dir), Path(args.nft))
    print(describe(plan))
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the appliance commands on the ``waystation`` parser."""
    first = sub.add_parser("firstboot", help="install waystation.toml from the boot partition")
    first.add_argument("--boot", required=True, help="the boot partition's folder")
    first.add_argument("--state", required=True, help="the state folder (/var/lib/waystation)")
    first.add_argument(
        "--only-if-unconfigured",
        action="store_true",
        help="do nothing (and drop the files) when a configuration is installed already",
    )
    first.set_defaults(func=cmd_firstboot)

    com = sub.add_parser("commission", help="keys, certificate, tests and the report")
    com.add_argument("--config", help="default /var/lib/waystation/waystation.toml")
    com.add_argument("--report", action="store_true", help="print the last report again")
    com.add_argument(
        "--test-object", action="store_true", help="send a synthetic object end to end"
    )
    com.set_defaults(func=cmd_commission)

    backup = sub.add_parser("backup", help="encrypted backup of configuration and keys")
    backup.add_argument("--config", help="default /var/lib/waystation/waystation.toml")
    backup.add_argument("--out", required=True, help="the backup file to write (e.g. on USB)")
    backup.add_argument("--pin", help="operator PIN (else $WAYSTATION_PIN or asked)")
    backup.set_defaults(func=cmd_backup)

    restore = sub.add_parser("restore", help="restore a backup made by `waystation backup`")
    restore.add_argument("file")
    restore.add_argument("--state", default=str(DEFAULT_STATE))
    restore.add_argument("--pin", help="operator PIN of the current configuration, if any")
    restore.set_defaults(func=cmd_restore)

    reset = sub.add_parser("factory-reset", help="crypto-shred the spool, remove all settings")
    reset.add_argument("--config", help="default /var/lib/waystation/waystation.toml")
    reset.add_argument("--confirm", default="", help="the unit's name, to confirm")
    reset.add_argument("--pin", help="operator PIN (else $WAYSTATION_PIN or asked)")
    reset.set_defaults(func=cmd_factory_reset)

    access = sub.add_parser(
        "access", help="the firewall ruleset and SSH keys for the installed configuration"
    )
    access.add_argument("--state", default=str(DEFAULT_STATE))
    access.add_argument("--hub-config", help="the hub's configuration, if a hub runs here")
    access.add_argument("--ssh-dir", required=True, help="where authorized_keys goes")
    access.add_argument("--nft", required=True, help="the nftables ruleset file to write")
    access.set_defaults(func=cmd_access)
