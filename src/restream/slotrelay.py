"""The slot relay: ffmpeg publishes placeholders to loopback, the relay publishes the real keys upstream.

ffmpeg's tee has one RTMP slave per slot; slave ``i`` publishes ``rtmp://127.0.0.1:<port_i>/slot/slot-<i>``. For each
connection the relay dials the destination assigned to slot ``i`` (TLS for rtmps://), passes the handshake through
verbatim, then passes the client->server chunks through as they are (``rtmp.ChunkRewriter``) except commands:
``connect`` gets the real app and tcUrl, ``releaseStream``/``FCPublish``/``publish``/``FCUnpublish`` the key for the
placeholder stream name; rewritten commands (and what follows them on their chunk stream id until a fmt 0 header) are
re-chunked. Server->client: the handshake passes through; then the relay announces its own chunk size to ffmpeg
(``FFMPEG_CHUNK``: ffmpeg then sends its media in 4 KB chunks, not RTMP's default 128 bytes when the destination
announces none) and re-chunks the destination's messages at that size, reading its commands to learn whether the
publish was accepted.

So no key is ever in ffmpeg's argv, every destination's true state and byte count are known here, and a slot can be
re-pointed live (the current session is closed; ffmpeg's fifo reconnects within about a second).

The data path is two ``asyncio.Protocol`` objects per session (no streams, no task per read): ``data_received``
feeds the ChunkRewriter and writes straight to the other socket's transport. Flow control: when one socket's write
buffer passes ``_WRITE_HIGH`` the other socket stops being read until it drains, so a slow destination back-pressures
into ffmpeg's per-slave fifo and memory stays bounded.

Backup ingest (failover): an Upstream with a ``backup_url`` has two ingests for the same key. New sessions of its slot
dial the slot's current ingest (the primary at first). After ``FAILOVER_ATTEMPTS`` failed sessions in a row on it, or
``FAILOVER_AFTER_S`` without it being live (from the assignment, or from its last live session's end), the slot
switches to the other ingest (a "switched" event says to which and why); a session still trying the old one is cut so
ffmpeg's fifo reconnects at once. The slot never switches back just because the other ingest returned: only when the
current one fails in the same way (no flapping).

Backup ingest, ``both``: the slot's ffmpeg session is answered by the relay itself and fed to both ingests at once,
each with its own connection, state and reconnection (``dualingest``; its events have ``leg=True``).

asyncio, stdlib only. Every method except ``assign`` and ``stats`` must be used from the event loop's thread;
``assign`` may be called from any thread. ``on_event`` is called on the loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from restream import dualingest, pacing, rtmp, sockstat

log = logging.getLogger(__name__)

APP = "slot"
REDACTED = "••••"
_WRITE_HIGH = 256 * 1024  # per socket: above it, the other socket stops being read
ANSWER_TIMEOUT_S = 5.0    # a destination that leaves the handshake or a command unanswered this long is dropped
STALL_AFTER_S = 5.0       # a live destination that acknowledges no byte this long (with bytes waiting) is stalled
STALL_TIMEOUT_S = 30.0    # ... and is dropped (then reconnected by ffmpeg's fifo) after this long stalled
STALL_BYTES = 16 * 1024   # acknowledged bytes that count as progress (a stalled peer may trickle a few bytes)
RESUME_BYTES = 256 * 1024  # a stalled destination is live again when it drained, or took this much
DRAIN_S = 3.0             # once the stop began: how long a live destination may take to take its last bytes
LAST_BYTES_S = 1.0        # ... and past it, once ffmpeg has exited, for one still taking them (ffmpeg ended late)
HELD_S = 1.0              # while stopping: bytes waiting and none acknowledged this long holds up the end
TAIL_S = 0.15             # a destination taken off its slot while live still gets what ffmpeg sent this long
TICK_S = 0.5              # the watchdog's period
FFMPEG_CHUNK = 4096       # the chunk size the relay announces to ffmpeg (so ffmpeg sends media in 4 KB chunks)
FAILOVER_ATTEMPTS = 3     # failed sessions in a row on one ingest before its slot switches to the other one
FAILOVER_AFTER_S = 5.0    # ... or this long without that ingest being live
_QUIET_WHEN_LIVE = frozenset((rtmp.ACKNOWLEDGEMENT, rtmp.WINDOW_ACK_SIZE, rtmp.SET_PEER_BANDWIDTH))
_ANSWERED_BY = {"connect": "connect", "createStream": "createStream", "publish": "publish"}


@dataclass(frozen=True)
class Upstream:
    name: str                   # destination name (for events); never the key
    url: str                    # rtmp://host[:port]/app... or rtmps://... (no key); default ports 1935 / 443
    key: str                    # the stream key (playpath)
    ca_file: str | None = None  # CA bundle for rtmps (None: the system's default verify paths, SSL_CERT_FILE honoured)
    backup_url: str | None = None  # a second ingest for the same key (see SlotRelay, "Backup ingest")
    backup_mode: str = "failover"  # "failover", or "both": fed at once (dualingest)

    @property
    def both(self) -> bool:
        return bool(self.backup_url) and self.backup_mode == "both"

    def __repr__(self) -> str:  # never print the key
        return (f"Upstream(name={self.name!r}, url={self.url!r}, key={REDACTED!r}, ca_file={self.ca_file!r}, "
                f"backup_url={self.backup_url!r}, backup_mode={self.backup_mode!r})")


@dataclass(frozen=True)
class SlotEvent:
    slot: int
    name: str | None
    kind: str                   # "connecting" | "live" | "stalled" | "resumed" | "ended" (ffmpeg unpublished in
    #                             order) | "disconnected" | "forced" (cut while stopping) | "refused" | "switched"
    error: str | None = None    # one line, never the key ("switched": why)
    since: float | None = None  # "stalled": time.time() of the last byte the destination acknowledged
    ingest: str | None = None   # with a backup: "primary" | "backup" (the session's; "switched": the new one)
    leg: bool = False           # backup = "both": the event of one ingest (``ingest``), not of the destination


@dataclass(frozen=True)
class SlotStats:
    slot: int
    name: str | None
    connected: bool             # an upstream connection of this slot is open
    live: bool                  # the destination accepted the publish (or media is flowing)
    bytes_up: int               # bytes written to the assigned destination (handshake included), all sessions
    sessions: int               # sessions since the current destination was assigned
    since: float | None         # time.monotonic() of the slot's last state change
    ingest_bytes: tuple[tuple[str, int], ...] = ()  # backup = "both": bytes written to each ingest, all sessions


class _Refused(Exception):
    pass


def redact(text: str, key: str) -> str:
    """``text`` on one line, with every occurrence of ``key`` replaced by ``••••``."""
    if key:
        text = text.replace(key, REDACTED)
    return " ".join(text.splitlines()).strip()


class _Session:
    __slots__ = ("slot", "upstream", "ingest", "url", "target", "pub", "dest", "connected", "live", "closing", "error",
                 "refused", "server_error", "ended", "stopped", "awaiting", "awaiting_since", "unpublished",
                 "stream_id", "acked", "acked_at", "stalled_since", "forced", "graceful", "pacer")

    def __init__(self, slot: int, upstream: Upstream, pub: "_Publisher", ended: asyncio.Future,
                 ingest: str = "primary") -> None:
        self.slot = slot
        self.upstream = upstream
        self.ingest = ingest        # which of the upstream's ingests this session dials
        self.url = upstream.backup_url if ingest == "backup" and upstream.backup_url else upstream.url
        self.target: rtmp.Target | None = None
        self.pub = pub                          # ffmpeg's side (accepted)
        self.dest: _Destination | None = None   # the destination's side, once connected
        self.connected = False
        self.live = False
        self.closing = False        # closed on purpose (unassign, reassign, relay close)
        self.error: str | None = None
        self.refused = False
        self.server_error: str | None = None
        self.ended = ended          # (side "up" | "down", exception or None) of the first side to end
        self.stopped = False        # nothing more is forwarded in either direction
        self.awaiting: str | None = None  # what the destination has yet to answer: "handshake", "connect", ...
        self.awaiting_since = 0.0   # time.monotonic() when that was sent
        self.unpublished = False    # ffmpeg sent FCUnpublish/deleteStream: the end of its stream, in order
        self.stream_id = 1          # the message stream id ffmpeg publishes on
        self.acked = -1             # the destination socket's tcpi_bytes_acked at the last watchdog tick
        self.acked_at = 0.0         # time.monotonic() when that last grew
        self.stalled_since: float | None = None  # time.monotonic() of the last acknowledged byte, while stalled
        self.forced: str | None = None  # why restream cut this session short while stopping
        self.graceful = False       # closed on purpose after flushing (unassigned while live)
        self.pacer = pacing.Pacer(pub.transport)  # live: ffmpeg's bytes are read in batches (pacing.py)

    def end(self, side: str, exc: BaseException | None) -> None:
        self.stopped = True
        if not self.ended.done():
            self.ended.set_result((side, exc))

    def abort(self) -> None:
        """Close both sockets now, dropping anything buffered."""
        self.closing = True
        self.stopped = True
        for p in (self.pub, self.dest):
            # not once the socket is gone: asyncio's transport, closed with bytes still buffered and then drained,
            # has dropped its loop without counting itself lost, and abort() raised (the session's end was lost)
            if p is not None and p.transport is not None and not p.closed.done():
                p.transport.abort()


class _Side(asyncio.Protocol):
    """One socket of a session. Flow control: when this side's write buffer is above its high-water mark, the other
    side's reading is paused (so a slow destination back-pressures into ffmpeg's fifo, and memory stays bounded)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.sess: _Session | None = None
        self.closed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.write_paused = False

    def _other(self) -> "_Side | None":
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=_WRITE_HIGH)  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self.write_paused = True
        other = self._other()
        if other is not None and other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        other = self._other()
        if other is not None and other.transport is not None:
            other.transport.resume_reading()

    def _lost(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Publisher(_Side):
    """ffmpeg -> destination: handshake verbatim, then chunks passed through, commands rewritten (ChunkRewriter)."""

    def __init__(self, relay: "SlotRelay", slot: int) -> None:
        super().__init__()
        self.relay = relay
        self.slot = slot
        self.held = False           # accepted while the allowed PID was unknown: unread until it is known
        self.stage = 0              # 0: C0+C1 awaited, 1: C2 awaited, 2: chunks
        self.pending = bytearray()  # received before the destination was connected, or an incomplete handshake part
        self.up: asyncio.Transport | None = None
        self.chunks: rtmp.ChunkRewriter | None = None
        self.ending_at = 0.0        # unassigned while live: forward until then, then unpublish at a boundary

    def _other(self) -> _Side | None:
        return self.sess.dest if self.sess is not None else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.relay._accept(self)

    def data_received(self, data: bytes) -> None:
        sess = self.sess
        if sess is None or sess.stopped:
            return
        try:
            if self.stage == 2 and self.up is not None:
                sess.pacer.rx += len(data)
                self._forward(data)
                return
            self.pending += data
            if self.up is None:
                if len(self.pending) >= 1 + rtmp.HANDSHAKE_SIZE and self.transport is not None:
                    self.transport.pause_reading()  # resumed in attach()
                return
            self._flush()
        except Exception as exc:
            sess.end("up", exc)

    def attach(self, up: asyncio.Transport) -> None:
        """The destination is connected: forward what was received meanwhile, read on."""
        self.up = up
        assert self.sess is not None
        try:
            self._flush()
        except Exception as exc:
            self.sess.end("up", exc)
        if self.transport is not None and not self.sess.stopped and not self.sess.dest.write_paused:
            self.transport.resume_reading()

    def _flush(self) -> None:
        sess = self.sess
        relay = self.relay
        assert sess is not None and self.up is not None
        while self.stage < 2:
            need = 1 + rtmp.HANDSHAKE_SIZE if self.stage == 0 else rtmp.HANDSHAKE_SIZE
            if len(self.pending) < need:
                return
            part = bytes(self.pending[:need])
            del self.pending[:need]
            self.up.write(part)
            relay._bytes[self.slot] += len(part)
            if self.stage == 0:
                sess.awaiting, sess.awaiting_since = "handshake", time.monotonic()
            self.stage += 1
        if self.chunks is None:
            name = placeholder(self.slot)
            target = sess.target
            assert target is not None
            keys = {name: sess.upstream.key}

            def rewrite(m: rtmp.Message, sess: _Session = sess) -> rtmp.Message:
                out = _check_command(m, name, keys, target)
                _follow(sess, m)
                return out

            self.chunks = rtmp.ChunkRewriter(rewrite)
        if self.pending:
            data = bytes(self.pending)
            self.pending.clear()
            self._forward(data)

    def _forward(self, data: bytes) -> None:
        chunks = self.chunks
        sess = self.sess
        blob = chunks.feed(data)  # type: ignore[union-attr]
        if chunks.media and not sess.live:  # type: ignore[union-attr]
            self.relay._set_live(sess)
        if blob:
            self.up.write(blob)  # type: ignore[union-attr]
            slot = self.slot
            if sess.upstream is self.relay._assigned[slot]:  # type: ignore[union-attr]
                self.relay._bytes[slot] += len(blob)
        if self.ending_at and time.monotonic() >= self.ending_at and chunks.at_message_boundary():  # type: ignore
            self.relay._finish_unpublish(sess)  # type: ignore[arg-type]

    def eof_received(self) -> bool:
        if self.sess is not None:
            self.sess.end("up", None)
        return True  # keep the socket open: the session closes it

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sess is not None:
            self.sess.end("up", exc)
        self._lost()


class _Destination(_Side):
    """destination -> ffmpeg: the handshake verbatim, then the relay's own Set Chunk Size (``FFMPEG_CHUNK``) and the
    destination's messages re-chunked at that size (its own Set Chunk Size and Abort messages dropped). ffmpeg sends
    with the chunk size its server announced (RTMP's default 128 bytes when none is): with ``FFMPEG_CHUNK`` it writes
    each 4 KB of media in one chunk instead of 32, whatever the destination announces. Commands are read on the way to
    follow the publish status.

    Once live, the destination's flow control (``_QUIET_WHEN_LIVE``: acknowledgements, window and bandwidth) stays
    here: a publisher needs none of it, and one that arrives after ffmpeg's last read makes its close a reset, which
    drops whatever ffmpeg had not sent yet, its unpublish included (a clean end seen as a failure, its tail lost)."""

    def __init__(self, relay: "SlotRelay", sess: _Session) -> None:
        super().__init__()
        self.relay = relay
        self.sess = sess
        self.skip = 1 + 2 * rtmp.HANDSHAKE_SIZE
        self.parser = rtmp.ChunkParser()
        self.writer = rtmp.ChunkWriter()

    def _other(self) -> _Side | None:
        return self.sess.pub if self.sess is not None else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.sess.dest = self  # type: ignore[union-attr]
        if self.sess.pub.write_paused:  # type: ignore[union-attr]
            transport.pause_reading()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        sess = self.sess
        if sess is None or sess.stopped:
            return
        pt = sess.pub.transport
        if self.skip:
            n = min(self.skip, len(data))
            self.skip -= n
            head, data = data[:n], data[n:]
            if not self.skip:
                head += self.writer.write(rtmp.set_chunk_size_message(FFMPEG_CHUNK))
                if sess.awaiting == "handshake":
                    sess.awaiting = None
            if pt is not None:
                pt.write(head)
            if not data:
                return
        try:
            msgs = self.parser.feed(data)
        except rtmp.RtmpError as exc:  # nothing can be passed on from here: ffmpeg reads what the relay chunks
            sess.end("down", exc)
            return
        out = []
        for m in msgs:
            t = m.type_id
            if t == rtmp.SET_CHUNK_SIZE or t == rtmp.ABORT:
                continue  # the parser applied it; ffmpeg reads the relay's chunks, and aborted parts never reach it
            if t in _QUIET_WHEN_LIVE and sess.live:
                continue
            if t == rtmp.COMMAND_AMF0 or t == rtmp.COMMAND_AMF3:
                self.relay._observe(sess, m)
            out.append(self.writer.write(m))
        if out and pt is not None:
            pt.write(b"".join(out))

    def eof_received(self) -> bool:
        if self.sess is not None:
            self.sess.end("down", None)
        # Keep a plain socket open (the session closes it); asyncio's SSL transport closes itself either way and
        # warns if told otherwise.
        return self.transport is None or self.transport.get_extra_info("sslcontext") is None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sess is not None:
            self.sess.end("down", exc)
        self._lost()


class SlotRelay:
    def __init__(self, slots: int = 5, host: str = "127.0.0.1",
                 on_event: Callable[[SlotEvent], None] | None = None, connect_timeout: float = 5.0,
                 answer_timeout: float = ANSWER_TIMEOUT_S, stall_after: float = STALL_AFTER_S,
                 stall_timeout: float = STALL_TIMEOUT_S, drain: float = DRAIN_S) -> None:
        if slots < 1:
            raise ValueError("at least one slot")
        self.slots = slots
        self.host = host
        self.on_event = on_event
        self.connect_timeout = connect_timeout
        self.answer_timeout = answer_timeout
        self.stall_after = stall_after
        self.stall_timeout = stall_timeout  # 0: never drop a stalled destination
        self.drain = drain
        self._stopping_at: float | None = None  # time.monotonic() when the broadcast's (or session's) stop began
        self._watchdog: asyncio.Task | None = None
        self.ports: list[int] = []
        self._assigned: list[Upstream | None] = [None] * slots
        self._sessions: list[set[_Session]] = [set() for _ in range(slots)]
        self._bytes = [0] * slots
        self._count = [0] * slots
        self._since: list[float | None] = [None] * slots
        self.failover_attempts = FAILOVER_ATTEMPTS
        self.failover_after = FAILOVER_AFTER_S
        self._ingest = ["primary"] * slots          # the ingest new sessions of the slot dial
        self._fails = [0] * slots                   # failed sessions in a row on it
        self._down_since: list[float | None] = [None] * slots  # time.monotonic() since when it is not live
        self._duals: list[set[dualingest.Fed]] = [set() for _ in range(slots)]  # backup = "both", native fan-out
        self.feed = None  # relay mode's native fan-out: the open publisher session (fanout.Feed), if any
        self._leg_bytes: list[dict[str, int]] = [{} for _ in range(slots)]  # ... bytes per ingest, all sessions
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._guarded = False       # allow_only() was called: only that process's connections are served
        self._pid: int | None = None
        self._held: list[_Publisher] = []
        self.on_intruder: Callable[[int, str], None] | None = None  # (slot, who): a refused connection

    # -- public ------------------------------------------------------------------------------------------------

    async def start(self, listen: bool = True) -> None:
        """Listen on one port per slot (``listen=False``: relay mode's native fan-out feeds the slots itself)."""
        self._loop = asyncio.get_running_loop()
        for slot in range(self.slots if listen else 0):
            server = await self._loop.create_server(
                lambda slot=slot: _Publisher(self, slot), self.host, 0)
            self._servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])
        self._watchdog = self._loop.create_task(self._watch())

    def slave_url(self, slot: int) -> str:
        self._check(slot)
        return f"rtmp://{self.host}:{self.ports[slot]}/{APP}/{placeholder(slot)}"

    def assign(self, slot: int, upstream: Upstream | None) -> None:
        """Point ``slot`` at ``upstream`` (None: unassign). A change closes the slot's current sessions at once."""
        self._check(slot)
        if upstream is not None:
            rtmp.parse_url(upstream.url)  # ValueError now rather than at connect time
            if upstream.backup_url:
                rtmp.parse_url(upstream.backup_url)
        if self._assigned[slot] == upstream:
            return
        self._assigned[slot] = upstream
        self._ingest[slot], self._fails[slot], self._down_since[slot] = "primary", 0, None
        self._bytes[slot] = 0
        self._leg_bytes[slot] = {}
        self._count[slot] = 0
        self._since[slot] = time.monotonic()
        if self._loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._reassigned(slot)
        else:
            self._loop.call_soon_threadsafe(self._reassigned, slot)

    def _reassigned(self, slot: int) -> None:
        """The slot's sessions end in order; with the native fan-out's publisher session open, the new
        destination joins it at once."""
        self._close_slot(slot, graceful=True)
        up = self._assigned[slot]
        if self.feed is not None and up is not None and self._stopping_at is None and not self._closed:
            self.feed.add(slot, up)

    def begin_stop(self) -> None:
        """The broadcast's stop began: no new sessions; sessions that are not live are dropped now (they have
        nothing to deliver, and an unanswered handshake would hold ffmpeg's end); live ones get ``drain`` seconds
        to take their last bytes; one that still has bytes waiting and takes none is then cut (kind "forced")."""
        if self._stopping_at is None:
            self._stopping_at = time.monotonic()
            self._tick()

    async def settle(self) -> None:
        """ffmpeg has exited: give the sessions still open until the drain ends to send their last bytes, and one
        still taking them ``LAST_BYTES_S`` past that (an ffmpeg that ended late wrote its last bytes just now: the
        destination taking them is not the one holding up the end). Then cut those that still hold bytes the
        destination would not take (kind "forced"); abort the rest."""
        self.begin_stop()
        assert self._stopping_at is not None
        drain_end, last = self._stopping_at + self.drain, time.monotonic() + LAST_BYTES_S
        while any(self._sessions) or any(not d.done for ds in self._duals for d in ds):
            now = time.monotonic()
            if now >= drain_end and (now >= last or not self._taking(now)):
                break
            await asyncio.sleep(min(drain_end - now, 0.05) if now < drain_end else 0.05)
        now = time.monotonic()
        for slot in range(self.slots):
            for sess in list(self._sessions[slot]):
                if sess.stopped:
                    continue
                if sess.live and _unsent(sess):
                    sess.forced = held_up(now, sess.acked_at if sess.acked >= 0 else None)
                    sess.end("down", None)
                else:
                    sess.closing = True
                    sess.abort()
            for dual in self._duals[slot]:
                dual.cut_unsent(now)
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)

    def _taking(self, now: float) -> bool:
        """While settling: a live destination with bytes waiting acknowledged some within ``HELD_S`` (sessions are
        looked at now; a native fan-out's legs as of the watchdog's last tick)."""
        taking = False
        for sess in (s for ss in self._sessions for s in ss if not s.stopped and s.live and _unsent(s)):
            self._check_stall(sess, now)  # while stopping, any byte taken moves acked_at
            taking = taking or now - sess.acked_at < HELD_S
        return taking or any(now - leg.acked_at < HELD_S for ds in self._duals for d in ds if not d.done
                             for leg in d.legs if leg.live and sockstat.unsent(leg.transport))

    def end_stop(self) -> None:
        """Relay mode: the publisher session that was stopping is over; accept the next one's sessions."""
        self._stopping_at = None
        self._fails = [0] * self.slots  # each ingest starts the next publisher session with a clean count
        self._down_since = [None] * self.slots

    def stats(self) -> list[SlotStats]:
        out = []
        for slot in range(self.slots):
            up = self._assigned[slot]
            sessions = [s for s in list(self._sessions[slot]) if s.upstream == up]
            duals = [d for d in self._duals[slot] if d.upstream == up]
            out.append(SlotStats(
                slot=slot, name=up.name if up else None,
                connected=any(s.connected for s in sessions) or any(d.connected for d in duals),
                live=any(s.live for s in sessions) or any(d.live for d in duals),
                bytes_up=self._bytes[slot], sessions=self._count[slot], since=self._since[slot],
                ingest_bytes=tuple(self._leg_bytes[slot].items())))
        return out

    def allow_only(self, pid: int | None) -> None:
        """Serve connections from process ``pid`` only (restream's ffmpeg): on Linux the accepted connection's
        client socket must be one of that process's fds (``peercheck``); anything else is refused at once, reported
        to ``on_intruder`` and never touches a session. ``None``: the process is about to start (or restart), so
        connections are held, unread, until its PID is given. Where /proc cannot tell, a slot takes one publisher
        at a time instead."""
        self._guarded = True
        self._pid = pid
        if pid is not None and self._held:
            held, self._held = self._held, []
            for pub in held:
                if pub.transport is not None and not pub.transport.is_closing():
                    self._accept(pub)

    async def close(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for pub in self._held:
            if pub.transport is not None:
                pub.transport.abort()
        self._held.clear()
        for server in self._servers:
            server.close()
        for slot in range(self.slots):
            self._close_slot(slot)
        for server in self._servers:
            await server.wait_closed()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)

    # -- internals ---------------------------------------------------------------------------------------------

    def _check(self, slot: int) -> None:
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} out of range 0..{self.slots - 1}")

    def _close_slot(self, slot: int, graceful: bool = False) -> None:
        for d in list(self._duals[slot]):
            if graceful:
                d.unpublish()
            else:
                d.abort()
        for s in list(self._sessions[slot]):
            if graceful and s.live and s.dest is not None and s.dest.transport is not None:
                self._unpublish(s)
            else:
                s.abort()

    def _unpublish(self, sess: _Session) -> None:
        """Take a live session off its destination in order: forward ffmpeg's bytes for ``TAIL_S`` more (what was
        already on its way when the change came), then at a message boundary end the stream with FCUnpublish and
        deleteStream, send what is buffered, and close."""
        sess.closing = sess.graceful = True
        sess.pub.ending_at = time.monotonic() + TAIL_S
        sess.pacer.release()  # read every byte as it comes, to find a message boundary soon
        asyncio.get_running_loop().call_later(TAIL_S + 0.3, self._finish_unpublish, sess)

    def _finish_unpublish(self, sess: _Session) -> None:
        if sess.stopped:
            return
        sess.stopped = True
        pub, dest = sess.pub, sess.dest
        if dest is None or dest.transport is None:
            sess.abort()
            return
        chunks = pub.chunks
        if chunks is not None and chunks.at_message_boundary():
            key = sess.upstream.key
            msgs = [rtmp.command_message(["FCUnpublish", 0.0, None, key]),
                    rtmp.command_message(["deleteStream", 0.0, None, float(sess.stream_id)])]
            dest.transport.write(b"".join(rtmp.serialize(m, chunks.chunk_size) for m in msgs))  # type: ignore
        if pub.transport is not None:
            pub.transport.abort()
        dest.transport.close()  # type: ignore[union-attr]  # after the buffer is sent
        loop = asyncio.get_running_loop()
        loop.call_later(self.drain, lambda: dest.transport is not None and not dest.closed.done()
                        and dest.transport.abort())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self._tick()
            except Exception:  # the watchdog must outlive a bug in one check
                log.exception("slot relay watchdog failed")

    def _tick(self) -> None:
        """Bound what a destination can make restream wait for: unanswered steps, stalls, the end."""
        now = time.monotonic()
        stopping = self._stopping_at is not None
        for slot in range(self.slots):
            up = self._assigned[slot]
            down = self._down_since[slot]
            for dual in list(self._duals[slot]):
                if dual.done:
                    self._duals[slot].discard(dual)
                else:
                    dual.tick(now, self._stopping_at)
            if up is not None and up.backup_url and not up.both and not stopping and down is not None \
                    and now - down >= self.failover_after \
                    and (self._sessions[slot] or any(not d.over for d in self._duals[slot])):
                self._switch(slot, f"the {self._ingest[slot]} ingest was not live for {now - down:.0f} s")
            for sess in list(self._sessions[slot]):
                if sess.stopped:
                    continue
                if not sess.live:
                    if stopping:
                        sess.closing = True  # nothing delivered yet: part of stopping, not an error
                        sess.abort()
                    elif sess.awaiting and now - sess.awaiting_since >= self.answer_timeout:
                        sess.error = _unanswered(sess.awaiting, now - sess.awaiting_since)
                        sess.end("down", None)
                    continue
                self._check_stall(sess, now)
                if stopping or sess.pub.ending_at:
                    sess.pacer.release()  # every byte of the end goes out as it comes
                else:
                    sess.pacer.tick(now)
                if stopping and now - self._stopping_at >= self.drain and now - sess.acked_at >= HELD_S \
                        and _unsent(sess):  # type: ignore[operator]
                    sess.forced = held_up(now, sess.stalled_since or sess.acked_at)
                    sess.end("down", None)
                elif sess.stalled_since is not None and not stopping and self.stall_timeout and \
                        now - sess.stalled_since >= self.stall_timeout:
                    sess.error = f"stalled: took no data for {now - sess.stalled_since:.0f} s; reconnecting"
                    sess.end("down", None)

    def _check_stall(self, sess: _Session, now: float) -> None:
        acked = _acked(sess)
        if acked is None:
            return
        if sess.acked < 0:
            sess.acked, sess.acked_at = acked, now
            return
        if sess.stalled_since is not None:
            if acked - sess.acked >= RESUME_BYTES or not _unsent(sess):
                sess.acked, sess.acked_at, sess.stalled_since = acked, now, None
                self._emit(sess.slot, sess.upstream.name, "resumed")
            return
        if acked - sess.acked >= progress_bytes(self._stopping_at is not None) or not _unsent(sess):
            sess.acked, sess.acked_at = acked, now
        elif now - sess.acked_at >= self.stall_after:
            sess.stalled_since = sess.acked_at
            self._emit(sess.slot, sess.upstream.name, "stalled",
                       since=time.time() - (now - sess.acked_at))

    def _emit(self, slot: int, name: str | None, kind: str, error: str | None = None,
              since: float | None = None, ingest: str | None = None, leg: bool = False) -> None:
        self._since[slot] = time.monotonic()
        if self.on_event is None:
            return
        try:
            self.on_event(SlotEvent(slot, name, kind, error, since, ingest, leg))
        except Exception:  # a broken observer must not break the relay
            log.exception("slot relay on_event callback failed")

    def _accept(self, pub: _Publisher) -> None:
        """A publisher connected (called from its protocol's connection_made)."""
        slot = pub.slot
        if self._guarded and not self._closed:
            if self._pid is None:
                pub.held = True
                pub.transport.pause_reading()  # type: ignore[union-attr]
                self._held.append(pub)
                return
            who = self._stranger(pub)
            if who is not None:
                pub.transport.abort()  # type: ignore[union-attr]
                self._report_intruder(slot, who)
                return
        if pub.held:
            pub.held = False
            pub.transport.resume_reading()  # type: ignore[union-attr]
        upstream = self._assigned[slot]
        if upstream is None or self._closed or self._stopping_at is not None:
            why = "relay closing" if self._closed else "stopping" if upstream is not None else "slot not assigned"
            self._emit(slot, None, "refused", why)
            pub.transport.abort()  # type: ignore[union-attr]
            return
        if upstream.both:  # the relay answers ffmpeg and feeds both ingests itself
            self._count[slot] += 1
            self._duals[slot].add(dualingest.DualSession(self, slot, upstream, pub.transport))  # type: ignore
            return
        loop = asyncio.get_running_loop()
        sess = _Session(slot, upstream, pub, loop.create_future(), self._ingest[slot])
        if self._down_since[slot] is None and not any(s.live for s in self._sessions[slot]):
            self._down_since[slot] = time.monotonic()  # ffmpeg is trying: the failover clock runs
        pub.sess = sess
        self._sessions[slot].add(sess)
        self._count[slot] += 1
        self._emit(slot, upstream.name, "connecting")
        task = loop.create_task(self._serve(sess))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stranger(self, pub: _Publisher) -> str | None:
        """None if the connection is the allowed process's, else who it is (for the warning)."""
        transport = pub.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        ours = transport.get_extra_info("sockname") if transport is not None else None
        if not (isinstance(peer, tuple) and isinstance(ours, tuple)):
            return "an unknown peer"
        who = f"{peer[0]}:{peer[1]}"
        assert self._pid is not None
        from restream import peercheck  # (here: relay mode's native fan-out has no slot listeners, so no strangers)

        verdict = peercheck.owner_check(self._pid, peer[:2], ours[:2])
        if verdict.ok:
            # ffmpeg's own: even beside a session that still looks live here. ffmpeg opens a second connection on a
            # slot only when its fifo gave up the first, and its reconnect can be accepted before that socket's EOF
            # is read; refusing it would cost the destination a second.
            return None
        if verdict.ok is None:  # no /proc to ask: at least never a second publisher beside a live session
            if any(not s.stopped for s in self._sessions[pub.slot]):
                return f"{who} (the slot already has a publisher)"
            return None
        return who + (f" (uid {verdict.uid})" if verdict.uid is not None else "")

    def _report_intruder(self, slot: int, who: str) -> None:
        if self.on_intruder is None:
            log.warning("slot %d: refused a connection from %s: not restream's ffmpeg", slot, who)
            return
        try:
            self.on_intruder(slot, who)
        except Exception:  # a broken observer must not break the relay
            log.exception("slot relay on_intruder callback failed")

    async def _serve(self, sess: _Session) -> None:
        upstream = sess.upstream
        try:
            await self._run(sess)
        except asyncio.CancelledError:
            sess.closing = True
            raise
        except Exception as exc:  # anything unexpected ends this session only
            if not sess.closing:
                sess.error = sess.error or f"relay error: {type(exc).__name__}: {exc}"
        finally:
            self._sessions[sess.slot].discard(sess)
            on_purpose = sess.closing  # (abort() below sets it)
            was_live = sess.live
            sess.connected = sess.live = False
            if not sess.graceful:
                sess.abort()
            if sess.forced:
                sess.error = sess.forced
            error = redact(sess.error, upstream.key) if sess.error else None
            if sess.refused:
                kind = "refused"
            elif sess.forced:
                kind = "forced"
            elif sess.unpublished and was_live and not sess.forced and not sess.graceful:
                kind, error = "ended", None  # ffmpeg ended its stream in order; what came after is closing
            else:
                kind = "disconnected"
            self._emit(sess.slot, upstream.name, kind, error, ingest=sess.ingest if upstream.backup_url else None)
            if kind in ("disconnected", "refused") and error and not on_purpose:
                self._failed(sess, was_live, error)

    # -- backup ingest -----------------------------------------------------------------------------------------

    def _failed(self, sess: _Session, was_live: bool, error: str) -> None:
        """A session on the slot's current ingest failed: count it; switch ingests after too many."""
        slot, up = sess.slot, sess.upstream
        if not up.backup_url or up is not self._assigned[slot] or sess.ingest != self._ingest[slot] \
                or self._stopping_at is not None or self._closed:
            return
        now = time.monotonic()
        if was_live or self._down_since[slot] is None:
            self._fails[slot], self._down_since[slot] = 0, now
        self._fails[slot] += 1
        if self._fails[slot] >= self.failover_attempts:
            self._switch(slot, f"{self._fails[slot]} failed attempts on the {sess.ingest} ingest ({error})")
        elif now - self._down_since[slot] >= self.failover_after:
            self._switch(slot, f"the {sess.ingest} ingest was not live for {now - self._down_since[slot]:.0f} s "
                               f"({error})")

    def _switch(self, slot: int, why: str) -> None:
        """New sessions of ``slot`` dial its other ingest; a session still trying the old one is cut."""
        up = self._assigned[slot]
        assert up is not None
        new = "backup" if self._ingest[slot] == "primary" else "primary"
        self._ingest[slot], self._fails[slot], self._down_since[slot] = new, 0, time.monotonic()
        self._emit(slot, up.name, "switched", why, ingest=new)
        for sess in list(self._sessions[slot]):
            if sess.ingest != new and not sess.live and not sess.stopped:
                sess.error = f"switching to the {new} ingest"
                sess.closing = True
                sess.abort()
        for fed in self._duals[slot]:  # native fan-out: a leg still trying the old ingest dials the new one now
            for leg in fed.legs:
                if leg.failover and leg.ingest != new and not leg.live and leg.writer is not None:
                    leg.error = f"switching to the {new} ingest"
                    leg._close()

    async def _run(self, sess: _Session) -> None:
        up = sess.upstream
        try:
            target = sess.target = rtmp.parse_url(sess.url)
        except ValueError as exc:
            sess.error = f"bad server URL: {exc}"
            return
        try:
            ctx = ssl.create_default_context(cafile=up.ca_file or None) if target.tls else None
        except (OSError, ssl.SSLError) as exc:
            sess.error = f"cannot load CA file: {exc}"
            return
        where = f"{target.host}:{target.port}"
        loop = asyncio.get_running_loop()
        try:
            transport, dest = await asyncio.wait_for(
                loop.create_connection(lambda: _Destination(self, sess), target.host, target.port, ssl=ctx,
                                       server_hostname=target.host if ctx else None),
                self.connect_timeout)
        except asyncio.TimeoutError:
            sess.error = f"timed out connecting to {where}"
            return
        except ssl.SSLCertVerificationError as exc:
            sess.error = f"TLS certificate verify failed for {where}: {exc.verify_message or exc.reason}"
            return
        except ssl.SSLError as exc:
            sess.error = f"TLS error with {where}: {exc.reason or exc}"
            return
        except OSError as exc:
            sess.error = f"cannot connect to {where}: {_describe(exc)}"
            return
        sess.dest = dest
        if sess.closing:
            transport.abort()
            return
        sess.connected = True
        self._since[sess.slot] = time.monotonic()
        sess.pub.attach(transport)
        side, exc = await asyncio.shield(sess.ended)
        if sess.closing:
            return
        if sess.forced:  # the stop began and this destination would not take the end of the stream
            sess.pub.transport.abort()  # type: ignore[union-attr]
            return
        if isinstance(exc, _Refused):
            sess.refused = True
            sess.error = str(exc)
        elif side == "up" and sess.unpublished:
            # ffmpeg ended its stream in order (FCUnpublish/deleteStream came first); a reset after that is
            # ffmpeg closing with unread acknowledgements, not a failure. The end counts once the destination
            # took the last bytes.
            sess.error = None
            sess.pub.transport.close()  # type: ignore[union-attr]
            if not await _drained(sess, self.drain):
                sess.forced = f"did not take the end of the stream within {self.drain:.0f} s"
                dest.transport.abort()
                return
            await _close_gently(dest)
        elif side == "up" and sess.awaiting and not sess.live:
            # ffmpeg gave up waiting: the destination is the side that did not answer
            sess.error = sess.server_error or _unanswered(sess.awaiting, time.monotonic() - sess.awaiting_since)
            sess.pub.transport.abort()  # type: ignore[union-attr]
        elif sess.error is not None and side == "down" and exc is None:
            sess.pub.transport.abort()  # type: ignore[union-attr]  # restream's watchdog ended it (error set)
        elif exc is not None:
            where_ = "ffmpeg's connection to the relay" if side == "up" else "destination connection"
            sess.error = sess.server_error or f"{where_} failed: {_describe(exc)}"
        elif side == "down":
            # The destination hung up: let ffmpeg read what it sent last (e.g. an error status), then close.
            sess.error = sess.server_error or "destination closed the connection"
            await _close_gently(sess.pub)
        else:
            # ffmpeg ended the session; flush what is buffered for the destination, then close.
            sess.error = sess.server_error
            if sess.error is None and not sess.live:
                sess.error = "ffmpeg closed the session before the destination accepted the stream"
            sess.pub.transport.close()  # type: ignore[union-attr]
            await _close_gently(dest)

    def _observe(self, sess: _Session, m: rtmp.Message) -> None:
        name = rtmp.command_name(m)
        if name == "_result":
            if sess.awaiting in ("connect", "createStream"):
                sess.awaiting = None
            return
        if name not in ("onStatus", "_error"):
            return
        if sess.awaiting in ("connect", "createStream", "publish"):
            sess.awaiting = None
        try:
            values = rtmp.command_values(m)
        except rtmp.RtmpError:
            return
        info = next((v for v in values[2:] if isinstance(v, dict)), {})
        code = str(info.get("code", ""))
        if code == "NetStream.Publish.Start":
            self._set_live(sess)
        elif name == "_error" or str(info.get("level", "")) == "error":
            desc = str(info.get("description", "")).strip()
            text = "destination refused: " + ": ".join(x for x in (code, desc) if x)
            sess.server_error = redact(text, sess.upstream.key)[:300]

    def _set_live(self, sess: _Session) -> None:
        if sess.live or sess.closing:
            return
        sess.live = True
        slot = sess.slot
        if sess.upstream is self._assigned[slot] and sess.ingest == self._ingest[slot]:
            self._fails[slot], self._down_since[slot] = 0, None
        self._emit(slot, sess.upstream.name, "live", ingest=sess.ingest if sess.upstream.backup_url else None)


