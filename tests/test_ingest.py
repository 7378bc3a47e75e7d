"""The ingest gate's pure parts: FLV tags from RTMP messages, the server's replies, the handshake."""

from __future__ import annotations

import struct

import pytest

from restream import ingest, rtmp


def test_flv_header_flags_come_from_metadata_or_the_first_packet():
    def meta(**fields):
        return rtmp.Message(4, 0, rtmp.DATA_AMF0, 1, rtmp.amf0_encode("@setDataFrame", "onMetaData",
                                                                     rtmp.ECMAArray(fields)))

    assert ingest.flv_header(meta(videocodecid=7.0, audiocodecid=10.0)) == b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00"
    assert ingest.flv_header(meta(audiocodecid=10.0))[4] == 0x04
    assert ingest.flv_header(meta(width=320.0))[4] == 0
    assert ingest.flv_header(rtmp.Message(6, 0, rtmp.VIDEO, 1, b"\x17"))[4] == 0x01
    assert ingest.flv_header(rtmp.Message(4, 0, rtmp.AUDIO, 1, b"\xaf"))[4] == 0x04


def test_flv_tag_layout():
    tag = ingest.flv_tag(9, 0x12345678, b"abc")
    # type, 24-bit size, 24-bit timestamp, its high byte, stream id 0, payload, PreviousTagSize (11 + size)
    assert tag == b"\x09\x00\x00\x03" + b"\x34\x56\x78\x12" + b"\x00\x00\x00" + b"abc" + struct.pack(">I", 14)


def test_audio_and_video_pass_as_they_are():
    assert ingest.flv_tags(rtmp.Message(6, 40, rtmp.VIDEO, 1, b"\x17\x01v")) == ingest.flv_tag(9, 40, b"\x17\x01v")
    assert ingest.flv_tags(rtmp.Message(4, 41, rtmp.AUDIO, 1, b"\xaf\x01a")) == ingest.flv_tag(8, 41, b"\xaf\x01a")
    assert ingest.flv_tags(rtmp.Message(4, 41, rtmp.AUDIO, 1, b"")) == b""


def test_set_data_frame_is_dropped_from_metadata():
    meta = rtmp.amf0_encode("onMetaData", rtmp.ECMAArray(width=320.0, height=180.0))
    msg = rtmp.Message(4, 0, rtmp.DATA_AMF0, 1, rtmp.amf0_encode("@setDataFrame") + meta)
    assert ingest.flv_tags(msg) == ingest.flv_tag(18, 0, meta)
    plain = rtmp.Message(4, 5, rtmp.DATA_AMF0, 1, meta)  # already without it: unchanged
    assert ingest.flv_tags(plain) == ingest.flv_tag(18, 5, meta)
    amf3 = rtmp.Message(4, 5, rtmp.DATA_AMF3, 1, b"\x00" + meta)
    assert ingest.flv_tags(amf3) == ingest.flv_tag(18, 5, meta)


def test_aggregate_message_is_retimed_from_the_message_timestamp():
    sub = ingest.flv_tag(9, 1000, b"v1") + ingest.flv_tag(8, 1020, b"a1")
    msg = rtmp.Message(6, 5000, 22, 1, sub)
    assert ingest.flv_tags(msg) == ingest.flv_tag(9, 5000, b"v1") + ingest.flv_tag(8, 5020, b"a1")


def test_commands_and_control_messages_are_not_media():
    cmd = rtmp.command_message(["FCUnpublish", 5, None, "key"])
    assert ingest.flv_tags(cmd) == b""
    assert ingest.flv_tags(rtmp.set_chunk_size_message(4096)) == b""


def _names(msgs):
    return [(m.type_id, rtmp.command_name(m)) for m in msgs]


def test_replies_follow_what_publishers_wait_for():
    connect = rtmp.command_message(["connect", 1, {"app": "live", "tcUrl": "rtmp://127.0.0.1/live"}])
    out = ingest.replies(connect)
    assert _names(out) == [(rtmp.WINDOW_ACK_SIZE, None), (rtmp.SET_PEER_BANDWIDTH, None),
                           (rtmp.SET_CHUNK_SIZE, None), (rtmp.COMMAND_AMF0, "_result")]
    result = rtmp.command_values(out[-1])
    assert result[1] == 1 and result[3]["code"] == "NetConnection.Connect.Success"

    created = rtmp.command_values(ingest.replies(rtmp.command_message(["createStream", 4, None]))[0])
    assert created[:2] == ["_result", 4] and created[3] == 1

    publish = rtmp.command_message(["publish", 5, None, "the-key", "live"], stream_id=1)
    out = ingest.replies(publish)
    assert out[0].type_id == rtmp.USER_CONTROL and out[0].payload == b"\x00\x00\x00\x00\x00\x01"  # Stream Begin 1
    status = rtmp.command_values(out[1])
    assert status[0] == "onStatus" and status[3]["code"] == "NetStream.Publish.Start" and out[1].stream_id == 1
    assert "the-key" not in repr(out), "the key is never echoed"
    assert ingest.replies(rtmp.Message(4, 0, rtmp.VIDEO, 1, b"x")) == []


def test_acknowledgement_wraps_at_32_bits():
    assert ingest.acknowledgement(2**32 + 7).payload == struct.pack(">I", 7)


