"""A userspace TCP fault proxy on 127.0.0.1 for delivery and WAN fault tests (no netem needed).

``FaultProxy(target_port)`` listens on ``127.0.0.1:proxy.port`` and forwards every connection to
``127.0.0.1:target_port``. It runs an asyncio loop in its own thread, so synchronous tests drive
it; every setter is thread-safe, takes effect at once (on live connections too) and returns once
applied. Directions: ``"up"`` is client -> server (the sender's data), ``"down"`` is server ->
client (responses); setters also take ``"both"``. Faults, combinable unless noted:

* ``latency(delay, jitter=0, direction="both")`` - one-way delay per chunk, byte order kept.
* ``rate(bytes_per_second, direction="both")`` - a token-bucket cap shared by all connections.
* ``reset_after(n_bytes, direction="up", times=None)`` - RST both sides (SO_LINGER 0) once a
  connection has forwarded ``n_bytes`` more in that direction; ``times`` limits how often.
* ``blackhole()`` - read and drop everything both ways; new connections are accepted but never
  connected upstream (they stay dead after ``normal()``, as through a real black hole).
* ``lose_responses(after_bytes=0)`` - forward up, drop down (after the first ``after_bytes`` of
  each connection): the destination gets the object, the sender never hears back.
* ``refuse()`` / ``accept()`` - close the listening socket (connection refused) / listen again.
* ``stall(direction)`` - stop reading and forwarding a direction without closing anything.
* ``flap(up_seconds, down_seconds, cycles=10)`` - alternate normal and refuse + RST of live
  connections, ``cycles`` times, then stay up; ``stop_flap()`` or ``normal()`` ends it early.
* ``normal()`` - clear every fault. ``statistics()`` - connections accepted, bytes forwarded and
  dropped each way, resets injected, down phases of ``flap``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

__all__ = ["FaultProxy", "ProxyStats", "Which"]

Which = Literal["up", "down", "both"]
_DIRS = ("up", "down")
_HOST = "127.0.0.1"
_CHUNK = 65536
_T = TypeVar("_T")


@dataclass(frozen=True)
class ProxyStats:
    """Counters since the proxy started; byte counts keyed ``"up"`` / ``"down"``."""

    connections: int
    forwarded: dict[str, int]
    dropped: dict[str, int]
    resets: int
    down_phases: int


def _per_dir(value: _T) -> dict[str, _T]:
    return dict.fromkeys(_DIRS, value)


@dataclass(eq=False)
class _Conn:
    """One proxied connection: both transports, the task serving it, per-direction counts."""

    client: asyncio.StreamWriter
    task: asyncio.Task[None] | None
    server: asyncio.StreamWriter | None = None
    forwarded: dict[str, int] = field(default_factory=lambda: _per_dir(0))
    reset_base: dict[str, int] = field(default_factory=lambda: _per_dir(0))
    last_due: dict[str, float] = field(default_factory=lambda: _per_dir(0.0))

    def rst(self) -> None:
        """Close both sides with RST (SO_LINGER 0) and stop serving."""
        for writer in (self.client, self.server):
            if writer is not None and not writer.transport.is_closing():
                with contextlib.suppress(OSError, AttributeError):
                    linger = struct.pack("ii", 1, 0)
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, linger
                    )
                writer.transport.abort()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


class FaultProxy:
    """Forward 127.0.0.1:``port`` to 127.0.0.1:``target_port`` with injectable faults."""

    def __init__(self, target_port: int, *, listen_port: int | None = None) -> None:
        self.target_port = target_port
        self.port = listen_port or 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="faultproxy", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._flap_task: asyncio.Task[None] | None = None
        self._buckets: dict[str, tuple[float, float]] = {}  # direction -> (tokens, time)
        self._connections = self._resets = self._down_phases = 0
        self._forwarded, self._dropped = _per_dir(0), _per_dir(0)
        self._clear()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Self:
        """Start the loop thread and listen; ``port`` is then the bound port."""
        self._thread.start()
        self._call(self._listen)
        return self

    def close(self) -> None:
        """Stop listening, RST every connection, stop and join the loop thread. Idempotent."""
        if self._thread.is_alive():

            async def shutdown() -> None:
                self._clear()
                self._unlisten()
                for conn in list(self._conns):
                    conn.rst()
                await asyncio.gather(
                    *(c.task for c in self._conns if c.task), return_exceptions=True
                )

            self._call(shutdown)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, fn: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Run coroutine function ``fn`` on the loop thread and return its result."""
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout=30)

    def _set(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the loop thread (all fault state is only touched there)."""

        async def run() -> None:
            fn()

        self._call(run)

    # -- faults (thread-safe) ----------------------------------------------------------------
    def _clear(self) -> None:
        self._delay = _per_dir((0.0, 0.0))  # (delay, jitter)
        self._rate: dict[str, float | None] = _per_dir(None)
        self._drop: dict[str, int | None] = _per_dir(None)  # bytes per connection before drop
        self._reset: dict[str, tuple[int, int | None] | None] = _per_dir(None)
        self._sink = False
        for event in getattr(self, "_flowing", {}).values():
            event.set()  # wake stalled pipes before the events are replaced
        self._flowing = {d: asyncio.Event() for d in _DIRS}
        for event in self._flowing.values():
            event.set()
        if self._flap_task is not None:
            self._flap_task.cancel()
            self._flap_task = None

    @staticmethod
    def _dirs(direction: Which) -> tuple[str, ...]:
        if direction not in ("up", "down", "both"):
            raise ValueError(f"direction must be 'up', 'down' or 'both', not {direction!r}")
        return _DIRS if direction == "both" else (direction,)

    def normal(self) -> None:
        """Clear every fault and listen again if refused; live connections keep going."""

        async def apply() -> None:
            self._clear()
            await self._listen()

        self._call(apply)

    def latency(self, delay: float, jitter: float = 0.0, direction: Which = "both") -> None:
        """Delay each chunk by ``delay`` + uniform(0, ``jitter``) seconds, one way."""
        self._set(lambda: self._delay.update(dict.fromkeys(self._dirs(direction), (delay, jitter))))

    def rate(self, bytes_per_second: float | None, direction: Which = "both") -> None:
        """Cap throughput (token bucket, 20 ms burst) per direction; ``None`` lifts the cap."""
        self._set(lambda: self._rate.update(dict.fromkeys(self._dirs(direction), bytes_per_second)))

    def reset_after(
        self, n_bytes: int, direction: Which = "up", *, times: int | None = None
    ) -> None:
        """RST each connection after it forwards ``n_bytes`` more in ``direction``."""

        def apply() -> None:
            for d in self._dirs(direction):
                self._reset[d] = (n_bytes, times)
                for conn in self._conns:
                    conn.reset_base[d] = conn.forwarded[d]

        self._set(apply)

    def blackhole(self) -> None:
        """Accept, read and drop everything both ways; never answer."""

        def apply() -> None:
            self._drop.update(_per_dir(0))
            self._sink = True

        self._set(apply)

    def lose_responses(self, after_bytes: int = 0) -> None:
        """Forward up; drop down beyond each connection's first ``after_bytes`` (e.g. the
        A-ASSOCIATE-AC, when the sender is one process that cannot be faulted mid-way)."""
        self._set(lambda: self._drop.update(down=after_bytes))

    def stall(self, direction: Which = "both") -> None:
        """Stop reading and forwarding ``direction`` without closing anything."""

        def apply() -> None:
            for d in self._dirs(direction):
                self._flowing[d].clear()

        self._set(apply)

    def refuse(self) -> None:
        """Close the listening socket: new connections are refused."""
        self._set(self._unlisten)

    def accept(self) -> None:
        """Listen again (on the same port) after :meth:`refuse`."""
        self._call(self._listen)

    def flap(self, up_seconds: float, down_seconds: float, *, cycles: int = 10) -> None:
        """Alternate ``up_seconds`` normal, ``down_seconds`` refused with live connections RST."""

        async def run() -> None:
            for _ in range(cycles):
                await asyncio.sleep(up_seconds)
                self._down_phases += 1
                self._unlisten()
                for conn in list(self._conns):
                    self._resets += 1
                    conn.rst()
                await asyncio.sleep(down_seconds)
                await self._listen()
            self._flap_task = None

        def start() -> None:
            if self._flap_task is not None:
                self._flap_task.cancel()
            self._flap_task = self._loop.create_task(run())

        self._set(start)

    def stop_flap(self) -> None:
        """End a running :meth:`flap` and listen again."""

        async def stop() -> None:
            if self._flap_task is not None:
                self._flap_task.cancel()
                self._flap_task = None
            await self._listen()

        self._call(stop)

    @property
    def flapping(self) -> bool:
        """True while a :meth:`flap` schedule runs."""
        return self._flap_task is not None

    def statistics(self) -> ProxyStats:
        """A consistent snapshot of the counters."""

        async def snapshot() -> ProxyStats:
            forwarded, dropped = dict(self._forwarded), dict(self._dropped)
            return ProxyStats(
                self._connections, forwarded, dropped, self._resets, self._down_phases
            )

        return self._call(snapshot)

    # -- loop side ---------------------------------------------------------------------------
    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, _HOST, self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(client=writer, task=asyncio.current_task())
        self._conns.add(conn)
        self._connections += 1
        try:
            if self._sink:
                while data := await reader.read(_CHUNK):
                    self._dropped["up"] += len(data)
                return
            try:
                s_reader, conn.server = await asyncio.open_connection(_HOST, self.target_port)
            except OSError:
                conn.rst()
                return
            pipes = [
                asyncio.create_task(self._pipe(conn, "up", reader, conn.server)),
                asyncio.create_task(self._pipe(conn, "down", s_reader, writer)),
            ]
            try:
                done, _ = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
                if any(not t.cancelled() and t.exception() for t in done):
                    conn.rst()  # a reset on one side is passed on to the other
            finally:
                for task in pipes:
                    task.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
        except asyncio.CancelledError:
            pass  # reset by a fault or by close()
        finally:
            self._conns.discard(conn)
            for w in (conn.client, conn.server):
                if w is not None:
                    w.close()

    async def _pipe(
        self, conn: _Conn, d: str, src: asyncio.StreamReader, dst: asyncio.StreamWriter
    ) -> None:
        """Read ``src`` into a delay queue; write to ``dst`` when due, capped and faulted."""
        queue: asyncio.Queue[tuple[float, bytes] | OSError | None] = asyncio.Queue(maxsize=64)

        async def read() -> None:
            while True:
                await self._flowing[d].wait()
                try:
                    data = await src.read(_CHUNK)
                except OSError as exc:  # e.g. reset by the peer: raised again by the writer
                    await queue.put(exc)
                    return
                if not data:
                    await queue.put(None)
                    return
                delay, jitter = self._delay[d]
                due = max(time.monotonic() + delay + random.uniform(0, jitter), conn.last_due[d])
                conn.last_due[d] = due
                await queue.put((due, data))

        reader = asyncio.create_task(read())
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, OSError):
                    raise item
                due, data = item
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await self._flowing[d].wait()
                while data:
                    piece, data = await self._take(d, data)
                    if (limit := self._drop[d]) is not None:
                        keep = max(0, limit - conn.forwarded[d])
                        self._dropped[d] += len(piece) - min(keep, len(piece))
                        piece = piece[:keep]
                    piece, reset = self._check_reset(conn, d, piece)
                    dst.write(piece)
                    await dst.drain()
                    conn.forwarded[d] += len(piece)
                    self._forwarded[d] += len(piece)
                    if reset:
                        await asyncio.sleep(0.05)  # let loopback deliver the last bytes
                        self._resets += 1
                        conn.rst()
                        return
            if dst.can_write_eof():
                dst.write_eof()  # pass on a half-close
        finally:
            reader.cancel()

    async def _take(self, d: str, data: bytes) -> tuple[bytes, bytes]:
        """Split off the next piece of ``data`` the rate cap allows, waiting for tokens."""
        while (rate := self._rate[d]) is not None:
            burst = max(rate * 0.02, 1024.0)
            tokens, stamp = self._buckets.get(d, (0.0, time.monotonic()))
            now = time.monotonic()
            tokens = min(burst, tokens + (now - stamp) * rate)
            n = min(len(data), int(burst))
            if tokens >= n:
                self._buckets[d] = (tokens - n, now)
                return data[:n], data[n:]
            self._buckets[d] = (tokens, now)
            await asyncio.sleep((n - tokens) / rate)
        return data, b""

    def _check_reset(self, conn: _Conn, d: str, piece: bytes) -> tuple[bytes, bool]:
        """Trim ``piece`` to the reset budget; True when the connection must be reset now."""
        if (armed := self._reset[d]) is None:
            return piece, False
        n_bytes, times = armed
        left = n_bytes - (conn.forwarded[d] - conn.reset_base[d])
        if len(piece) < left:
            return piece, False
        if times is not None:
            self._reset[d] = None if times <= 1 else (n_bytes, times - 1)
        return piece[: max(left, 0)], True
