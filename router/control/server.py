"""The control API server: HTTP/1.1 + JSON on a Unix socket, inside the daemon.

Why the standard library (socketserver + http.server) and not a framework: a dozen endpoints,
one local client at a time, no TLS, no async; a thread per connection keeps each request away
from ingest and delivery (reads use their own journal connections; writes queue on the
journal's committer like every other write). Permissions are checked twice: the socket is
0660 with the operators group, and every connection's peer credentials (SO_PEERCRED) must be
root, the daemon's own user, or a member of the operators group.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import socketserver
import stat
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import BaseModel, TypeAdapter

from router.control.auth import group_id, is_operator, peer_of
from router.control.client import unix_address
from router.control.context import ControlContext
from router.control.failures import ApiFailure
from router.control.routes import Request, dispatch
from router.control.schema import API_PREFIX, ApiError

log = logging.getLogger("waystation.control")

_MAX_BODY = 64 * 1024


class SocketInUse(OSError):
    """Another router answers on the control socket: this one must not start."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ControlServer
    timeout = 60  # an idle keep-alive connection is closed after this

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        status, payload = self._answer(method)
        body = _encode(payload)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _answer(self, method: str) -> tuple[int, Any]:
        try:
            peer = peer_of(self.connection)
            body = self._body()
            if not is_operator(peer, self.server.ctx.config.control.operators_group):
                raise ApiFailure(
                    403,
                    "forbidden",
                    f"user {peer.user} may not use the Waystation control API",
                    f"add the user to the {self.server.ctx.config.control.operators_group!r} "
                    "group, or run as the router's service user",
                )
            url = urlsplit(self.path)
            if not url.path.startswith(API_PREFIX + "/"):
                if re.match(r"^/v\d+(/|$)", url.path):
                    raise ApiFailure(
                        404,
                        "unknown-version",
                        f"this daemon speaks control API {API_PREFIX}, not {url.path}",
                        f"use paths under {API_PREFIX}/",
                    )
                raise ApiFailure(404, "not-found", f"no endpoint {url.path}")
            request = Request(
                method=method,
                parts=[unquote(p) for p in url.path[len(API_PREFIX) + 1 :].split("/") if p],
                query={k: v[-1] for k, v in parse_qs(url.query).items()},
                body=body,
                pin=self.headers.get("X-Waystation-PIN", ""),
                peer=peer,
            )
            return 200, dispatch(self.server.ctx, self.server.actions, request)
        except ApiFailure as failure:
            error = ApiError(error=failure.code, message=failure.message, hint=failure.hint)
            return failure.status, error
        except Exception:
            log.exception("control API: %s %s failed", method, urlsplit(self.path).path)
            error = ApiError(error="internal", message="the router hit an internal error")
            return 500, error

    def _body(self) -> bytes:
        declared = (self.headers.get("Content-Length") or "0").strip()
        if not declared.isdigit() or not declared.isascii():
            raise ApiFailure(400, "bad-request", "Content-Length is not a length")
        length = int(declared)
        if length > _MAX_BODY:
            raise ApiFailure(413, "too-large", "the request body is too large")
        return self.rfile.read(length) if length else b""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, an unknown method, a header
        line too long) in the API's error format, always 4xx: an unknown method is 405 and an
        unknown HTTP version 400 (found by fuzzing: they were 501 and 505)."""
        status = {501: 405, 505: 400}.get(code, code)
        error = ApiError(error="bad-request", message=message or "the request could not be read")
        body = _encode(error)
        self.request_version = self.protocol_version  # a status line even to "GET /path"
        self.close_connection = True
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control API: " + format, *args)


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _encode(result: object) -> bytes:
    """JSON bytes, serialised by pydantic's own encoder (a long study list is the hot path)."""
    if isinstance(result, BaseModel):
        return result.model_dump_json().encode()
    if isinstance(result, list) and result and isinstance(result[0], BaseModel):
        kind = type(result[0])
        adapter = _ADAPTERS.get(kind)
        if adapter is None:
            adapter = _ADAPTERS[kind] = TypeAdapter(list[kind])  # type: ignore[valid-type]
        return adapter.dump_json(result)
    return json.dumps(result).encode()


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The control API on ``path``; ``start`` serves in a background thread."""

    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: Path, ctx: ControlContext) -> None:
        from router.control.actions import Actions

        self.path = path
        self.ctx = ctx
        self.actions = Actions(ctx)
        self._thread: threading.Thread | None = None
        _clear_stale(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with unix_address(path) as address:
            super().__init__(address, _Handler)
        _restrict(path, ctx.config.control.operators_group)

    def start(self) -> None:
        """Serve in a daemon thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="control-api", daemon=True)
        self._thread.start()
        log.info("control API listening on %s", self.path)

    def stop(self) -> None:
        """Stop serving and remove the socket."""
        self.shutdown()
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("control API connection failed", exc_info=True)


def _clear_stale(path: Path) -> None:
    """Remove a socket left by a router that did not stop cleanly; refuse to take over the
    socket of one that is still running."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with unix_address(path) as address:
            probe.connect(address)
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise SocketInUse(f"another router is serving the control API on {path}")


def _restrict(path: Path, group: str) -> None:
    """0660, group = the operators group when it exists."""
    gid = group_id(group)
    # The appliance's unit runs the router with the operators group already (and a system-call
    # filter that refuses chown): only change the group when it differs.
    if gid is not None and path.stat().st_gid != gid:
        try:
            os.chown(path, -1, gid)
        except PermissionError:
            log.warning("cannot give %s to group %s; only this user can use it", path, group)
    os.chmod(path, 0o660)
    if gid is None:
        log.info("no group %r: only root and this user can use the control API", group)
