"""CrashFS: an in-memory FUSE file system that keeps only what was fsynced ("power-loss" FS).

Crash tests mount it, run the code under test, SIGKILL it, call ``cut_power()`` and then check
what survived. It implements the strict POSIX durability model:

* File data and size become durable only on fsync/fdatasync of that file; fsync also makes its
  attributes (mode, owner, times) durable, fdatasync does not. close()/flush sync nothing.
* A directory entry (create, mkdir, unlink, rmdir, rename, link, symlink) becomes durable only
  on fsync of the directory holding it (FUSE ``fsyncdir``). A rename changes an entry in two
  directories; each half becomes durable with its own directory's fsync.
* A power cut reverts every inode to its durable state; inodes no longer reachable from the
  root through durable entries vanish. A file whose entry was made durable but whose data
  never was comes back with its last durable contents (empty for a new file).

Model: an :class:`_Inode` has volatile and durable metadata; a regular file has chunked
copy-on-write contents (:class:`_Contents`); a directory has a volatile and a durable entry
map. All state lives in the memory of the server process.

Server: ``python -m tests.support.crashfs MOUNTPOINT`` (cwd = repository root) mounts in the
foreground with a single FUSE thread (``-s``) plus a control thread. Every FUSE operation and
every control request runs under one mutex, so a power cut happens entirely between two
operations (atomic) and never inside one. Statistics: fsync, fdatasync, fsyncdir counts etc.

Kernel settings: entry/attr/negative timeouts 0; writeback cache off (each write reaches the
FS before write(2) returns); no direct_io, so the page cache and shared mmap work (SQLite's
``-shm``) and each open() drops cached pages, so reads after a cut see reverted data; POSIX
locks are left to the kernel (no ``lock`` op). libfuse "unlinks" an open file by renaming it to
``.fuse_hidden*`` (so fstat keeps working); CrashFS treats that rename as the unlink and keeps
the file outside the directory entries, so it is neither listed nor made durable (so do not
name your own files ``.fuse_hidden*``).

Control protocol: a Unix socket at :func:`control_socket_path` (in the temp dir, derived from
the mount point, so any process with the same TMPDIR can find it). One JSON request line per
connection, one JSON reply line:
``{"op": "ping" | "cut" | "stats" | "reset-stats"}``, ``{"op": "inject", "fault": F}`` with F
in ``none``/``fsync-eio``/``enospc``, ``{"op": "capacity", "bytes": N}``. Replies are
``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

Caller contract: SIGKILL every process using the mount and wait for it *before* cut_power()
(a dead process has no write in flight and its mmap'd pages were written back at exit).
File handles open at the cut become invalid (EBADF), as after a reboot.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import dataclasses
import errno
import functools
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

try:
    import mfusepy
except (ImportError, OSError):  # binding or libfuse3 missing: crashfs_available() says so
    mfusepy = None

CHUNK = 64 * 1024
_ZERO_CHUNK = bytes(CHUNK)
BLOCK = 4096
DEFAULT_CAPACITY = 64 * 1024**3
FAULTS = ("none", "fsync-eio", "enospc")
Fault = Literal["none", "fsync-eio", "enospc"]
REPO_ROOT = Path(__file__).resolve().parents[2]
_FUSE_CAP_WRITEBACK_CACHE = 1 << 16
_UTIME_NOW, _UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_COUNTERS = ("fsync", "fdatasync", "fsyncdir", "failed_syncs", "writes", "bytes_written", "cuts")


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class _Contents:
    """File data as 64 KiB copy-on-write chunks plus the durable snapshot.

    Why chunks: a journal that appends a record and fsyncs would copy the whole file on every
    fsync with a single buffer (O(n^2)). Here fsync freezes only the chunks written since the
    last sync and shares the frozen ``bytes`` between both views, so synced data is held once.
    """

    __slots__ = ("chunks", "dirty", "durable", "durable_size", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes | bytearray] = []  # bytes = shared with `durable`, read-only
        self.durable: list[bytes] = []
        self.dirty: set[int] = set()  # chunk indexes that may differ from `durable`
        self.size = self.durable_size = 0

    def read(self, offset: int, length: int) -> bytes:
        end = min(self.size, offset + length)
        parts = []
        while offset < end:
            index, start = divmod(offset, CHUNK)
            take = min(CHUNK - start, end - offset)
            parts.append(memoryview(self.chunks[index])[start : start + take])
            offset += take
        return b"".join(parts)

    def _writable(self, index: int) -> bytearray:
        chunk = self.chunks[index]
        if not isinstance(chunk, bytearray):
            chunk = self.chunks[index] = bytearray(chunk)
        self.dirty.add(index)
        return chunk

    def write(self, offset: int, data: bytes) -> None:
        if offset + len(data) > self.size:
            self.resize(offset + len(data))
        view, pos = memoryview(data), 0
        while pos < len(data):
            index, start = divmod(offset + pos, CHUNK)
            take = min(CHUNK - start, len(data) - pos)
            if take == CHUNK:  # whole chunk: replace instead of copy-on-write then overwrite
                self.chunks[index] = data if take == len(data) else bytes(view[pos : pos + take])
                self.dirty.add(index)
            else:
                self._writable(index)[start : start + take] = view[pos : pos + take]
            pos += take

    def resize(self, size: int) -> None:
        if size < self.size:
            keep = -(-size // CHUNK)
            del self.chunks[keep:]
            tail = size - (keep - 1) * CHUNK
            if keep and len(self.chunks[-1]) != tail:
                del self._writable(keep - 1)[tail:]
        elif size > self.size:
            if self.chunks and len(self.chunks[-1]) < CHUNK:
                last = len(self.chunks) - 1
                grow = min(CHUNK, size - last * CHUNK) - len(self.chunks[last])
                self._writable(last).extend(bytes(grow))
            while len(self.chunks) * CHUNK < size:
                take = min(CHUNK, size - len(self.chunks) * CHUNK)
                self.chunks.append(_ZERO_CHUNK if take == CHUNK else bytes(take))
                self.dirty.add(len(self.chunks) - 1)
        self.size = size

    def sync(self) -> None:
        """Make the current contents durable (copies only dirty chunks)."""
        count = len(self.chunks)
        del self.durable[count:]
        self.durable.extend([b""] * (count - len(self.durable)))  # all such indexes are dirty
        for index in self.dirty:
            if index < count:
                frozen = bytes(self.chunks[index])
                self.durable[index] = self.chunks[index] = frozen
        self.dirty.clear()
        self.durable_size = self.size

    def revert(self) -> None:
        self.chunks = list(self.durable)
        self.dirty = set()
        self.size = self.durable_size


class _Inode:
    """A file, directory or symlink: its volatile state and the state a power cut restores."""

    __slots__ = (
        "alive", "data", "durable_entries", "durable_meta", "entries", "hidden", "ino", "meta",
        "nlink", "opens", "target",
    )  # fmt: skip

    def __init__(self, ino: int, mode: int, uid: int, gid: int, target: str = "") -> None:
        now = time.time_ns()
        self.ino = ino
        self.meta = {"mode": mode, "uid": uid, "gid": gid, "atime": now, "mtime": now, "ctime": now}
        # Why durable from birth: initial attributes are part of creating the inode; once a
        # directory fsync makes its name durable it comes back as created (empty, this mode).
        self.durable_meta = dict(self.meta)
        self.data = _Contents() if stat.S_ISREG(mode) else None
        self.entries: dict[str, _Inode] | None = {} if stat.S_ISDIR(mode) else None
        self.durable_entries: dict[str, _Inode] | None = {} if stat.S_ISDIR(mode) else None
        self.hidden: dict[str, _Inode] = {}  # unlinked open files (.fuse_hidden*), never durable
        self.target = target  # symlink contents, immutable, so durable with the inode
        self.nlink = 0  # volatile entries naming this inode
        self.opens = 0
        self.alive = True  # counted in `used`: named or open

    @property
    def size(self) -> int:
        if self.data is not None:
            return self.data.size
        return len(os.fsencode(self.target)) if self.target else BLOCK

    def touch(self, *fields: str) -> None:
        now = time.time_ns()
        for field in fields:
            self.meta[field] = now

    def revert(self) -> None:
        self.meta = dict(self.durable_meta)
        if self.data is not None:
            self.data.revert()
        if self.durable_entries is not None:
            self.entries = dict(self.durable_entries)
        self.hidden = {}


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _locked(method: _Method) -> _Method:
    """Run a FUSE operation under the FS lock (this is what makes cut_power atomic)."""

    @functools.wraps(method)
    def wrapper(self: CrashOperations, *args: Any, **kwargs: Any) -> Any:
        with self.mutex:
            return method(self, *args, **kwargs)

    return cast(_Method, wrapper)


class CrashOperations(mfusepy.Operations if mfusepy is not None else object):  # type: ignore[misc]
    """The FUSE operations of CrashFS (path-based mfusepy API; ``fh`` wins when given)."""

    use_ns = True  # times are integer nanoseconds

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.mutex = threading.Lock()
        self.capacity = capacity
        self.fault: Fault = "none"
        self.counters = dict.fromkeys(_COUNTERS, 0)
        self.used = 0  # bytes of regular files that are named or open (what statfs reports)
        self.handles: dict[int, _Inode] = {}
        self._next_fh = self._next_ino = 1
        self.root = self._new_inode(stat.S_IFDIR | 0o755, os.getuid(), os.getgid())

    # -- helpers ---------------------------------------------------------------------------
    def _new_inode(
        self, mode: int, uid: int | None = None, gid: int | None = None, target: str = ""
    ) -> _Inode:
        if uid is None or gid is None:
            uid, gid, _ = mfusepy.fuse_get_context()
        self._next_ino += 1
        return _Inode(self._next_ino, mode, uid, gid, target)

    def _lookup(self, path: str | None) -> _Inode:
        if path is None:
            raise _err(errno.EBADF)
        node = self.root
        for part in path.split("/"):
            if part:
                if node.entries is None:
                    raise _err(errno.ENOTDIR)
                node = node.entries.get(part) or node.hidden.get(part) or _raise(errno.ENOENT)
        return node

    def _node(self, path: str | None, fh: int | None) -> _Inode:
        if not fh:  # handles start at 1
            return self._lookup(path)
        # Why no fallback to the path: a handle from before a cut must not reach a new file.
        return self.handles.get(fh) or _raise(errno.EBADF)

    def _parent(self, path: str) -> tuple[_Inode, dict[str, _Inode], str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._lookup(head or "/")
        if parent.entries is None:
            raise _err(errno.ENOTDIR)
        return parent, parent.entries, name

    def _add(self, path: str, mode: int, target: str = "", node: _Inode | None = None) -> _Inode:
        if self.fault == "enospc":
            raise _err(errno.ENOSPC)
        parent, entries, name = self._parent(path)
        if name in entries:
            raise _err(errno.EEXIST)
        node = node or self._new_inode(mode, target=target)
        entries[name] = node
        node.nlink += 1
        parent.touch("mtime", "ctime")
        return node

    def _remove(self, parent: _Inode, name: str) -> None:
        assert parent.entries is not None
        node = parent.entries.pop(name)
        node.nlink -= 1
        node.touch("ctime")
        parent.touch("mtime", "ctime")
        self._maybe_free(node)

    def _maybe_free(self, node: _Inode) -> None:
        # The inode object stays: a durable entry may still name it and bring it back on a cut.
        if node.alive and node.nlink == 0 and node.opens == 0:
            node.alive = False
            self.used -= node.size if node.data is not None else 0

    def _open(self, node: _Inode) -> int:
        fh, self._next_fh = self._next_fh, self._next_fh + 1  # never reused: stale fh -> EBADF
        self.handles[fh] = node
        node.opens += 1
        return fh

    def _resize(self, node: _Inode, size: int) -> None:
        if node.data is None:
            raise _err(errno.EISDIR if node.entries is not None else errno.EINVAL)
        grow = size - node.data.size
        if grow > 0 and self.used + grow > self.capacity:
            raise _err(errno.ENOSPC)
        node.data.resize(size)
        self.used += grow if node.alive else 0
        node.touch("mtime", "ctime")

    # -- FUSE operations ---------------------------------------------------------------------
    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            config.entry_timeout = config.attr_timeout = config.negative_timeout = 0.0
            # hard_remove stays off: with it libfuse cannot fstat an unlinked open file (ESTALE).
            config.hard_remove, config.nullpath_ok, config.use_ino = 0, 1, 1
            config.direct_io = config.kernel_cache = config.auto_cache = 0
        if conn is not None:
            # Why: with writeback caching the kernel would hold writes until fsync/close, so a
            # write(2) that returned would not be in the FS yet; the model assumes it is.
            conn.want &= ~_FUSE_CAP_WRITEBACK_CACHE

    @_locked
    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        node = self._node(path, fh)
        meta, size = node.meta, node.size
        return {
            "st_ino": node.ino, "st_mode": meta["mode"], "st_uid": meta["uid"],
            "st_gid": meta["gid"], "st_size": size, "st_blocks": -(-size // 512),
            "st_blksize": BLOCK, "st_atime": meta["atime"], "st_mtime": meta["mtime"],
            "st_ctime": meta["ctime"],
            # Directories report 1 ("link count unknown", as btrfs does) to avoid counting.
            "st_nlink": 1 if node.entries is not None else node.nlink,
        }  # fmt: skip

    @_locked
    def readdir(self, path: str | None, fh: int) -> list[Any]:
        node = self._node(path, fh)
        if node.entries is None:
            raise _err(errno.ENOTDIR)
        items = [
            (n, {"st_mode": c.meta["mode"], "st_ino": c.ino}, 0) for n, c in node.entries.items()
        ]
        return [".", "..", *items]

    @_locked
    def opendir(self, path: str) -> int:
        node = self._lookup(path)
        if node.entries is None:
            raise _err(errno.ENOTDIR)
        return self._open(node)

    @_locked
    def release(self, path: str | None, fh: int) -> int:
        node = self.handles.pop(fh, None)  # unknown after a cut: already gone
        if node is not None:
            node.opens -= 1
            self._maybe_free(node)
        return 0

    releasedir = release

    @_locked
    def mkdir(self, path: str, mode: int) -> int:
        self._add(path, stat.S_IFDIR | (mode & 0o7777))
        return 0

    @_locked
    def create(self, path: str, mode: int, flags: int = 0) -> int:
        _, entries, name = self._parent(path)
        node = entries.get(name)
        if node is None:
            node = self._add(path, stat.S_IFREG | (mode & 0o7777))
        elif flags & os.O_EXCL:
            raise _err(errno.EEXIST)
        elif flags & os.O_TRUNC:
            self._resize(node, 0)
        return self._open(node)

    @_locked
    def open(self, path: str, flags: int) -> int:
        node = self._lookup(path)
        if flags & os.O_TRUNC and node.data is not None:
            self._resize(node, 0)
        return self._open(node)

    @_locked
    def symlink(self, path: str, target: str) -> int:
        self._add(path, stat.S_IFLNK | 0o777, target=target)
        return 0

    @_locked
    def readlink(self, path: str) -> str:
        return self._lookup(path).target or _raise(errno.EINVAL)

    @_locked
    def link(self, path: str, existing: str) -> int:
        node = self._lookup(existing)
        if node.entries is not None:
            raise _err(errno.EPERM)
        self._add(path, 0, node=node)
        node.touch("ctime")
        return 0

    @_locked
    def unlink(self, path: str) -> int:
        parent, entries, name = self._parent(path)
        if name in parent.hidden:  # the last close of a hidden file
            self._maybe_free(parent.hidden.pop(name))
            return 0
        if (entries.get(name) or _raise(errno.ENOENT)).entries is not None:
            raise _err(errno.EISDIR)
        self._remove(parent, name)
        return 0

    @_locked
    def rmdir(self, path: str) -> int:
        parent, entries, name = self._parent(path)
        node = entries.get(name) or _raise(errno.ENOENT)
        if node.entries is None:
            raise _err(errno.ENOTDIR)
        if node.entries:
            raise _err(errno.ENOTEMPTY)
        self._remove(parent, name)
        return 0

    @_locked
    def rename(self, old: str, new: str, flags: int = 0) -> int:
        src, src_entries, src_name = self._parent(old)
        dst, dst_entries, dst_name = self._parent(new)
        node = src_entries.get(src_name) or _raise(errno.ENOENT)
        if src is dst and dst_name.startswith(".fuse_hidden") and not flags:
            # libfuse's unlink of an open file: an unlink here, durable like any other.
            self._remove(src, src_name)
            src.hidden[dst_name] = node
            return 0
        target = dst_entries.get(dst_name)
        if flags & ~(_RENAME_NOREPLACE | _RENAME_EXCHANGE):
            raise _err(errno.EINVAL)
        if target is node:
            return 0
        old_slash, new_slash = old.rstrip("/") + "/", new.rstrip("/") + "/"
        if (node.entries is not None and new_slash.startswith(old_slash)) or (
            flags & _RENAME_EXCHANGE
            and target is not None
            and target.entries is not None
            and old_slash.startswith(new_slash)
        ):
            raise _err(errno.EINVAL)  # a directory cannot move below itself
        if flags & _RENAME_EXCHANGE:
            if target is None:
                raise _err(errno.ENOENT)
            src_entries[src_name], dst_entries[dst_name] = target, node
        else:
            if target is not None:
                if flags & _RENAME_NOREPLACE:
                    raise _err(errno.EEXIST)
                if node.entries is not None and target.entries is None:
                    raise _err(errno.ENOTDIR)
                if node.entries is None and target.entries is not None:
                    raise _err(errno.EISDIR)
                if target.entries:
                    raise _err(errno.ENOTEMPTY)
                self._remove(dst, dst_name)
            dst_entries[dst_name] = src_entries.pop(src_name)
        src.touch("mtime", "ctime")
        dst.touch("mtime", "ctime")
        node.touch("ctime")
        return 0

    @_locked
    def chmod(self, path: str | None, mode: int, fh: int | None = None) -> int:
        node = self._node(path, fh)
        node.meta["mode"] = stat.S_IFMT(node.meta["mode"]) | (mode & 0o7777)
        node.touch("ctime")
        return 0

    @_locked
    def chown(self, path: str | None, uid: int, gid: int, fh: int | None = None) -> int:
        node = self._node(path, fh)
        node.meta["uid"] = node.meta["uid"] if uid == -1 else uid
        node.meta["gid"] = node.meta["gid"] if gid == -1 else gid
        node.touch("ctime")
        return 0

    @_locked
    def utimens(self, path: str | None, times: Any = None, fh: int | None = None) -> int:
        node = self._node(path, fh)
        now = time.time_ns()
        atime, mtime = times if times is not None else (now, now)
        node.meta["atime"] = node.meta["atime"] if atime is None else atime
        node.meta["mtime"] = node.meta["mtime"] if mtime is None else mtime
        node.touch("ctime")
        return 0

    @_locked
    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        self._resize(self._node(path, fh), length)
        return 0

    @_locked
    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        node = self._node(path, fh)
        if mode != 0:
            raise _err(errno.EOPNOTSUPP)
        if self.fault == "enospc":
            raise _err(errno.ENOSPC)
        if offset + size > node.size:
            self._resize(node, offset + size)
        return 0

    @_locked
    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        node = self._node(path, fh)
        if node.data is None:
            raise _err(errno.EISDIR)
        return node.data.read(offset, size)

    @_locked
    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        node = self._node(path, fh)
        if self.fault == "enospc":
            raise _err(errno.ENOSPC)
        if offset + len(data) > node.size:
            self._resize(node, offset + len(data))
        assert node.data is not None
        node.data.write(offset, data)
        node.touch("mtime", "ctime")
        self.counters["writes"] += 1
        self.counters["bytes_written"] += len(data)
        return len(data)

    @_locked
    def flush(self, path: str | None, fh: int) -> int:
        return 0  # Why: close() promises no durability; a flush must not sync anything.

    @_locked
    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        node = self._node(path, fh)
        self._count_sync("fdatasync" if datasync else "fsync")
        if node.data is not None:
            node.data.sync()
        if not datasync:  # Why: fdatasync promises data (and size), not mode/owner/times.
            node.durable_meta = dict(node.meta)
        return 0

    @_locked
    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        node = self._node(path, fh)
        self._count_sync("fsyncdir")
        if node.entries is None:
            raise _err(errno.ENOTDIR)
        # Why only this directory: entries of subdirectories need their own fsyncdir, and the
        # children's data needs their own fsync (a durable name may point at an empty file).
        node.durable_entries = dict(node.entries)
        if not datasync:
            node.durable_meta = dict(node.meta)
        return 0

    def _count_sync(self, kind: str) -> None:
        self.counters[kind] += 1
        if kind == "fdatasync":
            self.counters["fsync"] += 1  # `fsync` counts both kinds
        if self.fault == "fsync-eio":  # Why before any state change: a failed sync keeps nothing
            self.counters["failed_syncs"] += 1
            raise _err(errno.EIO)

    @_locked
    def statfs(self, path: str) -> dict[str, int]:
        free = max(0, self.capacity - self.used) // BLOCK
        return {
            "f_bsize": BLOCK, "f_frsize": BLOCK, "f_blocks": self.capacity // BLOCK,
            "f_bfree": free, "f_bavail": free, "f_files": 1 << 24, "f_ffree": 1 << 24,
            "f_favail": 1 << 24, "f_namemax": 255,
        }  # fmt: skip

    # -- control -------------------------------------------------------------------------------
    def control(self, request: dict[str, Any]) -> dict[str, Any]:
        """Execute one control request atomically with respect to FUSE operations."""
        op = request.get("op")
        with self.mutex:
            if op == "cut":
                self._cut_power()
            elif op == "stats":
                state = {"used_bytes": self.used, "capacity": self.capacity, "fault": self.fault}
                return {"stats": {**self.counters, **state}}
            elif op == "reset-stats":
                self.counters = dict.fromkeys(_COUNTERS, 0)
            elif op == "inject":
                if request.get("fault") not in FAULTS:
                    raise ValueError(f"unknown fault {request.get('fault')!r}, expected {FAULTS}")
                self.fault = request["fault"]
            elif op == "capacity":
                self.capacity = int(request["bytes"])
            elif op != "ping":
                raise ValueError(f"unknown op {op!r}")
        return {}

    def _cut_power(self) -> None:
        """Revert to the durable state; drop inodes not reachable through durable entries."""
        reachable: dict[int, _Inode] = {}
        links: dict[int, int] = {}
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node.ino in reachable:
                continue
            reachable[node.ino] = node
            node.revert()
            for child in (node.entries or {}).values():
                links[child.ino] = links.get(child.ino, 0) + 1
                stack.append(child)
        for node in self.handles.values():
            node.alive = False  # reachable ones are revived below
        self.handles.clear()
        for node in reachable.values():
            node.nlink, node.opens, node.alive = links.get(node.ino, 0), 0, True
        self.used = sum(node.data.size for node in reachable.values() if node.data is not None)
        self.counters["cuts"] += 1


def _raise(code: int) -> Any:
    raise _err(code)


def _timespec_ns(ts: Any) -> int | None:
    if ts.tv_nsec == _UTIME_OMIT:
        return None
    return time.time_ns() if ts.tv_nsec == _UTIME_NOW else ts.tv_sec * 10**9 + ts.tv_nsec


class _FUSE(mfusepy.FUSE if mfusepy is not None else object):  # type: ignore[misc]
    """mfusepy.FUSE passing what its libfuse3 wrappers drop: rename flags, the file handle of
    ftruncate/fchmod/fchown/futimens (needed with nullpath_ok), and UTIME_NOW/UTIME_OMIT."""

    def _decode(self, path: bytes | None) -> str | None:
        return None if path is None else path.decode(self.encoding, self.errors)

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        return int(self.operations.rename(self._decode(old), self._decode(new), flags))

    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        return int(self.operations.truncate(self._decode(path), length, _fh(fip)))

    def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
        return int(self.operations.chmod(self._decode(path), mode, _fh(fip)))

    def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip: Any) -> int:
        uid, gid = (-1 if v == 0xFFFFFFFF else v for v in (uid, gid))  # (uid_t)-1: unchanged
        return int(self.operations.chown(self._decode(path), uid, gid, _fh(fip)))

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        times = None
        if buf:
            times = (_timespec_ns(buf.contents.actime), _timespec_ns(buf.contents.modtime))
        return int(self.operations.utimens(self._decode(path), times, _fh(fip)))


def _fh(fip: Any) -> int | None:
    return int(fip.contents.fh) if fip else None


# -- server ------------------------------------------------------------------------------------
def control_socket_path(mountpoint: Path) -> Path:
    """The control socket of the CrashFS mounted at ``mountpoint`` (outside the mount)."""
    digest = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"crashfs-{digest}.sock"


def _serve_control(ops: CrashOperations, server: socket.socket) -> None:
    # Signals must reach the FUSE thread: libfuse's SIGTERM handler only ends its loop there.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    while True:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as stream:
            try:
                reply = {"ok": True, **ops.control(json.loads(stream.readline()))}
            except Exception as exc:  # report to the client instead of killing the thread
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            stream.write(json.dumps(reply).encode() + b"\n")


def serve(mountpoint: Path, capacity: int = DEFAULT_CAPACITY, debug: bool = False) -> None:
    """Mount CrashFS at ``mountpoint`` and serve until unmounted (blocks)."""
    ops = CrashOperations(capacity)
    path = control_socket_path(mountpoint)
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    threading.Thread(target=_serve_control, args=(ops, server), daemon=True).start()
    try:
        _FUSE(ops, str(mountpoint), foreground=True, nothreads=True, fsname="crashfs", debug=debug)
    finally:
        path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.crashfs", description=__doc__.split("\n")[0]
    )
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--capacity", type=int, default=DEFAULT_CAPACITY, help="bytes")
    parser.add_argument("--die-with-parent", action="store_true", help="SIGTERM when parent dies")
    parser.add_argument("--debug", action="store_true", help="libfuse debug output on stderr")
    args = parser.parse_args(argv)
    if args.die_with_parent:  # pytest killed: libfuse's SIGTERM handler still unmounts
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            return 1
    serve(args.mountpoint, args.capacity, args.debug)
    return 0


# -- client ------------------------------------------------------------------------------------
def crashfs_unavailable_reason() -> str | None:
    """Why CrashFS cannot run here, or None if it can."""
    if mfusepy is None:
        return "mfusepy (or libfuse3) cannot be imported"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt install fuse3)"
    return None


def crashfs_available() -> bool:
    """True if /dev/fuse, fusermount3 and mfusepy are all present."""
    return crashfs_unavailable_reason() is None


@dataclasses.dataclass(frozen=True)
class CrashStats:
    """Counters since mount (or reset_stats). ``fsync`` includes fdatasync calls; failed
    (injected EIO) syncs are counted in their kind and in ``failed_syncs``."""

    fsync: int
    fdatasync: int
    fsyncdir: int
    failed_syncs: int
    writes: int
    bytes_written: int
    cuts: int
    used_bytes: int
    capacity: int
    fault: str


_MOUNTED: set[CrashFS] = set()


def _fusermount(*args: str) -> int:
    command = ["fusermount3", *args]
    return subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


class CrashFS:
    """Client and lifecycle of one CrashFS server; also usable from a process that did not mount.

    Kill every process using the mount (SIGKILL, then wait) *before* :meth:`cut_power`.
    """

    def __init__(self, mountpoint: Path, capacity: int = DEFAULT_CAPACITY) -> None:
        self.mountpoint = Path(mountpoint).absolute()
        self.capacity = capacity
        self.control_path = control_socket_path(self.mountpoint)
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._log = ""

    def __enter__(self) -> CrashFS:
        self.mount()
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()

    def mount(self, timeout: float = 15.0) -> None:
        """Start the server in a child process and wait until it is mounted and answering."""
        if self.is_mounted():
            raise RuntimeError(f"{self.mountpoint} is already a mount point")
        fd, log = tempfile.mkstemp(prefix="crashfs-", suffix=".log")
        self.log_path = Path(log)
        command = [sys.executable, "-m", "tests.support.crashfs", str(self.mountpoint)]
        command += ["--capacity", str(self.capacity), "--die-with-parent"]
        with os.fdopen(fd, "wb") as log_file:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file
            )
        _MOUNTED.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.unmount()
                raise RuntimeError(f"crashfs server exited: {self.server_log()}")
            if self.is_mounted():
                with contextlib.suppress(OSError):
                    self._request(op="ping")
                    return
            time.sleep(0.02)
        self.unmount()
        raise RuntimeError(f"crashfs did not mount within {timeout}s: {self.server_log()}")

    def unmount(self, timeout: float = 15.0) -> None:
        """Unmount (lazily if busy) and stop the server; safe to call more than once."""
        _MOUNTED.discard(self)
        process, self.process = self.process, None
        if self.is_mounted():
            if _fusermount("-u", str(self.mountpoint)):
                # Busy: detach it now. The server would serve the remaining open files until
                # they are closed, so stop it (their users get ENOTCONN).
                _fusermount("-u", "-z", str(self.mountpoint))
                if process is not None:
                    process.terminate()
        elif process is not None:
            process.terminate()  # never mounted (or already gone)
        if process is not None:
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            self.control_path.unlink(missing_ok=True)  # left behind if the server was killed
        if self.log_path is not None:
            self._log = self.server_log()
            self.log_path.unlink(missing_ok=True)
            self.log_path = None

    def is_mounted(self) -> bool:
        """Whether the mount table lists the mount point (os.path.ismount() stats the path,
        which fails on the mount of a dead server, so it would miss exactly that leftover)."""
        path = os.path.join(os.path.realpath(self.mountpoint.parent), self.mountpoint.name)
        for char, escaped in (("\\", "\\134"), (" ", "\\040"), ("\t", "\\011"), ("\n", "\\012")):
            path = path.replace(char, escaped)
        with open("/proc/self/mounts") as mounts:
            return any(line.split()[1] == path for line in mounts)

    def server_log(self) -> str:
        """The server's stderr (libfuse and mfusepy messages, tracebacks of FS bugs)."""
        if self.log_path is None:
            return self._log
        return self.log_path.read_text(errors="replace")

    def _request(self, **request: Any) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(60)
            conn.connect(str(self.control_path))
            with conn.makefile("rwb") as stream:
                stream.write(json.dumps(request).encode() + b"\n")
                stream.flush()
                reply: dict[str, Any] = json.loads(stream.readline())
        if not reply.pop("ok"):
            raise RuntimeError(f"crashfs control {request}: {reply['error']}")
        return reply

    def cut_power(self) -> None:
        """Atomically discard everything not durable. Kill the FS's users first."""
        self._request(op="cut")

    def stats(self) -> CrashStats:
        """Sync/write counters and space usage (e.g. for fsyncs-per-object measurements)."""
        return CrashStats(**self._request(op="stats")["stats"])

    def reset_stats(self) -> None:
        """Zero the counters of :meth:`stats`."""
        self._request(op="reset-stats")

    def inject(self, fault: Fault) -> None:
        """``fsync-eio``: fsync/fsyncdir fail with EIO and sync nothing; ``enospc``: writes and
        creations fail with ENOSPC; ``none``: clear."""
        self._request(op="inject", fault=fault)

    def set_capacity(self, capacity: int) -> None:
        """Simulated disk size in bytes (statfs and ENOSPC follow it)."""
        self._request(op="capacity", bytes=capacity)


@atexit.register
def _unmount_leftovers() -> None:
    for crashfs in list(_MOUNTED):
        crashfs.unmount()


if __name__ == "__main__":
    sys.exit(main())


@contextlib.contextmanager
def mounted(mount: Path) -> Iterator[CrashFS]:
    """A CrashFS mounted at ``mount`` (created), unmounted afterwards whatever happens."""
    mount.mkdir()
    fs = CrashFS(mount)
    fs.mount()
    try:
        yield fs
    finally:
        fs.unmount()
