"""RTMP wire format, pure: AMF0 values, the chunk stream (parse and serialize), command rewriting.

No I/O here. ``slotrelay`` feeds bytes in and writes bytes out.

Chunk stream rules followed (RTMP 1.0 spec section 5.3, and what ffmpeg, nginx-rtmp and Node-Media-Server do):

- A chunk is a basic header (fmt + chunk stream id, 1, 2 or 3 bytes), a message header of 11, 7, 3 or 0 bytes
  (fmt 0..3), an optional 4-byte extended timestamp, then up to ``chunk_size`` payload bytes.
- fmt 0 carries an absolute timestamp; fmt 1 and 2 a delta; a fmt 3 chunk that starts a new message reuses the
  previous timestamp field as a delta (after a fmt 0 that is the fmt 0 timestamp, as the spec says).
- A timestamp field of 0xFFFFFF means a 4-byte extended timestamp follows; it is repeated in every fmt 3 chunk of
  that chunk stream (continuations included) until a header with a smaller field comes.
- Set Chunk Size (type 1) takes effect for the chunks after it; Abort (type 2) drops the partial message on a csid.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

# ---------------------------------------------------------------------------------------------------------------
# Message types
# ---------------------------------------------------------------------------------------------------------------

SET_CHUNK_SIZE = 1
ABORT = 2
ACKNOWLEDGEMENT = 3
USER_CONTROL = 4
WINDOW_ACK_SIZE = 5
SET_PEER_BANDWIDTH = 6
AUDIO = 8
VIDEO = 9
DATA_AMF3 = 15
COMMAND_AMF3 = 17
DATA_AMF0 = 18
COMMAND_AMF0 = 20

HANDSHAKE_SIZE = 1536
DEFAULT_CHUNK_SIZE = 128
MAX_CSID = 65599

#: Commands whose fourth AMF value (after name, transaction id and null) is a stream name.
STREAM_NAME_COMMANDS = frozenset({"releaseStream", "FCPublish", "publish", "FCUnpublish"})


class RtmpError(ValueError):
    """Malformed RTMP data (bad chunk header, bad AMF0)."""


class AMFError(RtmpError):
    """Malformed or unsupported AMF0 data."""


# ---------------------------------------------------------------------------------------------------------------
# AMF0
# ---------------------------------------------------------------------------------------------------------------


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def __reduce__(self) -> str:
        return self._name


UNDEFINED = _Sentinel("UNDEFINED")
"""AMF0 undefined (0x06); ``None`` is AMF0 null (0x05)."""

OBJECT_END = _Sentinel("OBJECT_END")
"""A bare AMF0 object-end marker (0x09) met as a value."""


class LongString(str):
    """A string encoded as AMF0 long string (0x0C) even when it is short. Longer than 65535 bytes is always long."""


class ECMAArray(dict):
    """AMF0 ECMA array (0x08): an associative array, e.g. ``onMetaData``. A plain ``dict`` is an AMF0 object."""


@dataclass(frozen=True)
class AMFDate:
    """AMF0 date (0x0B): milliseconds since the epoch and a (reserved) time zone."""

    ms: float
    tz: int = 0


_NUMBER = struct.Struct(">Bd")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_F64 = struct.Struct(">d")


def _enc_str_body(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _encode_key(key: str, out: list[bytes]) -> None:
    raw = _enc_str_body(key)
    if len(raw) > 0xFFFF:
        raise AMFError("AMF0 object key longer than 65535 bytes")
    out.append(_U16.pack(len(raw)))
    out.append(raw)


def _encode(value: Any, out: list[bytes]) -> None:
    if value is None:
        out.append(b"\x05")
    elif value is UNDEFINED:
        out.append(b"\x06")
    elif value is OBJECT_END:
        out.append(b"\x09")
    elif isinstance(value, bool):
        out.append(b"\x01\x01" if value else b"\x01\x00")
    elif isinstance(value, (int, float)):
        out.append(_NUMBER.pack(0, float(value)))
    elif isinstance(value, str):
        raw = _enc_str_body(value)
        if isinstance(value, LongString) or len(raw) > 0xFFFF:
            out.append(b"\x0c" + _U32.pack(len(raw)))
        else:
            out.append(b"\x02" + _U16.pack(len(raw)))
        out.append(raw)
    elif isinstance(value, ECMAArray):
        out.append(b"\x08" + _U32.pack(len(value)))
        for k, v in value.items():
            _encode_key(k, out)
            _encode(v, out)
        out.append(b"\x00\x00\x09")
    elif isinstance(value, dict):
        out.append(b"\x03")
        for k, v in value.items():
            _encode_key(k, out)
            _encode(v, out)
        out.append(b"\x00\x00\x09")
    elif isinstance(value, (list, tuple)):
        out.append(b"\x0a" + _U32.pack(len(value)))
        for v in value:
            _encode(v, out)
    elif isinstance(value, AMFDate):
        out.append(b"\x0b" + _F64.pack(value.ms) + struct.pack(">h", value.tz))
    else:
        raise AMFError(f"cannot encode {type(value).__name__} as AMF0")


def amf0_encode(*values: Any) -> bytes:
    """Encode values one after another (a command is name, transaction id, object, arguments...)."""
    out: list[bytes] = []
    for v in values:
        _encode(v, out)
    return b"".join(out)


def _need(data: bytes, pos: int, n: int) -> None:
    if pos + n > len(data):
        raise AMFError("truncated AMF0 data")


def _decode_key(data: bytes, pos: int) -> tuple[str, int]:
    _need(data, pos, 2)
    (n,) = _U16.unpack_from(data, pos)
    pos += 2
    _need(data, pos, n)
    return data[pos:pos + n].decode("utf-8", "surrogateescape"), pos + n


def _decode_pairs(data: bytes, pos: int, target: dict) -> int:
    while True:
        key, pos = _decode_key(data, pos)
        _need(data, pos, 1)
        if data[pos] == 0x09:
            if key:
                raise AMFError("object end marker after a non-empty key")
            return pos + 1
        value, pos = _decode(data, pos)
        target[key] = value


def _decode(data: bytes, pos: int) -> tuple[Any, int]:
    _need(data, pos, 1)
    marker = data[pos]
    pos += 1
    if marker == 0x00:
        _need(data, pos, 8)
        return _F64.unpack_from(data, pos)[0], pos + 8
    if marker == 0x01:
        _need(data, pos, 1)
        return data[pos] != 0, pos + 1
    if marker == 0x02:
        return _decode_key(data, pos)
    if marker == 0x03:
        obj: dict = {}
        return obj, _decode_pairs(data, pos, obj)
    if marker == 0x05:
        return None, pos
    if marker == 0x06:
        return UNDEFINED, pos
    if marker == 0x08:
        _need(data, pos, 4)
        arr = ECMAArray()
        return arr, _decode_pairs(data, pos + 4, arr)
    if marker == 0x09:
        return OBJECT_END, pos
    if marker == 0x0A:
        _need(data, pos, 4)
        (count,) = _U32.unpack_from(data, pos)
        pos += 4
        items = []
        for _ in range(count):
            v, pos = _decode(data, pos)
            items.append(v)
        return items, pos
    if marker == 0x0B:
        _need(data, pos, 10)
        ms = _F64.unpack_from(data, pos)[0]
        (tz,) = struct.unpack_from(">h", data, pos + 8)
        return AMFDate(ms, tz), pos + 10
    if marker == 0x0C:
        _need(data, pos, 4)
        (n,) = _U32.unpack_from(data, pos)
        pos += 4
        _need(data, pos, n)
        text = data[pos:pos + n].decode("utf-8", "surrogateescape")
        # Over 65535 bytes a plain str encodes as a long string anyway; below, the marker is kept by the type.
        return (LongString(text) if n <= 0xFFFF else text), pos + n
    raise AMFError(f"unsupported AMF0 marker 0x{marker:02x}")


def amf0_decode(data: bytes, count: int | None = None) -> list[Any]:
    """Decode every AMF0 value in ``data`` (or only the first ``count``)."""
    data = bytes(data)
    values: list[Any] = []
    pos = 0
    while pos < len(data) and (count is None or len(values) < count):
        v, pos = _decode(data, pos)
        values.append(v)
    return values


# ---------------------------------------------------------------------------------------------------------------
# Chunk stream
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One complete RTMP message. ``timestamp`` is absolute (mod 2**32)."""

    csid: int
    timestamp: int
    type_id: int
    stream_id: int
    payload: bytes


