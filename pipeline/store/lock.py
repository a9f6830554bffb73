"""The writer lock: an OS lock (flock) on a file inside the store directory, released by the kernel when the
process holding it dies, so a killed writer never leaves a lock that blocks the next one.

The file also holds the holder's pid and host (JSON), read only for messages: whether a lock is held is
decided by the kernel, never by that text. The store directory is created before the lock is taken (the
lock file lives inside it); a lock that was the only reason for the directory removes it again on release.
Deleting a lock file while another process waits on it is made safe by re-checking, after each acquire,
that the file locked is still the one at the path (otherwise two processes could each lock an inode).

Leases (`Lease`, below) are the other mechanism: a record with an expiry renewed by a heartbeat, for the shards
of one store and for jobs that may be requeued onto another host (flock is tied to one host and unreliable on
NFS). Every writer, whichever it holds, refuses to start while another kind of writer is live (`live_holders`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
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


# ------------------------------------------------------------------ leases (shards, jobs that move between hosts)
# A lease is a file holding {token, host, pid, job, expires}, renewed by a heartbeat thread while its holder
# works. Unlike flock it means the same on every filesystem (NFS, Lustre) and on every host: whoever reads it
# sees who holds it and until when. A lease is taken over when it has expired (its holder stopped renewing:
# killed, host lost), at once when its holder ran on this host and is gone, or when this process is the same
# SLURM job restarted (requeued after a timeout or preemption: SLURM ran the previous attempt to its end).
# Expiry compares wall clocks across hosts: keep them synchronised (NTP); the TTL is far above usual skew.
LEASE_TTL_S = 120.0
LEASE_PREFIX = ".arcache-lock."


def lease_file(store_dir, name: str) -> Path:
    """The lease `name` of a store: 'shard-<i>' (a shard's writer), 'writer' (a single writer holding a lease
    instead of flock), 'store' (creating the store, writing its tables, finalising it)."""
    return Path(store_dir) / f"{LEASE_PREFIX}{name}.json"


def job_identity() -> dict:
    """This process's batch job: SLURM's job id (kept when the job is requeued) and restart count."""
    job = os.environ.get("SLURM_JOB_ID") or None
    try:
        restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        restart = 0
    return {"job": job, "restart": restart}


def _proc_start(pid: int) -> str | None:
    """The start time of a process (Linux /proc; None elsewhere): tells a reused pid from the lease's holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _proc_start(pid)
    return start is None or now is None or now == start


def read_lease(path) -> dict | None:
    """The lease record at `path` (None if there is none); an unreadable one is ``{"unreadable": True, ...}``
    with the file's modification time, so that it expires like a lease nobody renews."""
    path = Path(path)
    try:
        text = path.read_text()
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError:
        return {"unreadable": True, "expires": time.time() + LEASE_TTL_S}
    try:
        rec = json.loads(text)
        if isinstance(rec, dict) and isinstance(rec.get("expires"), (int, float)) and rec.get("token"):
            return rec
    except (ValueError, UnicodeDecodeError):
        pass
    return {"unreadable": True, "expires": mtime + LEASE_TTL_S}


def lease_stale_reason(rec: dict, now: float | None = None) -> str | None:
    """Why the lease `rec` may be taken over ('expired', 'holder gone', 'job requeued'), or None if it is live."""
    now = time.time() if now is None else now
    if now > float(rec.get("expires", 0)):
        return "expired"
    if rec.get("unreadable"):
        return None
    if rec.get("host") == socket.gethostname() and isinstance(rec.get("pid"), int):
        if not _pid_alive(rec["pid"], rec.get("pid_start")):
            return "holder gone"
    me = job_identity()
    if me["job"] is not None and rec.get("job") == me["job"] and me["restart"] > int(rec.get("restart") or 0):
        return "job requeued"
    return None


def lease_is_live(rec: dict | None) -> bool:
    return bool(rec) and lease_stale_reason(rec) is None


def describe_lease(rec: dict | None) -> str:
    if not rec or rec.get("unreadable"):
        return "another process (its lease file is unreadable)"
    left = float(rec["expires"]) - time.time()
    job = f", job {rec['job']}" if rec.get("job") else ""
    return (f"pid {rec.get('pid')} on host {rec.get('host')!r}{job} (lease renewed until "
            f"{time.strftime('%H:%M:%S', time.localtime(rec['expires']))}, {left:.0f} s from now)")


