"""A built appliance image booted under QEMU (TCG), driven from the host for the image tests.

The image is copied (sparse) and enlarged, so first boot must grow the data partition; the
commissioning file goes onto its FAT boot partition with mtools. The guest's DICOM port is
forwarded to 127.0.0.1 on the host, and the guest reaches the host's 127.0.0.1 as 10.0.2.2
(QEMU user networking): the host sees loopback traffic only.

amd64 boots as a PC does: OVMF (UEFI) runs systemd-boot from the image's boot partition.
arm64 boots QEMU's generic ``virt`` machine (QEMU 7.2 has no Raspberry Pi 4 model) by direct
kernel boot: the kernel, initramfs and cmdline.txt are taken from the image's boot partition,
so what is tested is what the Pi's firmware would load, only the firmware step differs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
# Markers on the serial console (systemd's status lines and waystation-boot-check).
ROUTER_READY = re.compile(r"waystation-image: router READY")
ROOT_READ_ONLY = re.compile(r"waystation-image: root read-only: (\S+)")
DATA_MOUNTED = re.compile(r"waystation-image: data partition: (\S+) ext4 .*size (\d+)M")
BROKEN = re.compile(
    r"emergency mode|Kernel panic|waystation-image: ERROR|UNEXPECTED INCONSISTENCY"
    r"|Failed to mount|You are in rescue mode|Give root password for maintenance"
)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class Layout:
    """Where the partitions are, from ``waystation-ARCH.layout`` beside the image."""

    boot_offset_mib: int
    root_offset_mib: int
    root_mib: int
    data_offset_mib: int
    data_mib: int

    @classmethod
    def read(cls, path: Path) -> Layout:
        values = dict(line.split("=", 1) for line in path.read_text().split())
        return cls(*(int(values[name]) for name in cls.__dataclass_fields__))


class BootFailed(AssertionError):
    """The guest did not reach a marker, or showed a sign of a broken system."""


def image_dir(arch: str) -> Path:
    """Where ``make image ARCH=arch`` left its outputs."""
    default = Path(__file__).resolve().parents[2] / "build" / "image" / arch
    return Path(os.environ.get("WAYSTATION_IMAGE_DIR", default))


class Machine:
    """One disk (a copy of the built image) and the QEMU runs that boot it."""

    def __init__(self, arch: str, workdir: Path, *, grow_by_mib: int = 1024) -> None:
        self.arch = arch
        self.workdir = workdir
        source = image_dir(arch)
        image = source / f"waystation-{arch}.img"
        if not image.exists():
            raise FileNotFoundError(f"{image} missing: run `make image ARCH={arch}` first")
        self.layout = Layout.read(source / f"waystation-{arch}.layout")
        self.disk = workdir / "disk.img"
        subprocess.run(["cp", "--sparse=always", image, self.disk], check=True)
        with open(self.disk, "r+b") as fh:
            fh.truncate(self.disk.stat().st_size + grow_by_mib * MIB)
        self.boots = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.serial = workdir / "serial-0.log"
        self.monitor = workdir / "monitor.sock"
        if arch == "amd64":
            self.vars = workdir / "OVMF_VARS.fd"
            shutil.copy("/usr/share/OVMF/OVMF_VARS_4M.fd", self.vars)
        else:
            self._extract_kernel()

    # -- the boot partition ------------------------------------------------------------------

    def _fat(self) -> str:
        return f"{self.disk}@@{self.layout.boot_offset_mib * MIB}"

    def put_boot_file(self, name: str, text: str) -> None:
        """Write a file onto the image's FAT boot partition (as the engineer's laptop does)."""
        local = self.workdir / name
        local.write_text(text)
        subprocess.run(["mcopy", "-o", "-i", self._fat(), str(local), f"::/{name}"], check=True)

    def boot_files(self) -> list[str]:
        """Names on the boot partition (only while QEMU is stopped)."""
        out = subprocess.run(
            ["mdir", "-b", "-i", self._fat(), "::/"], check=True, capture_output=True, text=True
        ).stdout
        return [line.rstrip("/").rsplit("/", 1)[-1] for line in out.split()]

    def read_boot_file(self, name: str) -> str:
        """A file from the boot partition (only while QEMU is stopped)."""
        return subprocess.run(
            ["mtype", "-i", self._fat(), f"::/{name}"], check=True, capture_output=True, text=True
        ).stdout

    def _extract_kernel(self) -> None:
        for name in ("vmlinuz", "initrd.img", "cmdline.txt"):
            subprocess.run(
                ["mcopy", "-o", "-i", self._fat(), f"::/{name}", str(self.workdir / name)],
                check=True,
            )

    # -- partitions as files (while QEMU is stopped) -----------------------------------------

    def root_sha256(self) -> str:
        """SHA-256 of the whole root partition: unchanged by a boot if root is read-only."""
        digest = hashlib.sha256()
        with open(self.disk, "rb") as fh:
            fh.seek(self.layout.root_offset_mib * MIB)
            left = self.layout.root_mib * MIB
            while left:
                block = fh.read(min(left, 4 * MIB))
                digest.update(block)
                left -= len(block)
        return digest.hexdigest()

    def fsck(self, which: str) -> str:
        """``e2fsck -fn`` of the root or data partition (read-only check); raises if unclean."""
        offset = {"root": self.layout.root_offset_mib, "data": self.data_offset()}[which]
        part = self.workdir / f"{which}.check.ext4"
        # e2fsck checks a file: carve the partition out (sparse, a few seconds).
        size = self._partition_bytes(which)
        subprocess.run(
            [
                "dd",
                f"if={self.disk}",
                f"of={part}",
                "bs=1M",
                f"skip={offset}",
                f"count={size // MIB}",
                "conv=sparse",
                "status=none",
            ],
            check=True,
        )
        try:
            run = subprocess.run(["e2fsck", "-fn", str(part)], capture_output=True, text=True)
        finally:
            part.unlink()
        if run.returncode != 0:
            raise BootFailed(f"e2fsck -fn {which}: exit {run.returncode}\n{run.stdout}{run.stderr}")
        return run.stdout.strip().splitlines()[-1]

    def data_offset(self) -> int:
        return self.layout.data_offset_mib

    def _partition_bytes(self, which: str) -> int:
        if which == "root":
            return self.layout.root_mib * MIB
        out = subprocess.run(
            ["sfdisk", "-d", str(self.disk)], check=True, capture_output=True, text=True
        ).stdout
        sizes = re.findall(r"start=\s*(\d+), size=\s*(\d+)", out)
        start, size = (int(v) for v in sizes[2])
        assert start * 512 == self.layout.data_offset_mib * MIB
        return size * 512

    # -- running -----------------------------------------------------------------------------

    def start(self, forwards: dict[int, int]) -> None:
        """Boot; ``forwards`` maps host ports (on 127.0.0.1) to the guest's ports."""
        assert self.proc is None, "already running"
        self.serial = self.workdir / f"serial-{self.boots}.log"
        self.boots += 1
        fwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in forwards.items())
        common = [
            "-m", "1024", "-smp", "2", "-accel", "tcg", "-display", "none", "-no-reboot",
            "-drive", f"file={self.disk},format=raw,if=virtio,cache=writeback",
            "-netdev", f"user,id=n0,net=10.0.2.0/24{fwd}",
            "-device", "virtio-net-pci,netdev=n0",
            "-serial", f"file:{self.serial}",
            "-monitor", f"unix:{self.monitor},server,nowait",
        ]  # fmt: skip
        if self.arch == "amd64":
            # -cpu max: numpy 2.4's wheels need x86-64-v2 (as every PC of the last decade has).
            command = [
                "qemu-system-x86_64", "-machine", "q35", "-cpu", "max",
                "-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
                "-drive", f"if=pflash,format=raw,file={self.vars}",
                "-device", "i6300esb", *common,
            ]  # fmt: skip
        else:
            cmdline = (self.workdir / "cmdline.txt").read_text().strip()
            # The Pi's serial console is ttyS1; the virt machine's is ttyAMA0.
            cmdline = re.sub(r"console=(serial0|ttyS\d)\S*", "console=ttyAMA0,115200", cmdline)
            command = [
                "qemu-system-aarch64", "-machine", "virt", "-cpu", "cortex-a72",
                "-kernel", str(self.workdir / "vmlinuz"),
                "-initrd", str(self.workdir / "initrd.img"),
                "-append", cmdline, *common,
            ]  # fmt: skip
        log = open(self.workdir / f"qemu-{self.boots}.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        print(f"[image] boot {self.boots} ({self.arch}): {' '.join(command)}")

    def log(self) -> str:
        """The serial console so far, without colour codes."""
        try:
            raw = self.serial.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        return ANSI.sub("", raw)

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Poll the serial log for ``pattern``; fail at once on a sign of a broken system."""
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        while True:
            text = self.log()
            if match := pattern.search(text):
                print(f"[image]   {time.monotonic() - started:5.1f}s: {match.group(0)!r}")
                return match
            if broken := BROKEN.search(text):
                raise BootFailed(f"broken boot: {broken.group(0)!r}\n{self.tail()}")
            if self.proc is not None and self.proc.poll() is not None:
                raise BootFailed(f"QEMU exited ({self.proc.returncode})\n{self.tail()}")
            if time.monotonic() > deadline:
                raise BootFailed(f"no {pattern.pattern!r} within {timeout:.0f} s\n{self.tail()}")
            time.sleep(0.5)

    def tail(self, lines: int = 60) -> str:
        """The serial log's last lines and, for the why, the guest's own journal."""
        return "\n".join(self.log().splitlines()[-lines:]) + self.journal()

    def journal(self, lines: int | None = 80) -> str:
        """The last lines of the guest's systemd journal, read from the data partition on the
        disk file with debugfs (works while the guest runs; best effort, for failure reports)."""
        out = self.workdir / "journal"
        part = self.workdir / "data.journal.ext4"
        try:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            size = self._partition_bytes("data")
            subprocess.run(
                ["dd", f"if={self.disk}", f"of={part}", "bs=1M", f"skip={self.data_offset()}",
                 f"count={size // MIB}", "conv=sparse", "status=none"],
                check=True,
            )  # fmt: skip
            subprocess.run(
                ["debugfs", "-R", f"rdump /log/journal {out}", str(part)],
                capture_output=True,
                check=True,
            )
            text = subprocess.run(
                ["journalctl", "-D", str(out / "journal"), "--no-pager", "-n", str(lines or "all")],
                capture_output=True,
                text=True,
            ).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            return f"\n--- guest journal unavailable: {exc}"
        finally:
            part.unlink(missing_ok=True)
        return f"\n--- guest journal (last {lines or 'all'} lines) ---\n{text}"

    def power_cut(self) -> None:
        """SIGKILL QEMU: the guest loses everything not yet on the disk, as on a power cut."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def shutdown(self, timeout: float = 240) -> None:
        """A clean power-off (ACPI power button), waiting for QEMU to exit."""
        assert self.proc is not None
        self._monitor_powerdown()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.power_cut()
            raise BootFailed(f"no clean power-off within {timeout} s\n{self.tail()}") from None
        self.proc = None

    def _monitor_powerdown(self) -> None:
        # The power button (ACPI on amd64, the virt machine's GPIO key on arm64): the guest's
        # systemd-logind powers off, and QEMU exits once it has.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as mon:
            mon.connect(str(self.monitor))
            mon.sendall(b"system_powerdown\n")
            time.sleep(0.5)

    def stop(self) -> None:
        """Whatever state: make sure QEMU is gone (test teardown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.power_cut()
        self.proc = None
