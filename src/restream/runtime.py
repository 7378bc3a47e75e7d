"""One broadcast per profile: the broadcast lock, and the small status file other commands read while it runs.

The lock is an OS file lock (``flock``; filelock where there is no fcntl), so the kernel drops it when its holder
dies, however it dies: a lock left by a killed run never blocks the next one. Beside it, ``run/<profile>.json``
(mode 0600) names the holder (PID, start time) and carries its latest per-destination status for
``restream status``.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

from restream import paths
from restream.errors import BusyError, ProfileError


def info_path(profile: str) -> Path:
    return paths.runtime_dir() / f"{profile}.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read(profile: str) -> dict | None:
    """The running broadcast's info for ``profile``, or None when none runs."""
    try:
        data = json.loads(info_path(profile).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not _pid_alive(int(data.get("pid", 0) or 0)):
        return None
    return data


def write(profile: str, data: dict) -> None:
    from restream.profile import atomic_write

    # rewritten every second while live, meaningless after a reboot: no fsync (it cost more than the rest of it)
    atomic_write(info_path(profile), json.dumps(data, ensure_ascii=False), durable=False)


class Session:
    """The running broadcast's entry in the runtime directory."""

    def __init__(self, profile: str, command: str, only: str | None = None, skip: str | None = None) -> None:
        self.profile = profile
        self.base = {"pid": os.getpid(), "command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                     "only": only, "skip": skip}

    def publish(self, snapshot: dict | None = None) -> None:
        try:
            write(self.profile, {**self.base, "snapshot": snapshot})
        except OSError:
            pass  # status for other terminals is a convenience; never stop a broadcast for it


def _try_lock(path: Path):
    """Take the exclusive lock on ``path`` without waiting: its release function, or None when another process
    holds it. ``flock`` itself where there is fcntl (what filelock does there, without its ~20 ms import on the
    way to going live; the two interoperate), filelock elsewhere."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        from filelock import FileLock, Timeout

        lock = FileLock(str(path), mode=0o600)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return None
        return lock.release
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as exc:
        raise ProfileError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise

    def release() -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    return release


@contextmanager
def broadcast_lock(profile: str, command: str, only: str | None = None, skip: str | None = None
                   ) -> Iterator[Session]:
    """Hold the profile's broadcast lock for the whole broadcast; BusyError at once if another holds it."""
    lock_path = paths.broadcast_lock_path(profile)
    try:
        lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ProfileError(f"{lock_path.parent}: cannot create: {exc.strerror}") from None
    release = _try_lock(lock_path)
    if release is None:
        other = read(profile) or {}
        who = f"PID {other.get('pid', '?')}, started {other.get('started', '?')}"
        raise BusyError(f"profile {profile!r} is already broadcasting ({who}); "
                        f"stop it first or use another profile (-p)") from None
    try:
        session = Session(profile, command, only, skip)
        session.publish()
        yield session
    finally:
        try:
            info_path(profile).unlink()
        except OSError:
            pass
        release()
