"""Pure: the ffmpeg argv (golden lists), tee-spec escaping on fixed strings (checked against a model of ffmpeg's
own two tokenizer levels), value parsing, the slot layout, exit codes, the progress/log parsers, key redaction."""

from __future__ import annotations

from urllib.parse import unquote

import pytest

from conftest import CANARY_KEY, assert_no_canary
from restream import events as ev
from restream import plan, run
from restream.errors import UsageError
from restream.plan import Encoding, Input

SLOT = plan.relay_slave("slot-0", "rtmp://127.0.0.1:5000/slot/slot-0")
SLOT_SPEC = r"[f=flv:onfail=ignore:rw_timeout=5000000]rtmp\:\/\/127\.0\.0\.1\:5000\/slot\/slot\-0"
CHEAP = Encoding(video_bitrate_k=300, audio_bitrate_k=64)

HEAD = ["ffmpeg", "-hide_banner", "-loglevel", "level+info", "-progress", "pipe:1", "-stats_period", "0.5", "-nostats"]
FIFO = ("attempt_recovery=1:recover_any_error=1:recovery_wait_time=1:drop_pkts_on_overflow=1:"
        "restart_with_keyframe=1:queue_size=600")
TEE = ["-flags", "+global_header", "-f", "tee", "-use_fifo", "1", "-fifo_options", FIFO]
X264_300 = ["-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high", "-pix_fmt", "yuv420p",
            "-b:v", "300k", "-maxrate", "300k", "-bufsize", "600k", "-sc_threshold", "0"]
FORCED = ["-force_key_frames", "expr:gte(t,n_forced*2)"]
AAC_64 = ["-c:a", "aac", "-b:a", "64k", "-ar", "48000", "-ac", "2"]
MAP_AV = ["-map", "0:v:0", "-map", "0:a:0?"]
TONE = ["-re", "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000:beep_factor=4"]
REC_MP4_SPEC = (r"[f=mp4:onfail=ignore:use_fifo=0:movflags=\\\+frag\\\_keyframe\\\+empty\\\_moov\\\+default\\\_base\\\_moof]"
                r"my\ \'show\'\.mp4")