class Lease:
    """An exclusive lease on a file, renewed by a heartbeat thread every ttl/3 seconds while held.

    ``acquire(wait_s)`` takes it when it is free or stale (see `lease_stale_reason`), waiting up to ``wait_s``
    seconds for a live holder to let go, else raises StoreLockedError naming the holder and when its lease
    ends. Creation is atomic (a complete record is hard-linked into place, so a reader never sees half a
    record); a stale lease is moved aside by rename, which only one of several contenders can do. ``lost``
    becomes true when a renewal finds the lease taken over (this process stalled longer than the TTL); the
    holder must then stop writing (``check()`` raises).
    """

    def __init__(self, path, ttl_s: float = LEASE_TTL_S, what: str | None = None):
        self.lock_file = Path(path)
        self.ttl_s = float(ttl_s)
        self.what = what or str(self.lock_file.parent)
        self.token: str | None = None
        self.held = False
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._created: list[Path] = []

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def _record(self) -> dict:
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                "pid_start": _proc_start(os.getpid()), **job_identity(), "ttl_s": self.ttl_s,
                "renewed": time.time(), "expires": time.time() + self.ttl_s}

    def _write_tmp(self) -> Path:
        tmp = self.lock_file.with_name(f"{self.lock_file.name}.{self.token}.tmp")
        with open(tmp, "w") as f:
            json.dump(self._record(), f)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def _try_create(self) -> bool:
        tmp = self._write_tmp()
        try:
            os.link(tmp, self.lock_file)
            return True
        except FileExistsError:
            return False
        except OSError as e:  # a filesystem without hard links: exclusive create, then the record
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
                raise
            try:
                fd = os.open(self.lock_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(tmp.read_text())
                f.flush()
                os.fsync(f.fileno())
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def _move_stale(self, rec: dict) -> None:
        """Move the stale lease `rec` aside (one contender wins the rename); put back one that changed meanwhile."""
        aside = self.lock_file.with_name(f"{self.lock_file.name}.{uuid.uuid4().hex}.stale")
        try:
            os.rename(self.lock_file, aside)
        except FileNotFoundError:
            return
        moved = read_lease(aside)
        if moved is not None and not moved.get("unreadable") and moved.get("token") != rec.get("token"):
            try:  # someone renewed or took it over between our look and the rename: give it back
                os.link(aside, self.lock_file)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def acquire(self, wait_s: float = 0.0) -> None:
        if self.held:
            return
        self.token = uuid.uuid4().hex
        self.lost = False
        deadline = time.monotonic() + wait_s
        while True:
            self._make_dirs()
            if self._try_create():
                break
            rec = read_lease(self.lock_file)
            if rec is None:
                continue  # released meanwhile
            why = lease_stale_reason(rec)
            if why is not None:
                log.info("%s: taking over the lease of %s (%s)", self.what, describe_lease(rec), why)
                self._move_stale(rec)
                continue
            if time.monotonic() < deadline:
                time.sleep(min(0.2, max(0.01, deadline - time.monotonic())))
                continue
            raise StoreLockedError(
                f"{self.what} is being written by {describe_lease(rec)}; wait for it to finish, or stop it (a lease "
                "nobody renews expires, and a requeued job of the same SLURM job id takes it over at once)")
        self.held = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease:{self.lock_file.name}", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        period = max(0.05, self.ttl_s / 3)
        last_ok = time.time()
        while not self._stop.wait(period):
            try:
                if not self.renew():
                    return
                last_ok = time.time()
            except OSError as e:  # a transient filesystem error: try again next period, unless it is too late
                log.warning("%s: could not renew its lease (%s)", self.what, e)
                if time.time() - last_ok > self.ttl_s:
                    self.lost = True
                    return

    def renew(self) -> bool:
        """Push the expiry forward; False (and ``lost``) when the lease is no longer ours."""
        rec = read_lease(self.lock_file)
        if rec is None or rec.get("token") != self.token:
            self.lost = True
            log.error("%s: its lease was taken over by %s; this writer stops", self.what, describe_lease(rec))
            return False
        tmp = self._write_tmp()
        os.replace(tmp, self.lock_file)
        return True

    def check(self) -> None:
        """Raise StoreLockedError if the lease was lost (or is no longer this holder's file)."""
        if not self.held:
            raise StoreLockedError(f"{self.what}: the lease {self.lock_file.name} is not held")
        if not self.lost:
            rec = read_lease(self.lock_file)
            self.lost = rec is None or rec.get("token") != self.token
        if self.lost:
            raise StoreLockedError(f"{self.what}: the lease {self.lock_file.name} was taken over by another writer "
                                   "(this process stalled longer than the lease's TTL); this writer stopped")

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        rec = read_lease(self.lock_file)
        if rec is not None and rec.get("token") == self.token:
            self.lock_file.unlink(missing_ok=True)
        self.held = False
        for d in reversed(self._created):
            try:
                d.rmdir()
            except OSError:
                break
        self._created = []

    _make_dirs = WriterLock._make_dirs

    def keep_directories(self) -> None:
        self._created = []


def lease_files(store_dir) -> list[Path]:
    """The lease files of a store directory (not their temp files)."""
    d = Path(store_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.name.startswith(LEASE_PREFIX) and p.name.endswith(".json")
                  and p.name != ".arcache-lock.json")


def live_holders(store_dir, ignore: tuple[str, ...] = ()) -> list[str]:
    """Who is writing a store now: the flock holder and every live lease, except the lease files named in
    ``ignore`` (matched by file name), each described."""
    from .schema import LOCK_FILE

    store_dir = Path(store_dir)
    out = []
    info = read_lock(store_dir / LOCK_FILE)
    if LOCK_FILE not in ignore and lock_is_live(info):
        out.append(f"{describe(info)} (writer lock)")
    for f in lease_files(store_dir):
        if f.name in ignore:
            continue
        rec = read_lease(f)
        if lease_is_live(rec):
            out.append(f"{describe_lease(rec)} ({f.name[len(LEASE_PREFIX):-len('.json')]})")
    return out
