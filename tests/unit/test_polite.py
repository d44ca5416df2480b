"""Polite mode: the rate grows while the queue is empty, shrinks as queueing delay rises, and
the RTT comes from the kernel."""

from __future__ import annotations

import datetime as dt
import socket

import pytest

from router.wan.polite import PoliteController, tcp_rtt
from router.wan.rate import RateGate, RatePolicy


def _feed(controller: PoliteController, rtt: float, seconds: float, start: float) -> float:
    now = start
    while now < start + seconds:
        controller.observe(rtt, now)
        now += 0.1
    return now


def test_an_empty_queue_lets_the_rate_climb_to_the_maximum() -> None:
    controller = PoliteController(max_rate=2_000_000)
    _feed(controller, 0.5, 5, 0.0)
    assert controller.rate == 2_000_000
    assert controller.base_rtt == 0.5


def test_queueing_delay_above_target_brings_the_rate_down_and_it_recovers() -> None:
    controller = PoliteController(max_rate=2_000_000, target=0.1)
    now = _feed(controller, 0.5, 5, 0.0)
    now = _feed(controller, 0.65, 3, now)  # 150 ms of queue: over target, under twice
    assert controller.rate < 1_000_000
    now = _feed(controller, 0.9, 3, now)  # 400 ms: halves, once per base RTT at most
    assert controller.rate == controller.min_rate
    _feed(controller, 0.5, 5, now)  # the clinic's traffic is gone
    assert controller.rate == 2_000_000


def test_delay_at_target_holds_the_rate_steady() -> None:
    controller = PoliteController(max_rate=2_000_000, target=0.1)
    now = _feed(controller, 0.5, 0.35, 0.0)
    now = _feed(controller, 0.6, 0.5, now)  # the filter (min of 4 samples) settles
    before = controller.rate
    assert 0 < before < 2_000_000
    _feed(controller, 0.6, 3, now)
    assert abs(controller.rate - before) < 0.05 * 2_000_000


def test_the_base_rtt_forgets_old_minima() -> None:
    controller = PoliteController(max_rate=1e6, base_history=600)
    controller.observe(0.2, 0.0)
    controller.observe(0.5, 700.0)  # a route change 11 minutes later: the old base expired
    assert controller.base_rtt == 0.5


def test_the_gate_applies_the_polite_rate_under_the_calendar_cap() -> None:
    now = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)
    gate = RateGate(RatePolicy(bits_per_second=1_000_000, burst_bytes=16 * 1024))
    gate.limit_to(80_000)
    assert gate.cap_at(now) == 80_000
    gate.sent(100_000, now)
    decision = gate.ask(1000, now)
    assert not decision.allowed and decision.wait == pytest.approx(8.4, rel=0.01)
    gate.limit_to(5_000_000)
    assert gate.cap_at(now) == 1_000_000  # never above the configured cap
    gate.limit_to(None)
    assert gate.cap_at(now) == 1_000_000


def test_tcp_rtt_reads_the_kernel_estimate_of_a_real_connection() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
        with client, peer:
            client.sendall(b"x" * 1000)
            peer.recv(1000)
            rtt = tcp_rtt(client)
            assert rtt is not None and 0 < rtt < 0.5
    assert tcp_rtt(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) is None