GOLDEN = {
    "test": (Input("test"), CHEAP, None, (SLOT,), [
        *HEAD, "-re", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", *TONE, "-map", "0:v:0", "-map", "1:a:0",
        *X264_300, "-g", "60", "-keyint_min", "60", *FORCED, *AAC_64, *TEE, SLOT_SPEC]),
    "test+size+fps+duration": (Input("test"), Encoding(video_bitrate_k=300, audio_bitrate_k=64, size=(320, 180),
                                                       fps=15), 10, (SLOT,), [
        *HEAD, "-re", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=15", *TONE, "-map", "0:v:0", "-map", "1:a:0",
        *X264_300, "-g", "30", "-keyint_min", "30", *FORCED, *AAC_64, "-t", "10", *TEE, SLOT_SPEC]),
    "file": (Input("file", "in.mp4", fps=25.0), CHEAP, None, (SLOT,), [
        *HEAD, "-re", "-i", "in.mp4", *MAP_AV, *X264_300, "-g", "50", "-keyint_min", "50", *FORCED, *AAC_64, *TEE,
        SLOT_SPEC]),
    "file+loop, no audio": (Input("file", "in.mp4", loop=True, fps=30.0, has_audio=False), CHEAP, None, (SLOT,), [
        *HEAD, "-re", "-stream_loop", "-1", "-i", "in.mp4", "-f", "lavfi", "-i",
        "anullsrc=channel_layout=stereo:sample_rate=48000", "-map", "0:v:0", "-map", "1:a:0", "-shortest",
        *X264_300, "-g", "60",
        "-keyint_min", "60", *FORCED, *AAC_64, *TEE, SLOT_SPEC]),
    "file+copy+duration": (Input("file", "in.mp4", fps=25.0), Encoding(copy=True), 90, (SLOT,), [
        *HEAD, "-re", "-i", "in.mp4", *MAP_AV, "-c", "copy", "-tag:v", "7", "-tag:a", "10", "-t", "90", *TEE,
        SLOT_SPEC]),
    "flv file+copy (tags kept)": (Input("file", "in.flv"), Encoding(copy=True), None, (SLOT,), [
        *HEAD, "-re", "-i", "in.flv", *MAP_AV, "-c", "copy", *TEE, SLOT_SPEC]),
    "hevc file+copy (video tag kept)": (Input("file", "in.mp4", video_codec="hevc", audio_codec="aac"),
                                        Encoding(copy=True), None, (SLOT,), [
        *HEAD, "-re", "-i", "in.mp4", *MAP_AV, "-c", "copy", "-tag:a", "10", *TEE, SLOT_SPEC]),
    "relay listen+copy": (Input("listen"), Encoding(copy=True), None, (SLOT,), [
        *HEAD, "-fpsprobesize", "0", "-f", "flv", "-i", "pipe:0", *MAP_AV,
        "-c", "copy", *TEE, SLOT_SPEC]),
    "file+size+fps+record mp4": (Input("file", "in.mp4", fps=25.0),
                                 Encoding(video_bitrate_k=300, audio_bitrate_k=64, size=(640, 360), fps=29.97), 1.5,
                                 (SLOT, plan.record_slave("my 'show'.mp4")), [
        *HEAD, "-re", "-i", "in.mp4", *MAP_AV, "-vf", "scale=640:360,fps=29.97", *X264_300, "-g", "60",
        "-keyint_min", "60", *FORCED, *AAC_64, "-t", "1.5", *TEE, SLOT_SPEC + "|" + REC_MP4_SPEC]),
    "url rtmp": (Input("url", "rtmp://127.0.0.1/live/cam"), CHEAP, None, (SLOT,), [
        *HEAD, "-rw_timeout", "10000000", "-i", "rtmp://127.0.0.1/live/cam", *MAP_AV, *X264_300, *FORCED, *AAC_64,
        *TEE, SLOT_SPEC]),
    "url srt+copy": (Input("url", "srt://127.0.0.1:9000?mode=caller"), Encoding(copy=True), None, (SLOT,), [
        *HEAD, "-i", "srt://127.0.0.1:9000?mode=caller", *MAP_AV, "-c", "copy", "-tag:v", "7", "-tag:a", "10",
        *TEE, SLOT_SPEC]),
    "url http (HLS)": (Input("url", "https://example.com/live/index.m3u8"), CHEAP, None, (SLOT,), [
        *HEAD, "-rw_timeout", "10000000", "-i", "https://example.com/live/index.m3u8", *MAP_AV, *X264_300, *FORCED,
        *AAC_64, *TEE, SLOT_SPEC]),
    "device": (Input("device", "v4l2:/dev/video0"), CHEAP, None, (SLOT,), [
        *HEAD, "-f", "v4l2", "-i", "/dev/video0", *MAP_AV, *X264_300, *FORCED, *AAC_64, *TEE, SLOT_SPEC]),
    "device+audio+fps": (Input("device", "v4l2:/dev/video0", audio="pulse:default"),
                         Encoding(video_bitrate_k=300, audio_bitrate_k=64, fps=30), None, (SLOT,), [
        *HEAD, "-f", "v4l2", "-i", "/dev/video0", "-f", "pulse", "-i", "default", "-map", "0:v:0", "-map", "1:a:0",
        "-vf", "fps=30", *X264_300, "-g", "60", "-keyint_min", "60", *FORCED, *AAC_64, *TEE, SLOT_SPEC]),
    "stdin": (Input("stdin", "-"), CHEAP, None, (SLOT,), [
        *HEAD, "-i", "pipe:0", *MAP_AV, *X264_300, *FORCED, *AAC_64, *TEE, SLOT_SPEC]),
}


@pytest.mark.parametrize("case", list(GOLDEN))
def test_golden_argv(case):
    inp, enc, duration, slaves, expected = GOLDEN[case]
    p = plan.build("ffmpeg", inp, enc, slaves, duration)
    assert list(p.argv) == expected
    assert p.slaves == slaves


def test_test_pattern_with_font_draws_a_clock():
    p = plan.build("ffmpeg", Input("test"), Encoding(size=(320, 180), fps=15), (SLOT,), font="/fonts/D.ttf")
    assert p.argv[p.argv.index("-i") + 1] == (
        "testsrc2=size=320x180:rate=15,drawtext=fontfile=/fonts/D.ttf:text='restream test  %{localtime}'"
        ":x=(w-tw)/2:y=h-th-12:fontsize=12:fontcolor=white:box=1:boxcolor=black@0.6:boxborderw=4")


