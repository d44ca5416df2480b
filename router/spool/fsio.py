"""Durable file-system primitives. Every ordering that durability depends on lives here.

POSIX makes file data durable on fsync of the file, and a directory entry (a create, a rename,
an unlink) durable only on fsync of the directory that holds it. Skipping the second is the most
common way "written" files vanish after a power cut (see docs/spool-format.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from router.errors import StorageFault


def fsync_file(fd: int) -> None:
    """fsync ``fd``; a failure is a StorageFault and must never be retried as success."""
    try:
        os.fsync(fd)
    except OSError as exc:
        raise StorageFault(f"fsync failed: {exc.strerror}") from exc


def fsync_dir(path: Path) -> None:
    """Make the directory entries in ``path`` (creates, renames, unlinks) durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise StorageFault(f"cannot open directory {path} to fsync it: {exc.strerror}") from exc
    try:
        os.fsync(fd)
    except OSError as exc:
        raise StorageFault(f"fsync of directory {path} failed: {exc.strerror}") from exc
    finally:
        os.close(fd)


def make_dirs(path: Path, mode: int = 0o700) -> None:
    """Create ``path`` and its missing parents, fsyncing each parent that gained an entry."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            continue
        fsync_dir(directory.parent)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file, whole."""
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        fsync_file(fd)  # the data first ...
    finally:
        os.close(fd)
    os.replace(temp, path)  # ... then the name points at it ...
    fsync_dir(path.parent)  # ... and the name itself is made durable.


def free_bytes(path: Path) -> int:
    """Bytes available to this (unprivileged) process on the file system holding ``path``."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize
