"""A packet-level WAN emulator: two network namespaces joined by a userspace TUN forwarder.

This kernel has no netem, so delay and loss are imposed in userspace on real IP packets, and
the TCP stacks on both ends are the real kernel's (CUBIC, BBR, retransmission, slow start)::

    namespace "a" (10.77.N.1) --tun--> forwarder process --tun--> namespace "b" (10.77.N.2)
                                       per direction: random loss (seeded), a rate-limited
                                       bottleneck with a drop-tail queue, one-way delay,
                                       scheduled outages (every packet dropped)

Usage (needs root, ``ip`` and /dev/net/tun)::

    with WanLink(LinkProfile(rate_bps=2_000_000, delay_s=0.25, loss=0.01)) as link:
        server = link.popen("b", ["storescp", ...])       # runs inside namespace b
        link.run("a", ["storescu", link.b_addr, ...])     # runs inside namespace a

The forwarder is ``python -m tests.support.wanlink forward CONFIG_JSON``; SIGUSR1 takes the
link down and SIGUSR2 brings it back (``link.down()`` / ``link.up()``). Each WanLink creates
and deletes only its own namespaces and devices (names carry the creating process id).

Also here, for measuring: ``sink`` and ``source`` sub-commands - a raw TCP transfer timed from
the connect to the sink's acknowledgement of the last byte (the "raw TCP ceiling").
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import itertools
import json
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_counter = itertools.count()


class LinkUnavailable(RuntimeError):
    """Namespaces or TUN devices cannot be created here (not root, no ``ip``, no TUN)."""


@dataclass(frozen=True)
class LinkProfile:
    """One emulated link, the same in both directions."""

    rate_bps: int  # bottleneck rate in bits per second
    delay_s: float  # one-way propagation delay (RTT is twice this plus queueing)
    loss: float = 0.0  # probability that a packet is dropped, each direction, seeded
    seed: int = 1
    # Drop-tail bottleneck queue; None = one bandwidth-delay product, at least 32 packets.
    queue_bytes: int | None = None
    # (start, end) seconds after the link starts during which every packet is dropped.
    outages: tuple[tuple[float, float], ...] = ()

    @property
    def queue_limit(self) -> int:
        """The bottleneck queue in bytes."""
        if self.queue_bytes is not None:
            return self.queue_bytes
        return max(32 * 1500, int(self.rate_bps / 8 * self.delay_s * 2))


def link_unavailable_reason() -> str | None:
    """Why a WanLink cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "the WAN link emulator needs root (network namespaces and TUN devices)"
    if shutil.which("ip") is None:
        return "the WAN link emulator needs iproute2's `ip`"
    if not os.path.exists("/dev/net/tun"):
        return "the WAN link emulator needs /dev/net/tun"
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise LinkUnavailable(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class WanLink:
    """Two namespaces, ``a`` and ``b``, joined by the emulated link. A context manager."""

    profile: LinkProfile
    subnet: int = field(default_factory=lambda: (os.getpid() * 7 + next(_counter)) % 250 + 1)
    forwarder: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def __post_init__(self) -> None:
        tag = f"{os.getpid()}x{next(_counter)}"
        self.ns = {"a": f"wsa{tag}", "b": f"wsb{tag}"}
        self.dev = {"a": f"wta{tag}"[:15], "b": f"wtb{tag}"[:15]}
        self.a_addr = f"10.77.{self.subnet}.1"
        self.b_addr = f"10.77.{self.subnet}.2"

    def start(self) -> WanLink:
        """Create the namespaces and devices and start the forwarder; raises LinkUnavailable."""
        reason = link_unavailable_reason()
        if reason:
            raise LinkUnavailable(reason)
        try:
            for ns in self.ns.values():
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            config = {"profile": asdict(self.profile), "a": self.dev["a"], "b": self.dev["b"]}
            self.forwarder = subprocess.Popen(
                [sys.executable, "-m", "tests.support.wanlink", "forward", json.dumps(config)],
                stdout=subprocess.PIPE,
                cwd=Path(__file__).resolve().parents[2],
            )
            assert self.forwarder.stdout is not None
            if self.forwarder.stdout.readline().strip() != b"ready":
                raise LinkUnavailable("the TUN forwarder did not start")
            self.started = time.monotonic()  # outages are timed from the forwarder's start
            for side, addr in (("a", self.a_addr), ("b", self.b_addr)):
                ns, dev = self.ns[side], self.dev[side]
                _ip("link", "set", dev, "netns", ns)
                _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "up")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the forwarder and delete the namespaces (and so their devices)."""
        if self.forwarder is not None and self.forwarder.poll() is None:
            self.forwarder.terminate()
            try:
                self.forwarder.wait(10)
            except subprocess.TimeoutExpired:
                self.forwarder.kill()
                self.forwarder.wait(10)
        if self.forwarder is not None and self.forwarder.stdout is not None:
            self.forwarder.stdout.close()
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    def down(self) -> None:
        """Drop every packet from now on (an outage) until :meth:`up`."""
        assert self.forwarder is not None
        self.forwarder.send_signal(signal.SIGUSR1)

    def up(self) -> None:
        """End an outage started by :meth:`down`."""
        assert self.forwarder is not None
        self.forwarder.send_signal(signal.SIGUSR2)

    def command(self, side: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside namespace ``side`` ("a" or "b")."""
        return ["ip", "netns", "exec", self.ns[side], *argv]

    def popen(self, side: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside namespace ``side``."""
        return subprocess.Popen(self.command(side, argv), **kwargs)

    def run(self, side: str, argv: Sequence[str], timeout: float = 600, **kwargs: Any
            ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run ``argv`` inside namespace ``side`` to completion (text output captured)."""
        return subprocess.run(self.command(side, argv), capture_output=True, text=True,
                              timeout=timeout, check=False, **kwargs)  # fmt: skip

    def reachable(self, timeout: float = 2.0) -> bool:
        """Whether a TCP connection attempt from a reaches b within ``timeout`` (a refusal
        counts: the packets got through)."""
        probe = [sys.executable, "-m", "tests.support.wanlink", "probe", self.b_addr, "9",
                 str(timeout)]  # fmt: skip
        done = self.run("a", probe, timeout=timeout + 30, cwd=Path(__file__).resolve().parents[2])
        return done.returncode == 0

    def exists(self) -> bool:
        """Whether this link's namespaces still exist."""
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return any(ns in listed for ns in self.ns.values())

    def raw_tcp(self, nbytes: int, congestion: str = "cubic", port: int = 5201) -> TcpResult:
        """Send ``nbytes`` over one raw TCP connection from a to b and time it."""
        here, repo = ["-m", "tests.support.wanlink"], Path(__file__).resolve().parents[2]
        sink = self.popen("b", [sys.executable, *here, "sink", self.b_addr, str(port)],
                          stdout=subprocess.PIPE, cwd=repo)  # fmt: skip
        try:
            assert sink.stdout is not None
            sink.stdout.readline()  # "listening"
            done = self.run("a", [sys.executable, *here, "source", self.b_addr, str(port),
                                  str(nbytes), congestion], cwd=repo)  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"raw TCP source failed: {done.stderr.strip()[-500:]}")
            return TcpResult(**json.loads(done.stdout))
        finally:
            sink.kill()
            sink.wait(10)

    def __enter__(self) -> WanLink:
        return self if self.forwarder is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class TcpResult:
    """A raw TCP transfer: bytes, seconds from connect to the sink's acknowledgement, the
    connect time (about one RTT) and the congestion control used."""

    nbytes: int
    seconds: float
    connect_s: float
    congestion: str

    @property
    def bits_per_second(self) -> float:
        """Goodput."""
        return self.nbytes * 8 / self.seconds