def test_build_needs_a_slave_and_shell_quotes():
    with pytest.raises(UsageError):
        plan.build("ffmpeg", Input("test"), CHEAP, ())
    p = plan.build("/opt/my ffmpeg", Input("file", "a b.mp4", fps=25.0), Encoding(copy=True), (SLOT,))
    assert p.shell().startswith("'/opt/my ffmpeg' -hide_banner") and "-i 'a b.mp4'" in p.shell()


# -- tee escaping, against a model of ffmpeg's tokenizers -------------------------------------------------------------

def av_get_token(s: str, i: int, term: str) -> tuple[str, int]:
    """libavutil/avstring.c av_get_token: one level of ``\\`` and ``'…'`` removed, outer whitespace trimmed."""
    ws = " \n\t\r"
    while i < len(s) and s[i] in ws:
        i += 1
    out: list[str] = []
    end = 0
    while i < len(s) and s[i] not in term:
        c = s[i]
        i += 1
        if c == "\\" and i < len(s):
            out.append(s[i])
            i += 1
            end = len(out)
        elif c == "'":
            while i < len(s) and s[i] != "'":
                out.append(s[i])
                i += 1
            if i < len(s):
                i += 1
                end = len(out)
        else:
            out.append(c)
    while len(out) > end and out[-1] in ws:
        out.pop()
    return "".join(out), i


def parse_tee(spec: str) -> list[tuple[dict[str, str], str]]:
    """libavformat/tee.c: split on ``|`` (first level), then ``[k=v:…]`` options (second level), URL verbatim."""
    slaves, i = [], 0
    while i < len(spec):
        slave, i = av_get_token(spec, i, "|")
        i += 1
        opts: dict[str, str] = {}
        if slave.startswith("["):
            j = 1
            while slave[j] != "]":
                k = j
                while slave[j] != "=":
                    j += 1
                key = slave[k:j]
                opts[key], j = av_get_token(slave, j + 1, ":]")
                if slave[j] == ":":
                    j += 1
            slave = slave[j + 1:]
        slaves.append((opts, slave))
    return slaves


NASTY = "k?&=:|[]\\' x"  # every character the tee spec treats specially, and a space


def test_srt_slave_spec_exact_and_round_trips():
    url = "srt://127.0.0.1:9000?latency=200&mode=caller"
    s = plan.srt_slave("srt", url, NASTY)
    spec = plan.slave_spec(s)
    assert spec == (r"[f=mpegts:onfail=ignore]srt\:\/\/127\.0\.0\.1\:9000\?latency\=200\&mode\=caller\&streamid\="
                    r"k\%3F\%26\%3D\%3A\%7C\%5B\%5D\%5C\%27\%20x")
    [(opts, got)] = parse_tee(spec)
    assert opts == {"f": "mpegts", "onfail": "ignore"}
    assert got.startswith(url + "&streamid=") and unquote(got.rsplit("streamid=", 1)[1]) == NASTY
    # no key: the URL as given; a URL without a query gets "?streamid="
    assert plan.srt_slave("s", "srt://h:1", None).url == "srt://h:1"
    assert plan.srt_slave("s", "srt://h:1", "a b").url == "srt://h:1?streamid=a%20b"


def test_slave_option_values_are_escaped_twice():
    s = plan.Slave("x", "rtmp://127.0.0.1:1/slot/slot-0", "flv", (("rtmp_playpath", NASTY),))
    spec = plan.slave_spec(s)
    assert spec == (r"[f=flv:onfail=ignore:rtmp_playpath=k\\\?\\\&\\\=\\\:\\\|\\\[\\\]\\\\\\\'\\\ x]"
                    r"rtmp\:\/\/127\.0\.0\.1\:1\/slot\/slot\-0")
    assert parse_tee(spec) == [({"f": "flv", "onfail": "ignore", "rtmp_playpath": NASTY}, s.url)]


