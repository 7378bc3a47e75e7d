"""``backup = "both"``: one relay slot, one ffmpeg publish, fed to a destination's primary and backup ingest at once.

The plain slot relay passes one ffmpeg connection through to one upstream connection. A "both" slot cannot: two
servers cannot both answer ffmpeg. So here the relay answers ffmpeg itself (the server side of RTMP, as relay mode's
ingest gate does: ``ingest.server_handshake``/``ingest.replies``) and is the client of each ingest (a ``_Leg``):
its own handshake, ``connect`` (ffmpeg's command object with the real app and tcUrl), ``createStream`` and
``publish`` with the key, then ffmpeg's audio, video and data messages, re-chunked for that connection.

Each leg is independent: its own state (connecting, live, stalled, retrying), reconnection with backoff, byte
counter and write buffer. ffmpeg is never paused for a leg: a leg whose buffer passes ``LEG_BUFFER`` drops media and
resumes at the next keyframe, so a slow, stalled or dead ingest never holds up the other one. A leg that connects
(or reconnects) mid-stream gets the stream's metadata and decoder configuration first, then media from a keyframe.
Stalls are watched per leg as the slot relay watches a session (``tick``), with the same thresholds.

The destination is live while either leg is. Events are the slot relay's ``SlotEvent`` with ``ingest`` set and
``leg=True``. Used from the event loop's thread only.

The same fan-out (``Fed``: a stream's headers, its legs, one serialization of each message shared by every leg)
also serves relay mode's native path (``fanout``), where the source is the verified publisher instead of ffmpeg and
a destination without "both" has one untagged leg.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
import time
from typing import TYPE_CHECKING

from restream import ingest, rtmp, sockstat

if TYPE_CHECKING:
    from restream.slotrelay import SlotRelay, Upstream

LEG_BUFFER = 4 * 1024 * 1024  # a leg's write buffer above this: media dropped until the next keyframe
BACKOFF_S = (1.0, 2.0)    # waits between a leg's attempts (the last one repeats); reset once live
CHUNK_SIZE = 4096
_MEDIA = frozenset({rtmp.AUDIO, rtmp.VIDEO, rtmp.DATA_AMF0, rtmp.DATA_AMF3})
_END = ("FCUnpublish", "deleteStream", "closeStream")


class _Fail(Exception):
    def __init__(self, text: str, refused: bool = False) -> None:
        super().__init__(text)
        self.refused = refused


def is_keyframe(m: rtmp.Message) -> bool:
    """A video message that starts a GOP (FLV frame type 1), not a sequence header."""
    p = m.payload
    return len(p) >= 2 and p[0] >> 4 == 1 and not (p[0] & 0x0F == 7 and p[1] == 0)


def header_kind(m: rtmp.Message) -> str | None:
    """"video"/"audio" for a decoder configuration (AVC or AAC sequence header), "meta" for @setDataFrame."""
    p = m.payload
    if m.type_id == rtmp.VIDEO and len(p) >= 2 and p[0] & 0x0F == 7 and p[1] == 0:
        return "video"
    if m.type_id == rtmp.AUDIO and len(p) >= 2 and p[0] >> 4 == 10 and p[1] == 0:
        return "audio"
    if m.type_id in (rtmp.DATA_AMF0, rtmp.DATA_AMF3) and b"onMetaData" in p[:64]:
        return "meta"
    return None


class _FfmpegSide(asyncio.Protocol):
    """The accepted ffmpeg connection, handed over from the slot relay's publisher protocol."""

    def __init__(self, sess: "DualSession") -> None:
        self.sess = sess

    def data_received(self, data: bytes) -> None:
        self.sess.feed(data)

    def eof_received(self) -> bool:
        self.sess.ffmpeg_gone(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.sess.ffmpeg_gone(exc)


class Wire:
    """One media message as chunks, serialized once per (message stream id, chunk size) and shared by every leg of
    every destination that takes it (each message starts with a type-0 header, so the legs stay independent)."""

    __slots__ = ("m", "cache")

    def __init__(self, m: rtmp.Message) -> None:
        self.m = m
        self.cache: dict[tuple[int, int], bytes] = {}

    def get(self, stream_id: int, chunk_size: int) -> bytes:
        data = self.cache.get((stream_id, chunk_size))
        if data is None:
            data = self.cache[(stream_id, chunk_size)] = rtmp.serialize(self.m, chunk_size, stream_id)
        return data


Media = list[tuple[rtmp.Message, "str | None", Wire]]  # (message, header_kind(message), its wire form)
Joined = dict[tuple[int, int], bytes]  # a whole batch's wire form per (stream id, chunk size), shared by the legs


def joined(batch: Media, stream_id: int, chunk_size: int, cache: Joined) -> bytes:
    """All of ``batch`` as chunks for (stream id, chunk size): joined once per batch, whichever leg asks first, and
    the same bytes written by every other leg that takes the whole batch (the usual case: all of them)."""
    data = cache.get((stream_id, chunk_size))
    if data is None:
        data = cache[(stream_id, chunk_size)] = b"".join([wire.get(stream_id, chunk_size) for _, _, wire in batch])
    return data


class Fed:
    """One stream fed to one destination's ingests (the legs), each on its own connection with the exact key.

    The source is restream's ffmpeg on a "both" slot (``DualSession``) or, in relay mode's native fan-out, the
    verified publisher itself (``fanout``). With ``backup = "both"`` there are two legs (primary and backup) whose
    events carry ``leg=True``; otherwise one leg whose events are the destination's own (a failover backup: the leg
    dials the slot's current ingest, and its failures count toward the slot relay's switch)."""

    gone_text = "ffmpeg closed the session before the destination accepted the stream"

    def __init__(self, relay: "SlotRelay", slot: int, upstream: "Upstream", backoff: tuple[float, ...] = ()) -> None:
        self.relay, self.slot, self.upstream = relay, slot, upstream
        self.connect_obj: dict | None = None
        self.headers: dict[str, rtmp.Message] = {}
        self.has_video = False
        self.unpublished = False  # the source ended its stream in order
        self.over = False         # nothing more comes from the source
        if upstream.both:
            self.legs = [_Leg(self, "primary", upstream.url)]
            if upstream.backup_url:
                self.legs.append(_Leg(self, "backup", upstream.backup_url))
        else:
            self.legs = [_Leg(self, "primary", upstream.url, tagged=False, backoff=backoff or BACKOFF_S)]

    # -- the slot relay's view ---------------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return any(leg.live for leg in self.legs)

    @property
    def connected(self) -> bool:
        return any(leg.writer is not None for leg in self.legs)

    @property
    def done(self) -> bool:
        return self.over and all(leg.task is None or leg.task.done() for leg in self.legs)

    def tick(self, now: float, stopping_at: float | None) -> None:
        for leg in self.legs:
            leg.tick(now, stopping_at)

    def unpublish(self) -> None:
        """Taken off its slot while live (reassigned): end each live leg's stream in order, close the source."""
        self._end(in_order=True, closing=True)

    def abort(self) -> None:
        self._end(in_order=False, closing=True)

    def cut_unsent(self, now: float) -> None:
        """The source has ended and the drain is over: a leg still holding bytes it would not take is cut."""
        from restream.slotrelay import held_up

        for leg in self.legs:
            if leg.live and sockstat.unsent(leg.transport):
                leg.forced = held_up(now, leg.acked_at if leg.acked >= 0 else None)
                leg.stop()
            else:
                leg.closing = True
                leg.stop()
        self._close_source()

    def media(self, batch: Media, cache: Joined | None = None) -> None:
        """The source's media messages, in order: each leg takes what it can (one write per leg per batch).
        ``cache``: the batch's joined wire forms, shared with the other destinations fed the same batch."""
        for m, kind, _ in batch:
            if kind is not None:
                self.headers[kind] = m
            if m.type_id == rtmp.VIDEO:
                self.has_video = True
        if cache is None:
            cache = {}
        for leg in self.legs:
            if leg.live and not leg.ending and leg.writer is not None:
                data = leg.take_batch(batch, cache)
                if data:
                    leg._write(data)

    def _end(self, in_order: bool, closing: bool) -> None:
        """Nothing more comes from the source: live legs end their stream (in order: FCUnpublish, drain, close), the
        others stop trying. The source's connection is closed unless it ended in order."""
        self.over = True
        for leg in self.legs:
            leg.closing = leg.closing or closing
            leg.finish(in_order)
        if not in_order or closing:
            self._close_source()

    def _close_source(self) -> None:
        pass

    def backlog(self) -> Media:
        """What a leg that goes live gets after the headers (the native fan-out: the media since the latest
        keyframe); ffmpeg's own sessions: nothing (the leg waits for the next keyframe)."""
        return []


class DualSession(Fed):
    """One ffmpeg session on a "both" slot: answered here, fed to each ingest."""

    def __init__(self, relay: "SlotRelay", slot: int, upstream: "Upstream", transport: asyncio.Transport) -> None:
        super().__init__(relay, slot, upstream)
        self.transport = transport
        self.stage = 0
        self.buf = bytearray()
        self.parser = rtmp.ChunkParser()
        self.out = rtmp.ChunkWriter()
        self.window, self.received, self.acked = ingest.WINDOW, 0, 0
        transport.set_protocol(_FfmpegSide(self))

    def _close_source(self) -> None:
        self.transport.abort()

    # -- ffmpeg's side -----------------------------------------------------------------------------------------

    def _send(self, msgs: list[rtmp.Message]) -> None:
        if msgs and not self.transport.is_closing():
            self.transport.write(b"".join(self.out.write(m) for m in msgs))

    def feed(self, data: bytes) -> None:
        if self.over:
            return
        self.received += len(data)
        if self.received - self.acked >= self.window:
            self.acked = self.received
            self._send([ingest.acknowledgement(self.received)])
        try:
            if self.stage < 2:
                self.buf += data
                if self.stage == 0 and len(self.buf) >= 1 + rtmp.HANDSHAKE_SIZE:
                    self.transport.write(ingest.server_handshake(bytes(self.buf[:1 + rtmp.HANDSHAKE_SIZE])))
                    del self.buf[:1 + rtmp.HANDSHAKE_SIZE]
                    self.stage = 1
                if self.stage == 1 and len(self.buf) >= rtmp.HANDSHAKE_SIZE:
                    del self.buf[:rtmp.HANDSHAKE_SIZE]  # C2
                    self.stage = 2
                    data, self.buf = bytes(self.buf), bytearray()
                else:
                    return
            batch: Media = []
            for m in self.parser.feed(data):
                if m.type_id in _MEDIA:
                    batch.append((m, header_kind(m), Wire(m)))
                    continue
                if batch:
                    self.media(batch)
                    batch = []
                self._message(m)
            if batch:
                self.media(batch)
        except Exception as exc:  # a protocol error, a wrong placeholder: this session ends
            self._refuse(str(exc) or type(exc).__name__)

    def _message(self, m: rtmp.Message) -> None:
        t = m.type_id
        if t == rtmp.WINDOW_ACK_SIZE and len(m.payload) >= 4:
            self.window = max(1, struct.unpack_from(">I", m.payload)[0])
            return
        if t not in (rtmp.COMMAND_AMF0, rtmp.COMMAND_AMF3):
            return
        from restream.slotrelay import _check_command, placeholder

        name = rtmp.command_name(m)
        if name == "connect" or name in rtmp.STREAM_NAME_COMMANDS:
            target = rtmp.parse_url(self.upstream.url)
            _check_command(m, placeholder(self.slot), {placeholder(self.slot): ""}, target)  # raises if not ffmpeg's
        if name == "connect":
            values = rtmp.command_values(m)
            self.connect_obj = dict(values[2]) if len(values) > 2 and isinstance(values[2], dict) else {}
            for leg in self.legs:
                leg.start()
        self._send(ingest.replies(m))
        if name in _END and not self.unpublished:
            self.unpublished = True  # ffmpeg's socket stays open until it closes it (deleteStream may follow)
            self._end(in_order=True, closing=False)

    def _refuse(self, why: str) -> None:
        """Not what restream's ffmpeg sends (a protocol error, another app or placeholder): the session ends; its
        legs say why (or, before any leg started, the slot does, as for a plain session)."""
        from restream.slotrelay import redact

        why = redact(f"refused ffmpeg's session: {why}", self.upstream.key)[:300]
        for leg in self.legs:
            leg.error = why
        if not any(leg.task is not None for leg in self.legs):
            self.relay._emit(self.slot, self.upstream.name, "refused", why)
        self._end(in_order=False, closing=False)

    def ffmpeg_gone(self, exc: BaseException | None) -> None:
        if not self.over:
            self._end(in_order=self.unpublished and exc is None, closing=False)
        if not self.transport.is_closing():
            self.transport.close()


class _Leg:
    """One ingest of a destination: connects, publishes, takes the stream, reconnects by itself. ``tagged``: one of
    a "both" destination's two (its events say which, ``leg=True``); else the destination's only connection."""

    def __init__(self, sess: Fed, ingest_name: str, url: str, tagged: bool = True,
                 backoff: tuple[float, ...] = BACKOFF_S) -> None:
        self.sess, self.ingest, self.url = sess, ingest_name, url
        self.tagged, self.backoff = tagged, backoff
        self.task: asyncio.Task | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.transport: asyncio.Transport | None = None
        self.out = rtmp.ChunkWriter()
        self.live = False
        self.need_key = True
        self.stream_id = 1
        self.bytes = 0
        self.attempts = 0
        self.error: str | None = None
        self.forced: str | None = None
        self.closing = False      # stopped on purpose: no error, no retry
        self.ending = False       # ffmpeg ended in order: unpublish and drain, then "ended"
        self.awaiting: str | None = None
        self.awaiting_since = 0.0
        self.acked, self.acked_at = -1, 0.0
        self.stalled_since: float | None = None

    # -- events ------------------------------------------------------------------------------------------------

    def _emit(self, kind: str, error: str | None = None, since: float | None = None) -> None:
        from restream.slotrelay import redact

        relay, up = self.sess.relay, self.sess.upstream
        error = redact(error, up.key)[:300] if error else None
        if self.tagged:
            relay._emit(self.sess.slot, up.name, kind, error, since, ingest=self.ingest, leg=True)
        else:
            relay._emit(self.sess.slot, up.name, kind, error, since, ingest=self.ingest if up.backup_url else None)

    # what the slot relay's failover bookkeeping reads of a session (``SlotRelay._failed``)
    @property
    def slot(self) -> int:
        return self.sess.slot

    @property
    def upstream(self) -> "Upstream":
        return self.sess.upstream

    @property
    def failover(self) -> bool:
        return not self.tagged and bool(self.sess.upstream.backup_url)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self.task is None and not self.sess.over:
            self.task = asyncio.get_running_loop().create_task(self._run())
            self.sess.relay._tasks.add(self.task)
            self.task.add_done_callback(self.sess.relay._tasks.discard)

    def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        elif self.task is None and not self.closing:
            self.closing = True

    def finish(self, in_order: bool) -> None:
        if self.live and in_order and self.writer is not None:
            self.ending = True
            key = self.sess.upstream.key
            msgs = [rtmp.command_message(["FCUnpublish", 0.0, None, key]),
                    rtmp.command_message(["deleteStream", 0.0, None, float(self.stream_id)])]
            self._write(b"".join(self.out.write(m) for m in msgs))
            relay = self.sess.relay
            task = asyncio.get_running_loop().create_task(self._drain())
            relay._tasks.add(task)
            task.add_done_callback(relay._tasks.discard)
            return
        if self.task is not None and not self.task.done():
            if not self.live and not self.closing and not self.error and not self.sess.unpublished:
                self.error = getattr(self.sess, "gone_text", Fed.gone_text)
            if self.sess.relay._stopping_at is not None or self.closing or in_order:
                self.closing = True
            self.task.cancel()

    async def _run(self) -> None:
        relay = self.sess.relay
        while True:
            self.attempts += 1
            self.error, self.forced = None, None
            if self.failover:  # the slot's current ingest
                up = self.sess.upstream
                self.ingest = relay._ingest[self.sess.slot]
                self.url = up.backup_url if self.ingest == "backup" and up.backup_url else up.url
            self._emit("connecting")
            refused = False
            try:
                await self._attempt()
            except asyncio.CancelledError:
                self._close()
                self._report()
                return
            except _Fail as exc:
                self.error, refused = str(exc), exc.refused
            except (OSError, EOFError, asyncio.IncompleteReadError, rtmp.RtmpError) as exc:
                from restream.slotrelay import _describe

                self.error = self.error or f"destination connection failed: {_describe(exc)}"
            finally:
                self._close()
            if self.ending or self.sess.over or self.closing or relay._closed:
                self._report()
                return
            was_live = self.live
            self.live = False
            self._emit("refused" if refused else "disconnected", self.error or "destination closed the connection")
            if self.failover:
                relay._failed(self, was_live, self.error or "destination closed the connection")
            if was_live:
                self.attempts = 1
            try:
                await asyncio.sleep(self.backoff[min(self.attempts, len(self.backoff)) - 1])
            except asyncio.CancelledError:
                return
            if self.sess.over or relay._stopping_at is not None:
                return

    def _report(self) -> None:
        """The leg's last event: ended in order, forced, or disconnected (with the error, if it was one)."""
        was_live, self.live = self.live, False
        if self.forced:
            self._emit("forced", self.forced)
        elif self.closing:
            self._emit("disconnected")
        elif self.ending and was_live:
            self._emit("ended")
        elif self.sess.relay._stopping_at is not None:
            self._emit("disconnected")
        else:
            self._emit("disconnected", self.error)

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        self.writer = None

    def _write(self, data: bytes) -> None:
        if self.writer is not None and not self.transport.is_closing():  # type: ignore[union-attr]
            self.writer.write(data)
            self.bytes += len(data)
            relay = self.sess.relay
            slot = self.sess.slot
            if relay._assigned[slot] is self.sess.upstream:
                relay._bytes[slot] += len(data)
                if self.tagged:
                    relay._leg_bytes[slot][self.ingest] = relay._leg_bytes[slot].get(self.ingest, 0) + len(data)

    def _send(self, *msgs: rtmp.Message) -> None:
        self._write(b"".join(self.out.write(m) for m in msgs))

    async def _drain(self) -> None:
        """ffmpeg ended in order: the leg took the end of the stream once the server acknowledged every byte;
        then its connection is closed (which ends the task's read)."""
        deadline = time.monotonic() + self.sess.relay.drain
        transport = self.transport
        while sockstat.unsent(transport):
            if time.monotonic() >= deadline:
                self.forced = f"did not take the end of the stream within {self.sess.relay.drain:.0f} s"
                if transport is not None:
                    transport.abort()
                return
            await asyncio.sleep(0.02)
        if transport is not None:
            transport.close()

    # -- one attempt -------------------------------------------------------------------------------------------

    async def _attempt(self) -> None:
        from restream.slotrelay import _describe

        relay, up = self.sess.relay, self.sess.upstream
        try:
            target = rtmp.parse_url(self.url)
        except ValueError as exc:
            raise _Fail(f"bad server URL: {exc}") from None
        try:
            ctx = ssl.create_default_context(cafile=up.ca_file or None) if target.tls else None
        except (OSError, ssl.SSLError) as exc:
            raise _Fail(f"cannot load CA file: {exc}") from None
        where = f"{target.host}:{target.port}"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(target.host, target.port, ssl=ctx,
                                        server_hostname=target.host if ctx else None), relay.connect_timeout)
        except asyncio.TimeoutError:
            raise _Fail(f"timed out connecting to {where}") from None
        except ssl.SSLCertVerificationError as exc:
            raise _Fail(f"TLS certificate verify failed for {where}: {exc.verify_message or exc.reason}") from None
        except ssl.SSLError as exc:
            raise _Fail(f"TLS error with {where}: {exc.reason or exc}") from None
        except OSError as exc:
            raise _Fail(f"cannot connect to {where}: {_describe(exc)}") from None
        self.writer, self.transport = writer, writer.transport  # type: ignore[assignment]
        self.out = rtmp.ChunkWriter()
        self.acked, self.stalled_since = -1, None
        conv = _Conversation(self, reader)
        self._write(b"\x03" + struct.pack(">II", 0, 0) + os.urandom(rtmp.HANDSHAKE_SIZE - 8))
        s0s1s2 = await conv.exactly(1 + 2 * rtmp.HANDSHAKE_SIZE, "handshake")
        self._write(s0s1s2[1:1 + rtmp.HANDSHAKE_SIZE])  # C2 echoes S1
        obj = dict(self.sess.connect_obj or {})
        obj.update(app=target.app, tcUrl=target.tcurl)
        key = up.key
        self._send(rtmp.set_chunk_size_message(CHUNK_SIZE), rtmp.command_message(["connect", 1.0, obj]))
        await conv.answer("connect", 1.0)
        self._send(rtmp.command_message(["releaseStream", 2.0, None, key]),
                   rtmp.command_message(["FCPublish", 3.0, None, key]),
                   rtmp.command_message(["createStream", 4.0, None]))
        values = await conv.answer("createStream", 4.0)
        sid = values[3] if len(values) > 3 and isinstance(values[3], (int, float)) else 1
        self.stream_id = int(sid)
        self._send(rtmp.command_message(["publish", 5.0, None, key, "live"], csid=8, stream_id=self.stream_id))
        await conv.answer("publish", None)
        self._go_live()
        await conv.pump()

    def _go_live(self) -> None:
        self.live, self.need_key, self.attempts = True, True, 0
        self.acked_at = time.monotonic()
        relay, slot = self.sess.relay, self.sess.slot
        if self.failover and relay._assigned[slot] is self.sess.upstream and relay._ingest[slot] == self.ingest:
            relay._fails[slot], relay._down_since[slot] = 0, None
        self._emit("live")
        heads = self.sess.headers
        for kind in ("meta", "video", "audio"):
            m = heads.get(kind)
            if m is not None:
                self._send(rtmp.Message(m.csid, m.timestamp, m.type_id, self.stream_id, m.payload))
        backlog = self.sess.backlog()  # from a keyframe (or the session's start) by construction: all of it
        if backlog:
            self.need_key = False
            self._write(b"".join(wire.get(self.stream_id, self.out.chunk_size) for _, _, wire in backlog))

    def media(self, m: rtmp.Message, kind: str | None) -> None:
        """One media message of the source: written now, or dropped (not live, overflowing, waiting for a
        keyframe)."""
        if not self.live or self.ending or self.writer is None:
            return
        data = self.take(m, kind, Wire(m))
        if data:
            self._write(data)

    def take_batch(self, batch: Media, cache: Joined) -> bytes:
        """What this (live) leg writes of ``batch``: all of it (the bytes shared with every leg that takes it all) when
        it is neither overflowing nor waiting for a keyframe, else message by message (``take``)."""
        if not self.need_key and self.transport.get_write_buffer_size() <= LEG_BUFFER:  # type: ignore[union-attr]
            return joined(batch, self.stream_id, self.out.chunk_size, cache)
        return b"".join([w for m, kind, wire in batch if (w := self.take(m, kind, wire))])

    def take(self, m: rtmp.Message, kind: str | None, wire: Wire) -> bytes | None:
        """What this (live) leg writes of ``m``: its chunks, or None (overflowing, waiting for a keyframe)."""
        if kind is not None:
            pass  # a decoder configuration or the metadata: always passed (nothing for a decoder to skip)
        elif self.transport.get_write_buffer_size() > LEG_BUFFER:  # type: ignore[union-attr]
            self.need_key = True
            return None
        elif self.need_key:
            if m.type_id == rtmp.VIDEO and is_keyframe(m):
                self.need_key = False
            elif self.sess.has_video or m.type_id != rtmp.AUDIO:
                return None
            else:
                self.need_key = False  # audio only: any frame starts it
        return wire.get(self.stream_id, self.out.chunk_size)

    # -- the watchdog (the slot relay's thresholds) ------------------------------------------------------------

    def tick(self, now: float, stopping_at: float | None) -> None:
        from restream.slotrelay import HELD_S, RESUME_BYTES, _unanswered, held_up, progress_bytes

        relay = self.sess.relay
        if self.writer is None or self.task is None or self.task.done():
            return
        if not self.live:
            if stopping_at is not None:
                self.closing = True
                self.task.cancel()
            elif self.awaiting and now - self.awaiting_since >= relay.answer_timeout:
                self.error = _unanswered(self.awaiting, now - self.awaiting_since)
                self._close()  # the task's read fails, then it retries
            return
        acked = sockstat.acked(self.transport)
        if acked is not None:
            if self.acked < 0:
                self.acked, self.acked_at = acked, now
            elif self.stalled_since is not None:
                if acked - self.acked >= RESUME_BYTES or not sockstat.unsent(self.transport):
                    self.acked, self.acked_at, self.stalled_since = acked, now, None
                    self._emit("resumed")
            elif acked - self.acked >= progress_bytes(stopping_at is not None) or not sockstat.unsent(self.transport):
                self.acked, self.acked_at = acked, now
            elif now - self.acked_at >= relay.stall_after:
                self.stalled_since = self.acked_at
                self._emit("stalled", since=time.time() - (now - self.acked_at))
        if stopping_at is not None:
            if now - stopping_at >= relay.drain and now - self.acked_at >= HELD_S and sockstat.unsent(self.transport):
                self.forced = held_up(now, self.stalled_since or self.acked_at)
                self.task.cancel()
        elif self.stalled_since is not None and relay.stall_timeout and now - self.stalled_since >= relay.stall_timeout:
            self.error = f"stalled: took no data for {now - self.stalled_since:.0f} s; reconnecting"
            self._close()


