"""rtmp.py on fixed bytes: AMF0, chunk formats 0-3, extended timestamps, chunk size changes, Abort, rewriting."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restream import rtmp
from restream.rtmp import (
    OBJECT_END, UNDEFINED, AMFDate, ChunkParser, ChunkWriter, ECMAArray, LongString, Message, amf0_decode,
    amf0_encode, command_message, command_values, parse_url, rewrite_command, serialize,
)

# -- hand-built chunk bytes (independent of rtmp.serialize) ------------------------------------------------------


def bh(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes([fmt << 6 | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    return bytes([fmt << 6 | 1, (csid - 64) & 0xFF, (csid - 64) >> 8])


def u24(x: int) -> bytes:
    return x.to_bytes(3, "big")


def h0(csid, ts, length, type_id, sid=1, ext=None):
    return bh(0, csid) + u24(ts) + u24(length) + bytes([type_id]) + struct.pack("<I", sid) + (
        ext.to_bytes(4, "big") if ext is not None else b"")


def h1(csid, delta, length, type_id, ext=None):
    return bh(1, csid) + u24(delta) + u24(length) + bytes([type_id]) + (
        ext.to_bytes(4, "big") if ext is not None else b"")


def h2(csid, delta, ext=None):
    return bh(2, csid) + u24(delta) + (ext.to_bytes(4, "big") if ext is not None else b"")


def h3(csid, ext=None):
    return bh(3, csid) + (ext.to_bytes(4, "big") if ext is not None else b"")


def feed_all(data: bytes, parser: ChunkParser | None = None) -> list[Message]:
    return (parser or ChunkParser()).feed(data)


def feed_bytewise(data: bytes) -> list[Message]:
    p = ChunkParser()
    out = []
    for i in range(len(data)):
        out += p.feed(data[i:i + 1])
    return out


# -- AMF0 ----------------------------------------------------------------------------------------------------------


def test_amf0_fixed_bytes():
    assert amf0_encode(1.0) == b"\x00" + struct.pack(">d", 1.0)
    assert amf0_encode("connect") == b"\x02\x00\x07connect"
    assert amf0_encode(True, False) == b"\x01\x01\x01\x00"
    assert amf0_encode(None, UNDEFINED) == b"\x05\x06"
    assert amf0_encode({"app": "live"}) == b"\x03\x00\x03app\x02\x00\x04live\x00\x00\x09"
    assert amf0_encode(ECMAArray(a=0.0)) == b"\x08\x00\x00\x00\x01\x00\x01a" + amf0_encode(0.0) + b"\x00\x00\x09"
    assert amf0_encode([1.0, "x"]) == b"\x0a\x00\x00\x00\x02" + amf0_encode(1.0) + b"\x02\x00\x01x"
    assert amf0_encode(LongString("ab")) == b"\x0c\x00\x00\x00\x02ab"
    assert amf0_encode(OBJECT_END) == b"\x09"
    assert amf0_decode(b"\x02\x00\x07connect\x00" + struct.pack(">d", 1.0) + b"\x05") == ["connect", 1.0, None]


@pytest.mark.parametrize("value", [
    0.0, -1.5, 1e300, 2.0 ** 53, True, False, None, UNDEFINED, "", "key with spaces", "ünïcødé ✓",
    "x" * 70000, LongString("short long"), {"app": "live", "n": 3.0, "nested": {"a": [1.0, None, "b"]}},
    ECMAArray(duration=0.0, width=320.0, encoder="Lavf"), [], [UNDEFINED, {"": ""}], AMFDate(1.7e12, 0),
    {"z": 1.0, "a": 2.0, "m": 3.0},
])
def test_amf0_round_trip(value):
    data = amf0_encode(value)
    (back,) = amf0_decode(data)
    assert back == value
    assert type(back) is type(value) or isinstance(value, (int, float)) and isinstance(back, float)
    if isinstance(value, dict):
        assert list(back) == list(value)  # key order kept
    assert amf0_encode(back) == data


def test_amf0_long_string_automatic():
    data = amf0_encode("y" * 65536)
    assert data[0] == 0x0C
    assert amf0_decode(data) == ["y" * 65536]


def test_amf0_truncated_and_unknown():
    with pytest.raises(rtmp.AMFError):
        amf0_decode(b"\x02\x00\x09abc")
    with pytest.raises(rtmp.AMFError):
        amf0_decode(b"\x11")
    with pytest.raises(rtmp.AMFError):
        amf0_decode(b"\x03\x00\x01a\x02\x00")


amf_values = st.recursive(
    st.none() | st.just(UNDEFINED) | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4).map(ECMAArray),
    max_leaves=12)


@given(st.lists(amf_values, max_size=5))
@settings(max_examples=200, deadline=None)
def test_amf0_round_trip_property(values):
    assert amf0_decode(amf0_encode(*values)) == values


# -- chunk parser: formats 0-3 ---------------------------------------------------------------------------------------


def test_fmt0_single_chunk():
    data = h0(3, 0, 5, 20, sid=0) + b"hello"
    assert feed_all(data) == [Message(3, 0, 20, 0, b"hello")]


def test_fmt1_fmt2_fmt3_deltas():
    data = (h0(6, 1000, 3, 9) + b"abc"
            + h1(6, 40, 2, 8) + b"de"           # delta 40, new length and type, same stream id
            + h2(6, 33) + b"fg"                 # delta 33, same length and type
            + h3(6) + b"hi")                    # new message: previous delta again
    msgs = feed_all(data)
    assert [(m.timestamp, m.type_id, m.stream_id, m.payload) for m in msgs] == [
        (1000, 9, 1, b"abc"), (1040, 8, 1, b"de"), (1073, 8, 1, b"fg"), (1106, 8, 1, b"hi")]
    assert feed_bytewise(data) == msgs


def test_fmt3_after_fmt0_uses_fmt0_timestamp_as_delta():
    data = h0(4, 100, 1, 8) + b"a" + h3(4) + b"b"
    assert [m.timestamp for m in feed_all(data)] == [100, 200]


def test_message_spanning_many_chunks_and_interleaved_csids():
    a = bytes(range(256)) + b"A" * 44          # 300 bytes on csid 4
    b = b"B" * 200                             # 200 bytes on csid 5
    data = (h0(4, 10, 300, 9) + a[:128] + h0(5, 20, 200, 8) + b[:128] + h3(4) + a[128:256]
            + h3(5) + b[128:] + h3(4) + a[256:])
    msgs = feed_all(data)
    assert msgs == [Message(5, 20, 8, 1, b), Message(4, 10, 9, 1, a)]
    assert feed_bytewise(data) == msgs


def test_zero_length_message():
    assert feed_all(h0(3, 5, 0, 20, 0)) == [Message(3, 5, 20, 0, b"")]


def test_fmt1_before_fmt0_is_an_error():
    with pytest.raises(rtmp.RtmpError):
        feed_all(h1(3, 0, 1, 20) + b"x")


# -- extended timestamps -----------------------------------------------------------------------------------------


def test_extended_timestamp_repeated_in_continuations():
    ts = 0x01234567
    payload = bytes(300)
    data = (h0(6, 0xFFFFFF, 300, 9, ext=ts) + payload[:128] + h3(6, ext=ts) + payload[128:256]
            + h3(6, ext=ts) + payload[256:])
    msgs = feed_all(data)
    assert msgs == [Message(6, ts, 9, 1, payload)]
    assert feed_bytewise(data) == msgs
    # serialize writes the same bytes
    assert serialize(msgs[0], 128) == data


def test_extended_timestamp_new_message_fmt3_and_extended_delta():
    data = (h0(6, 0xFFFFFF, 1, 9, ext=0x01000000) + b"a"
            + h3(6, ext=0x01000000) + b"b"           # new message: delta = the fmt 0 timestamp (spec)
            + h1(6, 0xFFFFFF, 1, 9, ext=0x01000000) + b"c"   # extended delta
            + h2(6, 10) + b"d")                      # back to a small delta: no extended field any more
    assert [m.timestamp for m in feed_all(data)] == [0x01000000, 0x02000000, 0x03000000, 0x0300000A]


def test_exactly_0xffffff_is_extended():
    m = Message(3, 0xFFFFFF, 9, 1, b"x" * 10)
    data = serialize(m, 4)
    assert data.startswith(h0(3, 0xFFFFFF, 10, 9, ext=0xFFFFFF))
    assert data.count(h3(3, ext=0xFFFFFF)) == 2
    assert ChunkParser(chunk_size=4).feed(data) == [m]


def test_timestamp_wraps_mod_2_32():
    data = h0(4, 0xFFFFFF, 1, 8, ext=0xFFFFFFF0) + b"a" + h2(4, 0x20) + b"b"
    assert [m.timestamp for m in feed_all(data)] == [0xFFFFFFF0, 0x10]


# -- chunk size, abort -----------------------------------------------------------------------------------------------


def test_set_chunk_size_mid_stream():
    big = bytes(range(256)) * 20               # 5120 bytes
    data = (h0(3, 0, 200, 20, 0) + b"c" * 128 + h3(3) + b"c" * 72
            + h0(2, 0, 4, 1, 0) + struct.pack(">I", 4096)
            + h0(6, 40, len(big), 9) + big[:4096] + h3(6) + big[4096:])
    p = ChunkParser()
    msgs = p.feed(data)
    assert [m.type_id for m in msgs] == [20, 1, 9]
    assert msgs[2].payload == big
    assert p.chunk_size == 4096
    assert feed_bytewise(data) == msgs


def test_set_chunk_size_between_chunks_of_other_csid():
    # csid 4 is mid-message when the chunk size changes; its next chunk uses the new size.
    payload = b"p" * 400
    data = (h0(4, 0, 400, 9) + payload[:128] + h0(2, 0, 4, 1, 0) + struct.pack(">I", 1000)
            + h3(4) + payload[128:])
    msgs = feed_all(data)
    assert msgs[-1] == Message(4, 0, 9, 1, payload)


def test_abort_drops_partial_message():
    data = (h0(4, 0, 300, 9) + b"x" * 128
            + h0(2, 0, 4, 2, 0) + struct.pack(">I", 4)
            + h0(4, 50, 3, 9) + b"new")
    msgs = feed_all(data)
    assert [m.type_id for m in msgs] == [2, 9]
    assert msgs[1] == Message(4, 50, 9, 1, b"new")
    assert feed_bytewise(data) == msgs


def test_chunk_writer_switches_after_set_chunk_size():
    w = ChunkWriter()
    scs = rtmp.set_chunk_size_message(4096)
    media = Message(6, 0, 9, 1, b"m" * 5000)
    data = w.write(scs) + w.write(media)
    assert w.chunk_size == 4096
    assert data == serialize(scs, 128) + serialize(media, 4096)
    assert feed_all(data) == [scs, media]


# -- basic header forms ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("csid", [2, 63, 64, 65, 319, 320, 1000, 65599])
def test_csid_forms(csid):
    payload = b"z" * 300
    data = h0(csid, 7, 300, 9) + payload[:128] + h3(csid) + payload[128:256] + h3(csid) + payload[256:]
    assert feed_all(data) == [Message(csid, 7, 9, 1, payload)]
    assert feed_bytewise(data) == [Message(csid, 7, 9, 1, payload)]
    assert serialize(Message(csid, 7, 9, 1, payload), 128) == data


def test_basic_header_bytes():
    assert bh(0, 64) == b"\x00\x00" and bh(3, 319) == b"\xc0\xff"
    assert bh(0, 320) == b"\x01\x00\x01" and bh(0, 65599) == b"\x01\xff\xff"
    with pytest.raises(rtmp.RtmpError):
        serialize(Message(65600, 0, 9, 1, b""), 128)


# -- property ---------------------------------------------------------------------------------------------------------

messages = st.builds(
    Message,
    csid=st.one_of(st.integers(2, 63), st.integers(64, 319), st.integers(320, 65599)),
    timestamp=st.one_of(st.integers(0, 0xFFFFFE), st.integers(0xFFFFFF, 0xFFFFFFFF)),
    type_id=st.sampled_from([3, 4, 5, 6, 8, 9, 15, 17, 18, 20]),
    stream_id=st.integers(0, 0xFFFFFFFF),
    payload=st.binary(max_size=700),
)


@given(st.lists(messages, max_size=8), st.integers(1, 600), st.randoms(use_true_random=False))
@settings(max_examples=300, deadline=None)
def test_parse_serialize_property(msgs, chunk_size, rnd):
    data = rtmp.serialize(rtmp.set_chunk_size_message(chunk_size), 128) + b"".join(
        serialize(m, chunk_size) for m in msgs)
    p = ChunkParser()
    out: list[Message] = []
    pos = 0
    while pos < len(data):
        step = rnd.randint(1, 900)
        out += p.feed(data[pos:pos + step])
        pos += step
    assert out[1:] == msgs
    assert p.buffered == 0


# -- commands ---------------------------------------------------------------------------------------------------------


def ffmpeg_connect(port: int = 30001) -> Message:
    return command_message(["connect", 1.0, {
        "app": "slot", "type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; Lavf61.7.100)",
        "tcUrl": f"rtmp://127.0.0.1:{port}/slot"}])


def test_rewrite_connect_keeps_other_fields_in_order():
    msg = ffmpeg_connect()
    out = rewrite_command(msg, {}, "live2", "rtmp://a.rtmp.youtube.com/live2")
    values = command_values(out)
    assert values[0] == "connect" and values[1] == 1.0
    assert values[2] == {"app": "live2", "type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; Lavf61.7.100)",
                         "tcUrl": "rtmp://a.rtmp.youtube.com/live2"}
    assert list(values[2]) == ["app", "type", "flashVer", "tcUrl"]
    assert (out.csid, out.timestamp, out.type_id, out.stream_id) == (msg.csid, msg.timestamp, 20, 0)


def test_rewrite_connect_adds_missing_fields():
    msg = command_message(["connect", 1.0, {"flashVer": "x"}])
    values = command_values(rewrite_command(msg, {}, "a", "rtmp://h/a"))
    assert values[2] == {"flashVer": "x", "app": "a", "tcUrl": "rtmp://h/a"}


SPECIAL_KEY = "a|b[c]d:e=f\\g'h i?j&k  FB-123?s_bl=1&s_psm=1 "
LONG_KEY = "".join(random.Random(1).choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-_") for _ in range(300))


@pytest.mark.parametrize("key", ["k", "a-much-longer-key-than-the-placeholder-0123456789", LONG_KEY, SPECIAL_KEY,
                                 "x" * 70000])
@pytest.mark.parametrize("cmd", ["releaseStream", "FCPublish", "publish", "FCUnpublish"])
def test_rewrite_stream_name(cmd, key):
    args = [cmd, 4.0, None, "slot-0"] + (["live"] if cmd == "publish" else [])
    msg = command_message(args, csid=8 if cmd == "publish" else 3, stream_id=1 if cmd == "publish" else 0)
    out = rewrite_command(msg, {"slot-0": key}, "app", "rtmp://h/app")
    values = command_values(out)
    assert values[3] == key
    assert values[:3] == args[:3] and values[4:] == args[4:]
    # survives chunking at ffmpeg's sizes
    for size in (128, 4096):
        assert feed_all(serialize(set_size(size), 128) + serialize(out, size))[1] == out


def set_size(size: int) -> Message:
    return rtmp.set_chunk_size_message(size)


def test_rewrite_amf3_command():
    msg = command_message(["publish", 5.0, None, "slot-2", "live"], type_id=17)
    out = rewrite_command(msg, {"slot-2": SPECIAL_KEY}, None, None)
    assert out.type_id == 17 and out.payload[0] == 0
    assert command_values(out) == ["publish", 5.0, None, SPECIAL_KEY, "live"]


def test_rewrite_leaves_other_messages_alone():
    others = [command_message(["createStream", 2.0, None]), command_message(["publish", 5.0, None, "other"]),
              Message(4, 0, 9, 1, b"\x17\x00"), command_message(["deleteStream", 6.0, None, 1.0])]
    for m in others:
        assert rewrite_command(m, {"slot-0": "k"}, "a", "t") is m


def test_command_name():
    assert rtmp.command_name(ffmpeg_connect()) == "connect"
    assert rtmp.command_name(Message(4, 0, 9, 1, b"\x02\x00\x01x")) is None
    assert rtmp.command_name(Message(3, 0, 20, 0, b"\xff")) is None


# -- URLs -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url,expected", [
    ("rtmp://a.rtmp.youtube.com/live2", ("rtmp", "a.rtmp.youtube.com", 1935, "live2",
                                          "rtmp://a.rtmp.youtube.com/live2")),
    ("rtmps://live-api-s.facebook.com:443/rtmp/", ("rtmps", "live-api-s.facebook.com", 443, "rtmp",
                                                    "rtmps://live-api-s.facebook.com:443/rtmp")),
    ("rtmps://localhost/live", ("rtmps", "localhost", 443, "live", "rtmps://localhost/live")),
    ("rtmp://h:1936/app/inst?token=a&b=c", ("rtmp", "h", 1936, "app/inst?token=a&b=c",
                                             "rtmp://h:1936/app/inst?token=a&b=c")),
    ("RTMP://[::1]:1935/live", ("rtmp", "::1", 1935, "live", "rtmp://[::1]:1935/live")),
])
def test_parse_url(url, expected):
    t = parse_url(url)
    assert (t.scheme, t.host, t.port, t.app, t.tcurl) == expected


@pytest.mark.parametrize("url", ["http://h/live", "rtmp:///live", "rtmp://h:99999/live", "rtmp://u:p@h/live", "h/live"])
def test_parse_url_rejects(url):
    with pytest.raises(ValueError):
        parse_url(url)


# -- ChunkRewriter: chunks passed through, commands rewritten ------------------------------------------------------

KEYS = {"slot-0": "the-real-key-0123456789"}
APP, TCURL = "live2", "rtmp://example.net/live2"


def rewrite(m: Message) -> Message:
    return rewrite_command(m, KEYS, APP, TCURL)


def relay_bytes(data: bytes, rnd: random.Random | None = None, max_step: int = 900) -> tuple[bytes, rtmp.ChunkRewriter]:
    rw = rtmp.ChunkRewriter(rewrite)
    if rnd is None:
        return rw.feed(data), rw
    out = []
    pos = 0
    while pos < len(data):
        step = rnd.randint(1, max_step)
        out.append(rw.feed(data[pos:pos + step]))
        pos += step
    return b"".join(out), rw


def expected_after_relay(data: bytes) -> list[Message]:
    return [rewrite(m) for m in ChunkParser().feed(data) if m.type_id != rtmp.ABORT]


def without_aborts(msgs: list[Message]) -> list[Message]:
    return [m for m in msgs if m.type_id != rtmp.ABORT]


class StreamEncoder:
    """Writes a chunk stream the way a sender may: compressed headers (fmt 1/2/3 where they fit, fmt 3 starting
    new messages included), extended timestamps repeated in fmt 3 chunks, chunks of several csids interleaved,
    Set Chunk Size taking effect after its last chunk, Abort of a message in progress. Independent of rtmp.py's
    writer; ``sent`` lists the messages a correct parser must return (Aborts included, aborted ones not)."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.chunk_size = 128
        self.out = bytearray()
        self.prev: dict[int, tuple] = {}      # csid -> (ts, field, ext, length, type, sid)
        self.open: dict[int, list] = {}       # csid -> [message, offset]
        self.sent: list[Message] = []
        # a chunk of one message went out while a message the rewriter holds whole (command, Set Chunk Size, Abort)
        # was in progress on another csid: the rewriter forwards the held one when complete, after that chunk
        self.reordered = False

    def start(self, m: Message, fmt: int | None = None) -> None:
        assert m.csid not in self.open
        prev = self.prev.get(m.csid)
        choices = [0]
        delta = 0
        if prev is not None and prev[5] == m.stream_id:
            delta = (m.timestamp - prev[0]) & 0xFFFFFFFF
            choices.append(1)
            if (prev[3], prev[4]) == (len(m.payload), m.type_id):
                choices.append(2)
                if prev[1] == delta:
                    choices.append(3)
        if fmt is None:
            fmt = self.rnd.choice(choices) if self.rnd.random() < 0.8 else max(choices)
        assert fmt in choices
        if fmt == 3:
            field, ext = prev[1], prev[2]
        else:
            field = m.timestamp if fmt == 0 else delta
            ext = field >= 0xFFFFFF
        head = bh(fmt, m.csid)
        if fmt < 3:
            head += u24(0xFFFFFF if ext else field)
        if fmt < 2:
            head += u24(len(m.payload)) + bytes([m.type_id])
        if fmt == 0:
            head += struct.pack("<I", m.stream_id)
        if ext:
            head += field.to_bytes(4, "big")
        self.prev[m.csid] = (m.timestamp, field, ext, len(m.payload), m.type_id, m.stream_id)
        self.open[m.csid] = [m, 0]
        self._chunk(m.csid, head)

    def step(self, csid: int) -> None:
        """The next continuation chunk of the message open on ``csid``."""
        ext, field = self.prev[csid][2], self.prev[csid][1]
        self._chunk(csid, bh(3, csid) + (field.to_bytes(4, "big") if ext else b""))

    def _chunk(self, csid: int, head: bytes) -> None:
        if any(held.type_id in HELD for c, (held, _) in self.open.items() if c != csid):
            self.reordered = True
        m, off = self.open[csid]
        part = m.payload[off:off + self.chunk_size]
        self.out += head + part
        off += len(part)
        if off < len(m.payload):
            self.open[csid][1] = off
            return
        del self.open[csid]
        self.sent.append(m)
        if m.type_id == rtmp.SET_CHUNK_SIZE:
            self.chunk_size = struct.unpack(">I", m.payload)[0]

        elif m.type_id == rtmp.ABORT:
            aborted = struct.unpack(">I", m.payload)[0]
            self.open.pop(aborted, None)

    def finish(self) -> None:
        while self.open:
            self.step(self.rnd.choice(sorted(self.open)))


