"""The ingest gate of relay mode: where OBS publishes, with the ingest key enforced, and the only door to ffmpeg.

The gate is a small RTMP server for one publisher at a time. It answers the handshake and the publisher's commands
itself; the stream name of ``releaseStream``, ``FCPublish`` or ``publish`` must be the ingest key and the
``connect`` app the expected app, or the publisher is cut off before any media flows. Once ``publish`` is verified,
the gate takes the next sink and hands it the publisher's audio, video and data messages (``MessageSink``): the
waiting ffmpeg's input (ffmpeg reads FLV on its stdin, ``-f flv -i pipe:0``: ``FlvSink`` writes the messages as FLV
tags), or, copying to RTMP(S) destinations, the native fan-out (``fanout.Feed``: no ffmpeg at all). When the
publisher leaves, the gate closes the sink; ffmpeg finishes and restream starts the next one (native: each
destination ends its stream in order).

So ffmpeg has no listening socket at all (no door a local process could publish to without the key), and the
media takes one hop fewer than through a second RTMP connection. A publisher that has not yet shown the key holds
nothing: several may be checked at once, and the first verified one is live; a second verified one is refused
while the first is live. A connection that has not published with the key within ``READ_TIMEOUT_S``, or a publisher silent that
long, is cut off.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import secrets
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from restream import pacing, rtmp

_NAMED = ("releaseStream", "FCPublish", "publish")
_READ = 256 * 1024
READ_TIMEOUT_S = 10.0  # a publisher silent this long is gone (ffmpeg's -rw_timeout did this before)
PACE_S = 0.5  # while streaming: how often the read batch is re-sized to the publisher's rate (pacing.py)
PACE_BATCH_S = 0.1  # ... to batches of about this long of the stream (each read costs a trip round the event loop
#                     and, on the native path, a write per destination: 0.05 s read ~13 times a second)
PACE_WAIT_S = 0.2  # ... and how long a read may wait for a batch before it takes what is there
SINK_TIMEOUT_S = 10.0  # ffmpeg restarting after the previous publisher
LINGER_S = 1.0  # a publisher that unpublished gets this long to close its side
MAX_UNVERIFIED = 16  # connections that have not shown the key yet, at once (each has READ_TIMEOUT_S to do so)
WINDOW = 2_500_000  # acknowledgement window announced to the publisher (what ffmpeg's own listener announces)
CHUNK_SIZE = 4096  # what the gate sends its replies with
STREAM_ID = 1.0

FLV_AUDIO, FLV_VIDEO = 0x04, 0x01  # FLV header flags
_TAG_HEAD = struct.Struct(">BHB")  # type, then the 24-bit size as (high 16 bits, low 8 bits)
_SET_DATA_FRAME = rtmp.amf0_encode("@setDataFrame")


@dataclass(frozen=True)
class IngestEvent:
    kind: str  # "publishing" (key verified), "rejected", "ended"
    peer: str
    detail: str | None = None


class _Reject(Exception):
    pass


def check_command(msg: rtmp.Message, app: str, key: str) -> tuple[bool, str | None, bool]:
    """Pure: (ok, problem, publish_verified) for one client->server message."""
    name = rtmp.command_name(msg)
    if name is None:
        return True, None, False
    try:
        values = rtmp.command_values(msg)
    except rtmp.RtmpError:
        return False, "unreadable command", False
    if name == "connect":
        obj = values[2] if len(values) > 2 and isinstance(values[2], dict) else {}
        got = str(obj.get("app", "")).strip("/")
        if got.split("?", 1)[0] != app:
            return False, "wrong application name in the server URL", False
        return True, None, False
    if name in _NAMED:
        stream = values[3] if len(values) > 3 and isinstance(values[3], str) else ""
        if not hmac.compare_digest(stream.encode("utf-8", "surrogatepass"), key.encode("utf-8", "surrogatepass")):
            return False, "wrong stream key", False
        return True, None, name == "publish"
    return True, None, False


# -- FLV, pure -------------------------------------------------------------------------------------------------------

def flv_tag(type_id: int, timestamp: int, payload: bytes) -> bytes:
    """One FLV tag (11-byte header, payload, PreviousTagSize)."""
    size = len(payload)
    ts = timestamp & 0xFFFFFFFF
    head = (_TAG_HEAD.pack(type_id, size >> 8, size & 0xFF) + (ts & 0xFFFFFF).to_bytes(3, "big")
            + bytes((ts >> 24,)) + b"\x00\x00\x00")
    return head + payload + (size + 11).to_bytes(4, "big")


def flv_header(first: rtmp.Message) -> bytes:
    """The FLV file header (and PreviousTagSize0), its audio/video flags told by the publisher's first media or
    data message, as ffmpeg's own RTMP input does: ``onMetaData`` naming an audio/video codec, else that message's
    type. (ffmpeg's FLV reader waits to see every stream the flags announce.)"""
    flags = 0
    if first.type_id == rtmp.AUDIO:
        flags = FLV_AUDIO
    elif first.type_id == rtmp.VIDEO:
        flags = FLV_VIDEO
    else:
        body = flv_tags(first)[11:-4]
        try:
            values = rtmp.amf0_decode(body, 2) if body else []
        except rtmp.RtmpError:
            values = []
        meta = values[1] if len(values) > 1 and values[0] == "onMetaData" and isinstance(values[1], dict) else {}
        flags = (FLV_AUDIO if "audiocodecid" in meta else 0) | (FLV_VIDEO if "videocodecid" in meta else 0)
    return b"FLV\x01" + bytes((flags,)) + b"\x00\x00\x00\x09" + b"\x00\x00\x00\x00"


def flv_tags(msg: rtmp.Message) -> bytes:
    """What one RTMP message from a publisher becomes in the FLV stream ffmpeg reads (b"" for anything else).

    Audio and video as they are; data (``@setDataFrame``, ``onMetaData``, …) with ``@setDataFrame`` dropped, as an
    RTMP server stores it; AMF3 data as AMF0; an aggregate message's tags re-timed from the message's timestamp.
    """
    t = msg.type_id
    if t == rtmp.AUDIO or t == rtmp.VIDEO:
        return flv_tag(t, msg.timestamp, msg.payload) if msg.payload else b""
    if t == rtmp.DATA_AMF0 or t == rtmp.DATA_AMF3:
        payload = msg.payload[1:] if t == rtmp.DATA_AMF3 and msg.payload[:1] == b"\x00" else msg.payload
        if payload.startswith(_SET_DATA_FRAME):
            payload = payload[len(_SET_DATA_FRAME):]
        return flv_tag(rtmp.DATA_AMF0, msg.timestamp, payload) if payload else b""
    if t == 22:  # aggregate: FLV tags back to back
        return b"".join(flv_tags(m) for m in aggregate_parts(msg))
    return b""


def aggregate_parts(msg: rtmp.Message) -> list[rtmp.Message]:
    """An aggregate message's audio, video and data messages, re-timed from the aggregate's timestamp."""
    out = []
    data, pos, base = msg.payload, 0, None
    while pos + 11 <= len(data):
        sub_type = data[pos]
        size = int.from_bytes(data[pos + 1:pos + 4], "big")
        ts = int.from_bytes(data[pos + 4:pos + 7], "big") | (data[pos + 7] << 24)
        body = data[pos + 11:pos + 11 + size]
        if len(body) < size:
            break
        base = ts if base is None else base
        if sub_type in (rtmp.AUDIO, rtmp.VIDEO, rtmp.DATA_AMF0):
            out.append(rtmp.Message(msg.csid, msg.timestamp + ts - base, sub_type, msg.stream_id, body))
        pos += 11 + size + 4
    return out


# -- the server's side of the conversation, pure --------------------------------------------------------------------

def _control(type_id: int, payload: bytes) -> rtmp.Message:
    return rtmp.Message(2, 0, type_id, 0, payload)


def replies(msg: rtmp.Message) -> list[rtmp.Message]:
    """What the gate answers to a (verified) publisher command, the way RTMP servers do."""
    name = rtmp.command_name(msg)
    if name is None:
        return []
    try:
        values = rtmp.command_values(msg)
    except rtmp.RtmpError:
        return []
    txn = values[1] if len(values) > 1 and isinstance(values[1], (int, float)) else 0
    if name == "connect":
        obj = values[2] if len(values) > 2 and isinstance(values[2], dict) else {}
        encoding = obj.get("objectEncoding", 0)
        return [
            _control(rtmp.WINDOW_ACK_SIZE, struct.pack(">I", WINDOW)),
            _control(rtmp.SET_PEER_BANDWIDTH, struct.pack(">IB", WINDOW, 2)),
            rtmp.set_chunk_size_message(CHUNK_SIZE),
            rtmp.command_message(["_result", txn, {"fmsVer": "FMS/3,0,1,123", "capabilities": 31.0},
                                  {"level": "status", "code": "NetConnection.Connect.Success",
                                   "description": "Connection succeeded.", "objectEncoding": encoding}]),
        ]
    if name == "releaseStream":
        return [rtmp.command_message(["_result", txn, None, rtmp.UNDEFINED])]
    if name == "FCPublish":
        return [rtmp.command_message(["onFCPublish", 0, None, {"level": "status", "code": "NetStream.Publish.Start",
                                                               "description": "FCPublish"}])]
    if name == "createStream":
        return [rtmp.command_message(["_result", txn, None, STREAM_ID])]
    if name == "publish":
        return [
            _control(rtmp.USER_CONTROL, struct.pack(">HI", 0, int(STREAM_ID))),  # Stream Begin
            rtmp.command_message(["onStatus", 0, None, {"level": "status", "code": "NetStream.Publish.Start",
                                                        "description": "Publishing."}],
                                 csid=5, stream_id=int(STREAM_ID)),
        ]
    if name == "FCUnpublish":
        return [rtmp.command_message(["onFCUnpublish", 0, None, {"level": "status",
                                                                 "code": "NetStream.Unpublish.Success",
                                                                 "description": "FCUnpublish"}])]
    return []


def acknowledgement(total: int) -> rtmp.Message:
    return _control(rtmp.ACKNOWLEDGEMENT, struct.pack(">I", total & 0xFFFFFFFF))


def server_handshake(c0c1: bytes, now_ms: int | None = None) -> bytes:
    """S0+S1+S2 for a client's C0+C1: version 3, a random S1 with zeros in bytes 4..7 (the plain handshake), and
    S2 echoing C1 (what ffmpeg's listener and nginx-rtmp answer a plain client with)."""
    if len(c0c1) != 1 + rtmp.HANDSHAKE_SIZE or c0c1[0] != 3:
        raise _Reject("not an RTMP publisher")
    stamp = (int(time.monotonic() * 1000) if now_ms is None else now_ms) & 0xFFFFFFFF
    s1 = struct.pack(">II", stamp, 0) + os.urandom(rtmp.HANDSHAKE_SIZE - 8)
    return b"\x03" + s1 + c0c1[1:]


# -- the gate --------------------------------------------------------------------------------------------------------

class FlvSink:
    """A sink that is an ffmpeg's stdin: the publisher's messages as an FLV stream (``flv_header``, ``flv_tags``)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.header_sent = False

    def messages(self, msgs: list[rtmp.Message]) -> None:
        tags = []
        for msg in msgs:
            tag = flv_tags(msg)
            if tag and not self.header_sent:
                self.header_sent = True
                tags.append(flv_header(msg if msg.type_id != 22 else rtmp.Message(0, 0, tag[0], 0, tag[11:-4])))
            tags.append(tag)
        if tags:
            self.writer.write(b"".join(tags))

    def is_closing(self) -> bool:
        return self.writer.is_closing()

    async def drain(self) -> None:
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


class MessageSink(Protocol):
    """Where a verified publisher's media goes: ``messages`` takes its audio, video and data messages in order."""

    def messages(self, msgs: list[rtmp.Message]) -> None: ...
    def is_closing(self) -> bool: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...


Sink = MessageSink | asyncio.StreamWriter  # a StreamWriter (an ffmpeg's stdin) is wrapped in an FlvSink


class IngestGate:
    def __init__(self, host: str, port: int, app: str, key: str, on_event: Callable[[IngestEvent], None],
                 sink: Callable[[], Awaitable[Sink | None]] | None = None, take_over_after: float | None = None) -> None:
        self.host, self.port, self.app, self.key = host, port, app.strip("/"), key
        self.on_event = on_event
        self.sink = sink  # ffmpeg's input for the next verified publisher (waits while ffmpeg restarts)
        self.busy = False  # a verified publisher is live
        # --slate: a verified publisher replaces a live one that has sent nothing for this long (OBS reconnecting
        # after a network drop, while its old connection has not timed out yet)
        self.take_over_after = take_over_after
        self._live: tuple[str, _Session, asyncio.Task] | None = None
        self._unverified = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        who = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        task = asyncio.current_task()
        if task:
            self._tasks.add(task)
        try:
            if self.busy and self.take_over_after is None:
                self.on_event(IngestEvent("rejected", who, "another publisher is live"))
                return
            if self._unverified >= MAX_UNVERIFIED:
                self.on_event(IngestEvent("rejected", who, "too many connections waiting to show the key"))
                return
            await self._serve(who, reader, writer)
        except asyncio.CancelledError:
            pass
        finally:
            writer.transport.abort()
            if task:
                self._tasks.discard(task)

    async def _serve(self, who: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(self, reader, writer)
        self._unverified += 1
        try:
            after = await session.verify()
        except _Reject as exc:
            self.on_event(IngestEvent("rejected", who, str(exc)))
            return
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, rtmp.RtmpError) as exc:
            self.on_event(IngestEvent("rejected", who, f"left before publishing ({_why(exc)})"))
            return
        finally:
            self._unverified -= 1
        if self.busy and not await self._take_over():
            self.on_event(IngestEvent("rejected", who, "another publisher is live"))
            return
        self.busy = True
        task = asyncio.current_task()
        if task is not None:
            self._live = (who, session, task)
        sink: MessageSink | None = None
        try:
            try:
                got = await asyncio.wait_for(self.sink(), SINK_TIMEOUT_S) if self.sink else None
            except TimeoutError:
                got = None
            sink = FlvSink(got) if isinstance(got, asyncio.StreamWriter) else got
            if sink is None:
                self.on_event(IngestEvent("rejected", who, "restream's ffmpeg is not ready"))
                return
            self.on_event(IngestEvent("publishing", who))
            try:
                await session.stream(after, sink)
                self.on_event(IngestEvent("ended", who))
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, rtmp.RtmpError) as exc:
                self.on_event(IngestEvent("ended", who, _why(exc)))
        finally:
            self.busy = False
            self._live = None
            if sink is not None:
                try:
                    sink.close()  # the end of ffmpeg's input (it finishes, restream starts the next one), or of the
                    #               native fan-out's session (each destination ends its stream in order)
                except Exception:
                    pass
        if session.unpublished:  # (the gate is free for the next publisher meanwhile)
            await session.linger()


    async def _take_over(self) -> bool:
        """A verified publisher while another is live: it replaces the live one if that one has gone silent."""
        live = self._live
        if self.take_over_after is None or live is None:
            return False
        who, session, task = live
        silent = time.monotonic() - session.last_data
        if silent < self.take_over_after:
            return False
        self.on_event(IngestEvent("ended", who, f"silent for {silent:.1f} s: the next publisher took over"))
        task.cancel()
        await asyncio.wait({task}, timeout=2)
        return not self.busy


