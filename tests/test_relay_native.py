"""Relay mode's native fan-out (issue 16): copy mode with RTMP(S) destinations runs no ffmpeg; the verified
publisher's messages go to one publishing connection per destination (``fanout``, ``dualingest.Fed``).

Pure parts first (which broadcasts take the native path, timestamps, codecs, the shared serialization, the kept
GOP), then real peers on loopback: ``ffmpeg -listen`` receivers (packets compared by MD5 with the published clip),
a receiver killed and brought back, one stalled behind a fault proxy, a publisher that reconnects, and nginx-rtmp's
``on_publish`` seeing the exact key. Readiness is read from events and /proc, never slept for.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from restream import dualingest, fanout, plan, rtmp
from restream import run as runner
from support import FFMPEG, bound, event_ts, free_port, make_clip, probe, receivers_done, timing, wait_for
from test_relay_mode import GONE, INGEST_KEY, Procs, Publisher, assert_delivered, published_ok

# -- which broadcasts go native (pure) -------------------------------------------------------------------------------

COPY = plan.Encoding(copy=True)


def _t(name: str, url: str = "rtmp://h/live", enc: plan.Encoding | None = None, **kw) -> runner.Target:
    return runner.Target(name, url, "k", enc=enc, **kw)


@pytest.mark.parametrize("relay_mode, enc, targets, record, slate, native", [
    (True, COPY, [_t("a"), _t("b", "rtmps://h/live")], None, False, True),
    (True, COPY, [_t("a", backup_url="rtmp://b/live", backup_mode="both")], None, False, True),
    (True, COPY, [_t("a", backup_url="rtmp://b/live", backup_mode="failover")], None, False, True),
    (True, COPY, [], None, False, True),                                          # destinations added while live
    (False, COPY, [_t("a")], None, False, False),                                 # go --copy: ffmpeg reads the input
    (True, plan.Encoding(), [_t("a")], None, False, False),                       # --transcode
    (True, COPY, [_t("a")], None, True, False),                                   # --slate
    (True, COPY, [_t("a")], "out.mkv", False, False),                             # --record
    (True, COPY, [_t("a"), _t("s", "srt://h:9000")], None, False, False),         # an SRT destination
    (True, COPY, [_t("a"), _t("v", enc=plan.Encoding(video_bitrate_k=2000))], None, False, False),  # a group
    (True, COPY, [_t("a", enc=COPY)], None, False, True),                         # its own "copy": the same
])
def test_relay_native_is_decided_by_a_pure_function(relay_mode, enc, targets, record, slate, native):
    assert runner.relay_native(relay_mode, enc, targets, record, slate) is native


def test_the_native_path_imports_nothing_it_does_not_use(tmp_path):
    """Start-up is most of a short relay's CPU (issue 16): the modules of the ffmpeg path's extras (the slate's
    switcher, the slot listeners' peer check), ffmpeg-python and filelock stay unimported by what relay runs."""
    import json
    import os
    import sys
    import textwrap

    script = textwrap.dedent("""
        import json, sys
        from restream import fanout, ingest, runtime, view
        from restream.cli import broadcast as cli
        from restream import run as runner
        from restream import plan
        assert cli.slate_options("ffmpeg", None, "10m", plan.Input("listen")) is None
        with runtime.broadcast_lock("default", "relay"):
            pass
        print(json.dumps(sorted(m for m in ("restream.sources", "restream.switcher", "restream.peercheck",
                                            "filelock", "ffmpeg", "rich") if m in sys.modules)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                         env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# -- timestamps, codecs, one serialization (pure) --------------------------------------------------------------------

def _video(ts: int, key: bool = False, config: bool = False, codec: int = 7) -> rtmp.Message:
    return rtmp.Message(6, ts, rtmp.VIDEO, 1, bytes([(0x10 if key else 0x20) | codec, 0 if config else 1]) + b"v" * 20)


def _audio(ts: int, config: bool = False) -> rtmp.Message:
    return rtmp.Message(4, ts, rtmp.AUDIO, 1, b"\xaf" + (b"\x00" if config else b"\x01") + b"a" * 8)


def test_a_session_starts_at_0_and_stays_monotonic():
    """Like ffmpeg's -c copy before: the session's first timestamp is subtracted (a publisher that reconnects
    starts a new publish at 0 again); nothing goes below 0."""
    r = fanout.Retimer()
    assert [r(_video(t)).timestamp for t in (5000, 5033, 4990, 5066)] == [0, 33, 0, 66]
    r0 = fanout.Retimer()
    m = _video(0)
    assert r0(m) is m and r0(_audio(21)).timestamp == 21  # a publisher starting at 0: messages pass untouched


def test_codec_problems_named_as_on_the_ffmpeg_path():
    assert fanout.codec_problem(_video(0, codec=7)) is None and fanout.codec_problem(_audio(0)) is None
    assert fanout.codec_problem(_video(0, codec=12)) is None  # HEVC (where accepted)
    assert fanout.codec_of(rtmp.Message(6, 0, rtmp.VIDEO, 1, b"\x90hvc1" + b"x")) == "hevc"  # enhanced RTMP
    text = fanout.codec_problem(_video(0, codec=2))
    assert text is not None and "video as flv1" in text and "--transcode" in text
    assert "audio as mp3" in (fanout.codec_problem(rtmp.Message(4, 0, rtmp.AUDIO, 1, b"\x2f\x00")) or "")


class _Transport:
    def __init__(self) -> None:
        self.size = 0

    def get_write_buffer_size(self) -> int:
        return self.size

    def is_closing(self) -> bool:
        return False


def _fake_feed(n: int):
    """A Feed over ``n`` destinations whose single legs are live and write into lists (no sockets)."""
    relay = SimpleNamespace(_assigned=[None] * n, _bytes=[0] * n, _leg_bytes=[{} for _ in range(n)],
                            _duals=[set() for _ in range(n)], _count=[0] * n, _down_since=[None] * n, feed=None)
    feed = fanout.Feed(relay)  # type: ignore[arg-type]
    written: list[list[bytes]] = []
    for slot in range(n):
        up = SimpleNamespace(both=False, backup_url=None, url="rtmp://h/live", key="k", name=f"d{slot}")
        dest = fanout.Destination(relay, slot, up, feed)  # type: ignore[arg-type]
        out: list[bytes] = []
        leg = dest.legs[0]
        leg.live, leg.need_key, leg.transport = True, False, _Transport()
        leg.writer = SimpleNamespace(write=out.append)  # type: ignore[assignment]
        feed.dests.append(dest)
        written.append(out)
    return feed, written


def test_each_message_is_serialized_once_and_the_same_bytes_go_to_every_destination():
    feed, written = _fake_feed(5)
    calls = []
    real = rtmp.serialize

    def counting(m, size, stream_id=None):
        calls.append(m.timestamp)
        return real(m, size, stream_id)

    rtmp.serialize, saved = counting, rtmp.serialize
    try:
        feed.messages([_video(0, key=True, config=True), _audio(0, config=True), _video(0, key=True),
                       _audio(21), _video(33)])
    finally:
        rtmp.serialize = saved
    assert len(calls) == 5, calls  # once per message, not once per destination
    assert all(len(w) == 1 for w in written), "one write per destination per batch"
    assert len({w[0] for w in written}) == 1, "every destination got the same bytes"
    assert len({id(w[0]) for w in written}) == 1, "the batch joined once, the same bytes object written to all"
    parsed = rtmp.ChunkParser().feed(written[0][0])  # (a leg writes at RTMP's default chunk size until it sets one)
    assert [(m.type_id, m.timestamp) for m in parsed] == [(9, 0), (8, 0), (9, 0), (8, 21), (9, 33)]


def test_a_batch_shared_by_the_legs_that_take_it_whole_and_cut_for_the_others():
    """One join per batch is shared only where a leg takes the whole batch at the same stream id and chunk size: a
    leg waiting for a keyframe starts at it, an overflowing one takes the headers only, another chunk size gets
    its own chunks."""
    feed, written = _fake_feed(4)
    waiting, full, other = (feed.dests[i].legs[0] for i in (1, 2, 3))
    waiting.need_key = True
    full.transport.size = dualingest.LEG_BUFFER + 1
    other.out.chunk_size = 16
    batch = [_audio(0), _video(0), _video(33, key=True), _audio(40), _video(66)]
    feed.messages(batch)

    def got(i):
        return [(m.type_id, m.timestamp) for m in rtmp.ChunkParser(16 if i == 3 else 128).feed(b"".join(written[i]))]

    everything = [(8, 0), (9, 0), (9, 33), (8, 40), (9, 66)]
    assert got(0) == everything and got(3) == everything
    assert written[3][0] != written[0][0], "another chunk size: other bytes"
    assert got(1) == [(9, 33), (8, 40), (9, 66)] and not waiting.need_key, "from the keyframe on"
    assert written[2] == [] and full.need_key, "overflowing: dropped until the next keyframe"
    full.transport.size = 0
    feed.messages([_audio(80, config=True), _video(100), _video(133, key=True)])
    assert [(m.type_id, m.timestamp) for m in rtmp.ChunkParser().feed(b"".join(written[2]))] == [(8, 80), (9, 133)]
    assert got(0) == everything + [(8, 80), (9, 100), (9, 133)]


def test_a_late_destination_gets_headers_then_the_kept_gop_and_a_slow_one_drops_to_a_keyframe():
    feed, written = _fake_feed(1)
    feed.messages([_video(0, key=True, config=True), _audio(0, config=True), _video(0, key=True), _video(33),
                   _video(2000, key=True), _audio(2010), _video(2033)])
    assert [m[0].timestamp for m in feed.gop] == [2000, 2010, 2033], "the GOP kept: from the latest keyframe"
    late = fanout.Destination(feed.relay, 0, feed.dests[0].upstream, feed)
    leg = late.legs[0]
    sent: list[bytes] = []
    leg.writer = SimpleNamespace(write=sent.append)  # type: ignore[assignment]
    leg.transport = _Transport()  # type: ignore[assignment]
    leg.sess.relay._ingest = ["primary"]
    leg._emit = lambda *a, **k: None  # type: ignore[method-assign]
    leg._go_live()
    got = rtmp.ChunkParser().feed(b"".join(sent))
    kinds = [(m.type_id, m.timestamp, dualingest.header_kind(m)) for m in got]
    assert kinds == [(9, 0, "video"), (8, 0, "audio"), (9, 2000, None), (8, 2010, None), (9, 2033, None)], kinds
    # a destination whose buffer overflows drops media until the next keyframe; the others are not involved
    slow = feed.dests[0].legs[0]
    slow.transport.size = dualingest.LEG_BUFFER + 1
    before = [len(w) for w in written]
    feed.messages([_video(2066)])
    assert [len(w) for w in written] == before and slow.need_key
    slow.transport.size = 0
    feed.messages([_video(2100), _video(4000, key=True)])
    last = rtmp.ChunkParser().feed(written[0][-1])
    assert [m.timestamp for m in last] == [4000], "resumed at the keyframe, not mid-GOP"


# -- real peers ------------------------------------------------------------------------------------------------------

@pytest.fixture
def procs(tmp_path: Path):
    p = Procs(tmp_path)
    yield p
    p.close()


class ClipPublisher(Publisher):
    """The bundled ffmpeg publishing a fixed clip as it is (``-re -c copy``): what the receivers get is compared
    with it packet by packet (waited for, read and killed as test_relay_mode's ``Publisher``)."""

    def __init__(self, clip: Path, port: int, key: str, log: Path) -> None:
        self.log = log
        self.started = time.monotonic()
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(
                [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "warning", "-re", "-i", str(clip), "-c", "copy",
                 "-f", "flv", f"rtmp://127.0.0.1:{port}/live/{key}"],
                stdin=subprocess.DEVNULL, stdout=f, stderr=f, start_new_session=True)


def packets(path: Path) -> dict[str, list[str]]:
    """Per stream (0 video, 1 audio), the MD5 of each packet in order (``-c copy``, ffmpeg's framemd5)."""
    out = subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-i", str(path), "-map", "0", "-c", "copy",
                          "-f", "framemd5", "-"], capture_output=True, text=True, timeout=60).stdout
    got: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        cols = [x.strip() for x in line.split(",")]
        got.setdefault(cols[0], []).append(cols[5])
    return got


def receivers(procs, add, n: int, prefix: str = "d"):
    recs = []
    for i in range(n):
        r = procs.receiver(f"{prefix}{i}", f"dest-key-{i}")
        add(f"{prefix}{i}", r.url, f"dest-key-{i}")
        recs.append(r)
    return recs


def _ts(e: dict) -> float:
    return event_ts(e)


@pytest.mark.e2e
@timing
@pytest.mark.timeout(120)
def test_five_receivers_get_every_packet_intact_without_ffmpeg(procs, add, tmp_path):
    clip = make_clip(tmp_path / "clip.flv", seconds=5)
    recs = receivers(procs, add, 5)
    relay = procs.relay()
    assert relay.native and relay.ffmpegs() == [], relay.summary()
    pub = procs.track(ClipPublisher(clip, relay.port, INGEST_KEY, tmp_path / "pub.log"))
    first_packet = time.time()
    lives = relay.wait_event(lambda e: e.get("event") == "state" and e["state"] == "live", "all five live",
                             timeout=30, count=5)
    published_ok(pub)
    relay.wait_log(GONE)
    receivers_done(*recs)
    assert relay.interrupt() == 130
    want, source = packets(clip), probe(clip)
    assert want.get("0") and want.get("1"), want.keys()
    for r in recs:
        got = packets(r.out)
        assert got.get("0") == want["0"], f"{r.out.name}: video packets differ ({len(got.get('0', []))} of " \
                                          f"{len(want['0'])})"
        assert got.get("1") == want["1"], f"{r.out.name}: audio packets differ"
        m = probe(r.out)
        assert m.decodes and m.first_packet_key and m.keyframe_times == source.keyframe_times, (m, source)
        assert r.stream_names() == [], "a receiver saw another stream name than its key"
    assert relay.ffmpegs() == [], "an ffmpeg ran on the native path"
    slowest = max(_ts(e) for e in lives) - first_packet
    bound(slowest, 3.0, "publisher start to the last of five destinations live")  # (ffmpeg's start included)
    end = relay.end()
    assert end["exit_code"] == 130 and end["sessions"] == 1
    assert all(d["bytes_sent"] > 100_000 for d in end["destinations"].values()), end
    assert end["time_s"] and end["time_s"] > 4.0, end  # the stream time, as ffmpeg's -progress said before


@pytest.mark.e2e
@timing
@pytest.mark.timeout(150)
def test_a_receiver_killed_mid_stream_leaves_the_others_alone_and_comes_back(procs, add, tmp_path):
    recs = receivers(procs, add, 3)
    relay = procs.relay(INGEST_KEY, "--status-interval", "0.5")
    pub = procs.publish(relay.port, INGEST_KEY, seconds=14)
    relay.wait_live(["d0", "d1", "d2"], timeout=30)
    relay.wait_stream_time(3, 20)
    recs[1].kill()
    killed = time.time()
    down = relay.wait_event(lambda e: e.get("event") == "state" and e["destination"] == "d1"
                            and e["state"] == "retrying", "d1 retrying", 15)[0]
    again = procs.receiver("d1", "dest-key-1", port=recs[1].port)
    back = relay.wait_event(lambda e: e.get("event") == "state" and e["destination"] == "d1"
                            and e["state"] == "live", "d1 live again", 20, count=2)[-1]
    bound(_ts(back) - max(_ts(down), killed), 4.0, "a receiver back to live again (retry every 1 s)")
    published_ok(pub)
    relay.wait_log(GONE)
    receivers_done(recs[0], recs[2], again)
    assert relay.interrupt() == 130
    for r in (recs[0], recs[2]):
        m = assert_delivered(r.out, 14.0, within=1.5, what="by a receiver beside the killed one")
        assert m.max_gap <= 0.5, f"{r.out.name}: a {m.max_gap:.2f} s hole"
    for n in ("d0", "d2"):
        assert [e["state"] for e in relay.states(n)][:3] == ["waiting", "connecting", "live"]
        assert not relay.states(n, "retrying"), relay.states(n)
    m = probe(again.out)
    assert m.decodes and m.first_packet_key, "the returning destination starts on a keyframe"
    assert m.duration > 3.0, m


@pytest.mark.e2e
@timing
@pytest.mark.timeout(150)
def test_a_stalled_receiver_is_dropped_by_stall_timeout_while_the_others_continue(procs, add, tmp_path):
    recs = [procs.receiver("d0", "dest-key-0"), procs.receiver("d1", "dest-key-1")]
    proxy = procs.proxy(recs[1].port)
    add("d0", recs[0].url, "dest-key-0")
    add("d1", f"rtmp://127.0.0.1:{proxy.port}/live", "dest-key-1")
    relay = procs.relay(INGEST_KEY, "--stall-timeout", "5", "--status-interval", "0.5")
    pub = procs.publish(relay.port, INGEST_KEY, seconds=22, video=("-c:v", "libx264", "-preset", "ultrafast",
                                                                    "-b:v", "1500k", "-x264-params", "nal-hrd=cbr"))
    relay.wait_live(["d0", "d1"], timeout=30)
    relay.wait_stream_time(3, 20)
    proxy.pause()
    paused = time.time()
    stalled = relay.wait_event(lambda e: e.get("event") == "state" and e["destination"] == "d1"
                               and e["state"] == "stalled", "d1 stalled", 20)[0]
    dropped = relay.wait_event(lambda e: e.get("event") == "state" and e["destination"] == "d1"
                               and e["state"] == "retrying", "d1 dropped", 20)[0]
    assert "stalled: took no data" in (dropped.get("error") or ""), dropped
    bound(_ts(stalled) - paused, 12.0, "the paused destination reported stalled")
    bound(_ts(dropped) - _ts(stalled), 8.0, "stalled to dropped (--stall-timeout 5)")
    proxy.resume()
    published_ok(pub)
    relay.wait_log(GONE)
    receivers_done(recs[0])
    assert relay.interrupt() == 130
    assert [e["state"] for e in relay.states("d0")][:3] == ["waiting", "connecting", "live"]
    assert not relay.states("d0", "stalled") and not relay.states("d0", "retrying"), relay.states("d0")
    m = assert_delivered(recs[0].out, 22.0, within=1.5, what="beside the stalled one")
    assert m.max_gap <= 0.5, f"a {m.max_gap:.2f} s hole beside the stalled destination"


@pytest.mark.e2e
@pytest.mark.interop
@timing
@pytest.mark.timeout(150)
def test_nginx_sees_the_exact_key_and_a_reconnecting_publisher_gets_a_clean_stream_each_time(procs, add, tmp_path):
    from nginx import NginxRtmp, require_nginx

    require_nginx(tls=False)
    weird = "ab-12?x=1&y=[2]|z:'q'"
    with NginxRtmp(tmp_path / "ngx", apps=["a1", "a2"], expected_keys={"a1": "key-a1", "a2": weird},
                   tls=False) as ngx:
        add("a1", ngx.rtmp_url("a1"), "key-a1")
        add("a2", ngx.rtmp_url("a2"), weird)
        relay = procs.relay()
        kept: dict[int, list[Path]] = {}
        for session, seconds in ((1, 3), (2, 4)):
            published_ok(procs.publish(relay.port, INGEST_KEY, seconds=seconds))
            relay.wait_session_over(session)
            wait_for(lambda: not ngx.publishing("a1") and not ngx.publishing("a2"), 10, what="nginx: sessions ended")
            kept[session] = []
            for app, key in (("a1", "key-a1"), ("a2", weird)):
                copy = tmp_path / f"{app}-session{session}.flv"
                copy.write_bytes(ngx.recording(app).read_bytes())  # nginx truncates it on the next publish
                kept[session].append(copy)
        assert relay.interrupt() == 130
        for app, key in (("a1", "key-a1"), ("a2", weird)):
            attempts = ngx.attempts(app)
            assert [(a.key, a.accepted) for a in attempts] == [(key, True)] * 2, attempts
    assert relay.ffmpegs() == []
    for session, seconds in ((1, 3.0), (2, 4.0)):
        for path in kept[session]:
            m = assert_delivered(path, seconds, what=f"in session {session}")
            assert m.first_packet_key and m.keyframe_times[0] < 0.1, f"{path.name}: starts at {m.keyframe_times[:1]}"
            assert m.max_gap <= 0.5, f"{path.name}: a {m.max_gap:.2f} s hole"
    assert weird not in relay.stdout + relay.stderr and INGEST_KEY not in relay.stdout + relay.stderr


@pytest.mark.e2e
@timing
@pytest.mark.timeout(150)
def test_backup_ingests_failover_and_both_on_the_native_path(procs, add, tmp_path):
    """``backup = "failover"``: the primary is down, the destination moves to its backup after 3 failed attempts;
    ``backup = "both"``: each ingest gets the whole stream over its own connection. No ffmpeg either way."""
    dead = free_port()  # nothing listens there
    fb = procs.receiver("fb", "key-f")
    add("f", f"rtmp://127.0.0.1:{dead}/live", "key-f", "--backup-url", fb.url)
    bp, bb = procs.receiver("bp", "key-b"), procs.receiver("bb", "key-b")
    add("b", bp.url, "key-b", "--backup-url", bb.url, "--backup-mode", "both")
    relay = procs.relay()
    assert relay.native, relay.summary()
    pub = procs.publish(relay.port, INGEST_KEY, seconds=10)
    switched = relay.wait_event(lambda e: e.get("event") == "ingest" and e["destination"] == "f", "f switched", 20)[0]
    assert switched["ingest"] == "backup" and "3 failed attempts" in switched["reason"], switched
    live = relay.wait_event(lambda e: e.get("event") == "state" and e["destination"] == "f"
                            and e["state"] == "live", "f live", 20)[0]
    assert live.get("ingest") == "backup", live
    relay.wait_event(lambda e: e.get("event") == "ingest_state" and e["destination"] == "b"
                     and e["ingest"] == "backup" and e["state"] == "live", "b's backup ingest live", 20)
    published_ok(pub)
    relay.wait_log(GONE)
    receivers_done(fb, bp, bb)
    assert relay.interrupt() == 130
    assert relay.ffmpegs() == []
    m = assert_delivered(fb.out, 10.0 - (event_ts(live) - event_ts(switched)) - 3.0, within=2.5,
                         what="at the backup ingest after the switch")
    assert m.first_packet_key
    for r in (bp, bb):
        assert_delivered(r.out, 10.0, within=1.0, what="at each ingest of a 'both' destination")
    assert packets(bp.out) == packets(bb.out), "the two ingests got different packets"
    end = relay.end()
    assert set(end["destinations"]["b"]["ingests"]) == {"primary", "backup"}, end["destinations"]["b"]


@pytest.mark.e2e
@timing
@pytest.mark.timeout(150)
def test_live_changes_while_relaying_natively(procs, add, cli, tmp_path):
    """`restream add` while a publisher is live: the new destination joins the session at once and starts on a
    keyframe; `restream disable`: that one ends its stream in order (its receiver's file is complete) and the
    others lose nothing."""
    recs = receivers(procs, add, 2)
    relay = procs.relay()
    pub = procs.publish(relay.port, INGEST_KEY, seconds=12)
    relay.wait_live(["d0", "d1"], timeout=30)
    new = procs.receiver("n0", "key-new")
    added_at = time.time()
    assert cli("add", "n0", "--url", new.url, "--key", "key-new")[0] == 0
    live = relay.wait_event(lambda e: e.get("event") == "state" and e["destination"] == "n0"
                            and e["state"] == "live", "n0 live", 10)[0]
    bound(event_ts(live) - added_at, 2.5, "an added destination live (profile polled every 0.1 s)")
    disabled_at = time.time()
    assert cli("disable", "d1")[0] == 0
    relay.wait_event(lambda e: e.get("event") == "state" and e["destination"] == "d1"
                     and e["state"] == "removed", "d1 removed", 10)
    recs[1].proc.wait(10)  # its receiver ended: the stream was ended in order
    bound(time.time() - disabled_at, 5.0, "a disabled destination's receiver done")
    published_ok(pub)
    relay.wait_log(GONE)
    receivers_done(recs[0], new)
    assert relay.interrupt() == 130
    assert relay.ffmpegs() == []
    assert_delivered(recs[0].out, 12.0, within=1.0, what="beside the live changes")
    m = probe(new.out)
    assert m.decodes and m.first_packet_key and m.duration > 4.0, m
    assert probe(recs[1].out).decodes, "the disabled destination's file does not decode"


def test_an_aggregate_message_is_passed_on_as_its_parts():
    """An aggregate (type 22: FLV tags back to back) is split, so its keyframe starts a destination as any other."""
    from restream import ingest

    def tag(t: int, ts: int, body: bytes) -> bytes:
        return ingest.flv_tag(t, ts, body)

    agg = rtmp.Message(6, 1000, 22, 1, tag(9, 500, _video(0, key=True).payload) + tag(8, 521, _audio(0).payload))
    assert [(m.type_id, m.timestamp) for m in ingest.aggregate_parts(agg)] == [(9, 1000), (8, 1021)]
    feed, written = _fake_feed(1)
    feed.dests[0].legs[0].need_key = True
    feed.messages([agg])
    got = rtmp.ChunkParser().feed(b"".join(written[0]))
    assert [(m.type_id, m.timestamp) for m in got] == [(9, 0), (8, 21)], got


@pytest.mark.e2e
@timing
@pytest.mark.timeout(90)
def test_rtmps_destinations_verified_on_the_native_path(procs, add):
    """RTMPS from the native fan-out: the certificate is verified (``ca_file``); one for another name is refused
    and that destination fails alone."""
    from support import CERT, TlsFront

    good, bad = procs.receiver("good", "key-good"), procs.receiver("bad", "key-bad")
    front_ok = procs.track(TlsFront(good.port, "127.0.0.1").start())
    front_other = procs.track(TlsFront(bad.port, "127.0.0.2").start())  # the certificate names 127.0.0.1 only
    add("good", f"rtmps://127.0.0.1:{front_ok.port}/live", "key-good", "--ca-file", str(CERT))
    add("bad", f"rtmps://127.0.0.2:{front_other.port}/live", "key-bad", "--ca-file", str(CERT))
    relay = procs.relay(INGEST_KEY, "--once")
    assert relay.native
    pub = procs.publish(relay.port, INGEST_KEY, seconds=4)
    relay.wait_live(["good"], timeout=30)
    refused = relay.wait_event(lambda e: e.get("event") == "state" and e["destination"] == "bad"
                               and e["state"] == "retrying", "bad refused", 15)[0]
    assert "certificate verify failed" in refused["error"] and "127.0.0.2" in refused["error"], refused
    published_ok(pub)
    assert relay.wait(30) == 1, relay.stderr  # one destination failed
    receivers_done(good, timeout=5)
    end = relay.end()
    assert end["destinations"]["bad"]["state"] == "failed" and end["destinations"]["good"]["state"] == "stopped"
    assert front_other.handshakes == 0 and front_ok.handshakes >= 1
    assert_delivered(good.out, 4.0, within=1.0, what="over RTMPS")
    assert relay.ffmpegs() == []