class _Csid:
    """Per chunk-stream-id state of a parser."""

    __slots__ = ("timestamp", "field", "ext", "length", "type_id", "stream_id", "parts", "remaining")

    def __init__(self) -> None:
        self.timestamp = 0     # absolute timestamp of the current/last message
        self.field = 0         # last timestamp field value (delta or absolute, extended value if ext)
        self.ext = False       # the last fmt 0/1/2 header used an extended timestamp
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.parts: list[bytes] = []
        self.remaining = 0     # payload bytes still expected for the partial message (0: none pending)


_MSG_HEADER_LEN = (11, 7, 3, 0)


def _read_header(buf: bytearray, pos: int, n: int, states: dict, new_state: type):
    """One chunk header at ``pos`` (basic header, message header, extended timestamp), applied to the csid's state.

    Returns (payload position, fmt, csid, state, length, type_id, stream_id, timestamp field, extended) or None when
    ``buf`` does not hold the whole header yet. Shared by ChunkParser and ChunkRewriter.
    """
    b0 = buf[pos]
    fmt = b0 >> 6
    csid = b0 & 0x3F
    p = pos + 1
    if csid == 0:
        if n < p + 1:
            return None
        csid = 64 + buf[p]
        p += 1
    elif csid == 1:
        if n < p + 2:
            return None
        csid = 64 + buf[p] + (buf[p + 1] << 8)
        p += 2
    mh = _MSG_HEADER_LEN[fmt]
    if n < p + mh:
        return None
    st = states.get(csid)
    if st is None:
        if fmt != 0:
            raise RtmpError(f"chunk fmt {fmt} on chunk stream {csid} before any fmt 0 header")
        st = states[csid] = new_state()
    length, type_id, stream_id = st.length, st.type_id, st.stream_id
    if fmt == 3:
        ext = st.ext
        field = st.field
    else:
        field = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
        if fmt <= 1:
            length = (buf[p + 3] << 16) | (buf[p + 4] << 8) | buf[p + 5]
            type_id = buf[p + 6]
            if fmt == 0:
                stream_id = int.from_bytes(buf[p + 7:p + 11], "little")
        ext = field == 0xFFFFFF
    p += mh
    if ext:
        if n < p + 4:
            return None
        ext_value = int.from_bytes(buf[p:p + 4], "big")
        p += 4
        if fmt != 3:
            field = ext_value
    return p, fmt, csid, st, length, type_id, stream_id, field, ext