@pytest.mark.parametrize("path", ["/tmp/my 'show' \"final\" [1].mkv", " lead|pipe:colon\\back.ts", "x'.flv"])
def test_record_path_with_spaces_and_quotes_round_trips(path):
    target = plan.tee_target((SLOT, plan.record_slave(path)))
    parsed = parse_tee(target)
    assert [u for _, u in parsed] == [SLOT.url, path]
    assert parsed[1][0]["f"] == plan.RECORD_FORMATS["." + path.rsplit(".", 1)[1]]


def test_record_spec_exact():
    assert plan.slave_spec(plan.record_slave("/tmp/my 'show' \"final\".mkv")) == (
        r"[f=matroska:onfail=ignore:use_fifo=0]\/tmp\/my\ \'show\'\ \"final\"\.mkv")
    assert plan.slave_spec(plan.record_slave("my 'show'.mp4")) == REC_MP4_SPEC
    assert parse_tee(REC_MP4_SPEC)[0][0]["movflags"] == "+frag_keyframe+empty_moov+default_base_moof"


@pytest.mark.parametrize("path", ["out.avi", "out", "out.MKV.txt"])
def test_record_rejects_unknown_types(path):
    with pytest.raises(UsageError, match="--record"):
        plan.record_slave(path)


def test_record_type_is_case_insensitive():
    assert plan.record_slave("OUT.MKV").format == "matroska"


# -- user values --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, kbps", [("4500k", 4500), ("4.5M", 4500), ("4500", 4500), ("6Mbps", 6000),
                                        (" 300k ", 300), ("160kbit/s", 160), ("16k", 16), ("100M", 100_000)])
def test_parse_bitrate(text, kbps):
    assert plan.parse_bitrate(text, "video bitrate") == kbps


@pytest.mark.parametrize("text", ["", "abc", "-5k", "15k", "101M", "4500kk", "4,5M", "k"])
def test_parse_bitrate_invalid(text):
    with pytest.raises(UsageError, match="video bitrate"):
        plan.parse_bitrate(text, "video bitrate")


@pytest.mark.parametrize("text, size", [("1280x720", (1280, 720)), ("640X360", (640, 360)), ("320x180", (320, 180))])
def test_parse_size(text, size):
    assert plan.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "1281x720", "1280x721", "1280*720", "1x1", "1280x", "wide", "-640x360"])
def test_parse_size_invalid(text):
    with pytest.raises(UsageError, match="size"):
        plan.parse_size(text)


@pytest.mark.parametrize("text, fps", [("30", 30.0), ("29.97", 29.97), ("1", 1.0), ("240", 240.0)])
def test_parse_fps(text, fps):
    assert plan.parse_fps(text) == fps


@pytest.mark.parametrize("text", ["", "0", "abc", "241", "nan", "inf", "-30"])
def test_parse_fps_invalid(text):
    with pytest.raises(UsageError, match="frame rate"):
        plan.parse_fps(text)


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("45", 45),
                                           ("1.5m", 90), ("1m30", 90), (" 10s ", 10)])
def test_parse_duration(text, seconds):
    assert plan.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "5x", "-5s", "1 h", "h", "1w", "s30"])
def test_parse_duration_invalid(text):
    with pytest.raises(UsageError, match="duration"):
        plan.parse_duration(text)


@pytest.mark.parametrize("args, expected", [
    ((None, True, False, None), Input("test")),
    (("show.mp4", False, False, None), Input("file", "show.mp4")),
    (("show.mp4", False, True, None), Input("file", "show.mp4", loop=True)),
    (("-", False, False, None), Input("stdin", "-")),
    (("v4l2:/dev/video0", False, False, None), Input("device", "v4l2:/dev/video0")),
    (("v4l2:/dev/video0", False, False, "alsa:hw:1,0"), Input("device", "v4l2:/dev/video0", audio="alsa:hw:1,0")),
    (("rtmp://h/live/k", False, False, None), Input("url", "rtmp://h/live/k")),
    (("RTMPS://h/live/k", False, False, None), Input("url", "RTMPS://h/live/k")),
    (("srt://h:9000", False, False, None), Input("url", "srt://h:9000")),
    (("https://h/x.m3u8", False, False, None), Input("url", "https://h/x.m3u8")),
    (("my video: part 1.mp4", False, False, None), Input("file", "my video: part 1.mp4")),
])
def test_parse_input(args, expected):
    assert plan.parse_input(*args) == expected


