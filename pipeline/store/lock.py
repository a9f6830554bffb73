"""A writer lock: a file holding pid and host, created atomically; a lock whose process is gone is stale."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from .errors import StoreLockedError

log = logging.getLogger(__name__)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_lock(lock_file: Path) -> dict | None:
    try:
        return json.loads(lock_file.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, OSError):
        return {"pid": -1, "host": "?", "unreadable": True}


def lock_is_live(info: dict) -> bool:
    """A lock is live if its process runs on this host, or if it was taken on another host (unknowable)."""
    if info.get("unreadable"):
        return False
    if info.get("host") != socket.gethostname():
        return True
    return _pid_alive(int(info.get("pid", -1)))


class WriterLock:
    def __init__(self, lock_file: Path):
        self.lock_file = Path(lock_file)
        self.held = False

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = read_lock(self.lock_file)
                if info is None:
                    continue  # released meanwhile
                if lock_is_live(info):
                    raise StoreLockedError(
                        f"{self.lock_file.parent} is being written by pid {info.get('pid')} on host "
                        f"{info.get('host')!r}; wait for it to finish, or if no such writer runs, delete "
                        f"{self.lock_file}"
                    ) from None
                log.warning("taking over stale lock of pid %s on %s (%s)", info.get("pid"), info.get("host"),
                            self.lock_file.parent)
                try:
                    self.lock_file.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise StoreLockedError(f"could not take the lock {self.lock_file}: it keeps changing hands")

    def release(self) -> None:
        if self.held:
            try:
                self.lock_file.unlink()
            except FileNotFoundError:
                pass
            self.held = False
