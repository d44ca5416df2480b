"""The built appliance image, booted under QEMU: commissioning, routing, read-only root, the
data partition, and power cuts mid-ingest.

Run by ``make image-test ARCH=amd64|arm64`` (never by ``make test``: marked ``image``). The
tests share one machine and run in order: first boot, then (``WAYSTATION_IMAGE_POWER_CUTS``,
default 3) power cuts while a modality is sending, then a last boot that must deliver every
acknowledged object, and a clean power-off after which both ext4 file systems check clean and
the root partition is bit-for-bit what was built.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.image.machine import (
    DATA_MOUNTED,
    ROOT_READ_ONLY,
    ROUTER_READY,
    BootFailed,
    Machine,
)
from tests.support.dicomgen import dataset_sha256, make_ct_series, make_tiny_objects
from tests.support.peers import Storescp, free_port, require, storescu
from tests.support.sender import send

pytestmark = [pytest.mark.image, pytest.mark.timeout(3600)]

ARCH = os.environ["WAYSTATION_IMAGE_ARCH"]  # tests/image/conftest.py: only make image-test
POWER_CUTS = int(os.environ.get("WAYSTATION_IMAGE_POWER_CUTS", "3"))
# Emulated boots take 30-120 s on a loaded machine (arm64 slower): generous, never fixed sleeps.
BOOT_TIMEOUT = float(os.environ.get("WAYSTATION_IMAGE_BOOT_TIMEOUT", "900"))
GUEST_DICOM = 11112
AE = "WAYSTATION"
# A throwaway key: the test only checks that SSH answers when the file lists a key.
SSH_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKuMBpFWt0A8xuYg5yrx3tRVIjOCWnG3T6pBMxfxz5Q1 image-test"
)


def commissioning_file(destination_port: int) -> str:
    """The engineer's waystation.toml: receive on 11112, deliver to the host's storescp."""
    return f"""
[unit]
name = "image-test"
ae_title = "{AE}"

[ingest]
listen = "0.0.0.0:{GUEST_DICOM}"

[spool]
path = "spool"
min_free = "64 MiB"

[appliance]
ssh_authorized_keys = ["{SSH_KEY}"]

[[destinations]]
name = "host"
type = "dimse"
ae_title = "HOSTSCP"
host = "10.0.2.2"
port = {destination_port}