@pytest.mark.parametrize("args, message", [
    ((None, False, False, None), "no input"),
    (("show.mp4", True, False, None), "not both"),
    (("ftp://h/x.mp4", False, False, None), "unsupported input URL scheme"),
    (("rtmp://h/live/k", False, True, None), "--loop"),
    (("-", False, True, None), "--loop"),
    (("show.mp4", False, False, "pulse:default"), "--audio"),
    (("v4l2:/dev/video0", False, False, "oss:dsp"), "--audio"),
    (("v4l2:/dev/video0", False, False, "pulse:"), "--audio"),
])
def test_parse_input_invalid(args, message):
    with pytest.raises(UsageError, match=message):
        plan.parse_input(*args)


# -- slot layout, exit codes ------------------------------------------------------------------------------------------

def slot_url(i: int) -> str:
    return f"rtmp://127.0.0.1:{7000 + i}/slot/slot-{i}"


def test_layout_relay_slots_for_rtmp_direct_srt_and_record():
    targets = [run.Target("yt", "rtmp://a.example/live2", "k1"), run.Target("srt1", "srt://s.example:9000", "k?2"),
               run.Target("tw", "rtmps://b.example:443/app", "k3")]
    slaves, slot_of, slots = run.layout(targets, slot_url, "rec.ts")
    assert slots == 4  # five minus one SRT destination: free relay slots stay for destinations added while live
    assert slot_of == {"yt": 0, "tw": 1}
    assert [(s.name, s.url, s.format) for s in slaves] == [
        ("slot-0", slot_url(0), "flv"), ("slot-1", slot_url(1), "flv"), ("slot-2", slot_url(2), "flv"),
        ("slot-3", slot_url(3), "flv"), ("srt1", "srt://s.example:9000?streamid=k%3F2", "mpegts"),
        ("record", "rec.ts", "mpegts")]
    argv = plan.build("ffmpeg", Input("test"), CHEAP, slaves).argv
    assert not any(k in arg for arg in argv for k in ("k1", "k3"))  # relay keys never reach the argv


def test_layout_without_srt_or_record():
    slaves, slot_of, slots = run.layout([run.Target("a", "rtmp://h/live", "k")], slot_url)
    assert (slots, slot_of, [s.name for s in slaves]) == (5, {"a": 0}, [f"slot-{i}" for i in range(5)])


def test_target_upstream_and_key_in_url():
    assert run.Target("a", "rtmp://h/app", "k").upstream().key == "k"
    up = run.Target("b", "rtmp://h:1935/app/streamname", None).upstream()
    assert (up.url, up.key) == ("rtmp://h:1935/app", "streamname")


@pytest.mark.parametrize("delivered, code", [({}, 5), ({"a": True}, 0), ({"a": True, "b": True}, 0),
                                             ({"a": True, "b": False}, 1), ({"a": False, "b": False}, 5)])
def test_exit_code(delivered, code):
    from restream import lifecycle

    life = lifecycle.initial(list(delivered))
    life = lifecycle.step(life, lifecycle.Live("a")) if delivered.get("a") else life
    life = lifecycle.step(life, lifecycle.Live("b")) if delivered.get("b") else life
    assert lifecycle.exit_code(lifecycle.step(life, lifecycle.StopBegan("input ended"))) == code


@pytest.mark.parametrize("key", [CANARY_KEY, "Zq"])
def test_target_repr_redacts_the_key(key):
    t = run.Target("yt", "rtmp://a.example/live2", key, "/ca.pem")
    for text in (repr(t), str(t), repr([t]), repr({"t": t}), f"{t}", repr(t.upstream())):
        assert key not in text and "••••" in text
        assert_no_canary(text)


# -- progress and log parsers (recorded from the bundled ffmpeg 9.0.2) ------------------------------------------------

PROGRESS = """\
frame=0
fps=0.00
stream_0_0_q=0.0
bitrate=N/A
total_size=N/A
out_time_us=106667
out_time_ms=106667
out_time=00:00:00.106667
dup_frames=0
drop_frames=0
speed=0.213x
progress=continue
frame=18
fps=14.98
stream_0_0_q=-1.0
bitrate=N/A
total_size=N/A
out_time_us=1200000
out_time_ms=1200000
out_time=00:00:01.200000
dup_frames=2
drop_frames=1
speed=1.56x
progress=end
"""


