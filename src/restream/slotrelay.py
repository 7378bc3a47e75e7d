"""The slot relay: ffmpeg publishes placeholders to loopback, the relay publishes the real keys upstream.

ffmpeg's tee has one RTMP slave per slot; slave ``i`` publishes ``rtmp://127.0.0.1:<port_i>/slot/slot-<i>``. For each
connection the relay dials the destination assigned to slot ``i`` (TLS for rtmps://), passes the handshake through
verbatim, then passes the client->server chunks through as they are (``rtmp.ChunkRewriter``) except commands:
``connect`` gets the real app and tcUrl, ``releaseStream``/``FCPublish``/``publish``/``FCUnpublish`` the key for the
placeholder stream name; rewritten commands (and what follows them on their chunk stream id until a fmt 0 header) are
re-chunked. Server->client bytes pass through untouched; the relay only reads them to learn whether the publish was
accepted.

So no key is ever in ffmpeg's argv, every destination's true state and byte count are known here, and a slot can be
re-pointed live (the current session is closed; ffmpeg's fifo reconnects within about a second).

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

from restream import rtmp

log = logging.getLogger(__name__)

APP = "slot"
REDACTED = "••••"
_READ_SIZE = 256 * 1024


@dataclass(frozen=True)
class Upstream:
    name: str                   # destination name (for events); never the key
    url: str                    # rtmp://host[:port]/app... or rtmps://... (no key); default ports 1935 / 443
    key: str                    # the stream key (playpath)
    ca_file: str | None = None  # CA bundle for rtmps (None: the system's default verify paths, SSL_CERT_FILE honoured)

    def __repr__(self) -> str:  # never print the key
        return f"Upstream(name={self.name!r}, url={self.url!r}, key={REDACTED!r}, ca_file={self.ca_file!r})"


@dataclass(frozen=True)
class SlotEvent:
    slot: int
    name: str | None
    kind: str                   # "connecting" | "live" | "disconnected" | "refused"
    error: str | None = None    # one line, never the key


@dataclass(frozen=True)
class SlotStats:
    slot: int
    name: str | None
    connected: bool             # an upstream connection of this slot is open
    live: bool                  # the destination accepted the publish (or media is flowing)
    bytes_up: int               # bytes written to the assigned destination (handshake included), all sessions
    sessions: int               # sessions since the current destination was assigned
    since: float | None         # time.monotonic() of the slot's last state change


class _Refused(Exception):
    pass


def redact(text: str, key: str) -> str:
    """``text`` on one line, with every occurrence of ``key`` replaced by ``••••``."""
    if key:
        text = text.replace(key, REDACTED)
    return " ".join(text.splitlines()).strip()


class _Session:
    __slots__ = ("slot", "upstream", "target", "writer", "up_writer", "connected", "live", "closing", "error",
                 "refused", "server_error")

    def __init__(self, slot: int, upstream: Upstream, writer: asyncio.StreamWriter) -> None:
        self.slot = slot
        self.upstream = upstream
        self.target: rtmp.Target | None = None
        self.writer = writer
        self.up_writer: asyncio.StreamWriter | None = None
        self.connected = False
        self.live = False
        self.closing = False        # closed on purpose (unassign, reassign, relay close)
        self.error: str | None = None
        self.refused = False
        self.server_error: str | None = None

    def abort(self) -> None:
        """Close both sockets now, dropping anything buffered."""
        self.closing = True
        for w in (self.writer, self.up_writer):
            if w is not None:
                w.transport.abort()


class SlotRelay:
    def __init__(self, slots: int = 5, host: str = "127.0.0.1",
                 on_event: Callable[[SlotEvent], None] | None = None, connect_timeout: float = 5.0) -> None:
        if slots < 1:
            raise ValueError("at least one slot")
        self.slots = slots
        self.host = host
        self.on_event = on_event
        self.connect_timeout = connect_timeout
        self.ports: list[int] = []
        self._assigned: list[Upstream | None] = [None] * slots
        self._sessions: list[set[_Session]] = [set() for _ in range(slots)]
        self._bytes = [0] * slots
        self._count = [0] * slots
        self._since: list[float | None] = [None] * slots
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # -- public ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for slot in range(self.slots):
            server = await asyncio.start_server(
                lambda r, w, slot=slot: self._accept(slot, r, w), self.host, 0)
            self._servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])

    def slave_url(self, slot: int) -> str:
        self._check(slot)
        return f"rtmp://{self.host}:{self.ports[slot]}/{APP}/{placeholder(slot)}"

    def assign(self, slot: int, upstream: Upstream | None) -> None:
        """Point ``slot`` at ``upstream`` (None: unassign). A change closes the slot's current sessions at once."""
        self._check(slot)
        if upstream is not None:
            rtmp.parse_url(upstream.url)  # ValueError now rather than at connect time
        if self._assigned[slot] == upstream:
            return
        self._assigned[slot] = upstream
        self._bytes[slot] = 0
        self._count[slot] = 0
        self._since[slot] = time.monotonic()
        if self._loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._close_slot(slot)
        else:
            self._loop.call_soon_threadsafe(self._close_slot, slot)

    def stats(self) -> list[SlotStats]:
        out = []
        for slot in range(self.slots):
            up = self._assigned[slot]
            sessions = [s for s in list(self._sessions[slot]) if s.upstream == up]
            out.append(SlotStats(
                slot=slot, name=up.name if up else None,
                connected=any(s.connected for s in sessions), live=any(s.live for s in sessions),
                bytes_up=self._bytes[slot], sessions=self._count[slot], since=self._since[slot]))
        return out

    async def close(self) -> None:
        self._closed = True
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

    def _close_slot(self, slot: int) -> None:
        for s in list(self._sessions[slot]):
            s.abort()

    def _emit(self, slot: int, name: str | None, kind: str, error: str | None = None) -> None:
        self._since[slot] = time.monotonic()
        if self.on_event is None:
            return
        try:
            self.on_event(SlotEvent(slot, name, kind, error))
        except Exception:  # a broken observer must not break the relay
            log.exception("slot relay on_event callback failed")

    async def _accept(self, slot: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = self._assigned[slot]
        if upstream is None or self._closed:
            self._emit(slot, None, "refused", "slot not assigned" if not self._closed else "relay closing")
            writer.transport.abort()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        sess = _Session(slot, upstream, writer)
        self._sessions[slot].add(sess)
        self._count[slot] += 1
        self._emit(slot, upstream.name, "connecting")
        try:
            await self._run(sess, reader)
        except asyncio.CancelledError:
            sess.closing = True
            raise
        except Exception as exc:  # anything unexpected ends this session only
            if not sess.closing:
                sess.error = sess.error or f"relay error: {type(exc).__name__}: {exc}"
        finally:
            self._sessions[slot].discard(sess)
            sess.connected = sess.live = False
            sess.abort()
            if task is not None:
                self._tasks.discard(task)
            error = redact(sess.error, upstream.key) if sess.error else None
            self._emit(slot, upstream.name, "refused" if sess.refused else "disconnected", error)

    async def _run(self, sess: _Session, reader: asyncio.StreamReader) -> None:
        up = sess.upstream
        try:
            target = sess.target = rtmp.parse_url(up.url)
        except ValueError as exc:
            sess.error = f"bad server URL: {exc}"
            return
        try:
            ctx = ssl.create_default_context(cafile=up.ca_file or None) if target.tls else None
        except (OSError, ssl.SSLError) as exc:
            sess.error = f"cannot load CA file: {exc}"
            return
        where = f"{target.host}:{target.port}"
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port, ssl=ctx,
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
        sess.up_writer = up_writer
        if sess.closing:
            up_writer.transport.abort()
            return
        sess.connected = True
        self._since[sess.slot] = time.monotonic()
        up_task = asyncio.create_task(self._pump_up(sess, reader, up_writer))
        down_task = asyncio.create_task(self._pump_down(sess, up_reader, sess.writer))
        try:
            done, _ = await asyncio.wait({up_task, down_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (up_task, down_task):
                t.cancel()
            await asyncio.gather(up_task, down_task, return_exceptions=True)
        first = up_task if up_task in done else down_task
        exc = first.exception()
        if sess.closing:
            return
        if isinstance(exc, _Refused):
            sess.refused = True
            sess.error = str(exc)
        elif exc is not None:
            side = "publisher" if first is up_task else "destination"
            sess.error = sess.server_error or f"{side} connection failed: {_describe(exc)}"
        elif first is down_task:
            # The destination hung up: let ffmpeg read what it sent last (e.g. an error status), then close.
            sess.error = sess.server_error or "destination closed the connection"
            await _close_gently(sess.writer)
        else:
            # ffmpeg ended the session; flush what is buffered for the destination, then close.
            sess.error = sess.server_error
            if sess.error is None and not sess.live:
                sess.error = "publisher left before the destination accepted the stream"
            sess.writer.close()
            await _close_gently(up_writer)

    async def _pump_up(self, sess: _Session, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """ffmpeg -> destination: handshake verbatim, then chunks passed through, commands rewritten (ChunkRewriter)."""
        slot = sess.slot
        try:
            c0c1 = await reader.readexactly(1 + rtmp.HANDSHAKE_SIZE)
            w.write(c0c1)
            self._bytes[slot] += len(c0c1)
            c2 = await reader.readexactly(rtmp.HANDSHAKE_SIZE)
        except asyncio.IncompleteReadError:
            return
        w.write(c2)
        self._bytes[slot] += len(c2)
        await w.drain()
        name = placeholder(slot)
        up = sess.upstream
        target = sess.target
        assert target is not None
        keys = {name: up.key}
        chunks = rtmp.ChunkRewriter(lambda m: _check_command(m, name, keys, target))
        while True:
            data = await reader.read(_READ_SIZE)
            if not data:
                return
            blob = chunks.feed(data)
            if chunks.media and not sess.live:
                self._set_live(sess)
            if not blob:
                continue
            w.write(blob)
            if sess.upstream is self._assigned[slot]:
                self._bytes[slot] += len(blob)
            await w.drain()

    async def _pump_down(self, sess: _Session, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """destination -> ffmpeg: bytes untouched; a copy is parsed to follow the publish status."""
        skip = 1 + 2 * rtmp.HANDSHAKE_SIZE
        parser: rtmp.ChunkParser | None = rtmp.ChunkParser()
        while True:
            data = await r.read(_READ_SIZE)
            if not data:
                return
            w.write(data)
            if parser is not None:
                if skip:
                    n = min(skip, len(data))
                    skip -= n
                    data = data[n:]
                if data:
                    try:
                        for m in parser.feed(data):
                            if m.type_id == rtmp.COMMAND_AMF0 or m.type_id == rtmp.COMMAND_AMF3:
                                self._observe(sess, m)
                    except rtmp.RtmpError:
                        parser = None  # stop watching; keep relaying
            await w.drain()

    def _observe(self, sess: _Session, m: rtmp.Message) -> None:
        name = rtmp.command_name(m)
        if name not in ("onStatus", "_error"):
            return
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
        self._emit(sess.slot, sess.upstream.name, "live")


def placeholder(slot: int) -> str:
    return f"slot-{slot}"


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


async def _close_gently(w: asyncio.StreamWriter, timeout: float = 1.0) -> None:
    w.close()
    try:
        await asyncio.wait_for(w.wait_closed(), timeout)
    except (asyncio.TimeoutError, OSError):
        pass


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # asyncio's "Connect call failed (...)" says less
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
