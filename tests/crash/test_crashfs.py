"""Tests proving that CrashFS (tests/support/crashfs.py) implements the strict durability model.

Each durability test has a twin that differs only in the fsync that makes the state durable,
so a file system that kept too much or too little fails one of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import random
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.crashfs import (
    REPO_ROOT,
    CrashFS,
    crashfs_available,
    crashfs_unavailable_reason,
)

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not crashfs_available(), reason=f"CrashFS: {crashfs_unavailable_reason()}"),
]

MiB = 1024 * 1024


@pytest.fixture
def crash(tmp_path: Path) -> Iterator[CrashFS]:
    """A mounted CrashFS; always unmounted, and the server must not have logged a traceback."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    fs = CrashFS(mountpoint)
    fs.mount()
    try:
        yield fs
    finally:
        fs.unmount()
    assert not fs.is_mounted()
    assert "Traceback" not in fs.server_log(), fs.server_log()


def fsync_path(path: Path) -> None:
    """fsync a file or directory by path (a directory fsync arrives as FUSE fsyncdir)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, data: bytes, *, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:  # a write can be short (e.g. the disk filled up mid-way)
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


# -- 1-4: the durability model ---------------------------------------------------------------
@pytest.mark.parametrize("sync_dir", [False, True])
def test_fsynced_file_needs_directory_fsync(crash: CrashFS, sync_dir: bool) -> None:
    path = crash.mountpoint / "a.dat"
    write_file(path, b"payload", sync=True)
    if sync_dir:
        fsync_path(crash.mountpoint)
    crash.cut_power()
    if sync_dir:
        assert path.read_bytes() == b"payload"
    else:
        assert not path.exists()
        assert os.listdir(crash.mountpoint) == []


@pytest.mark.parametrize("synced", ["parent", "child", "both"])
def test_new_directory_and_its_entries_need_their_own_fsyncs(crash: CrashFS, synced: str) -> None:
    sub = crash.mountpoint / "sub"
    sub.mkdir()
    write_file(sub / "f", b"x", sync=True)
    if synced in ("child", "both"):
        fsync_path(sub)
    if synced in ("parent", "both"):
        fsync_path(crash.mountpoint)
    crash.cut_power()
    assert sub.is_dir() == (synced != "child")
    assert (sub / "f").exists() == (synced == "both")
    if synced == "both":
        assert (sub / "f").read_bytes() == b"x"


def test_directory_fsync_without_file_fsync_leaves_empty_file(crash: CrashFS) -> None:
    path = crash.mountpoint / "a.dat"
    write_file(path, b"never synced", sync=False)  # close() flushes: must not count as a sync
    fsync_path(crash.mountpoint)
    assert path.read_bytes() == b"never synced"
    crash.cut_power()
    assert path.exists()
    assert path.stat().st_size == 0
    assert path.read_bytes() == b""


def test_unsynced_overwrite_truncate_and_chmod_revert(crash: CrashFS) -> None:
    path = crash.mountpoint / "a.dat"
    write_file(path, b"old contents", sync=True)
    fsync_path(crash.mountpoint)
    path.write_bytes(b"new")
    os.chmod(path, 0o600)
    crash.cut_power()
    assert path.read_bytes() == b"old contents"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    # fdatasync makes the data durable but (strictly) not the mode.
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"synced")
    os.fchmod(fd, 0o600)
    os.fdatasync(fd)
    os.close(fd)
    crash.cut_power()
    assert path.read_bytes() == b"synced"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.chmod(path, 0o600)
    fsync_path(path)
    crash.cut_power()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("existed", [False, True])
@pytest.mark.parametrize("sync_dir", [False, True])
def test_atomic_replace_needs_directory_fsync(
    crash: CrashFS, existed: bool, sync_dir: bool
) -> None:
    target, temp = crash.mountpoint / "state.json", crash.mountpoint / "state.json.tmp"
    if existed:
        write_file(target, b"old", sync=True)
        fsync_path(crash.mountpoint)
    write_file(temp, b"new", sync=True)
    os.rename(temp, target)
    assert target.read_bytes() == b"new"
    if sync_dir:
        fsync_path(crash.mountpoint)
    crash.cut_power()
    assert not temp.exists()
    if sync_dir:
        assert target.read_bytes() == b"new"
    elif existed:
        assert target.read_bytes() == b"old"
    else:
        assert not target.exists()


@pytest.mark.parametrize("synced", ["source", "destination", "both"])
def test_cross_directory_rename_halves_are_independent(crash: CrashFS, synced: str) -> None:
    src, dst = crash.mountpoint / "src", crash.mountpoint / "dst"
    src.mkdir()
    dst.mkdir()
    write_file(src / "f", b"data", sync=True)
    for directory in (src, dst, crash.mountpoint):
        fsync_path(directory)
    os.rename(src / "f", dst / "f")
    if synced in ("source", "both"):
        fsync_path(src)
    if synced in ("destination", "both"):
        fsync_path(dst)
    crash.cut_power()
    # Only the source synced: the file is nowhere. Only the destination: it is in both
    # (one inode, two names) - what the strict model allows, unlike a journaling FS.
    assert (src / "f").exists() == (synced == "destination")
    assert (dst / "f").exists() == (synced != "source")
    if synced == "destination":
        assert (src / "f").stat().st_ino == (dst / "f").stat().st_ino
        assert (dst / "f").stat().st_nlink == 2


@pytest.mark.parametrize("sync_dir", [False, True])
def test_unlink_and_rmdir_need_directory_fsync(crash: CrashFS, sync_dir: bool) -> None:
    path, sub = crash.mountpoint / "a.dat", crash.mountpoint / "sub"
    write_file(path, b"keep me", sync=True)
    sub.mkdir()
    fsync_path(crash.mountpoint)
    path.unlink()
    sub.rmdir()
    if sync_dir:
        fsync_path(crash.mountpoint)
    crash.cut_power()
    assert path.exists() != sync_dir
    assert sub.is_dir() != sync_dir
    if not sync_dir:
        assert path.read_bytes() == b"keep me"


def test_unlinked_open_file_and_stale_handles(crash: CrashFS) -> None:
    path = crash.mountpoint / "a.dat"
    write_file(path, b"abc", sync=True)
    fsync_path(crash.mountpoint)
    fd = os.open(path, os.O_RDWR)
    try:
        path.unlink()  # libfuse renames it to .fuse_hidden*, which CrashFS keeps out of sight
        assert os.listdir(crash.mountpoint) == []
        assert os.fstat(fd).st_nlink == 0
        os.pwrite(fd, b"XYZ", 3)
        os.fsync(fd)  # syncs the data of a durable inode whose unlink is not durable yet
        assert os.pread(fd, 10, 0) == b"abcXYZ"
        crash.cut_power()  # contract violation on purpose: the handle dies with the power
        with pytest.raises(OSError) as excinfo:
            os.pread(fd, 10, 0)
        assert excinfo.value.errno == errno.EBADF
    finally:
        os.close(fd)
    assert path.read_bytes() == b"abcXYZ"  # the data was synced, the unlink was not
    fd = os.open(path, os.O_RDWR)
    try:
        path.unlink()
        fsync_path(crash.mountpoint)  # makes the unlink durable, not a hidden name
        crash.cut_power()
    finally:
        os.close(fd)
    assert os.listdir(crash.mountpoint) == []


def test_writes_reach_the_fs_before_fsync(crash: CrashFS) -> None:
    """No writeback cache: the FS has the bytes when write(2) returns (else a cut is lenient)."""
    fd = os.open(crash.mountpoint / "a.dat", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        before = crash.stats().bytes_written
        os.write(fd, b"x" * 1000)
        assert crash.stats().bytes_written == before + 1000
    finally:
        os.close(fd)


def test_reads_after_a_cut_do_not_come_from_stale_page_cache(crash: CrashFS) -> None:
    """Same size and mtime before and after the cut, so only the page-cache drop on open()
    (no kernel_cache/keep_cache) makes the reverted data visible."""
    path = crash.mountpoint / "a.dat"
    write_file(path, b"AAAA", sync=True)
    fsync_path(crash.mountpoint)
    mtime = path.stat().st_mtime_ns
    with open(path, "r+b") as f:
        f.write(b"BBBB")
    assert path.read_bytes() == b"BBBB"  # now in the page cache
    os.utime(path, ns=(mtime, mtime))
    crash.cut_power()
    assert path.stat().st_mtime_ns == mtime
    assert path.read_bytes() == b"AAAA"


def test_random_io_matches_reference_model(crash: CrashFS) -> None:
    """Random pwrite/truncate/fsync across 64 KiB chunk edges against an in-memory model."""
    rng = random.Random(1234)
    path = crash.mountpoint / "model.bin"
    volatile, durable = bytearray(), b""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fsync_path(crash.mountpoint)
    try:
        for step in range(400):
            action = rng.random()
            if action < 0.6:
                offset, data = rng.randrange(300_000), rng.randbytes(rng.randrange(1, 150_000))
                os.pwrite(fd, data, offset)
                volatile.extend(bytes(max(0, offset - len(volatile))))
                volatile[offset : offset + len(data)] = data
            elif action < 0.8:
                size = rng.randrange(400_000)
                os.ftruncate(fd, size)
                del volatile[size:]
                volatile.extend(bytes(size - len(volatile)))
            else:
                os.fsync(fd)
                durable = bytes(volatile)
            if step % 25 == 0:
                assert os.pread(fd, 1 << 20, 0) == volatile
    finally:
        os.close(fd)
    assert path.read_bytes() == volatile
    crash.cut_power()
    assert path.read_bytes() == durable


# -- 5: SQLite ---------------------------------------------------------------------------------
WRITER = r"""
import os, sqlite3, sys
db, journal, sync = sys.argv[1:4]
con = sqlite3.connect(db, isolation_level=None)
con.execute(f"PRAGMA journal_mode={journal}")
con.execute(f"PRAGMA synchronous={sync}")
payload = os.urandom(1500)
first = con.execute("SELECT coalesce(max(id), 0) + 1 FROM t").fetchone()[0]
for i in range(first, first + 1_000_000):
    con.execute("BEGIN")
    con.execute("INSERT INTO t(id, payload) VALUES (?, ?)", (i, payload))
    con.execute("COMMIT")
    print(i, flush=True)
