"""HTTP/1.1 requests and answers on one kept connection, with a second request allowed to
leave before the first one's answer has come back (pipelining, RFC 9112 section 9.3.2).

Why: a hub stream sends a small object as one request and then waits a round trip for the
answer; on a long link that is a round trip per object in which the stream sends nothing.
With the next object's request already behind it, the stream's link stays busy.

Why not http.client's own request and response objects: each response it makes reads the
socket through a buffer of its own, so with two answers on their way the first response may
swallow the start of the second. Here one reader per connection keeps whatever arrived
beyond one answer for the next; http.client.HTTPResponse still parses each answer.
"""

from __future__ import annotations

import http.client
import io
import socket
from typing import Any

# The most of an answer's body read into memory (the hub's answers are small JSON).
MAX_ANSWER_BODY = 1024 * 1024


class AnswerTooLarge(http.client.HTTPException):
    """An answer's body is longer than :data:`MAX_ANSWER_BODY`."""


class _KeptOpen(io.BufferedReader):
    """The connection's reader; a parsed response "closing" it must not close it."""

    def close(self) -> None:
        """Kept open for the next answer (the connection closes the socket itself)."""


class _ReaderSource:
    """Hands http.client.HTTPResponse the connection's one reader instead of a new one."""

    def __init__(self, reader: io.BufferedReader) -> None:
        self._reader = reader

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return self._reader


class Answer:
    """One answer: status, headers (names lower-cased), body, and whether the server closes
    the connection after it."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes, closes: bool) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.closes = closes


class Exchange:
    """Writes requests to a connected socket (plain or TLS) and reads their answers in the
    order the requests were written."""

    def __init__(self, sock: socket.socket, host: str) -> None:
        self.sock = sock
        self._host = host
        self._reader = _KeptOpen(sock.makefile("rb", buffering=0))

    def close(self) -> None:
        """Release the socket: its reader holds a reference that keeps it open otherwise
        (close the socket itself too)."""
        io.BufferedReader.close(self._reader)

    def write_head(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        """The request line and headers, as bytes to send before the body."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def write(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        """Send a whole request in one write (head and body together, so no segment waits
        for an acknowledgement of another: see Nagle's algorithm)."""
        self.sock.sendall(self.write_head(method, path, headers) + body)

    def read(self, method: str) -> Answer:
        """The answer to the oldest request not yet answered."""
        response = http.client.HTTPResponse(_ReaderSource(self._reader), method=method)  # type: ignore[arg-type]
        response.begin()
        length = response.length
        if length is not None and length > MAX_ANSWER_BODY:
            raise AnswerTooLarge(f"an answer of {length} bytes")
        body = response.read(MAX_ANSWER_BODY + 1)
        if len(body) > MAX_ANSWER_BODY or not response.isclosed():
            raise AnswerTooLarge("an answer longer than 1 MiB")
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Answer(response.status, headers, body, bool(response.will_close))