def test_progress_parser_on_a_recorded_transcript():
    parser = ev.ProgressParser()
    out = [p for i, line in enumerate(PROGRESS.splitlines(keepends=True)) if (p := parser.feed(line, float(i)))]
    assert out == [
        ev.Progress(ts=11.0, frame=0, fps=0.0, out_time_s=0.106667, speed=0.213, bitrate_kbps=None, total_size=None,
                    dup_frames=0, drop_frames=0, end=False),
        ev.Progress(ts=23.0, frame=18, fps=14.98, out_time_s=1.2, speed=1.56, bitrate_kbps=None, total_size=None,
                    dup_frames=2, drop_frames=1, end=True)]


def test_progress_parser_odd_values():
    parser = ev.ProgressParser()
    for line in ("garbage without equals\n", "bitrate= 396.6kbits/s\n", "total_size=12345\n", "out_time_us=-5\n",
                 "speed=N/A\n", "fps=nan\n"):
        assert parser.feed(line, 0) is None
    p = parser.feed("progress=continue\r\n", 1.0)
    assert (p.bitrate_kbps, p.total_size, p.out_time_s, p.speed, p.fps, p.frame, p.end) == (
        396.6, 12345, None, None, None, None, False)


LOG = [
    ("[info] Press [q] to stop, [?] for help", ev.Log(0, "info", "Press [q] to stop, [?] for help")),
    ("[libx264 @ 0x559a67060680] [info] profile High, level 1.0, 4:2:0, 8-bit\n",
     ev.Log(0, "info", "[libx264] profile High, level 1.0, 4:2:0, 8-bit")),
    ("[tcp @ 0x7ff690193d40] [error] Connection to tcp://127.0.0.1:21999?tcp_nodelay=0 failed: Connection refused",
     ev.Log(0, "error", "[tcp] Connection to tcp://127.0.0.1:21999?tcp_nodelay=0 failed: Connection refused")),
    ("[tee @ 0x559a6705f200] [error] Slave muxer #0 failed: Connection refused, continuing with 1/2 slaves.",
     ev.Log(0, "error", "[tee] Slave muxer #0 failed: Connection refused, continuing with 1/2 slaves.")),
    ("[out#0/tee @ 0x559a6705f0c0] [info] video:14KiB audio:10KiB subtitle:0KiB",
     ev.Log(0, "info", "[out#0/tee] video:14KiB audio:10KiB subtitle:0KiB")),
    ("[flv @ 0x55d0c8a1e2c0] [warning] Failed to update header with correct duration.",
     ev.Log(0, "info", "[flv] Failed to update header with correct duration.")),  # benign: not a problem
    ("[fifo @ 0x55d0c8a1e2c0] [warning] FIFO queue full", ev.Log(0, "warning", "[fifo] FIFO queue full")),
    ("  Stream #0:0: Video: h264 (High)", ev.Log(0, "info", "  Stream #0:0: Video: h264 (High)")),
]


@pytest.mark.parametrize("line, expected", LOG)
def test_parse_log_line(line, expected):
    assert ev.parse_log_line(line, 0) == expected


def test_problems_and_slave_failures():
    logs = [ev.parse_log_line(line, 0) for line, _ in LOG]
    assert [ev.is_problem(x) for x in logs] == [False, False, True, True, False, False, True, False]
    assert ev.slave_failure(logs[3].text) == (0, "Connection refused")
    assert ev.slave_failure("Slave muxer #2 failed: Broken pipe, continuing with 4/5 slaves.") == (2, "Broken pipe")
    assert ev.slave_failure("Slave muxer #4 failed: Input/output error.") == (4, "Input/output error")
    assert ev.slave_failure(logs[2].text) is None


def test_copy_with_forced_flv_tags_refuses_an_mp4_or_mkv_recording():
    inp = Input("file", "in.mp4", video_codec="h264", audio_codec="aac")
    with pytest.raises(UsageError, match=r"\.flv or \.ts"):
        plan.build("ffmpeg", inp, Encoding(copy=True), (SLOT, plan.record_slave("rec.mkv")))
    argv = plan.build("ffmpeg", inp, Encoding(copy=True), (SLOT, plan.record_slave("rec.ts"))).argv
    assert "-tag:v" in argv