CSIDS = [2, 3, 4, 5, 6, 8, 70, 400]
HELD = (rtmp.SET_CHUNK_SIZE, rtmp.ABORT, rtmp.COMMAND_AMF0, rtmp.COMMAND_AMF3)  # what the rewriter holds whole
REWRITTEN = [
    ["connect", 1.0, {"app": "slot", "type": "nonprivate", "tcUrl": "rtmp://127.0.0.1:1/slot"}],
    ["releaseStream", 2.0, None, "slot-0"],
    ["FCPublish", 3.0, None, "slot-0"],
    ["publish", 5.0, None, "slot-0", "live"],
    ["FCUnpublish", 6.0, None, "slot-0"],
]
UNCHANGED = [["createStream", 4.0, None], ["publish", 7.0, None, "other-name", "live"]]


def random_message(rnd: random.Random, csid: int, ts: int, rewritable: bool = True) -> Message:
    kind = rnd.random()
    sid = rnd.choice([0, 1, 1, 1])
    if kind < 0.25:
        values = rnd.choice(REWRITTEN + UNCHANGED if rewritable else UNCHANGED)
        return command_message(values, csid=csid, timestamp=ts, stream_id=sid,
                               type_id=rnd.choice([rtmp.COMMAND_AMF0, rtmp.COMMAND_AMF3]))
    if kind < 0.3:
        return Message(csid, ts, rtmp.COMMAND_AMF0, sid, rnd.randbytes(rnd.randint(0, 40)))  # not AMF0
    length = rnd.choice([0, 1, 4, 127, 128, 129, 300, rnd.randint(0, 3000)])
    type_id = rnd.choice([rtmp.AUDIO, rtmp.VIDEO, rtmp.VIDEO, rtmp.DATA_AMF0, rtmp.USER_CONTROL])
    return Message(csid, ts, type_id, sid, rnd.randbytes(length))