class ChunkParser:
    """Incremental chunk stream parser: ``feed`` bytes, get the messages completed by them.

    Set Chunk Size is applied as soon as its message completes; Abort drops the partial message of its csid.
    Both are still returned, so callers see every message in order.
    """

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size
        self._buf = bytearray()
        self._states: dict[int, _Csid] = {}

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete chunk."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        buf = self._buf
        buf += data
        n = len(buf)
        pos = 0
        out: list[Message] = []
        states = self._states
        while pos < n:
            header = _read_header(buf, pos, n, states, _Csid)
            if header is None:
                break
            p, fmt, csid, st, length, type_id, stream_id, field, ext = header
            continuation = fmt == 3 and st.remaining > 0
            if continuation:
                size = st.remaining if st.remaining < self.chunk_size else self.chunk_size
            else:
                size = length if length < self.chunk_size else self.chunk_size
            if n < p + size:
                break
            # The whole chunk is here: commit.
            if not continuation:
                if fmt == 0:
                    timestamp = field
                else:
                    timestamp = (st.timestamp + field) & 0xFFFFFFFF
                st.timestamp = timestamp
                st.field = field
                st.ext = ext
                st.length, st.type_id, st.stream_id = length, type_id, stream_id
                st.parts = []
                st.remaining = length
            if size:
                st.parts.append(bytes(buf[p:p + size]))
            st.remaining -= size
            pos = p + size
            if st.remaining and csid < 64 and not ext:
                # Fast path: the rest of this message usually follows as fmt 3 chunks of the same csid.
                marker = 0xC0 | csid
                parts = st.parts
                cs = self.chunk_size
                remaining = st.remaining
                while remaining and pos < n and buf[pos] == marker:
                    size = remaining if remaining < cs else cs
                    end = pos + 1 + size
                    if n < end:
                        break
                    parts.append(bytes(buf[pos + 1:end]))
                    remaining -= size
                    pos = end
                st.remaining = remaining
            if st.remaining == 0:
                payload = st.parts[0] if len(st.parts) == 1 else b"".join(st.parts)
                st.parts = []
                msg = Message(csid, st.timestamp, st.type_id, st.stream_id, payload)
                out.append(msg)
                if st.type_id == SET_CHUNK_SIZE:
                    self.chunk_size = parse_chunk_size(payload)
                elif st.type_id == ABORT and len(payload) >= 4:
                    aborted = states.get(_U32.unpack_from(payload)[0])
                    if aborted is not None:
                        aborted.parts = []
                        aborted.remaining = 0
        if pos:
            del buf[:pos]
        return out


