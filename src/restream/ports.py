"""Loopback ports for restream's own listeners and stand-ins: picking one, and seeing that one listens."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def listening(port: int) -> bool:
    """True if something LISTENs on ``port`` (read from /proc/net/tcp: no connect, which would use up a one-shot
    ``ffmpeg -listen``)."""
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            for line in Path(name).read_text().splitlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    return True
        except (OSError, IndexError, ValueError):
            continue
    return False


def free_port(taken: set[int] | None = None) -> int:
    """A loopback port below the ephemeral range (ffmpeg retrying a connect there can never self-connect)."""
    taken = taken if taken is not None else set()
    high = min(ephemeral_low(), 32768) - 1
    for _ in range(500):
        port = random.randint(20000, high)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise OSError("no free loopback port")