[[routes]]
name = "everything"
to = ["host"]
"""


@dataclass
class Unit:
    """The machine under test and what the host has seen of it."""

    machine: Machine
    destination: Storescp
    dicom_port: int = field(default_factory=free_port)
    ssh_port: int = field(default_factory=free_port)
    closed_port: int = field(default_factory=free_port)
    root_sha256: str = ""
    acknowledged: dict[str, str] = field(default_factory=dict)  # sha256 -> file name

    def boot(self) -> None:
        """Boot and wait for the router READY and answering C-ECHO."""
        self.machine.start(
            {self.dicom_port: GUEST_DICOM, self.ssh_port: 22, self.closed_port: 5000}
        )
        self.machine.wait_for(ROUTER_READY, BOOT_TIMEOUT)
        self.echo(timeout=300)

    def echo(self, timeout: float) -> None:
        """DCMTK echoscu from the host until it succeeds (the forward exists before the guest
        listens)."""
        deadline = time.monotonic() + timeout
        while True:
            run = subprocess.run(
                [require("echoscu"), "-aec", AE, "-to", "20", "127.0.0.1", str(self.dicom_port)],
                capture_output=True,
                text=True,
            )
            if run.returncode == 0:
                print(f"[image]   C-ECHO to {AE} through 127.0.0.1:{self.dicom_port}: success")
                return
            if time.monotonic() > deadline:
                raise BootFailed(f"C-ECHO never succeeded: {run.stderr}\n{self.machine.tail()}")
            time.sleep(2)

    def delivered(self) -> set[str]:
        return {dataset_sha256(path) for path in self.destination.files()}


@pytest.fixture(scope="module")
def unit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unit]:
    for tool in ("echoscu", "storescu", "storescp", "mcopy", "e2fsck", "sfdisk"):
        require(tool)
    work = tmp_path_factory.mktemp(f"image-{ARCH}")
    machine = Machine(ARCH, work)
    destination = Storescp(work / "received", aet="HOSTSCP").start()
    unit = Unit(machine, destination)
    unit.root_sha256 = machine.root_sha256()
    machine.put_boot_file("waystation.toml", commissioning_file(destination.port))
    try:
        yield unit
    finally:
        machine.stop()
        destination.stop()


def test_boot_partition_holds_what_the_firmware_loads(unit: Unit) -> None:
    """The Pi's firmware step cannot be booted under QEMU: check what it would read instead."""
    machine = unit.machine
    names = {name.lower() for name in machine.boot_files()}
    if ARCH == "arm64":
        # The Pi 4's boot firmware and its device tree, from Debian's raspi-firmware and kernel.
        for needed in ("start4.elf", "fixup4.dat", "bcm2711-rpi-4-b.dtb", "vmlinuz", "initrd.img"):
            assert needed in names, f"{needed} missing from the boot partition: {sorted(names)}"
        config = machine.read_boot_file("config.txt")
        for line in ("arm_64bit=1", "upstream_kernel=1", "kernel=vmlinuz", "initramfs initrd.img"):
            assert line in config, f"config.txt lacks {line!r}"
        cmdline = machine.read_boot_file("cmdline.txt")
        assert cmdline.count("\n") == 1, "cmdline.txt must be one line"
    else:
        assert "efi" in names and "loader" in names, sorted(names)
        entry = machine.read_boot_file("loader/entries/waystation.conf")
        assert "linux /vmlinuz" in entry and "initrd /initrd.img" in entry, entry
        cmdline = entry
        assert "editor no" in machine.read_boot_file("loader/loader.conf")
    for option in ("root=LABEL=ws-root", " ro ", "console=tty1"):
        assert option in cmdline, f"kernel command line lacks {option!r}: {cmdline}"
    print(f"[image]   boot partition ({ARCH}): boot loader, kernel, initramfs, {cmdline!r}")


def test_first_boot_commissions_and_routes_a_study(unit: Unit, tmp_path: Path) -> None:
    machine = unit.machine
    unit.machine.start({unit.dicom_port: GUEST_DICOM, unit.ssh_port: 22, unit.closed_port: 5000})
    root = machine.wait_for(ROOT_READ_ONLY, BOOT_TIMEOUT)
    assert root.group(1) == "/dev/vda2"
    data = machine.wait_for(DATA_MOUNTED, BOOT_TIMEOUT)
    assert data.group(1) == "/dev/vda3"
    grown = int(data.group(2))
    assert grown > machine.layout.data_mib + 512, "the data partition did not grow to the disk"
    print(f"[image]   data partition grown from {machine.layout.data_mib} MiB to {grown} MiB")
    machine.wait_for(ROUTER_READY, BOOT_TIMEOUT)
    unit.echo(timeout=300)

    study = make_ct_series(tmp_path / "study", count=6, rows=64, cols=64, seed=7)
    sent = storescu(study, port=unit.dicom_port, aec=AE)
    assert sent.ok, sent.stderr
    print(f"[image]   storescu: {sent.succeeded} of {len(study)} objects acknowledged")
    unit.destination.wait_for_files(len(study), timeout=600)
    expected = {dataset_sha256(path) for path in study}
    assert expected <= unit.delivered()
    print(f"[image]   all {len(study)} delivered to the host's storescp (SHA-256 of data sets)")
    unit.acknowledged.update({sha: "study" for sha in expected})

    banner = _read_banner(unit.ssh_port)
    assert banner.startswith(b"SSH-2.0-"), banner
    print(f"[image]   SSH answers (the file lists a key): {banner.strip().decode()}")
    assert _read_banner(unit.closed_port, timeout=10) == b"", "port 5000 is not firewalled"
    print("[image]   a port nothing opened (5000) is closed")


