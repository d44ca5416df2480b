"""A scripted DICOMweb STOW-RS origin server on loopback, for fault tests.

A real HTTP server (http.server, one thread per connection) that reads multipart/related
requests, parses every part as DICOM and answers a PS3.18 Store Instances Response in
application/dicom+json. By default it stores everything (200). Queued :class:`Answer` s
script the next requests, one each: an HTTP status with an optional Retry-After, partial
success (202, every n-th instance failed with a FailureReason), 409 (all failed), a delay
before answering (after storing), or a reset mid-request. ``max_body`` answers 413 to larger
requests; ``authorization`` answers 401 to any other Authorization header; ``tls`` serves
HTTPS with that context.

What was stored is kept per SOP Instance UID: how many times and the SHA-256 of each copy,
so tests count duplicates and compare bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import ssl
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Self

from pydicom import dcmread


@dataclass(frozen=True)
class Answer:
    """How to answer one request.

    ``status``: the HTTP status to answer with nothing stored (e.g. 503, 429, 401), unless
    ``fail_every`` is set (202: every n-th instance fails with ``reason``, the rest are
    stored) or ``status`` is 409 (all fail with ``reason``). ``delay``: store, then wait this
    long before answering. ``reset``: read half the body, then reset the connection."""

    status: int = 200
    retry_after: str | None = None
    fail_every: int = 0
    reason: int = 0xA700
    delay: float = 0.0
    reset: bool = False


@dataclass
class Stored:
    """One SOP Instance UID as the server holds it."""

    count: int = 0
    sha256: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Logged:
    """One request as the server saw it."""

    path: str
    status: int
    instances: int
    body_bytes: int
    at: float


class StowServer:
    """Start with ``with StowServer() as server:``; ``server.url`` is its service root."""

    def __init__(
        self,
        *,
        max_body: int | None = None,
        abrupt: bool = False,
        authorization: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.max_body = max_body
        # Answer 413 from the headers alone and reset the connection without reading the body,
        # as some servers and proxies do.
        self.abrupt = abrupt
        self.tls = tls
        self.authorization = authorization
        self.stored: dict[str, Stored] = {}
        self.log: list[Logged] = []
        self._answers: deque[Answer] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        if tls is not None:  # the handshake happens at accept; a failed one drops the caller
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        """The TCP port it listens on."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The DICOMweb service root."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/dicom-web"

    def script(self, *answers: Answer) -> None:
        """Answer the next requests with these, in order (then store normally again)."""
        with self._lock:
            self._answers.extend(answers)

    def pending_answers(self) -> int:
        """Scripted answers not yet used."""
        with self._lock:
            return len(self._answers)

    def next_answer(self) -> Answer:
        """The answer for a request now arriving."""
        with self._lock:
            return self._answers.popleft() if self._answers else Answer()

    def record(self, uid: str, data: bytes) -> None:
        """Store one instance."""
        with self._lock:
            entry = self.stored.setdefault(uid, Stored())
            entry.count += 1
            entry.sha256.add(hashlib.sha256(data).hexdigest())

    def duplicates(self) -> int:
        """Copies stored beyond the first of each instance."""
        with self._lock:
            return sum(entry.count - 1 for entry in self.stored.values())

    def start(self) -> Self:
        """Start serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _handler(server: StowServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            # A search (QIDO-RS) answers an empty list: enough for a connection test.
            if server.authorization is not None and (
                self.headers.get("Authorization") != server.authorization
            ):
                self._answer(401, {}, 0, 0)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"[]")

        def do_POST(self) -> None:
            answer = server.next_answer()
            length = int(self.headers.get("Content-Length") or 0)
            if answer.reset:
                self.rfile.read(length // 2)
                self._reset()
                return
            if server.abrupt and server.max_body is not None and length > server.max_body:
                self._answer(413, {}, 0, 0)
                time.sleep(0.3)  # the client, still writing, fills the buffers and blocks
                self._reset()
                return
            body = self.rfile.read(length)
            if server.authorization is not None and (
                self.headers.get("Authorization") != server.authorization
            ):
                self._answer(401, {}, 0, len(body), extra={"WWW-Authenticate": "Basic"})
                return
            if server.max_body is not None and length > server.max_body:
                self._answer(413, {}, 0, len(body))
                return
            instances = _parts(self.headers.get("Content-Type", ""), body)
            if answer.status not in (200, 202, 409) and not answer.fail_every:
                extra = {"Retry-After": answer.retry_after} if answer.retry_after else {}
                self._answer(answer.status, {}, len(instances), len(body), extra=extra)
                return
            referenced, failed = [], []
            for index, (uid, sop_class, data) in enumerate(instances):
                fails = answer.status == 409 or (
                    answer.fail_every and index % answer.fail_every == 0
                )
                if fails:
                    failed.append(_item(uid, sop_class, "00081197", answer.reason))
                else:
                    server.record(uid, data)
                    referenced.append(_item(uid, sop_class, None, None))
            document: dict[str, object] = {}
            if referenced:
                document["00081199"] = {"vr": "SQ", "Value": referenced}
            if failed:
                document["00081198"] = {"vr": "SQ", "Value": failed}
            if answer.delay:
                time.sleep(answer.delay)
            status = 409 if answer.status == 409 else (202 if failed else 200)
            self._answer(status, document, len(instances), len(body))

        def _reset(self) -> None:
            # SO_LINGER 0: close sends a TCP reset, as a crashing server or middlebox does.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True

        def _answer(
            self,
            status: int,
            document: dict[str, object],
            instances: int,
            body_bytes: int,
            extra: dict[str, str] | None = None,
        ) -> None:
            payload = json.dumps(document).encode() if document else b""
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the client gave up (a timeout): what was stored stays stored
            with server._lock:
                server.log.append(
                    Logged(self.path, status, instances, body_bytes, time.monotonic())
                )

    return Handler


def _parts(content_type: str, body: bytes) -> list[tuple[str, str, bytes]]:
    """(SOP Instance UID, SOP Class UID, bytes) of each application/dicom part."""
    boundary = ""
    for param in content_type.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    if not boundary:
        return []
    found = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        _, _, data = chunk.partition(b"\r\n\r\n")
        data = data.removesuffix(b"\r\n")
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
        found.append((str(ds.SOPInstanceUID), str(ds.SOPClassUID), data))
    return found


def _item(uid: str, sop_class: str, tag: str | None, code: int | None) -> dict[str, object]:
    item: dict[str, object] = {
        "00081150": {"vr": "UI", "Value": [sop_class]},
        "00081155": {"vr": "UI", "Value": [uid]},
    }
    if tag is not None and code is not None:
        item[tag] = {"vr": "US", "Value": [code]}
    return item