def random_stream(rnd: random.Random, rewritable: bool = True, aborts: bool = True) -> StreamEncoder:
    enc = StreamEncoder(rnd)
    clock = {c: rnd.choice([0, 1000, 0xFFFFF0, 0xFFFFFF, 0x7FFFFFF0, 0xFFFFFFF0]) for c in CSIDS}
    for _ in range(rnd.randint(1, 40)):
        r = rnd.random()
        if enc.open and r < 0.45:
            enc.step(rnd.choice(sorted(enc.open)))
            continue
        free = [c for c in CSIDS if c not in enc.open]
        if not free:
            continue
        if r < 0.52:
            size = rnd.choice([1, 3, 4, 50, 128, 129, 1000, 4096, 65536])
            if 2 in free:
                enc.start(Message(2, 0, rtmp.SET_CHUNK_SIZE, 0, struct.pack(">I", size)))
            continue
        if r < 0.57 and enc.open and 2 in free and aborts:
            victim = rnd.choice(sorted(enc.open))
            if victim != 2:
                enc.start(Message(2, 0, rtmp.ABORT, 0, struct.pack(">I", victim)))
            continue
        csid = rnd.choice(free)
        prev = enc.prev.get(csid)
        if prev is not None and rnd.random() < 0.5:
            # a repeat of the previous header (fmt 2/3 possible); the same delta again
            ts = (prev[0] + prev[1]) & 0xFFFFFFFF if rnd.random() < 0.5 else (prev[0] + 33) & 0xFFFFFFFF
            m = random_message(rnd, csid, ts, rewritable)
            if rnd.random() < 0.5 and not rtmp.is_command(m) and prev[4] not in (rtmp.SET_CHUNK_SIZE, rtmp.ABORT):
                m = Message(csid, ts, prev[4], prev[5], rnd.randbytes(prev[3]))
        else:
            clock[csid] = (clock[csid] + rnd.choice([0, 21, 33, 0x1000000])) & 0xFFFFFFFF
            m = random_message(rnd, csid, clock[csid], rewritable)
        enc.start(m)
    enc.finish()
    return enc