class _Session:
    """One publisher's connection: the server side of the RTMP conversation, then its media as FLV."""

    def __init__(self, gate: IngestGate, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.gate, self.reader, self.writer = gate, reader, writer
        self.parser = rtmp.ChunkParser()
        self.out = rtmp.ChunkWriter()
        self.window = WINDOW  # the publisher's acknowledgement window (it may announce its own)
        self.received = 0
        self.acked = 0
        self.publish_msg: rtmp.Message | None = None
        self.last_data = time.monotonic()
        self.unpublished = False  # the publisher said it is done (FCUnpublish, deleteStream)
        self.pacer: pacing.Pacer | None = None  # while streaming: read in batches

    async def _read_some(self) -> bytes:
        """One read, within READ_TIMEOUT_S; reading in batches, one timer per read (the pacer's wait, shorter)."""
        pacer = self.pacer
        if pacer is not None and pacer.lowat != 1:
            try:
                async with asyncio.timeout(PACE_WAIT_S):
                    return await self.reader.read(_READ)
            except TimeoutError:  # the publisher slowed down or paused: take what there is, byte by byte again
                pacer.release()
            async with asyncio.timeout(READ_TIMEOUT_S - PACE_WAIT_S):
                return await self.reader.read(_READ)
        async with asyncio.timeout(READ_TIMEOUT_S):
            return await self.reader.read(_READ)

    async def _read(self) -> bytes:
        data = await self._read_some()
        if not data:
            raise ConnectionResetError("the publisher disconnected")
        self.last_data = time.monotonic()
        self.received += len(data)
        if self.pacer is not None:
            self.pacer.rx += len(data)
            now = time.monotonic()
            if now - self.pacer.at >= PACE_S:
                self.pacer.tick(now)
        if self.received - self.acked >= self.window:
            self.acked = self.received
            self.writer.write(self.out.write(acknowledgement(self.received)))
        return data

    def _send(self, msgs: list[rtmp.Message]) -> None:
        if msgs:
            self.writer.write(b"".join(self.out.write(m) for m in msgs))

    async def handshake(self) -> None:
        c0c1 = await self.reader.readexactly(1 + rtmp.HANDSHAKE_SIZE)
        self.writer.write(server_handshake(c0c1))
        await self.writer.drain()
        await self.reader.readexactly(rtmp.HANDSHAKE_SIZE)  # C2 (its content is not checked by RTMP servers)

    async def verify(self) -> list[rtmp.Message]:
        """Handshake, then read and answer commands up to a verified ``publish`` (the messages after it returned).
        A wrong app or key raises _Reject before anything reaches ffmpeg."""
        async with asyncio.timeout(READ_TIMEOUT_S):  # the whole way to the key: a trickle cannot hold a place
            await self.handshake()
            return await self._commands()

    async def _commands(self) -> list[rtmp.Message]:
        while True:
            msgs = self.parser.feed(await self._read())
            for i, msg in enumerate(msgs):
                ok, problem, verified = check_command(msg, self.gate.app, self.gate.key)
                if not ok:
                    raise _Reject(problem)
                if msg.type_id == rtmp.WINDOW_ACK_SIZE and len(msg.payload) >= 4:
                    self.window = max(1, struct.unpack_from(">I", msg.payload)[0])
                if verified:
                    self.publish_msg = msg
                    return msgs[i + 1:]
                self._send(replies(msg))
            await self.writer.drain()

    async def stream(self, after: list[rtmp.Message], sink: MessageSink) -> None:
        """Answer the verified ``publish``, then pass the publisher's media to the sink until it leaves."""
        assert self.publish_msg is not None
        self._send(replies(self.publish_msg))
        await self.writer.drain()
        self._forward(after, sink)
        await sink.drain()
        self.pacer = pacing.Pacer(self.writer.transport, PACE_BATCH_S)
        while True:
            data = await self._read()
            msgs = self.parser.feed(data)
            if self._forward(msgs, sink):
                await sink.drain()
                self.unpublished = True
                return
            await sink.drain()

    async def linger(self) -> None:
        """The publisher said it is done: let it finish (the rest of its commands, its close) before the connection
        goes. Cut between its FCUnpublish and its deleteStream, its last write fails and so does the publisher."""
        try:
            async with asyncio.timeout(LINGER_S):
                while data := await self.reader.read(_READ):
                    self._send([r for m in self.parser.feed(data) for r in replies(m)])
        except (TimeoutError, ConnectionError, rtmp.RtmpError):
            pass

    def _forward(self, msgs: list[rtmp.Message], sink: MessageSink) -> bool:
        """Pass the media of ``msgs`` on; True once the publisher said it is done (FCUnpublish, deleteStream)."""
        media = []
        done = False
        for msg in msgs:
            t = msg.type_id
            if t == rtmp.AUDIO or t == rtmp.VIDEO or t == rtmp.DATA_AMF0 or t == rtmp.DATA_AMF3 or t == 22:
                media.append(msg)
            elif t == rtmp.WINDOW_ACK_SIZE and len(msg.payload) >= 4:
                self.window = max(1, struct.unpack_from(">I", msg.payload)[0])
            elif t == rtmp.COMMAND_AMF0 or t == rtmp.COMMAND_AMF3:
                name = rtmp.command_name(msg)
                self._send(replies(msg))
                if name in ("FCUnpublish", "deleteStream", "closeStream"):
                    done = True
        if media:
            if sink.is_closing():  # restream is stopping (it closed ffmpeg's input) or ffmpeg is gone
                raise ConnectionResetError("restream stopped reading")
            sink.messages(media)
        return done


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"nothing received for {READ_TIMEOUT_S:g} s"
    return str(exc) or type(exc).__name__


def load_or_create_key(path: Path) -> tuple[str, bool]:
    """The profile's ingest key, made once (random, URL-safe) and kept 0600 beside the profiles."""
    try:
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key, False
    except FileNotFoundError:
        pass
    from restream.profile import atomic_write

    key = secrets.token_urlsafe(18)
    atomic_write(path, key + "\n")
    return key, True