"""


def create_db(db: Path, journal: str) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    con.execute(f"PRAGMA journal_mode={journal}")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB)")
    con.close()


def commit_then_kill(db: Path, journal: str, sync: str, rng: random.Random) -> list[int]:
    """Run WRITER, SIGKILL it after a random number of commits; return every printed id."""
    command = [sys.executable, "-c", WRITER, str(db), journal, sync]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kill_after, printed = rng.randrange(100, 1500), []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            printed.append(int(line))
            if len(printed) >= kill_after:
                time.sleep(rng.random() / 100)  # land anywhere inside a later commit
                break
    finally:
        proc.kill()
        rest, err = proc.communicate()
    assert proc.returncode == -9, err  # it was running until killed
    return printed + [int(line) for line in rest.split()]


def check_db(db: Path) -> set[int]:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return {row[0] for row in con.execute("SELECT id FROM t")}
    finally:
        con.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("journal", "sync"), [("WAL", "FULL"), ("DELETE", "EXTRA")])
def test_sqlite_commits_survive_kill_and_power_cut(crash: CrashFS, journal: str, sync: str) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed={seed}")
    rng, db = random.Random(seed), crash.mountpoint / "router.db"
    create_db(db, journal)
    committed: list[int] = []
    for _ in range(2):  # a second round recovers from the first cut, then crashes again
        crash.reset_stats()
        printed = commit_then_kill(db, journal, sync, rng)
        stats = crash.stats()
        crash.cut_power()
        rows = check_db(db)
        committed += printed
        assert not set(committed) - rows, f"lost committed rows (seed {seed})"
        print(f"{journal}/{sync}: {len(printed)} commits, {len(rows)} rows after the cut, "
              f"{stats.fsync / len(printed):.2f} fsync + {stats.fsyncdir / len(printed):.2f} "
              "fsyncdir per commit")  # fmt: skip
        assert stats.fsync >= len(printed)


def test_sqlite_synchronous_off_loses_commits(crash: CrashFS) -> None:
    """Control: the FS really discards what SQLite never synced."""
    db = crash.mountpoint / "router.db"
    create_db(db, "WAL")
    printed = commit_then_kill(db, "WAL", "OFF", random.Random(7))
    # (No look before the cut: closing the last connection checkpoints with fsync.)
    crash.cut_power()
    rows = check_db(db)
    assert len(set(printed) & rows) < len(printed)
    print(f"synchronous=OFF: {len(printed)} commits, {len(rows)} rows after the cut")


@pytest.mark.parametrize(("sync", "survivors"), [("FULL", {1, 2}), ("EXTRA", {1, 2, 3})])
def test_sqlite_delete_journal_full_rolls_back_last_commit(
    crash: CrashFS, sync: str, survivors: set[int]
) -> None:
    """SQLite documents that in DELETE mode only EXTRA syncs the directory after deleting the
    journal (the commit point); with FULL a power cut resurrects the hot journal and rolls the
    last transaction back. A lenient FS would keep row 3."""
    db = crash.mountpoint / "router.db"
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute(f"PRAGMA synchronous={sync}")
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB)")
    for i in (1, 2, 3):
        con.execute("INSERT INTO t(id, payload) VALUES (?, ?)", (i, b"x" * 5000))
    con.close()
    crash.cut_power()
    assert check_db(db) == survivors


@pytest.mark.parametrize("journal", ["WAL", "DELETE"])
def test_sqlite_locking_two_connections_one_process(crash: CrashFS, journal: str) -> None:
    db = crash.mountpoint / "router.db"
    create_db(db, journal)
    first = sqlite3.connect(db, isolation_level=None)
    second = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        first.execute("BEGIN IMMEDIATE")
        first.execute("INSERT INTO t(id) VALUES (1)")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            second.execute("BEGIN IMMEDIATE")
        first.execute("COMMIT")
        assert second.execute("SELECT id FROM t").fetchall() == [(1,)]
    finally:
        first.close()
        second.close()


HOLDER = r"""
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")
con.execute("INSERT INTO t(id) VALUES (1)")
print("locked", flush=True)
sys.stdin.readline()
con.execute("COMMIT")
print("committed", flush=True)
"""

INSERTER = r"""
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
start = int(sys.argv[2])
for i in range(start, start + 300):
    con.execute("INSERT INTO t(id, payload) VALUES (?, ?)", (i, b"y" * 3000))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("journal", ["WAL", "DELETE"])
