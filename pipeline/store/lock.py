"""The writer lock: an OS lock (flock) on a file inside the store directory, released by the kernel when the
process holding it dies, so a killed writer never leaves a lock that blocks the next one.

The file also holds the holder's pid and host (JSON), read only for messages: whether a lock is held is
decided by the kernel, never by that text. The store directory is created before the lock is taken (the
lock file lives inside it); a lock that was the only reason for the directory removes it again on release.
Deleting a lock file while another process waits on it is made safe by re-checking, after each acquire,
that the file locked is still the one at the path (otherwise two processes could each lock an inode).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from .errors import StoreError, StoreLockedError

log = logging.getLogger(__name__)

# A probe (`stores ls`) holds a shared lock for microseconds; a writer retries this long before it gives up.
_BUSY_RETRY_S = 0.3


def read_lock(lock_file: Path) -> dict | None:
    """The lock file's pid/host record plus ``held`` (whether a live process holds the OS lock now);
    None when there is no lock file."""
    lock_file = Path(lock_file)
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:
        return {"pid": None, "host": None, "held": False, "unreadable": True}
    try:
        held = _held_by_other(fd)
        try:
            info = json.loads(os.pread(fd, 1 << 16, 0).decode() or "{}")
        except (ValueError, UnicodeDecodeError):
            info = {"unreadable": True}
        if not isinstance(info, dict):
            info = {"unreadable": True}
    finally:
        os.close(fd)
    return {"pid": None, "host": None, **info, "held": held}


def lock_is_live(info: dict | None) -> bool:
    """Whether the lock described by ``read_lock`` is held by a running process."""
    return bool(info and info.get("held"))


def _held_by_other(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # a filesystem without locks: nothing can hold one
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def describe(info: dict | None) -> str:
    if not info or info.get("unreadable") or info.get("pid") is None:
        return "another process (pid unknown: the lock file is being written)"
    return f"pid {info.get('pid')} on host {info.get('host')!r}"


class WriterLock:
    """Exclusive, non-blocking lock of one store directory.

    ``acquire()`` creates the directory (and its missing parents) if needed, then locks ``directory/name``;
    it raises StoreLockedError naming the holder when a live process holds it. ``release()`` removes the
    lock file, and the directories acquire() created if they are empty again.
    """

    def __init__(self, lock_file: Path):
        self.lock_file = Path(lock_file)
        self.held = False
        self._fd: int | None = None
        self._created: list[Path] = []

    @classmethod
    def for_store(cls, store_dir) -> WriterLock:
        from .schema import LOCK_FILE

        return cls(Path(store_dir) / LOCK_FILE)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def acquire(self) -> None:
        if self.held:
            return
        deadline = time.monotonic() + _BUSY_RETRY_S
        for _ in range(1000):
            self._make_dirs()
            try:
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue  # the directory was removed by a releasing holder meanwhile: make it again
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = read_lock(self.lock_file)
                os.close(fd)
                if time.monotonic() < deadline:
                    time.sleep(0.02)  # perhaps a probe (`stores ls`) holding it for an instant: look again
                    continue
                raise StoreLockedError(
                    f"{self.lock_file.parent} is being written by {describe(info)}; wait for it to finish or "
                    "stop it (the lock is released by the system when that process ends)"
                ) from None
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise StoreError(f"the filesystem of {self.lock_file.parent} does not support file locks "
                                     f"({e.strerror}); write stores on a local disk") from None
                raise
            if not self._same_file(fd):
                os.close(fd)  # we locked a file a releasing holder had just unlinked: lock the current one
                continue
            previous = self._record(fd)
            if previous and previous.get("pid") not in (None, os.getpid()):
                log.info("%s: the previous writer (pid %s on %s) is gone; taking over its lock",
                         self.lock_file.parent, previous.get("pid"), previous.get("host"))
            self._fd, self.held = fd, True
            return
        raise StoreLockedError(f"could not take the lock {self.lock_file}: it keeps changing hands")

    def _make_dirs(self) -> None:
        missing = []
        p = self.lock_file.parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir()
                self._created.append(d)
            except FileExistsError:
                pass
        if self.lock_file.parent.exists() and not self.lock_file.parent.is_dir():
            from .errors import NotAStoreError

            raise NotAStoreError(f"{self.lock_file.parent} is a file, not a store directory; choose another path")

    def _same_file(self, fd: int) -> bool:
        try:
            st = os.stat(self.lock_file)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    @staticmethod
    def _record(fd: int) -> dict | None:
        """Write our pid/host into the locked file; return the record it held before (a dead holder's)."""
        try:
            previous = json.loads(os.pread(fd, 1 << 16, 0).decode() or "null")
        except (ValueError, UnicodeDecodeError):
            previous = None
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, me, 0)
        return previous if isinstance(previous, dict) else None

    def release(self) -> None:
        if not self.held:
            return
        try:
            # unlink while still holding: a waiter that opened this inode re-checks it after locking
            self.lock_file.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd, self.held = None, False
        for d in reversed(self._created):
            try:
                d.rmdir()  # only if empty: the store (or anything else) put there stays
            except OSError:
                break
        self._created = []

    def keep_directories(self) -> None:
        """The directories acquire() created now hold data: release() must not try to remove them."""
        self._created = []