@given(st.randoms(use_true_random=False))
@settings(max_examples=400, deadline=None)
def test_rewriter_delivers_the_same_messages_with_commands_rewritten(rnd):
    enc = random_stream(rnd)
    data = bytes(enc.out)
    assert ChunkParser().feed(data) == enc.sent              # the encoder and the parser agree
    out, rw = relay_bytes(data, rnd, max_step=rnd.choice([3, 50, 900, 10**6]))
    received = ChunkParser().feed(out)
    assert without_aborts(received) == expected_after_relay(data)
    assert rw.buffered == 0
    assert b"slot-0" not in out and b"/slot" not in out
    if (not any(rewrite(m) != m for m in enc.sent) and not any(m.type_id == rtmp.ABORT for m in enc.sent)
            and not enc.reordered):
        # nothing to rewrite or drop, and no held message interleaved with other chunks: every byte passes
        assert out == data


@given(st.randoms(use_true_random=False))
@settings(max_examples=300, deadline=None)
def test_rewriter_passes_a_stream_with_nothing_to_rewrite_byte_for_byte(rnd):
    # mutation caught: ChunkRewriter re-serializing held messages it did not change (instead of their own chunks)
    # (the property above holds it only for the few random streams with no rewritten command: here, every stream)
    enc = random_stream(rnd, rewritable=False, aborts=False)
    data = bytes(enc.out)
    out, rw = relay_bytes(data, rnd, max_step=rnd.choice([3, 50, 900, 10**6]))
    assert rw.buffered == 0
    if enc.reordered:  # a held message interleaved with other chunks goes out whole, later: same messages
        assert ChunkParser().feed(out) == enc.sent
    else:
        assert out == data


