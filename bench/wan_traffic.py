"""The clinic's own traffic on the emulated link, for the polite-mode scenario (bench/wan_rate.py).

Run inside a namespace as ``python -m bench.wan_traffic COMMAND ...``:

* ``echo HOST PORT``: answers every line with the same line (the far end of the probe);
* ``ping HOST PORT SECONDS INTERVAL``: one TCP connection, a 64-byte request every
  ``INTERVAL`` seconds, waits for its answer; prints a JSON list of round-trip seconds (an
  interactive application: a remote desktop, a chat, a web page's small requests);
* ``sink HOST PORT SKIP``: takes one bulk upload; prints JSON with the bytes received after
  the first ``SKIP`` seconds (slow start left out) and the seconds they took;
* ``source HOST PORT SECONDS CONGESTION``: uploads as fast as TCP allows for ``SECONDS``
  (a competing bulk flow: a staff member's upload or a backup).
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from collections.abc import Sequence


def _echo(host: str, port: int) -> None:
    server = socket.create_server((host, port))
    print("listening", flush=True)
    conn, _ = server.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with conn, conn.makefile("rb") as lines:
        for line in lines:
            conn.sendall(line)


def _connect(host: str, port: int) -> socket.socket:
    for _ in range(200):  # the server may not be accepting yet
        try:
            return socket.create_connection((host, port), timeout=30)
        except ConnectionRefusedError:
            time.sleep(0.05)
    raise SystemExit(f"cannot connect to {host}:{port}")


def _ping(host: str, port: int, seconds: float, interval: float) -> None:
    sock = _connect(host, port)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = b"x" * 63 + b"\n"
    rtts: list[float] = []
    end = time.monotonic() + seconds
    with sock, sock.makefile("rb") as answers:
        while time.monotonic() < end:
            began = time.monotonic()
            sock.sendall(request)
            if answers.readline() != request:
                raise SystemExit("the echo server answered something else")
            rtts.append(time.monotonic() - began)
            time.sleep(max(0.0, interval - (time.monotonic() - began)))
    print(json.dumps(rtts))


def _sink(host: str, port: int, skip: float) -> None:
    server = socket.create_server((host, port))
    print("listening", flush=True)
    conn, _ = server.accept()
    first = counted_from = None
    counted = 0
    with conn:
        while chunk := conn.recv(1 << 16):
            now = time.monotonic()
            if first is None:
                first = now
            if now - first >= skip:
                if counted_from is None:
                    counted_from = now
                counted += len(chunk)
    last = time.monotonic()
    seconds = last - counted_from if counted_from is not None else 0.0
    print(json.dumps({"bytes": counted, "seconds": seconds}), flush=True)


def _source(host: str, port: int, seconds: float, congestion: str) -> None:
    sock = _connect(host, port)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, congestion.encode())
    block = b"\0" * (1 << 16)
    end = time.monotonic() + seconds
    with sock:
        while time.monotonic() < end:
            sock.send(block)
        sock.shutdown(socket.SHUT_WR)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point (see the module's docstring)."""
    parser = argparse.ArgumentParser(prog="python -m bench.wan_traffic")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, extra in (("echo", []), ("ping", ["seconds", "interval"]), ("sink", ["skip"]),
                        ("source", ["seconds", "congestion"])):  # fmt: skip
        p = sub.add_parser(name)
        p.add_argument("host")
        p.add_argument("port", type=int)
        for arg in extra:
            p.add_argument(arg, type=str if arg == "congestion" else float)
    args = parser.parse_args(argv)
    if args.command == "echo":
        _echo(args.host, args.port)
    elif args.command == "ping":
        _ping(args.host, args.port, args.seconds, args.interval)
    elif args.command == "sink":
        _sink(args.host, args.port, args.skip)
    else:
        _source(args.host, args.port, args.seconds, args.congestion)


if __name__ == "__main__":
    main()