def test_power_cuts_mid_ingest_lose_no_acknowledged_object(unit: Unit, tmp_path: Path) -> None:
    machine = unit.machine
    objects = make_tiny_objects(tmp_path / "tiny", count=120 * max(POWER_CUTS, 1), studies=1)
    batches = [objects[i::POWER_CUTS] for i in range(POWER_CUTS)] if POWER_CUTS else []
    for cut, batch in enumerate(batches, start=1):
        if machine.proc is None:
            unit.boot()
        acked: list[Path] = []
        sender = threading.Thread(
            target=send,
            args=(batch, unit.dicom_port),
            kwargs={"on_ack": lambda path, _status, sink=acked: sink.append(path), "timeout": 60},
            daemon=True,
        )
        sender.start()
        wanted = 10 + 7 * cut
        deadline = time.monotonic() + 600
        while len(acked) < wanted and sender.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(acked) >= wanted, f"only {len(acked)} acknowledged before the cut"
        machine.power_cut()
        sender.join(120)
        unit.acknowledged.update({dataset_sha256(path): path.name for path in acked})
        print(f"[image]   power cut {cut}: QEMU killed after {len(acked)} acknowledged objects")

    if machine.proc is None:
        unit.boot()
    deadline = time.monotonic() + 900
    while not set(unit.acknowledged) <= unit.delivered():
        if time.monotonic() > deadline:
            missing = sorted(set(unit.acknowledged) - unit.delivered())
            raise AssertionError(f"{len(missing)} acknowledged objects never delivered")
        time.sleep(1)
    print(
        f"[image]   after {POWER_CUTS} power cuts every one of {len(unit.acknowledged)} "
        "acknowledged objects reached the host, data set SHA-256 equal"
    )


def test_clean_after_everything(unit: Unit) -> None:
    machine = unit.machine
    if machine.proc is None:
        unit.boot()
    machine.shutdown()
    print(f"[image]   clean power-off after {machine.boots} boots")
    names = machine.boot_files()
    assert "waystation.toml" not in [n.lower() for n in names], names
    assert "waystation-problems.txt" not in [n.lower() for n in names], names
    print("[image]   first boot installed and removed waystation.toml from the boot partition")
    for which in ("root", "data"):
        print(f"[image]   e2fsck -fn {which}: {machine.fsck(which)}")
    assert machine.root_sha256() == unit.root_sha256, "something wrote to the root partition"
    print("[image]   the root partition is bit-for-bit as built: root stayed read-only")
    for boot in range(machine.boots):
        log = (machine.workdir / f"serial-{boot}.log").read_text(errors="replace")
        assert "emergency" not in log.lower(), f"boot {boot + 1} went to emergency mode"
    print(f"[image]   no boot of {machine.boots} went to emergency mode")
    journal = machine.journal(lines=None)
    checks = re.findall(r"systemd-fsck\[\d+\]: (ws-data|ws-root|/dev/vda1): (.*)", journal)
    assert len(checks) >= machine.boots, f"fsck ran {len(checks)} times in {machine.boots} boots"
    repaired = [c for c in checks if re.search(r"FIXED|UNEXPECTED|ERROR|corrected|Fix", c[1])]
    assert not repaired, f"a file system needed repair at boot: {repaired}"
    replays = sum("recovering journal" in c[1] for c in checks)
    print(
        f"[image]   {len(checks)} boot-time file system checks, none repaired anything "
        f"({replays} ext4 journal replays after the power cuts)"
    )
    if ARCH == "amd64":  # the virt machine has no watchdog device
        assert "Watchdog running with a hardware timeout of 15s" in journal
        print("[image]   systemd drives the hardware watchdog (15 s)")


def _read_banner(port: int, timeout: float = 60) -> bytes:
    """The first bytes a TCP server sends; b"" when the connection is refused, reset or
    silent (QEMU accepts on the host side and closes when the guest refuses)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                data = conn.recv(64)
                if data:
                    return data
        except OSError:
            pass
        if time.monotonic() > deadline:
            return b""
        time.sleep(2)
