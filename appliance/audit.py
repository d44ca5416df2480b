"""Audit for the appliance's own actions (backup, restore, factory reset): into the journal's
audit table when a journal exists, and always into an append-only log in the state directory
that a factory reset keeps (the journal itself is what a reset destroys)."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import sqlite3
import time
from pathlib import Path

from router.control.actions import append_audit
from router.control.auth import Peer
from router.spool.journal import connect

AUDIT_LOG = "appliance-audit.log"


def me() -> Peer:
    """The person running the command, as the kernel knows them."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid{uid}"
    return Peer(os.getpid(), uid, os.getgid(), user)


def audit(state: Path, journal: Path | None, action: str, target: str, outcome: str) -> None:
    """Record one action (no patient data: actions, file names and outcomes only)."""
    peer = me()
    entry = {
        "at": time.time(),
        "user": peer.user,
        "uid": peer.uid,
        "action": action,
        "target": target,
        "outcome": outcome,
    }
    log = state / AUDIT_LOG
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if journal is not None and journal.exists():
        with contextlib.suppress(sqlite3.Error):
            conn = connect(journal)
            try:
                conn.execute("BEGIN IMMEDIATE")
                append_audit(conn, peer, action, target, "", outcome)
                conn.execute("COMMIT")
            finally:
                conn.close()


def entries(state: Path) -> list[dict[str, object]]:
    """The appliance audit log, oldest first."""
    log = state / AUDIT_LOG
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