def progress_bytes(stopping: bool) -> int:
    """Acknowledged bytes that count as a destination's progress: ``STALL_BYTES`` while live (a stalled peer may
    trickle a few), any byte while stopping (the tail of a stream may be slower than that a tick)."""
    return 1 if stopping else STALL_BYTES


def held_up(now: float, took_at: float | None) -> str:
    """Why a destination was cut while stopping; ``took_at``: when it last took data (None: unknown)."""
    if took_at is not None and now - took_at >= HELD_S:
        return f"held up the end: took no data for {now - took_at:.0f} s"
    return "held up the end: did not take the last bytes in time"


def placeholder(slot: int) -> str:
    return f"slot-{slot}"


def _follow(sess: _Session, m: rtmp.Message) -> None:
    """Note what ffmpeg asked the destination (to know who is waiting for whom) and when it ends its stream."""
    name = rtmp.command_name(m)
    if name in _ANSWERED_BY:
        sess.awaiting, sess.awaiting_since = name, time.monotonic()
        if name == "publish":
            sess.stream_id = m.stream_id
    elif name in ("FCUnpublish", "deleteStream") and sess.live:
        sess.unpublished = True


async def _drained(sess: _Session, timeout: float) -> bool:
    """Wait until the destination acknowledged every byte sent to it (at most ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while _unsent(sess):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _unanswered(step: str, waited: float) -> str:
    """The destination's fault, in words: which step of the RTMP exchange it left unanswered."""
    if step == "handshake":
        what = "did not answer the RTMP handshake"
    elif step == "connect":
        what = "completed the handshake but never answered `connect`"
    elif step == "createStream":
        what = "accepted `connect` but never answered `createStream`"
    else:
        what = "accepted `connect` but never answered `publish`"
    return f"{what} within {max(waited, 0.1):.0f} s"


