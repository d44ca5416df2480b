"""The hub's HTTPS front: the protocol of docs/hub-protocol.md over the standard library.

Why the standard library's http.server: the protocol is six small endpoints with bodies the
handler reads itself (it must count, limit and deadline every byte anyway), and one thread
per connection matches the rest of Waystation. A framework would add dependencies without
taking any of that work off our hands.

Hostile clients: TLS handshakes happen in the connection's own thread (a plaintext or slow
client never blocks the accept loop); every read has a timeout and a request body a total
deadline; bodies must have a Content-Length within limits; Content-Encoding other than
identity is refused (no decompression, so no bombs); at most ``_MAX_CONNECTIONS`` are open.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from router.alarms import Alarms
from router.config.model import HubServerConfig
from router.errors import IntegrityError, StorageFault, StorageFull
from router.hub import protocol as p
from router.hub.store import Created, HubStore, UploadError
from router.hub.tokens import UnitRegistry

log = logging.getLogger("waystation.hub")

_MAX_CONNECTIONS = 128
_BODIES_IN_MEMORY = 8  # x max_chunk (64 MiB by default): the most chunk bytes held at once
_BODY_SLOT_WAIT = 30.0
_READ_TIMEOUT = 15.0
_SMALL_BODY = 64 * 1024
_BYTES_PER_SECOND_FLOOR = 16 * 1024  # a body's deadline grows 1 s per 16 KiB


@dataclass
class HubStats:
    """Counters for monitoring and tests."""

    body_bytes: int = 0  # PATCH body bytes read off the wire, accepted or not
    accepted_bytes: int = 0  # bytes that became durable upload data
    commits: int = 0
    already_committed: int = 0
    refused: int = 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(
        self,
        config: HubServerConfig,
        store: HubStore,
        units: UnitRegistry,
        tls: ssl.SSLContext | None,
        alarms: Alarms,
    ) -> None:
        self.config = config
        self.alarms = alarms
        self.store = store
        self.units = units
        self.tls = tls
        self.stats = HubStats()
        self.stats_lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(_MAX_CONNECTIONS)
        self.body_slots = threading.BoundedSemaphore(_BODIES_IN_MEMORY)
        super().__init__((config.host, config.port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many connections: close at once
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A failed handshake or a client gone mid-request: already logged where it happened.
        log.debug("connection from %s ended early", client_address[0])

    def count(self, **deltas: int) -> None:
        with self.stats_lock:
            for name, delta in deltas.items():
                setattr(self.stats, name, getattr(self.stats, name) + delta)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "waystation-hub"
    sys_version = ""
    timeout = _READ_TIMEOUT
    # Why: an answer goes out as two writes (headers, then the JSON body); with Nagle's
    # algorithm the body waits for the unit's ACK of the headers, which the unit delays
    # (~40 ms per request: a small object's whole upload is one request).
    disable_nagle_algorithm = True

    def setup(self) -> None:
        self.request.settimeout(_READ_TIMEOUT)
        if self.server.tls is not None:
            try:
                self.request = self.server.tls.wrap_socket(self.request, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.info("TLS handshake with %s failed: %s", self.client_address[0], exc)
                raise ConnectionAbortedError from exc
        super().setup()

    def handle_one_request(self) -> None:
        # The request line and headers must arrive within request_timeout (a client
        # trickling header bytes is cut); the body has its own deadline (_read_body).
        self._header_timer = threading.Timer(self.server.config.request_timeout, self._cut)
        self._header_timer.daemon = True
        self._header_timer.start()
        try:
            super().handle_one_request()
        finally:
            self._header_timer.cancel()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self._header_timer.cancel()
        if parsed and self.request_version == "HTTP/0.9":  # "GET /path": no headers, no token
            self.send_error(400, "HTTP/0.9 requests are not accepted")
            return False
        return parsed

    def _cut(self) -> None:
        log.info("%s: request headers not complete in time; connection closed",
                 self.client_address[0])  # fmt: skip
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def handle(self) -> None:
        try:
            super().handle()
        except (ConnectionError, TimeoutError, ssl.SSLError, OSError):
            self.close_connection = True

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (a malformed request line, an unknown method, a header
        line too long) answered like every other refusal: a status line even to a request
        line that reads as HTTP/0.9, a JSON body, and a 4xx - an unknown method is 405 and
        an unknown HTTP version 400 (they are the client's mistakes, not the hub's)."""
        status = {501: 405, 505: 400}.get(code, code)
        self.request_version = self.protocol_version
        with contextlib.suppress(OSError):
            self._error(status, message or "the request could not be read")

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.client_address[0], format % args)

    # -- verbs -----------------------------------------------------------------------------

    def do_OPTIONS(self) -> None:
        self._reply(
            204,
            headers={
                "Tus-Version": p.TUS_VERSION,
                "Tus-Extension": p.EXTENSIONS,
                "Tus-Checksum-Algorithm": "sha256",
                "Tus-Max-Size": str(self.server.config.max_object),
            },
        )

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self, verb: str) -> None:
        try:
            self._route(verb)
        except _Refusal as refusal:
            self.server.count(refused=1)
            self._error(refusal.status, refusal.message, refusal.headers)
        except UploadError as exc:
            self.server.count(refused=1)
            headers = {} if exc.offset is None else {"Upload-Offset": str(exc.offset)}
            self._error(exc.status, str(exc), headers)
        except p.ProtocolError as exc:
            self.server.count(refused=1)
            self._error(400, str(exc))
        except StorageFull as exc:
            self.server.alarms.raise_("spool-full", f"the hub refuses uploads: {exc}")
            self._error(507, f"the hub cannot take data now: {exc}", {"Retry-After": "60"})
        except (StorageFault, IntegrityError) as exc:
            log.error("storage problem answering %s: %s", verb, exc)
            self.server.alarms.raise_("storage-fault", f"the hub refuses uploads: {exc}")
            self._error(503, "the hub has a storage problem; try later", {"Retry-After": "60"})
        except (ConnectionError, TimeoutError, ssl.SSLError):
            self.close_connection = True
        except Exception as exc:  # contained: one request never stops the hub
            log.exception("unexpected %s answering %s", type(exc).__name__, verb)
            self._error(500, "unexpected problem at the hub")

    def _route(self, verb: str) -> None:
        path = urlsplit(self.path).path
        if self.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            raise _Refusal(415, "Content-Encoding is not accepted; send the bytes as they are")
        if "Transfer-Encoding" in self.headers:
            raise _Refusal(411, "a Content-Length is required (no chunked transfer encoding)")
        unit = self._authenticate()
        parts = path.rstrip("/").split("/")
        if path.rstrip("/") == p.UPLOADS and verb == "POST":
            self._require_tus()
            return self._create(unit)
        if path.rstrip("/") == p.RECEIPTS and verb == "GET":
            return self._receipts(unit)
        if path.rstrip("/") == p.MANIFESTS and verb == "POST":
            return self._manifest(unit)
        if path.rstrip("/") == p.WHOAMI and verb == "GET":
            return self._reply(200, {"unit": unit})
        if len(parts) >= 4 and "/".join(parts[:3]) == p.UPLOADS and p.is_upload_id(parts[3]):
            upload_id = parts[3]
            if len(parts) == 4 and verb == "HEAD":
                self._require_tus()
                return self._head(unit, upload_id)
            if len(parts) == 4 and verb == "PATCH":
                self._require_tus()
                return self._patch(unit, upload_id)
            if len(parts) == 4 and verb == "DELETE":
                self._require_tus()
                self._drain_small()
                self.server.store.terminate(unit, upload_id)
                return self._reply(204)
            if len(parts) == 5 and parts[4] == "commit" and verb == "POST":
                return self._commit(unit, upload_id)
        raise _Refusal(404, "no such endpoint")

    def _authenticate(self) -> str:
        token = p.bearer_token(self.headers.get("Authorization"))
        if token is None:
            raise _Refusal(
                401, "a bearer token is required", {"WWW-Authenticate": 'Bearer realm="hub"'}
            )
        unit, reason = self.server.units.authenticate(token)
        if unit is None:
            log.warning("refused a request from %s: %s", self.client_address[0], reason)
            status = 403 if "revoked" in reason else 401
            raise _Refusal(status, reason, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return unit

    def _require_tus(self) -> None:
        if self.headers.get("Tus-Resumable") != p.TUS_VERSION:
            raise _Refusal(412, "Tus-Resumable: 1.0.0 is required", {"Tus-Version": p.TUS_VERSION})

    # -- endpoints -------------------------------------------------------------------------

    def _create(self, unit: str) -> None:
        # tus creation-with-upload: a body of the offset type is the first chunk.
        if self._is_offset_body() and self.headers.get("Content-Length", "0") != "0":
            with self._body_slot():
                data, checksum = self._chunk_body()
                self._create_with(unit, data, checksum)
        else:
            self._drain_small()
            self._create_with(unit, b"", None)

    def _create_with(self, unit: str, data: bytes, checksum: bytes | None) -> None:
        size = p.parse_length(
            self.headers.get("Upload-Length"), "Upload-Length", self.server.config.max_object
        )
        meta = p.parse_metadata(self.headers.get("Upload-Metadata"))
        if data and len(data) == size and self._commit_requested():
            return self._create_whole(unit, meta, data, checksum)
        created = self.server.store.create(unit, size, meta)
        self._answer_create(unit, created, data, checksum)

    def _create_whole(
        self, unit: str, meta: p.UploadMetadata, data: bytes, checksum: bytes | None
    ) -> None:
        """The whole object in the create, with the commit asked for: verified and stored
        in one go (HubStore.create_whole), else (already committed, or an unfinished upload
        of it exists) the usual steps."""
        created, committed = self.server.store.create_whole(
            unit, meta, data, checksum, self.client_address[0]
        )
        if committed is None:
            return self._answer_create(unit, created, data, checksum)
        self.server.count(accepted_bytes=len(data))
        self._committed(committed.already)
        upload = created.upload
        self._reply(
            201,
            {"state": "committed", "upload": upload.id, "offset": upload.size, "already": False},
            {
                "Location": f"{p.UPLOADS}/{upload.id}",
                "Upload-Offset": str(upload.size),
                "Waystation-Upload-State": "committed",
            },
        )

    def _answer_create(
        self, unit: str, created: Created, data: bytes, checksum: bytes | None
    ) -> None:
        upload = created.upload
        if created.already_committed:
            self.server.count(already_committed=1)
            return self._reply(
                200,
                {"state": "committed", "already": True, "upload": upload.id},
                {"Waystation-Upload-State": "committed", "Upload-Offset": str(upload.size)},
            )
        offset, state, already = upload.received, upload.state, False
        # A resumed upload (the unit repeats a create whose answer it lost) already holds
        # bytes: the body, which starts at 0, is not needed; the offset tells the unit.
        if data and offset == 0:
            offset = self.server.store.append(unit, upload.id, 0, data, checksum)
            self.server.count(accepted_bytes=len(data))
        if self._commit_requested() and offset == upload.size:
            already = self._commit_now(unit, upload.id)
            state = "committed"
        self._reply(
            201,
            {"state": state, "upload": upload.id, "offset": offset, "already": already},
            {
                "Location": f"{p.UPLOADS}/{upload.id}",
                "Upload-Offset": str(offset),
                "Waystation-Upload-State": state,
            },
        )

    def _head(self, unit: str, upload_id: str) -> None:
        upload = self.server.store.head(unit, upload_id)
        if upload is None:
            raise _Refusal(404, "no such upload")
        self._reply(
            200,
            headers={
                "Upload-Offset": str(upload.received),
                "Upload-Length": str(upload.size),
                "Waystation-Upload-State": upload.state,
                "Cache-Control": "no-store",
            },
        )

    def _patch(self, unit: str, upload_id: str) -> None:
        if not self._is_offset_body():
            raise _Refusal(415, f"Content-Type must be {p.OFFSET_CONTENT_TYPE}")
        offset = p.parse_length(self.headers.get("Upload-Offset"), "Upload-Offset", 2**62)
        with self._body_slot():
            data, checksum = self._chunk_body()
            new_offset = self.server.store.append(unit, upload_id, offset, data, checksum)
        self.server.count(accepted_bytes=len(data))
        if self._commit_requested():
            upload = self.server.store.head(unit, upload_id)
            if upload is not None and new_offset == upload.size:
                already = self._commit_now(unit, upload_id)
                return self._reply(
                    200,
                    {"state": "committed", "already": already, "upload": upload_id},
                    {"Upload-Offset": str(new_offset), "Waystation-Upload-State": "committed"},
                )
        self._reply(204, headers={"Upload-Offset": str(new_offset)})

    def _commit(self, unit: str, upload_id: str) -> None:
        self._drain_small()
        already = self._commit_now(unit, upload_id)
        self._reply(
            200,
            {"state": "committed", "already": already, "upload": upload_id},
            {"Waystation-Upload-State": "committed"},
        )

    def _commit_now(self, unit: str, upload_id: str) -> bool:
        """Commit the upload (verify, store, record the key); whether it was already."""
        committed = self.server.store.commit(unit, upload_id, self.client_address[0])
        self._committed(committed.already)
        return committed.already

    def _committed(self, already: bool) -> None:
        # A commit is durable again: storage works (the alarms are raised again if not).
        self.server.alarms.clear("spool-full")
        self.server.alarms.clear("storage-fault")
        self.server.count(**({"already_committed": 1} if already else {"commits": 1}))

    def _commit_requested(self) -> bool:
        """The waystation-commit extension: commit once this request completes the upload."""
        return self.headers.get(p.COMMIT_HEADER, "").strip() == "1"

    def _is_offset_body(self) -> bool:
        content_type = self.headers.get("Content-Type", "")
        return content_type.split(";")[0].strip() == p.OFFSET_CONTENT_TYPE

    @contextlib.contextmanager
    def _body_slot(self) -> Iterator[None]:
        # Chunks are held in memory while sealed: a bounded number at once, so many units
        # sending their largest chunks cannot exhaust the hub's memory.
        if not self.server.body_slots.acquire(timeout=_BODY_SLOT_WAIT):
            raise _Refusal(503, "the hub is busy; try again shortly", {"Retry-After": "5"})
        try:
            yield
        finally:
            self.server.body_slots.release()

    def _chunk_body(self) -> tuple[bytes, bytes | None]:
        """A chunk's bytes (Content-Length within max_chunk) and its Upload-Checksum."""
        length = p.parse_length(
            self.headers.get("Content-Length"), "Content-Length", self.server.config.max_chunk
        )
        checksum = p.parse_checksum(self.headers.get("Upload-Checksum"))
        return self._read_body(length, count=True), checksum

    def _receipts(self, unit: str) -> None:
        query = parse_qs(urlsplit(self.path).query)
        ids = [u for u in query.get("upload", []) if p.is_upload_id(u)][:500]
        receipts = self.server.store.receipts(unit, ids)
        self._reply(
            200, {"receipts": [{"upload": r.upload_id, "state": r.state} for r in receipts]}
        )

    def _manifest(self, unit: str) -> None:
        body = self._json_body()
        study = p.check_uid(str(body.get("study_uid", "")), "study_uid")
        expected = body.get("expected")
        if expected is not None and (not isinstance(expected, int) or not 0 <= expected < 10**7):
            raise p.ProtocolError("expected must be a whole number of objects")
        known, received = self.server.store.manifest(unit, study, expected)
        text = f"{received} of {known} received" if known is not None else f"{received} received"
        self._reply(200, {"expected": known, "received": received, "summary": text})

    # -- bodies and answers ----------------------------------------------------------------

    def _read_body(self, length: int, *, count: bool = False) -> bytes:
        deadline = (
            time.monotonic() + self.server.config.request_timeout + length / _BYTES_PER_SECOND_FLOOR
        )
        pieces: list[bytes] = []
        remaining = length
        while remaining:
            if time.monotonic() > deadline:
                self.close_connection = True
                raise _Refusal(408, "the request body did not arrive in time")
            piece = self.rfile.read1(min(remaining, 1024 * 1024))
            if not piece:
                raise ConnectionError("the client closed the connection mid-body")
            if count:
                self.server.count(body_bytes=len(piece))
            pieces.append(piece)
            remaining -= len(piece)
        return b"".join(pieces)

    def _drain_small(self) -> bytes:
        length = p.parse_length(
            self.headers.get("Content-Length", "0"), "Content-Length", _SMALL_BODY
        )
        return self._read_body(length)

    def _json_body(self) -> dict[str, Any]:
        raw = self._drain_small()
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, RecursionError):  # nesting deeper than the parser's stack: not JSON
            raise p.ProtocolError("the body is not JSON") from None
        if not isinstance(body, dict):
            raise p.ProtocolError("the body must be a JSON object")
        return body

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        # A refused request may have left its body unread: never reuse such a connection.
        self.close_connection = True
        self._reply(status, {"error": message}, {**(headers or {}), "Connection": "close"})

    def _reply(
        self, status: int, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        payload = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Tus-Resumable", p.TUS_VERSION)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if payload:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)


class _Refusal(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def tls_context(config: HubServerConfig) -> ssl.SSLContext | None:
    """The server's TLS context (TLS 1.2 or later), or None for plain HTTP (tests only)."""
    if config.insecure_plain_http:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    assert config.tls_cert is not None and config.tls_key is not None
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


class HubServer:
    """The listening hub; ``serve`` in a thread, ``stop`` to close."""

    def __init__(
        self,
        config: HubServerConfig,
        store: HubStore,
        units: UnitRegistry,
        alarms: Alarms | None = None,
    ) -> None:
        alarms = alarms if alarms is not None else Alarms()
        self._server = _Server(config, store, units, tls_context(config), alarms)
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-http")

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        return int(self._server.server_address[1])

    @property
    def stats(self) -> HubStats:
        """Counters since start."""
        return self._server.stats

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting and close the listening socket."""
        stats = self._server.stats
        # Counts only (no ids): what a benchmark or an operator reads after a run.
        log.info(
            "hub stats: body_bytes=%d accepted_bytes=%d commits=%d already_committed=%d refused=%d",
            stats.body_bytes,
            stats.accepted_bytes,
            stats.commits,
            stats.already_committed,
            stats.refused,
        )
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