def test_sqlite_two_processes(crash: CrashFS, journal: str) -> None:
    """Kernel-local POSIX locks and the shared -shm mmap coordinate two processes."""
    db = crash.mountpoint / "router.db"
    create_db(db, journal)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == "locked\n"
        if journal == "WAL":
            assert Path(f"{db}-shm").stat().st_size > 0  # the mmapped wal-index is in use
        con = sqlite3.connect(db, isolation_level=None, timeout=0)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            con.execute("BEGIN IMMEDIATE")
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "committed\n"
        assert con.execute("SELECT id FROM t").fetchall() == [(1,)]  # sees the other's commit
        con.close()
    finally:
        holder.kill()
        holder.communicate()
    inserters = [subprocess.Popen([sys.executable, "-c", INSERTER, str(db), str(start)])
                 for start in (1000, 2000)]  # fmt: skip
    assert [proc.wait(100) for proc in inserters] == [0, 0]
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == 601
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    con.close()


MAPPER = r"""
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 4 * 4096, mmap.MAP_SHARED)
m[5000:5005] = b"child"
print("ready", flush=True)
sys.stdin.readline()
print(m[0:6].decode(), flush=True)
"""


def test_shared_mmap_is_coherent_and_reaches_the_fs(crash: CrashFS) -> None:
    path = crash.mountpoint / "shared.bin"
    write_file(path, bytes(4 * 4096), sync=True)
    fsync_path(crash.mountpoint)
    child = subprocess.Popen([sys.executable, "-c", MAPPER, str(path)], text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline() == "ready\n"
        fd = os.open(path, os.O_RDWR)
        with mmap.mmap(fd, 4 * 4096, mmap.MAP_SHARED) as mapped:
            assert mapped[5000:5005] == b"child"  # same pages, no msync needed
            mapped[0:6] = b"parent"
            child.stdin.write("go\n")
            child.stdin.flush()
            assert child.stdout.readline() == "parent\n"
            mapped.flush()  # msync: written back to the FS through FUSE
        os.fsync(fd)
        os.close(fd)
    finally:
        child.kill()
        child.communicate()
    crash.cut_power()
    data = path.read_bytes()
    assert data[0:6] == b"parent"
    assert data[5000:5005] == b"child"


def test_posix_locks_between_processes(crash: CrashFS) -> None:
    path = crash.mountpoint / "lock"
    path.write_bytes(b"")
    probe = (
        "import fcntl, sys\n"
        "f = open(sys.argv[1], 'r+')\n"
        "try:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('got')\n"
        "except OSError:\n    print('busy')\n"
    )
    with open(path, "r+") as held:
        fcntl.lockf(held, fcntl.LOCK_EX)
        result = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True)
        assert result.stdout == b"busy\n"
    result = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True)
    assert result.stdout == b"got\n"