def _acked(sess: _Session) -> int | None:
    """Bytes the destination's TCP stack acknowledged so far (tcpi_bytes_acked), None if unknown."""
    return sockstat.acked(sess.dest.transport if sess.dest is not None else None)


def _unsent(sess: _Session) -> bool:
    """Bytes are waiting for the destination: in restream's buffer or unacknowledged in the kernel's."""
    return sockstat.unsent(sess.dest.transport if sess.dest is not None else None)


def _check_command(m: rtmp.Message, name: str, keys: dict[str, str], target: rtmp.Target) -> rtmp.Message:
    cmd = rtmp.command_name(m)
    if cmd == "connect":
        values = rtmp.command_values(m)
        obj = values[2] if len(values) > 2 and isinstance(values[2], dict) else {}
        if obj.get("app") != APP:
            raise _Refused(f"unexpected app {str(obj.get('app'))[:40]!r} (expected {APP!r})")
        return rtmp.rewrite_command(m, keys, target.app, target.tcurl)
    if cmd in rtmp.STREAM_NAME_COMMANDS:
        values = rtmp.command_values(m)
        stream = values[3] if len(values) > 3 else None
        if stream != name:
            raise _Refused(f"wrong placeholder {str(stream)[:40]!r} (expected {name!r})")
        return rtmp.rewrite_command(m, keys, None, None)
    return m


async def _close_gently(side: _Side, timeout: float = 1.0) -> None:
    """Close after what is buffered has been sent (at most ``timeout`` seconds)."""
    if side.transport is not None:
        side.transport.close()
    try:
        await asyncio.wait_for(asyncio.shield(side.closed), timeout)
    except asyncio.TimeoutError:
        pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # asyncio's "Connect call failed (...)" says less
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