# --- the forwarder (runs as its own process) -----------------------------------------------


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    return fd


class _Direction:
    """One direction of the link: loss, then a rate-limited drop-tail queue, then delay."""

    def __init__(self, profile: LinkProfile, seed: int, out_fd: int) -> None:
        self.profile, self.out_fd = profile, out_fd
        self.random = random.Random(seed)
        self.queued: deque[tuple[float, int]] = deque()  # (departure time, size) in the queue
        self.queued_bytes = 0
        self.link_free = 0.0  # when the bottleneck finishes its current packet
        self.in_flight: list[tuple[float, int, bytes]] = []  # heap of (arrival, n, packet)
        self.sequence = itertools.count()
        self.forwarded = self.dropped = 0

    def accept(self, packet: bytes, now: float, down: bool) -> None:
        while self.queued and self.queued[0][0] <= now:
            self.queued_bytes -= self.queued.popleft()[1]
        if down or (self.profile.loss and self.random.random() < self.profile.loss):
            self.dropped += 1
            return
        if self.queued_bytes + len(packet) > self.profile.queue_limit:
            self.dropped += 1  # drop-tail: the bottleneck's buffer is full
            return
        departure = max(now, self.link_free) + len(packet) * 8 / self.profile.rate_bps
        self.link_free = departure
        self.queued.append((departure, len(packet)))
        self.queued_bytes += len(packet)
        arrival = departure + self.profile.delay_s
        heapq.heappush(self.in_flight, (arrival, next(self.sequence), packet))

    def deliver(self, now: float) -> float | None:
        """Write every packet due by ``now``; return when the next one is due."""
        while self.in_flight and self.in_flight[0][0] <= now:
            _, _, packet = heapq.heappop(self.in_flight)
            try:
                os.write(self.out_fd, packet)
                self.forwarded += 1
            except OSError:
                self.dropped += 1  # device not up yet, or gone
        return self.in_flight[0][0] if self.in_flight else None