# -- 6: faults and capacity ------------------------------------------------------------------
def test_fsync_eio_fault_makes_nothing_durable(crash: CrashFS) -> None:
    path = crash.mountpoint / "a.dat"
    write_file(path, b"", sync=True)
    fsync_path(crash.mountpoint)
    crash.inject("fsync-eio")
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, b"data")
        for sync in (os.fsync, os.fdatasync):
            with pytest.raises(OSError) as excinfo:
                sync(fd)
            assert excinfo.value.errno == errno.EIO
    finally:
        os.close(fd)
    write_file(crash.mountpoint / "b.dat", b"b", sync=False)
    with pytest.raises(OSError) as excinfo:
        fsync_path(crash.mountpoint)
    assert excinfo.value.errno == errno.EIO
    stats = crash.stats()
    assert (stats.failed_syncs, stats.fault) == (3, "fsync-eio")
    crash.inject("none")
    crash.cut_power()
    assert path.read_bytes() == b""
    assert not (crash.mountpoint / "b.dat").exists()


def test_enospc_fault(crash: CrashFS) -> None:
    path = crash.mountpoint / "a.dat"
    path.write_bytes(b"ok")
    crash.inject("enospc")
    for attempt in (
        lambda: path.write_bytes(b"more"),
        lambda: (crash.mountpoint / "new").write_bytes(b""),
        lambda: (crash.mountpoint / "dir").mkdir(),
    ):
        with pytest.raises(OSError) as excinfo:
            attempt()
        assert excinfo.value.errno == errno.ENOSPC
    crash.inject("none")
    path.write_bytes(b"more")
    assert path.read_bytes() == b"more"


