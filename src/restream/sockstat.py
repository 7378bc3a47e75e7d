"""What the kernel knows about a connection's sending side (Linux): bytes acknowledged, bytes still waiting.

Shared by the slot relay's sessions and the legs of a "both" destination (dualingest): stall detection and the
drain at the end read these. Elsewhere (no TCP_INFO, no TIOCOUTQ) the answers are "unknown" and "nothing waiting".
"""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import termios


def acked(transport: asyncio.BaseTransport | None) -> int | None:
    """Bytes the peer's TCP stack acknowledged so far (tcpi_bytes_acked), None if unknown."""
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 136)
    except (OSError, AttributeError):
        return None
    return struct.unpack_from("Q", raw, 120)[0] if len(raw) >= 128 else None


def unsent(transport: asyncio.WriteTransport | None) -> bool:
    """Bytes are waiting for the peer: in asyncio's write buffer or unacknowledged in the kernel's."""
    if transport is None:
        return False
    if transport.get_write_buffer_size():
        return True
    sock = transport.get_extra_info("socket")
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0] > 0
    except (OSError, AttributeError, ValueError):
        return False