def test_rewriter_passes_media_byte_for_byte():
    video = bytes(range(256)) * 40
    audio = b"a" * 300
    data = (h0(2, 0, 4, 1, 0) + struct.pack(">I", 4096)
            + h0(6, 0, len(video), 9) + video[:4096] + h0(4, 0, 300, 8) + audio[:300] + h3(6) + video[4096:8192]
            + h3(6) + video[8192:]
            + h1(4, 23, 300, 8) + audio + h2(4, 0xFFFFFF, ext=0x1000000) + audio
            + h3(4, ext=0x1000000) + audio)
    rnd = random.Random(5)
    for step in (1, 7, 129, 4097, 10**6):
        out, rw = relay_bytes(data, rnd, max_step=step)
        assert out == data and rw.chunk_size == 4096 and rw.media
    out, _ = relay_bytes(data)
    assert out is not None and ChunkParser().feed(out) == ChunkParser().feed(data)


def test_rewriter_rewrites_publish_and_re_chunks_its_csid_until_fmt0():
    pub = command_message(["publish", 5.0, None, "slot-0", "live"], csid=8, timestamp=0, stream_id=1)
    data = (h0(8, 0, len(pub.payload), 20, 1) + pub.payload
            + h2(8, 0) + b"x" * len(pub.payload)          # same length/type as the placeholder command: fmt 2
            + h3(8) + b"y" * len(pub.payload)             # fmt 3: a new message, delta 0
            + h0(8, 100, 3, 8, 1) + b"abc"                # fmt 0: passes again
            + h3(8) + b"def")
    out, _ = relay_bytes(data)
    new_pub = rewrite(pub)
    assert rtmp.command_values(new_pub)[3] == KEYS["slot-0"]
    tail = h0(8, 100, 3, 8, 1) + b"abc" + h3(8) + b"def"
    assert out == (serialize(new_pub, 128) + serialize(Message(8, 0, 20, 1, b"x" * len(pub.payload)), 128)
                   + serialize(Message(8, 0, 20, 1, b"y" * len(pub.payload)), 128) + tail)
    assert without_aborts(ChunkParser().feed(out)) == expected_after_relay(data)