def test_capacity_statfs_and_enospc(crash: CrashFS) -> None:
    assert os.statvfs(crash.mountpoint).f_blocks * 4096 == 64 * 1024**3  # default
    crash.set_capacity(8 * MiB)
    vfs = os.statvfs(crash.mountpoint)
    assert (vfs.f_blocks * vfs.f_frsize, vfs.f_bavail * vfs.f_frsize) == (8 * MiB, 8 * MiB)
    big = crash.mountpoint / "big"
    write_file(big, b"z" * (3 * MiB), sync=False)
    assert os.statvfs(crash.mountpoint).f_bavail * 4096 == 5 * MiB
    assert crash.stats().used_bytes == 3 * MiB
    with pytest.raises(OSError) as excinfo:
        write_file(crash.mountpoint / "bigger", b"z" * (6 * MiB), sync=False)
    assert excinfo.value.errno == errno.ENOSPC
    (crash.mountpoint / "bigger").unlink()
    big.unlink()
    assert os.statvfs(crash.mountpoint).f_bavail * 4096 == 8 * MiB
    write_file(big, b"z" * MiB, sync=True)
    fsync_path(crash.mountpoint)
    os.truncate(big, 4 * MiB)
    crash.cut_power()  # usage follows the durable state
    assert crash.stats().used_bytes == MiB


