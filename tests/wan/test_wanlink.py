"""The packet-level link emulator: real kernel TCP between two namespaces, held to a rate and a
delay, losing packets and going down when told to."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.support.peers import _missing
from tests.support.wanlink import LinkProfile, LinkUnavailable, WanLink, link_unavailable_reason


def _link(profile: LinkProfile) -> WanLink:
    reason = link_unavailable_reason()
    if reason:
        _missing(reason)
    try:
        return WanLink(profile).start()
    except LinkUnavailable as exc:
        _missing(f"cannot create network namespaces here: {exc}")


def _devices_in_root_namespace() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def test_a_namespace_pair_holds_rate_and_delay_and_tears_down_cleanly() -> None:
    link = _link(LinkProfile(rate_bps=8_000_000, delay_s=0.05))
    try:
        assert link.exists()
        result = link.raw_tcp(2_000_000)
        # The handshake takes one round trip: 2 x 50 ms, plus scheduling on a busy machine.
        assert 0.1 <= result.connect_s < 0.6
        # Never faster than the link (8 Mbit/s); slow start and a loaded machine cost some.
        assert 2e6 < result.bits_per_second <= 8.2e6
    finally:
        link.stop()
    assert not link.exists()
    assert link.forwarder is not None and link.forwarder.poll() is not None
    devices = _devices_in_root_namespace()
    assert link.dev["a"] not in devices and link.dev["b"] not in devices


def test_a_link_taken_down_drops_everything_until_it_comes_back() -> None:
    with _link(LinkProfile(rate_bps=8_000_000, delay_s=0.01)) as link:
        assert link.reachable()
        link.down()
        assert not link.reachable(timeout=1.5)
        link.up()
        assert link.reachable()


def test_a_scheduled_outage_starts_and_ends_on_time() -> None:
    with _link(LinkProfile(rate_bps=8_000_000, delay_s=0.01, outages=((0.0, 4.0),))) as link:
        assert not link.reachable(timeout=1.0)  # the link started less than 4 s ago
        time.sleep(max(0.0, 4.5 - (time.monotonic() - link.started)))
        assert link.reachable()


@pytest.mark.slow
def test_random_loss_collapses_cubic_but_not_bbr() -> None:
    # The measurement in WAN.md, repeated on real kernel TCP: 5 Mbit/s, 500 ms RTT, 2% loss.
    with _link(LinkProfile(rate_bps=5_000_000, delay_s=0.25, loss=0.02, seed=7)) as link:
        cubic = link.raw_tcp(2_000_000, "cubic", port=5301)
        bbr = link.raw_tcp(2_000_000, "bbr", port=5302)
    assert cubic.bits_per_second < 2.5e6
    assert bbr.bits_per_second > 1.5 * cubic.bits_per_second
