"""One writer per store: ``STORE/.lock``, held by the job that writes the store.

The lock file is a JSON object (``pid``, ``host``, ``started``, ``command``) written to a
temporary file, ``flock``-ed, then linked into place, so it appears whole and locked at once; a
second job finds it locked and fails naming the holder. The kernel drops an ``flock`` when its
process dies, so a lock file nobody holds was left by a dead job: on the same host it is taken
over (:attr:`StoreLock.taken_over` says whose it was); one naming another host is refused, since
its process cannot be checked from here, until it is deleted by hand. Where the file system has
no ``flock``, the same-host check asks whether the holder's pid still runs.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from . import fileio
from .errors import StoreError, StoreLockedError
from .format import LOCK, now

__all__ = ["StoreLock", "read_holder", "describe_holder"]

_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: the file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in _NO_FLOCK:
            return None
        raise


def _read_fd(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 1 << 16):
        data += chunk
    try:
        holder = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def read_holder(store_path) -> dict | None:
    """What ``STORE/.lock`` says (None when there is none): the job writing the store, or one
    that died without removing it."""
    try:
        fd = os.open(Path(store_path) / LOCK, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read_fd(fd)
    finally:
        os.close(fd)


def describe_holder(holder: dict) -> str:
    what = f"process {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    if holder.get("started"):
        what += f", started {holder['started']}"
    if holder.get("command"):
        what += f" ({holder['command'][:300]})"
    return what


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _store_dir(store_path) -> tuple[Path, bool]:
    """The store's directory, created if needed; (path, whether this call created it)."""
    path = Path(store_path)
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path} exists and is not a directory")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"{e.filename or path}: cannot create the store directory: "
                         f"{e.strerror or e}") from None
    return path, created


class StoreLock:
    """The lock of one store, held from :meth:`acquire` to :meth:`release` (or the ``with``
    block's end)."""

    def __init__(self, path: Path, fd: int, holder: dict, taken_over: dict | None,
                 created_dir: bool):
        self.store_path, self.file = path, path / LOCK
        self._fd: int | None = fd
        self.holder, self.taken_over, self._created_dir = holder, taken_over, created_dir

    @classmethod
    def acquire(cls, store_path) -> "StoreLock":
        """Take the lock of the store at ``store_path`` (its directory is created if needed);
        :class:`StoreLockedError` names the holder when another job has it."""
        path, created = _store_dir(store_path)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": now(),
              "command": " ".join(sys.argv)}
        taken_over, stale_fd = None, None
        try:
            for _ in range(20):
                fd = _link_new(path / LOCK, me)
                if fd is not None:
                    return cls(path, fd, me, taken_over, created)
                found = _claim_stale(path / LOCK, me)
                if found is not None:
                    if stale_fd is not None:
                        os.close(stale_fd)
                    stale_fd, taken_over = found
        except OSError as e:
            raise StoreError(f"{e.filename or path / LOCK}: cannot take the store's lock: "
                             f"{e.strerror or e}") from None
        finally:
            if stale_fd is not None:
                os.close(stale_fd)
        raise StoreError(f"{path / LOCK}: could not take the store's lock (it keeps changing: "
                         "another job is starting on this store?)")

    def release(self) -> None:
        """Remove the lock file (if it is still this lock's) and unlock; removes the store's
        directory too when this lock created it and nothing else was written there."""
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.file):
                self.file.unlink()
        finally:
            os.close(self._fd)
            self._fd = None
        if self._created_dir:
            try:
                self.store_path.rmdir()
            except OSError:
                pass  # not empty: the store was created

    def __enter__(self) -> "StoreLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def taken_over_message(self) -> str | None:
        if not self.taken_over:
            return None
        return (f"took over the stale lock of {self.file} left by "
                f"{describe_holder(self.taken_over)}, which is no longer running")


def _link_new(lock: Path, me: dict) -> int | None:
    """A new lock file with ``me`` in it, locked: its fd, or None when one exists already."""
    tmp = fileio.tmp_path(lock)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _flock(fd)
        os.write(fd, fileio.json_bytes(me))
        os.fsync(fd)
        try:
            os.link(tmp, lock)
        except FileExistsError:
            os.close(fd)
            return None
        fileio.fsync_dir(lock.parent)
        return fd
    except BaseException:
        os.close(fd)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _claim_stale(lock: Path, me: dict) -> tuple[int, dict] | None:
    """Examine the existing lock file: raise when its holder runs (or cannot be checked); when it
    is stale, remove it and return (its fd, still locked until the new lock is in place, and
    what it said). None: it changed meanwhile, look again."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return None
    keep = False
    try:
        locked = _flock(fd)
        holder = _read_fd(fd)
        if locked is False:
            raise StoreLockedError(
                f"{lock.parent} is being written by another job: {describe_holder(holder)} holds "
                f"{lock}; wait for it to end, or write to another --output", holder)
        if not _same_file(fd, lock):
            return None
        if holder.get("host") != me["host"]:
            raise StoreLockedError(
                f"{lock} names {describe_holder(holder)}, a job on another host that cannot be "
                f"checked from here; if it is no longer running, delete {lock} and rerun", holder)
        if locked is None and _pid_alive(holder.get("pid")):
            raise StoreLockedError(
                f"{lock.parent} is being written by another job: {describe_holder(holder)} holds "
                f"{lock}; wait for it to end, or write to another --output", holder)
        lock.unlink()
        keep = True
        return fd, holder
    finally:
        if not keep:
            os.close(fd)