def forward(config: dict[str, Any], ready: IO[str]) -> None:
    """Run the forwarder until SIGTERM."""
    outages = config["profile"].pop("outages", [])
    profile = LinkProfile(**config["profile"], outages=tuple(tuple(o) for o in outages))
    fd_a, fd_b = _open_tun(config["a"]), _open_tun(config["b"])
    directions = {
        fd_a: _Direction(profile, profile.seed * 2, fd_b),
        fd_b: _Direction(profile, profile.seed * 2 + 1, fd_a),
    }
    state = {"down": False, "running": True}
    signal.signal(signal.SIGUSR1, lambda *_: state.update(down=True))
    signal.signal(signal.SIGUSR2, lambda *_: state.update(down=False))
    signal.signal(signal.SIGTERM, lambda *_: state.update(running=False))
    start = time.monotonic()
    print("ready", file=ready, flush=True)
    while state["running"]:
        now = time.monotonic()
        due = [d.deliver(now) for d in directions.values()]
        upcoming = [t for t in due if t is not None]
        timeout = max(0.0, min(upcoming) - time.monotonic()) if upcoming else 0.5
        try:
            readable, _, _ = select.select(list(directions), [], [], timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        elapsed = now - start
        down = state["down"] or any(a <= elapsed < b for a, b in profile.outages)
        for fd in readable:
            for _ in range(64):  # drain what is there, bounded, then deliver again
                try:
                    packet = os.read(fd, 65535)
                except BlockingIOError:
                    break
                except OSError:
                    break
                directions[fd].accept(packet, now, down)


# --- raw TCP sink and source ---------------------------------------------------------------


def _sink(host: str, port: int) -> None:
    server = socket.create_server((host, port))
    print("listening", flush=True)
    conn, _ = server.accept()
    total = 0
    while chunk := conn.recv(1 << 20):
        total += len(chunk)
    conn.sendall(struct.pack(">Q", total))
    conn.close()


def _source(host: str, port: int, nbytes: int, congestion: str) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion.encode())
    t0 = time.monotonic()
    for _ in range(100):  # the sink may not be accepting yet
        try:
            sock.connect((host, port))
            break
        except ConnectionRefusedError:
            time.sleep(0.05)
            sock.close()
            sock = socket.socket()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion.encode())
            t0 = time.monotonic()
    connected = time.monotonic()
    block = b"\0" * (1 << 16)
    left = nbytes
    while left:
        left -= sock.send(block[: min(left, len(block))])
    sock.shutdown(socket.SHUT_WR)
    (received,) = struct.unpack(">Q", sock.recv(8))
    seconds = time.monotonic() - connected
    if received != nbytes:
        raise SystemExit(f"sink received {received} of {nbytes} bytes")
    print(json.dumps({"nbytes": nbytes, "seconds": seconds, "connect_s": connected - t0,
                      "congestion": congestion}))  # fmt: skip


def _probe(host: str, port: int, timeout: float) -> None:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except ConnectionRefusedError:
        pass  # refused: the link carried the SYN and the RST
    except OSError:
        raise SystemExit(1) from None


def main(argv: Sequence[str] | None = None) -> None:
    """The forwarder, sink and source entry points."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.wanlink")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("forward").add_argument("config")
    for name in ("sink", "source"):
        p = sub.add_parser(name)
        p.add_argument("host")
        p.add_argument("port", type=int)
        if name == "source":
            p.add_argument("nbytes", type=int)
            p.add_argument("congestion")
    probe = sub.add_parser("probe")
    probe.add_argument("host")
    probe.add_argument("port", type=int)
    probe.add_argument("timeout", type=float)
    args = parser.parse_args(argv)
    if args.command == "forward":
        forward(json.loads(args.config), sys.stdout)
    elif args.command == "probe":
        _probe(args.host, args.port, args.timeout)
    elif args.command == "sink":
        _sink(args.host, args.port)
    else:
        _source(args.host, args.port, args.nbytes, args.congestion)


if __name__ == "__main__":
    main()