class _Conversation:
    """The leg's reading side: answers to its commands, then (live) errors, pings and the end."""

    def __init__(self, leg: _Leg, reader: asyncio.StreamReader) -> None:
        self.leg, self.reader = leg, reader
        self.parser = rtmp.ChunkParser()
        self.pending: list[rtmp.Message] = []
        self.received, self.acked, self.window = 0, 0, ingest.WINDOW

    async def _data(self) -> bytes:
        data = await self.reader.read(65536)
        if not data:
            raise _Fail(self.leg.error or "destination closed the connection")
        self.received += len(data)
        if self.received - self.acked >= self.window:
            self.acked = self.received
            self.leg._send(ingest.acknowledgement(self.received))
        return data

    def _wait(self, step: str) -> None:
        self.leg.awaiting, self.leg.awaiting_since = step, time.monotonic()

    async def exactly(self, n: int, step: str) -> bytes:
        self._wait(step)
        buf = bytearray()
        while len(buf) < n:
            buf += await self._data()
        self.leg.awaiting = None
        rest = bytes(buf[n:])
        if rest:
            self.pending += self.parser.feed(rest)
        return bytes(buf[:n])

    def _control(self, m: rtmp.Message) -> None:
        if m.type_id == rtmp.WINDOW_ACK_SIZE and len(m.payload) >= 4:
            self.window = max(1, struct.unpack_from(">I", m.payload)[0])
        elif m.type_id == rtmp.USER_CONTROL and len(m.payload) >= 6 and m.payload[:2] == b"\x00\x06":  # ping
            self.leg._send(rtmp.Message(2, 0, rtmp.USER_CONTROL, 0, b"\x00\x07" + m.payload[2:6]))

    def _refusal(self, m: rtmp.Message) -> str | None:
        """The server's error in a command answer, in words (never the key)."""
        name = rtmp.command_name(m)
        values = rtmp.command_values(m)
        info = next((v for v in values[2:] if isinstance(v, dict)), {})
        if name == "_error" or str(info.get("level", "")) == "error":
            code, desc = str(info.get("code", "")), str(info.get("description", "")).strip()
            return "destination refused: " + ": ".join(x for x in (code, desc) if x)
        return None

    async def answer(self, step: str, txn: float | None) -> list:
        """Wait for the answer to ``step`` (``txn``: its transaction id; None: publish's onStatus)."""
        self._wait(step)
        while True:
            while self.pending:
                m = self.pending.pop(0)
                self._control(m)
                if not rtmp.is_command(m):
                    continue
                problem = self._refusal(m)
                values = rtmp.command_values(m)
                name = rtmp.command_name(m)
                if txn is not None and name in ("_result", "_error") and len(values) > 1 and values[1] == txn:
                    if problem:
                        raise _Fail(problem, refused=True)
                    self.leg.awaiting = None
                    return values
                if txn is None and name == "onStatus":
                    if problem:
                        raise _Fail(problem, refused=True)
                    info = next((v for v in values[2:] if isinstance(v, dict)), {})
                    if str(info.get("code", "")) == "NetStream.Publish.Start":
                        self.leg.awaiting = None
                        return values
            self.pending += self.parser.feed(await self._data())

    async def pump(self) -> None:
        """Live: read until the destination hangs up (an error status is kept as the reason), or, once ffmpeg
        ended in order, until the leg's drain closed the connection."""
        leg = self.leg
        try:
            while True:
                for m in self.pending:
                    self._control(m)
                    if rtmp.is_command(m):
                        problem = self._refusal(m)
                        if problem:
                            leg.error = problem[:300]
                self.pending = []
                self.pending += self.parser.feed(await self._data())
        except (_Fail, OSError):
            if not leg.ending:
                raise
