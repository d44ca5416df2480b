"""The commissioning screen's answers, turned into the two files first boot installs.

Only a light check here (the console must not load the router's configuration code): the
unit's own first-boot step validates the whole file, and its verdict comes back through the
notice the console already shows."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Answers:
    """The few things a unit needs to start."""

    unit_name: str
    ae_title: str
    port: str
    destination_name: str
    destination_ae: str
    destination_host: str
    destination_port: str
    pin: str
    pin_again: str


def problems(answers: Answers) -> list[str]:
    """Plain-words problems the engineer can fix before submitting."""
    found: list[str] = []
    if not answers.unit_name.strip():
        found.append("Give the unit a name.")
    for label, title in (("This unit's", answers.ae_title), ("The PACS's", answers.destination_ae)):
        if not 1 <= len(title.strip()) <= 16 or "\\" in title:
            found.append(f"{label} AE title needs 1 to 16 characters (no backslash).")
    for label, port in (("Listen port", answers.port), ("PACS port", answers.destination_port)):
        if not port.isdigit() or not 0 < int(port) < 65536:
            found.append(f"{label} must be a number from 1 to 65535.")
    if not answers.destination_host.strip():
        found.append("Give the PACS's address.")
    if answers.pin != answers.pin_again:
        found.append("The two PINs differ.")
    elif not answers.pin.isdigit() or len(answers.pin) < 4:
        found.append("The PIN needs at least 4 digits, digits only.")
    return found


def _text(value: str) -> str:
    # A JSON string of printable text is a valid TOML basic string.
    return json.dumps(value.strip(), ensure_ascii=True)


def to_toml(answers: Answers) -> str:
    """The configuration file for these answers."""
    name = answers.destination_name.strip() or "pacs"
    return f"""# Written by the console's commissioning screen.
[unit]
name = {_text(answers.unit_name)}
ae_title = {_text(answers.ae_title)}

[ingest]
listen = "0.0.0.0:{int(answers.port)}"

[spool]
path = "spool"

[[destinations]]
name = {_text(name)}
type = "dimse"
ae_title = {_text(answers.destination_ae)}
host = {_text(answers.destination_host)}
port = {int(answers.destination_port)}

[[routes]]
name = "everything"
to = [{_text(name)}]
"""


def submit(inbox: Path, answers: Answers) -> None:
    """Hand the answers to the unit: the PIN file first, then the configuration (its arrival
    is what starts the unit's first-boot step), each renamed into place whole."""
    for name, text in (
        ("waystation.pin", answers.pin + "\n"),
        ("waystation.toml", to_toml(answers)),
    ):
        temporary = inbox / f".{name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        temporary.replace(inbox / name)