# -- 7: POSIX basics -------------------------------------------------------------------------
def test_posix_basics(crash: CrashFS) -> None:
    root = crash.mountpoint
    (root / "d").mkdir(mode=0o750)
    with pytest.raises(FileExistsError):
        (root / "d").mkdir()
    write_file(root / "d" / "f", b"hello", sync=False)
    os.symlink("d/f", root / "link")
    os.link(root / "d" / "f", root / "hard")
    assert sorted(os.listdir(root)) == ["d", "hard", "link"]
    kinds = {e.name: (e.is_dir(follow_symlinks=False), e.is_symlink()) for e in os.scandir(root)}
    assert kinds == {"d": (True, False), "hard": (False, False), "link": (False, True)}
    assert os.readlink(root / "link") == "d/f"
    assert (root / "link").read_bytes() == b"hello"
    st = os.stat(root / "d" / "f")
    assert (stat.S_ISREG(st.st_mode), st.st_size, st.st_nlink) == (True, 5, 2)
    assert st.st_ino == os.stat(root / "hard").st_ino
    assert stat.S_IMODE(os.stat(root / "d").st_mode) == 0o750
    with pytest.raises(OSError) as excinfo:
        (root / "d").rmdir()
    assert excinfo.value.errno == errno.ENOTEMPTY
    with pytest.raises(NotADirectoryError):
        os.rmdir(root / "hard")

    path = root / "d" / "f"
    os.truncate(path, 100_000)  # grows across a chunk edge with zeros
    assert path.read_bytes() == b"hello" + bytes(99_995)
    fd = os.open(path, os.O_RDWR | os.O_APPEND)
    os.write(fd, b"!")
    os.ftruncate(fd, 3)
    assert os.fstat(fd).st_size == 3
    os.close(fd)
    assert path.read_bytes() == b"hel"
    os.chmod(path, 0o604)
    assert stat.S_IMODE(path.stat().st_mode) == 0o604
    os.utime(path, ns=(1_000_000_001, 2_000_000_002))
    st = path.stat()
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_001, 2_000_000_002)
    os.utime(path)
    assert abs(path.stat().st_mtime - time.time()) < 5

    write_file(root / "new", b"new", sync=False)
    new_ino = os.stat(root / "new").st_ino
    os.rename(root / "new", path)  # over an existing file
    assert (path.read_bytes(), path.stat().st_ino) == (b"new", new_ino)
    assert not (root / "new").exists()
    assert os.stat(root / "hard").st_nlink == 1  # the replaced inode lost one name
    (root / "e").mkdir()
    with pytest.raises(IsADirectoryError):
        os.rename(root / "hard", root / "e")
    with pytest.raises(OSError) as excinfo:
        os.rename(root / "e", root / "d")
    assert excinfo.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as excinfo:
        os.rename(root / "d", root / "d" / "inside")
    assert excinfo.value.errno == errno.EINVAL
    os.rename(root / "d", root / "e")  # directory over an empty directory
    assert (root / "e" / "f").read_bytes() == b"new"
    os.unlink(root / "e" / "f")
    os.rmdir(root / "e")
    assert sorted(os.listdir(root)) == ["hard", "link"]


def test_renameat2_flags(crash: CrashFS) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, noreplace, exchange = -100, 1, 2
    a, b = crash.mountpoint / "a", crash.mountpoint / "b"
    a.write_bytes(b"A")
    b.write_bytes(b"B")

    def renameat2(flags: int) -> int:
        result = libc.renameat2(at_fdcwd, bytes(a), at_fdcwd, bytes(b), flags)
        return 0 if result == 0 else ctypes.get_errno()

    assert renameat2(noreplace) == errno.EEXIST
    assert (a.read_bytes(), b.read_bytes()) == (b"A", b"B")
    assert renameat2(exchange) == 0
    assert (a.read_bytes(), b.read_bytes()) == (b"B", b"A")


# -- 8: throughput -----------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_append_throughput(crash: CrashFS) -> None:
    path, block = crash.mountpoint / "big.bin", os.urandom(64 * 1024)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    start = time.monotonic()
    for _ in range(200 * 16):
        os.write(fd, block)
    os.fsync(fd)
    os.close(fd)
    elapsed = time.monotonic() - start
    print(f"append 200 MB in 64 KiB writes + fsync: {200 / elapsed:.0f} MB/s")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # journal pattern: append + fsync each time
    start = time.monotonic()
    for _ in range(2000):
        os.write(fd, block[:4096])
        os.fsync(fd)
    os.close(fd)
    elapsed = time.monotonic() - start
    print(f"2000 x (4 KiB append + fsync) on a 200 MB file: {2000 / elapsed:.0f} fsyncs/s")
    assert path.stat().st_size == 200 * MiB + 2000 * 4096
    with open(path, "rb") as f:
        f.seek(123 * MiB)
        assert f.read(64 * 1024) == block


