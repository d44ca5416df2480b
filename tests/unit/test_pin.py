"""The operator PIN: trivial PINs refused, stored only as a salted hash in a 0600 file,
verified, and wrong PINs rate-limited."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from router.control.auth import PinRefused, PinStore, check_new_pin, write_pin


@pytest.mark.parametrize("pin", ["", "123", "12a4", "0000", "1234", "98765", "１２３４５"])
def test_trivial_pins_are_refused(pin: str) -> None:
    with pytest.raises(PinRefused):
        check_new_pin(pin)


@pytest.mark.parametrize("pin", ["2580", "1357", "90210", "4711"])
def test_reasonable_pins_are_accepted(pin: str) -> None:
    check_new_pin(pin)


def test_the_pin_is_stored_hashed_in_a_private_file_and_verified(tmp_path: Path) -> None:
    path = tmp_path / "state" / "operator.pin"
    write_pin(path, "2580")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "2580" not in path.read_text()
    store = PinStore(path)
    assert store.verify("2580")
    assert store.verify("2580")  # remembered: no second scrypt, same answer
    assert not store.verify("2581")
    write_pin(path, "4711")  # a new PIN replaces the old one, and the remembered one
    assert not store.verify("2580")
    assert store.verify("4711")


def test_no_pin_set_verifies_nothing(tmp_path: Path) -> None:
    store = PinStore(tmp_path / "operator.pin")
    assert not store.is_set()
    assert not store.verify("2580")


def test_wrong_pins_are_rate_limited(tmp_path: Path) -> None:
    path = tmp_path / "operator.pin"
    write_pin(path, "2580")
    store = PinStore(path, limit=5, window=60.0)
    for _ in range(4):
        assert not store.verify("1111")
    assert not store.limited()
    assert not store.verify("1111")
    assert store.limited()
    import time

    assert not store.limited(now=time.monotonic() + 61)  # a minute later it lifts