class _RCsid:
    """Per chunk-stream-id state of a ``ChunkRewriter``."""

    __slots__ = ("timestamp", "field", "ext", "length", "type_id", "stream_id", "remaining", "hold", "parts", "raw",
                 "epoch", "dirty")

    def __init__(self) -> None:
        self.timestamp = 0
        self.field = 0
        self.ext = False
        self.length = 0
        self.type_id = 0
        self.stream_id = 0
        self.remaining = 0          # payload bytes still expected for the message in progress (0: none)
        self.hold = False           # the message in progress is held back (reassembled) instead of passed through
        self.parts: list[bytes] = []
        self.raw: list[bytes] | None = None  # the held message's original chunks, while they may still be sent as is
        self.epoch = 0              # Set Chunk Size count when the held message started
        self.dirty = False          # the receiver's header state for this csid may differ from the sender's


#: Messages always held until complete: Set Chunk Size and Abort (to act on them), commands (to rewrite them).
_HOLD_TYPES = frozenset({SET_CHUNK_SIZE, ABORT, COMMAND_AMF3, COMMAND_AMF0})
_MARKERS = [bytes((0xC0 | c,)) for c in range(64)]


class ChunkRewriter:
    """A chunk stream filter that rewrites command messages and passes everything else through as is.

    ``feed`` takes bytes from the sender and returns the bytes to forward. Chunks are passed through verbatim
    (slices of the input, no reassembly) except:

    - Set Chunk Size, Abort and command messages are held until complete. A command is given to ``rewrite``
      (which returns it, or a replacement, or raises); an unchanged message goes out as its original chunks.
    - A rewritten message goes out re-serialized (one fmt 0 chunk, fmt 3 continuations at the chunk size in
      force). From then on the receiver's header state for that chunk stream id differs from the sender's (length,
      timestamp field), so later messages on that csid are re-serialized too, until the sender starts one with a
      fmt 0 header, which resets that state on both sides.
    - A held message whose chunks straddle a Set Chunk Size is re-serialized (its first chunks used the old size).
    - Abort: passed through when the aborted message was being passed through (the receiver must drop its part
      too); dropped when that message was held (the receiver never saw any of it; the csid counts as rewritten).

    So the receiver parses exactly the sender's message sequence, with the rewritten commands in place and
    needless Aborts gone. Continuation chunks of a passed-through message are skipped a message at a time when they
    are contiguous (one strided slice comparison), so the cost per message, not per chunk, is in Python.
    ``media`` becomes True once an audio or video message has started.
    """

    def __init__(self, rewrite: Callable[[Message], Message], chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size
        self.media = False
        self._rewrite = rewrite
        self._tail = b""
        self._states: dict[int, _RCsid] = {}
        self._epoch = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet forwarded (an incomplete chunk, and held messages)."""
        return len(self._tail) + sum(len(r) for st in self._states.values() if st.hold for r in st.parts)

    def at_message_boundary(self) -> bool:
        """Everything fed so far was forwarded whole: no partial chunk, no message in progress."""
        return not self._tail and not any(st.remaining for st in self._states.values())

    def feed(self, data: bytes) -> bytes:
        buf = self._tail + data if self._tail else bytes(data)
        n = len(buf)
        pos = 0
        run = 0             # start of the pass-through bytes not yet added to out
        out: list[bytes] = []
        states = self._states
        while pos < n:
            start = pos
            header = _read_header(buf, pos, n, states, _RCsid)
            if header is None:
                break
            p, fmt, csid, st, length, type_id, stream_id, field, ext = header
            cs = self.chunk_size
            continuation = fmt == 3 and st.remaining > 0
            if continuation:
                size = st.remaining if st.remaining < cs else cs
            else:
                size = length if length < cs else cs
            end = p + size
            if n < end:
                break
            # The whole chunk is here: commit.
            if not continuation:
                if st.remaining and st.hold:
                    st.dirty = True     # a held message cut short by a new header: the receiver never saw it
                st.timestamp = field if fmt == 0 else (st.timestamp + field) & 0xFFFFFFFF
                st.field = field
                st.ext = ext
                st.length, st.type_id, st.stream_id = length, type_id, stream_id
                st.remaining = length
                if type_id == AUDIO or type_id == VIDEO:
                    self.media = True
                if type_id in _HOLD_TYPES or (st.dirty and fmt != 0):
                    st.hold = True
                    st.parts = []
                    st.raw = [] if (fmt == 0 or not st.dirty) else None
                    st.epoch = self._epoch
                else:
                    st.hold = False
                    st.dirty = False
            if st.hold:
                if run < start:
                    out.append(buf[run:start])
                st.parts.append(buf[p:end])
                if st.raw is not None:
                    st.raw.append(buf[start:end])
                run = end
            st.remaining -= size
            pos = end
            if st.remaining:
                if not st.hold and csid < 64 and not ext:
                    # Skip the contiguous fmt 3 continuations of this message: every (chunk size + 1)th byte is
                    # the one-byte basic header "fmt 3, this csid".
                    rem = st.remaining
                    stride = cs + 1
                    total = (rem + cs - 1) // cs
                    k = total if n - pos >= rem + total else (n - pos) // stride
                    if k:
                        marks = buf[pos:pos + k * stride:stride]
                        m = k - len(marks.lstrip(_MARKERS[csid]))
                        if m == total:
                            pos += rem + total
                            st.remaining = 0
                        elif m:
                            pos += m * stride
                            st.remaining = rem - m * cs
            elif st.hold:
                self._complete(csid, st, out)
        if run < pos:
            out.append(buf[run:pos])
        self._tail = buf[pos:]
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def _complete(self, csid: int, st: _RCsid, out: list[bytes]) -> None:
        parts = st.parts
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        raw = st.raw if st.epoch == self._epoch else None
        st.hold = False
        st.parts = []
        st.raw = None
        msg = Message(csid, st.timestamp, st.type_id, st.stream_id, payload)
        type_id = msg.type_id
        if type_id == ABORT:
            aborted = self._states.get(_U32.unpack_from(payload)[0]) if len(payload) >= 4 else None
            if aborted is None or not aborted.remaining or aborted.hold:
                if aborted is not None and aborted.remaining:
                    aborted.remaining = 0
                    aborted.parts = []
                    aborted.raw = None
                    aborted.hold = False
                    aborted.dirty = True
                st.dirty = True  # this Abort is not forwarded: the receiver did not see its header either
                return
            aborted.remaining = 0
        elif type_id == COMMAND_AMF0 or type_id == COMMAND_AMF3:
            new = self._rewrite(msg)
            if new != msg:
                msg = new
                raw = None
        if raw is not None:
            out.extend(raw)
            st.dirty = False
        else:
            out.append(serialize(msg, self.chunk_size))
            st.dirty = True
        if type_id == SET_CHUNK_SIZE:
            self.chunk_size = parse_chunk_size(payload)
            self._epoch += 1


def parse_chunk_size(payload: bytes) -> int:
    if len(payload) < 4:
        raise RtmpError("short Set Chunk Size message")
    size = _U32.unpack_from(payload)[0] & 0x7FFFFFFF
    if size < 1:
        raise RtmpError("Set Chunk Size of 0")
    return size


def _basic_header(fmt: int, csid: int) -> bytes:
    if 2 <= csid <= 63:
        return bytes((fmt << 6 | csid,))
    if 64 <= csid <= 319:
        return bytes((fmt << 6, csid - 64))
    if 320 <= csid <= MAX_CSID:
        c = csid - 64
        return bytes((fmt << 6 | 1, c & 0xFF, c >> 8))
    raise RtmpError(f"chunk stream id {csid} out of range 2..{MAX_CSID}")


_TYPE_SID = struct.Struct("<BI")


def serialize(msg: Message, chunk_size: int, stream_id: int | None = None) -> bytes:
    """``msg`` as chunks of ``chunk_size``: one fmt 0 chunk, then fmt 3 continuations (extended timestamp repeated).
    ``stream_id``: the message stream id written instead of ``msg.stream_id`` (a message passed on to another
    connection, with no copy of it made)."""
    if chunk_size < 1:
        raise RtmpError("chunk size must be at least 1")
    ts = msg.timestamp & 0xFFFFFFFF
    payload = msg.payload
    length = len(payload)
    if length > 0xFFFFFF:
        raise RtmpError("message longer than 16 MiB")
    ext = ts >= 0xFFFFFF
    field = 0xFFFFFF if ext else ts
    head = (_basic_header(0, msg.csid) + field.to_bytes(3, "big") + length.to_bytes(3, "big")
            + _TYPE_SID.pack(msg.type_id, (msg.stream_id if stream_id is None else stream_id) & 0xFFFFFFFF))
    if ext:
        head += ts.to_bytes(4, "big")
    if length <= chunk_size:
        return head + payload
    cont = _basic_header(3, msg.csid)
    if ext:
        cont += ts.to_bytes(4, "big")
    return head + cont.join([payload[i:i + chunk_size] for i in range(0, length, chunk_size)])


class ChunkWriter:
    """Serializes messages at the chunk size in force, switching after each Set Chunk Size it writes."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.chunk_size = chunk_size

    def write(self, msg: Message) -> bytes:
        data = serialize(msg, self.chunk_size)
        if msg.type_id == SET_CHUNK_SIZE:
            self.chunk_size = parse_chunk_size(msg.payload)
        return data


def set_chunk_size_message(size: int, timestamp: int = 0) -> Message:
    return Message(2, timestamp, SET_CHUNK_SIZE, 0, _U32.pack(size & 0x7FFFFFFF))


# ---------------------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------------------


def _split_command(msg: Message) -> tuple[bytes, bytes]:
    """(prefix, AMF0 body) of a command message; AMF3 commands (type 17) carry one leading format byte."""
    if msg.type_id == COMMAND_AMF3 and msg.payload[:1] == b"\x00":
        return msg.payload[:1], msg.payload[1:]
    return b"", msg.payload


def is_command(msg: Message) -> bool:
    return msg.type_id in (COMMAND_AMF0, COMMAND_AMF3)


def command_name(msg: Message) -> str | None:
    """The command name of a command message (only the first AMF value is decoded), else None."""
    if not is_command(msg):
        return None
    _, body = _split_command(msg)
    try:
        values = amf0_decode(body, 1)
    except AMFError:
        return None
    return values[0] if values and isinstance(values[0], str) else None


def command_values(msg: Message) -> list[Any]:
    """Every AMF0 value of a command message (name, transaction id, command object, arguments...)."""
    _, body = _split_command(msg)
    return amf0_decode(body)


def command_message(values: list[Any], *, csid: int = 3, timestamp: int = 0, stream_id: int = 0,
                    type_id: int = COMMAND_AMF0) -> Message:
    body = amf0_encode(*values)
    if type_id == COMMAND_AMF3:
        body = b"\x00" + body
    return Message(csid, timestamp, type_id, stream_id, body)


def _set_key(obj: dict, key: str, value: Any) -> dict:
    new = type(obj)(obj)
    new[key] = value  # an existing key keeps its position; a new one goes last
    return new


def rewrite_command(msg: Message, placeholder_to_key: Mapping[str, str], app: str | None,
                    tcurl: str | None) -> Message:
    """Rewrite a client command for the real destination; anything else is returned unchanged.

    ``connect``: the command object's ``app`` and ``tcUrl`` become ``app`` and ``tcurl`` (other fields kept, in
    order). ``releaseStream``/``FCPublish``/``publish``/``FCUnpublish``: a stream name found in
    ``placeholder_to_key`` is replaced by its key.
    """
    name = command_name(msg)
    if name is None or (name != "connect" and name not in STREAM_NAME_COMMANDS):
        return msg
    prefix, body = _split_command(msg)
    values = amf0_decode(body)
    changed = False
    if name == "connect":
        if len(values) >= 3 and isinstance(values[2], dict):
            obj = values[2]
            if app is not None:
                obj = _set_key(obj, "app", app)
            if tcurl is not None:
                obj = _set_key(obj, "tcUrl", tcurl)
            changed = obj != values[2]
            values[2] = obj
    elif len(values) >= 4 and isinstance(values[3], str) and values[3] in placeholder_to_key:
        key = placeholder_to_key[values[3]]
        values[3] = LongString(key) if isinstance(values[3], LongString) else key
        changed = True
    if not changed:
        return msg
    return replace(msg, payload=prefix + amf0_encode(*values))


# ---------------------------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where an RTMP(S) server URL points, and what a publisher says to it."""

    scheme: str   # "rtmp" or "rtmps"
    host: str
    port: int
    app: str      # the whole path after host[:port]/, query included (OBS convention), trailing "/" dropped
    tcurl: str    # scheme://host[:port]/app, netloc as written in the URL

    @property
    def tls(self) -> bool:
        return self.scheme == "rtmps"


DEFAULT_PORTS = {"rtmp": 1935, "rtmps": 443}


def parse_url(url: str) -> Target:
    """Split an RTMP(S) server URL (without the key) into host, port, app and tcUrl.

    ``rtmp://a.rtmp.youtube.com/live2`` -> app ``live2``, tcUrl ``rtmp://a.rtmp.youtube.com/live2``;
    ``rtmps://h:443/rtmp/`` -> app ``rtmp``, tcUrl ``rtmps://h:443/rtmp``; ``rtmp://h/app?x=1`` -> app ``app?x=1``.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise ValueError("not an rtmp:// or rtmps:// URL")
    netloc, _, app = rest.partition("/")
    if "?" not in app:
        app = app.rstrip("/")
    if "@" in netloc:
        raise ValueError("credentials in the server URL are not supported")
    if netloc.startswith("["):
        host, _, after = netloc[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else ""
    else:
        host, _, port_text = netloc.partition(":")
    if not host:
        raise ValueError("no host in the server URL")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError("bad port in the server URL")
        port = int(port_text)
    else:
        port = DEFAULT_PORTS[scheme]
    return Target(scheme, host, port, app, f"{scheme}://{netloc}/{app}")