# -- control channel and lifecycle -------------------------------------------------------------
@pytest.mark.timeout(120)
def test_power_cut_is_atomic_under_concurrent_load(crash: CrashFS) -> None:
    """Cut repeatedly while another process writes; afterwards every file holds a complete,
    synced record (never a torn or unsynced one) and the server logged no error."""
    names = [f"f{i}" for i in range(4)]
    for name in names:
        write_file(crash.mountpoint / name, b"init", sync=True)
    fsync_path(crash.mountpoint)
    loader = r"""
import os, sys
root, i = sys.argv[1], 0
while True:
    i += 1
    for name in ("f0", "f1", "f2", "f3"):
        try:
            fd = os.open(os.path.join(root, name), os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, b"%08d" % i * 512)
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp = os.path.join(root, "tmp%d" % (i % 7))
            open(tmp, "wb").close()
            os.unlink(tmp)
        except OSError:
            pass
"""
    proc = subprocess.Popen([sys.executable, "-c", loader, str(crash.mountpoint)])
    try:
        rng = random.Random(99)
        for _ in range(40):
            time.sleep(rng.random() / 50)
            crash.cut_power()
    finally:
        proc.kill()
        proc.wait()
    crash.cut_power()
    assert sorted(os.listdir(crash.mountpoint)) == names
    for name in names:
        data = (crash.mountpoint / name).read_bytes()
        assert data == b"init" or (len(data) == 4096 and data == data[:8] * 512), data[:16]
    assert crash.stats().cuts == 41


def test_control_from_another_process(crash: CrashFS) -> None:
    write_file(crash.mountpoint / "a", b"a", sync=True)
    script = (
        "import sys\nfrom pathlib import Path\nfrom tests.support.crashfs import CrashFS\n"
        "fs = CrashFS(Path(sys.argv[1]))\nfs.cut_power()\nprint(fs.stats().cuts)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(crash.mountpoint)],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    assert result.stdout == "1\n"
    assert not (crash.mountpoint / "a").exists()


def test_unmount_while_busy(tmp_path: Path) -> None:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    fs = CrashFS(mountpoint)
    fs.mount()
    try:
        held = open(mountpoint / "held", "wb")  # noqa: SIM115 - kept open across unmount
        server = fs.process
        assert server is not None
        fs.unmount()  # fusermount3 -u fails with EBUSY; the lazy fallback must still finish
        assert not fs.is_mounted()
        assert server.poll() is not None
        with pytest.raises(OSError):
            held.write(b"x")
            held.close()
    finally:
        fs.unmount()
    assert not fs.is_mounted()


def test_unmount_after_server_crash(tmp_path: Path) -> None:
    """A dead server leaves a mount that stat() cannot even see ("Transport endpoint is not
    connected"); unmount() must still remove it."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    fs = CrashFS(mountpoint)
    fs.mount()
    try:
        assert fs.process is not None
        fs.process.kill()
        fs.process.wait()
        with pytest.raises(OSError) as excinfo:
            os.stat(mountpoint)
        assert excinfo.value.errno == errno.ENOTCONN
        assert fs.is_mounted() and not os.path.ismount(mountpoint)
    finally:
        fs.unmount()
    assert not fs.is_mounted()
    assert os.listdir(mountpoint) == []


def test_cut_power_is_serialised_with_operations(crash: CrashFS) -> None:
    """Control requests from several threads interleave safely with FS traffic."""
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(50):
                crash.stats()
                crash.cut_power()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for thread in threads:
        thread.start()
    for i in range(200):
        with contextlib.suppress(OSError):  # ENOENT/EBADF when a cut lands in between
            write_file(crash.mountpoint / f"x{i % 5}", b"data", sync=True)
    for thread in threads:
        thread.join()
    assert not errors
    assert crash.stats().cuts == 150
