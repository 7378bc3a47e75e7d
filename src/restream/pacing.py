"""Fewer, bigger reads of a live stream: the kernel wakes restream once a batch has arrived (SO_RCVLOWAT).

An RTMP sender (ffmpeg) writes every chunk, even every chunk's one-byte header, with its own ``write``; read as they
come, a 4.5 Mbit/s stream woke the relay thousands of times a second per destination, and each wake-up cost a
``recv``, a ``send`` and a trip round the event loop: most of restream's own CPU. A ``Pacer`` sets the socket's low
mark to about ``BATCH_S`` worth of the stream's recent rate, so each wake-up reads a batch. EOF and errors still wake
the reader at once; ``tick`` re-reads the rate (a stream that slows down gets a lower mark within a tick), and
``release`` goes back to byte-by-byte reading where every byte counts at once (the end of a session, a stop).

Stdlib only; Linux honours SO_RCVLOWAT in poll/epoll for TCP. Where it cannot be set, nothing changes.
"""

from __future__ import annotations

import asyncio
import socket

BATCH_S = 0.05          # a batch: about this long of the stream
LOWAT_MAX = 64 * 1024   # ... and at most this many bytes


class Pacer:
    __slots__ = ("transport", "batch_s", "rx", "at", "lowat")

    def __init__(self, transport: asyncio.BaseTransport | None, batch_s: float = BATCH_S) -> None:
        self.transport = transport
        self.batch_s = batch_s  # a batch: about this long of the stream
        self.rx = 0         # bytes read since ``at``
        self.at = 0.0       # time.monotonic() of the last tick (0: none yet)
        self.lowat = 1      # the socket's SO_RCVLOWAT as last set

    def tick(self, now: float) -> None:
        """Set the low mark from the rate since the last tick (call it every few hundred ms while live)."""
        if self.at and now > self.at:
            want = max(1, min(LOWAT_MAX, int(self.rx / (now - self.at) * self.batch_s)))
            if want != self.lowat and (want == 1 or abs(want - self.lowat) * 4 > self.lowat):
                self._set(want)
        self.rx, self.at = 0, now

    def release(self) -> None:
        """Every byte wakes the reader again (and ``tick`` starts over)."""
        self.at = 0.0
        if self.lowat != 1:
            self._set(1)

    def _set(self, lowat: int) -> None:
        t = self.transport
        sock = t.get_extra_info("socket") if t is not None else None
        if sock is None:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
        except OSError:
            return
        self.lowat = lowat