def test_server_handshake_echoes_c1_and_refuses_what_is_not_rtmp():
    c1 = bytes(range(256)) * 6
    out = ingest.server_handshake(b"\x03" + c1, now_ms=1234)
    assert len(out) == 1 + 2 * rtmp.HANDSHAKE_SIZE and out[0] == 3
    assert out[1:9] == struct.pack(">II", 1234, 0)  # plain handshake: zeros after the time
    assert out[1 + rtmp.HANDSHAKE_SIZE:] == c1
    with pytest.raises(ingest._Reject):
        ingest.server_handshake(b"GET / HTTP/1.1\r\n".ljust(1 + rtmp.HANDSHAKE_SIZE, b" "))


@pytest.mark.parametrize("msg, expected", [
    (rtmp.command_message(["connect", 1, {"app": "live"}]), (True, None, False)),
    (rtmp.command_message(["connect", 1, {"app": "other"}]), (False, "wrong application name in the server URL", False)),
    (rtmp.command_message(["releaseStream", 2, None, "K"]), (True, None, False)),
    (rtmp.command_message(["FCPublish", 3, None, "nope"]), (False, "wrong stream key", False)),
    (rtmp.command_message(["publish", 5, None, "K", "live"]), (True, None, True)),
])
def test_check_command(msg, expected):
    assert ingest.check_command(msg, "live", "K") == expected


# -- the end of a session, on a real socket -------------------------------------------------------------------------

def test_a_publisher_is_never_cut_between_its_fcunpublish_and_its_deletestream():
    """ffmpeg ends a publish with FCUnpublish, then deleteStream, then closes. Under load the two commands arrive
    apart: the gate must wait for the publisher to close (a reset before its deleteStream fails its last write,
    and the publisher exits with an error: --once's test saw exit 224)."""
    import asyncio
    import os
    import socket

    from restream import ingest, rtmp

    async def main() -> tuple[bool, list[str]]:
        events: list[str] = []

        class Sink:
            def write(self, data): pass
            async def drain(self): pass
            def is_closing(self): return False
            def close(self): pass

        async def sink():
            return Sink()

        gate = ingest.IngestGate("127.0.0.1", 0, "live", "the-key-12345", lambda e: events.append(e.kind), sink)
        gate._server = await asyncio.start_server(gate._accept, "127.0.0.1", 0)
        port = gate._server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x03" + bytes(8) + os.urandom(rtmp.HANDSHAKE_SIZE - 8))
        s0s1s2 = await reader.readexactly(1 + 2 * rtmp.HANDSHAKE_SIZE)
        writer.write(s0s1s2[1:1 + rtmp.HANDSHAKE_SIZE])  # C2 echoes S1
        out = rtmp.ChunkWriter()
        for values in (["connect", 1, {"app": "live"}], ["createStream", 2, None]):
            writer.write(out.write(rtmp.command_message(values)))
        writer.write(out.write(rtmp.command_message(["publish", 3, None, "the-key-12345", "live"], stream_id=1)))
        await writer.drain()
        while "publishing" not in events:
            await asyncio.sleep(0.01)
        writer.write(out.write(rtmp.command_message(["FCUnpublish", 4, None, "the-key-12345"])))
        await writer.drain()
        await asyncio.sleep(0.3)  # the gap under load
        cut = False
        try:
            writer.write(out.write(rtmp.command_message(["deleteStream", 5, None, 1.0], stream_id=0)))
            await writer.drain()
            await asyncio.sleep(0.1)
            # ffmpeg's close writes once more: a reset (the gate gone) shows on that write
            writer.write(out.write(ingest.acknowledgement(1000)))
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.write(out.write(ingest.acknowledgement(2000)))
            await writer.drain()
        except ConnectionError:
            cut = True
        writer.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                              b"\x00" * 8)
        writer.close()
        await gate.close()
        return cut, events

    cut, events = asyncio.run(main())
    assert not cut, "the gate reset the publisher before its deleteStream"
    assert events[:1] == ["publishing"]


def test_the_gate_reads_a_publisher_in_batches_of_its_own_length():
    """The pacer sets the socket's low mark to a batch of the measured rate: the gate's batch (PACE_BATCH_S), the
    slot relay's default otherwise; a low mark above LOWAT_MAX is capped, and release goes back to every byte."""
    from types import SimpleNamespace

    from restream import pacing

    class Sock:
        def __init__(self) -> None:
            self.set: list[int] = []

        def setsockopt(self, level, opt, value) -> None:
            self.set.append(value)

    def paced(batch_s=None):
        sock = Sock()
        transport = SimpleNamespace(get_extra_info=lambda name: sock if name == "socket" else None)
        p = pacing.Pacer(transport) if batch_s is None else pacing.Pacer(transport, batch_s)
        p.tick(100.0)
        p.rx = 400_000  # 400 kB in one second
        p.tick(101.0)
        return p, sock

    gate, sock = paced(ingest.PACE_BATCH_S)
    assert sock.set == [int(400_000 * ingest.PACE_BATCH_S)] == [gate.lowat]
    assert ingest.PACE_BATCH_S < ingest.PACE_WAIT_S < ingest.READ_TIMEOUT_S
    relay, sock = paced()
    assert sock.set == [int(400_000 * pacing.BATCH_S)]
    big, sock = paced(1.0)
    assert sock.set == [pacing.LOWAT_MAX]
    big.release()
    assert sock.set[-1] == 1 and big.lowat == 1
