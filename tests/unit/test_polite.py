"""Polite mode: the rate grows while the queue is empty, in proportion to itself; shrinks as
queueing delay rises past half the target and halves past the target; the RTT comes from the
kernel, and the kernel paces the socket."""

from __future__ import annotations

import datetime as dt
import socket

import pytest

from router.wan.polite import PoliteController, pace, tcp_rtt
from router.wan.rate import RateGate, RatePolicy


def _feed(controller: PoliteController, rtt: float, seconds: float, start: float) -> float:
    now = start
    while now < start + seconds:
        controller.observe(rtt, now)
        now += 0.1
    return now


def test_an_empty_queue_lets_the_rate_climb_to_the_maximum() -> None:
    controller = PoliteController(max_rate=2_000_000)
    _feed(controller, 0.5, 20, 0.0)
    assert controller.rate == 2_000_000
    assert controller.base_rtt == 0.5


def test_growth_follows_the_rate_not_a_far_ceiling() -> None:
    # Without a cap max_rate is 100 Mbit/s; growing in its proportion overran a 2 Mbit/s
    # uplink within a second and filled its queue (the probe's p95 rose by 460 ms).
    controller = PoliteController(max_rate=100_000_000)
    _feed(controller, 0.5, 1, 0.0)  # two base RTTs of an empty queue
    assert controller.rate <= controller.min_rate * 1.4  # about e^(0.15 x 2), compounded
    assert controller.rate > controller.min_rate


def test_a_long_silence_between_samples_is_one_round_at_most() -> None:
    controller = PoliteController(max_rate=100_000_000, min_rate=1_000_000)
    controller.observe(0.5, 0.0)
    controller.observe(0.5, 60.0)  # no samples for a minute (the streams were idle)
    assert controller.rate == pytest.approx(1_000_000 * (1 + controller.gain))


def test_queueing_delay_above_target_brings_the_rate_down_and_it_recovers() -> None:
    controller = PoliteController(max_rate=2_000_000, target=0.1)
    now = _feed(controller, 0.5, 20, 0.0)
    assert controller.rate == 2_000_000
    now = _feed(controller, 0.575, 3, now)  # 75 ms: past the setpoint, under the target
    assert 500_000 < controller.rate < 1_500_000  # shrinks in proportion, no halving
    before = controller.rate
    now = _feed(controller, 0.9, 10.05, now)  # 400 ms, over target, for 20 base RTTs
    # Halved once at once, then once per hold-off (4 base RTTs, 2 s) while the queue stays:
    # six times in all, not twenty.
    assert controller.rate == pytest.approx(max(controller.min_rate, before / 64))
    _feed(controller, 0.5, 40, now)  # the clinic's traffic is gone
    assert controller.rate == 2_000_000


def _overrun(controller: PoliteController) -> float:
    """An empty link (base RTT 0.5 s), then a queue of 400 ms: returns the rate the
    controller had when it cut (its filter, the least of 4 samples, needs 4 to see it)."""
    controller.observe(0.5, 0.0)
    now = 0.1
    for _ in range(3):
        controller.observe(0.9, now)
        now += 0.1
    rate_at_cut = controller.rate
    controller.observe(0.9, now)
    assert controller.rate == pytest.approx(rate_at_cut / 2)
    return now


def test_a_cut_is_not_repeated_while_the_smoothed_rtt_still_shows_the_queue() -> None:
    # The kernel's smoothed RTT shows a cut's effect only round trips later: halving each
    # round trip while it still showed the old queue took the rate from just above a
    # 2 Mbit/s link to the minimum in five halvings (measured on the emulated link).
    controller = PoliteController(max_rate=100_000_000, target=0.1, rate=2_100_000)
    cut_at = _overrun(controller)
    halved = controller.rate
    _feed(controller, 0.9, 1.85, cut_at + 0.1)  # the queue still shows, under 4 base RTTs
    assert controller.rate == pytest.approx(halved)
    controller.observe(0.9, cut_at + 2.0)  # 4 base RTTs on: it may cut again
    assert controller.rate == pytest.approx(halved / 2)


def _growth_over_one_base_rtt(controller: PoliteController, now: float) -> tuple[float, float]:
    before = controller.rate
    for _ in range(5):  # 5 samples 0.1 s apart: one base RTT of an empty queue
        now += 0.1
        controller.observe(0.5, now)
    return controller.rate / before, now


def test_the_rate_approaches_where_the_queue_last_overran_with_care() -> None:
    controller = PoliteController(max_rate=100_000_000, target=0.1, rate=2_000_000)
    now = _overrun(controller)
    overran_at = controller.rate * 2
    for _ in range(4):  # the filter forgets the queue
        now += 0.1
        controller.observe(0.5, now)
    assert controller.rate < 0.7 * overran_at
    growth, now = _growth_over_one_base_rtt(controller, now)
    assert growth == pytest.approx(1.03**5, rel=0.01)  # 15% per base RTT, far below
    while controller.rate < 0.75 * overran_at:
        now += 0.1
        controller.observe(0.5, now)
    growth, now = _growth_over_one_base_rtt(controller, now)
    assert growth == pytest.approx(1.0075**5, rel=0.01)  # a quarter, near where it overran
    while controller.rate < 1.35 * overran_at:
        now += 0.1
        controller.observe(0.5, now)
    growth, _ = _growth_over_one_base_rtt(controller, now)
    assert growth == pytest.approx(1.03**5, rel=0.01)  # far above: the link has changed


def test_delay_at_half_the_target_holds_the_rate_steady() -> None:
    # The setpoint is half the target: the peaks, which the clinic's traffic feels, then
    # stay under the target.
    controller = PoliteController(max_rate=2_000_000, target=0.1)
    now = _feed(controller, 0.5, 0.35, 0.0)
    now = _feed(controller, 0.55, 0.5, now)  # the filter (min of 4 samples) settles
    before = controller.rate
    assert 0 < before < 2_000_000
    _feed(controller, 0.55, 3, now)
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


def test_pace_sets_the_kernel_pacing_rate_of_a_socket() -> None:
    with socket.socket() as sock:
        assert pace(sock, 800_000)
        option = getattr(socket, "SO_MAX_PACING_RATE", 47)
        assert sock.getsockopt(socket.SOL_SOCKET, option) == 100_000  # bytes per second
