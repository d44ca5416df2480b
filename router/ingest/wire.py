"""The receiving side's socket: whole PDUs under deadlines, and data streamed without holding it.

Why deadlines and not per-read timeouts: a client sending one byte every few seconds resets a
per-read timeout forever (slowloris) and keeps an association slot. Here each wait has one
deadline for the whole unit being read - the association request, or one PDU - so a slow
sender is cut off however it trickles. A PDU's deadline grows with its length, at a rate any
live link manages, so large PDUs on slow links are not mistaken for an attack.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

_HEADER = struct.Struct(">BxI")
_RECV_BUFFER = 1024 * 1024


class PeerClosed(Exception):
    """The peer closed or reset the connection."""


class PeerTimeout(Exception):
    """The peer did not send in time."""


class Wire:
    """Buffered reads with deadlines, and sends, on one connected socket."""

    def __init__(self, sock: socket.socket, *, min_rate: float = 64 * 1024) -> None:
        self.sock = sock
        self.min_rate = min_rate
        self._buffer = bytearray(_RECV_BUFFER)
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = 0

    def deadline_for(self, length: int, base: float) -> float:
        """The deadline to read ``length`` bytes that starts ``base`` seconds from now."""
        return time.monotonic() + base + length / self.min_rate

    def read_header(self, idle: float, deadline_base: float) -> tuple[int, int]:
        """Wait up to ``idle`` seconds for a PDU to start; return its (type, length)."""
        self._fill(1, time.monotonic() + idle)
        header = self.read(6, time.monotonic() + deadline_base)
        pdu_type, length = _HEADER.unpack(header)
        return pdu_type, length

    def read(self, n: int, deadline: float) -> bytes:
        """Exactly ``n`` bytes (``n`` at most the buffer size), or PeerTimeout/PeerClosed."""
        if n > len(self._buffer):
            raise ValueError(f"read of {n} bytes exceeds the buffer; stream it instead")
        self._fill(n, deadline)
        data = bytes(self._view[self._start : self._start + n])
        self._start += n
        return data

    def stream(self, n: int, deadline: float, write: Callable[[memoryview], object]) -> None:
        """Pass the next ``n`` bytes to ``write`` in pieces, never holding more than the
        buffer. ``write`` must copy what it keeps: the buffer is reused."""
        while n > 0:
            if self._start == self._end:
                self._start = self._end = 0
                self._recv(deadline)
            take = min(n, self._end - self._start)
            write(self._view[self._start : self._start + take])
            self._start += take
            n -= take

    def skip(self, n: int, deadline: float) -> None:
        """Read and drop ``n`` bytes."""
        self.stream(n, deadline, lambda _piece: None)

    def send(self, *parts: bytes) -> None:
        """Send every part, in order."""
        self.sock.sendall(b"".join(parts) if len(parts) > 1 else parts[0])

    def _fill(self, n: int, deadline: float) -> None:
        if self._end - self._start >= n:
            return
        if self._start + n > len(self._buffer):  # compact: move the unread tail to the front
            tail = self._end - self._start
            self._buffer[:tail] = self._buffer[self._start : self._end]
            self._start, self._end = 0, tail
        while self._end - self._start < n:
            self._recv(deadline)

    def _recv(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PeerTimeout("the peer did not send in time")
        self.sock.settimeout(remaining)
        try:
            count = self.sock.recv_into(self._view[self._end :])
        except TimeoutError as exc:
            raise PeerTimeout("the peer did not send in time") from exc
        except OSError as exc:
            raise PeerClosed(str(exc)) from exc
        if count == 0:
            raise PeerClosed("the peer closed the connection")
        self._end += count