def test_rewriter_extended_timestamp_on_rewritten_csid():
    ts = 0x01234567
    conn = command_message(["connect", 1.0, {"app": "slot", "tcUrl": "rtmp://127.0.0.1:1/slot", "pad": "p" * 80}],
                           csid=3)
    body = conn.payload
    assert 128 < len(body) <= 256
    data = (h0(3, 0xFFFFFF, len(body), 20, 0, ext=ts) + body[:128] + h3(3, ext=ts) + body[128:]   # rewritten
            + h1(3, 0xFFFFFF, 200, 18, ext=ts) + b"d" * 128 + h3(3, ext=ts) + b"d" * 72          # extended delta
            + h3(3, ext=ts) + b"e" * 128 + h3(3, ext=ts) + b"e" * 72)                            # fmt 3: same delta
    msgs = ChunkParser().feed(data)
    assert [m.timestamp for m in msgs] == [ts, 2 * ts, 3 * ts]
    for step in (1, 5, 200, 10**6):
        out, _ = relay_bytes(data, random.Random(step), max_step=step)
        got = ChunkParser().feed(out)
        assert got == expected_after_relay(data)
        assert got[0].timestamp == ts and rtmp.command_values(got[0])[2]["app"] == APP


def test_rewriter_abort_forwarded_only_for_a_message_in_flight():
    video = b"v" * 300
    data = (h0(6, 0, 300, 9) + video[:128]                       # in flight: its first chunk passed
            + h0(2, 0, 4, 2, 0) + struct.pack(">I", 6)           # Abort csid 6: must reach the server
            + h0(3, 0, 60, 20, 0) + b"\x02" * 60                  # a (malformed) command, held, passed unchanged
            + h0(5, 0, 200, 20, 0) + b"c" * 128                   # a held command in progress on csid 5
            + h0(2, 0, 4, 2, 0) + struct.pack(">I", 5)            # Abort csid 5: dropped
            + h0(6, 10, 3, 9) + b"new"
            + h0(5, 7, 1, 8, 0) + b"z")
    out, _ = relay_bytes(data)
    received = ChunkParser().feed(out)
    assert [(m.csid, m.type_id) for m in received if m.type_id == rtmp.ABORT] == [(2, rtmp.ABORT)]
    assert without_aborts(received) == expected_after_relay(data)


def test_rewriter_set_chunk_size_during_held_command():
    conn = command_message(["connect", 1.0, {"app": "slot", "flashVer": "x" * 200}], csid=3)
    body = conn.payload
    assert len(body) > 128
    data = (h0(3, 0, len(body), 20, 0) + body[:128]
            + h0(2, 0, 4, 1, 0) + struct.pack(">I", 1000)           # takes effect for the next chunks
            + h3(3) + body[128:]
            + h0(6, 0, 2000, 9) + b"v" * 1000 + h3(6) + b"w" * 1000)
    out, rw = relay_bytes(data)
    assert rw.chunk_size == 1000
    assert ChunkParser().feed(out) == expected_after_relay(data)


def test_rewriter_unchanged_command_passes_verbatim():
    cs = command_message(["createStream", 4.0, None], csid=3)
    data = h0(3, 0, len(cs.payload), 20, 0) + cs.payload + h2(3, 0) + cs.payload
    out, _ = relay_bytes(data)
    assert out == data


def test_rewriter_refusal_propagates():
    def refuse(m):
        raise ValueError("no")
    rw = rtmp.ChunkRewriter(refuse)
    with pytest.raises(ValueError):
        rw.feed(serialize(command_message(["connect", 1.0, {}]), 128))
