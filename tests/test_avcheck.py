"""tests/avcheck.py, the slate's proof tooling, on strings and on small files made here: it must see a 300 ms
timestamp gap, a 100 ms A/V shift (constant, and one that appears half-way), a decode error, backwards timestamps,
and tell the slate from a publisher's colour (also pillarboxed) and from a flash."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import avcheck as av
from avcheck import FLASH, SLATE, Frame, classify
from support import FFMPEG

SLATE_RGB = av.SLATE_BACKGROUND


def ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", *args], check=True, timeout=60)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("avcheck")


@pytest.fixture(scope="module")
def good(media) -> Path:
    return av.marker_file(media / "good.flv", seconds=5, size="320x240", fps=25, colour="red")


# -- pure: colours and runs ------------------------------------------------------------------------------------------

def test_yuv_to_rgb_round_trips_the_slate_and_white():
    # BT.601 limited: the slate's (16, 32, 64) is Y 42.6, U 144.4, V 118.7; white is 235/128/128
    assert av.distance(av.yuv_to_rgb(42.6, 144.4, 118.7), SLATE_RGB) < 2
    assert av.distance(av.yuv_to_rgb(235, 128, 128), (255, 255, 255)) < 1


@pytest.mark.parametrize("corner, centre, label", [
    (SLATE_RGB, (255, 255, 255), SLATE),  # the card's text in the middle does not matter
    ((20, 30, 60), (16, 32, 64), SLATE),  # compression noise
    ((255, 0, 0), (255, 0, 0), "red"),
    ((0, 0, 0), (0, 192, 0), "green"),  # pillarboxed: the corner is the pad, the centre the picture
    ((250, 250, 250), (250, 252, 249), FLASH),
    ((0, 0, 0), (255, 0, 255), "magenta"),
    ((0, 0, 0), (128, 128, 128), "other"),
    ((0, 0, 250), (0, 0, 250), "blue"),  # blue is not the slate's dark blue
])
def test_classify(corner, centre, label):
    assert classify(Frame(0.0, corner, centre)) == label


def test_flashes_fold_into_their_colour_and_runs_read_in_order():
    labels = [FLASH, "red", "red", FLASH, "red", SLATE, SLATE, FLASH, "green", "green", FLASH, SLATE]
    assert av.fold_flashes(labels) == ["red", "red", "red", "red", "red", SLATE, SLATE, "green", "green", "green",
                                       "green", SLATE]
    rs = av.runs(labels, [i / 10 for i in range(len(labels))])
    assert [(r.label, r.frames, r.start) for r in rs] == [("red", 5, 0.0), (SLATE, 2, 0.5), ("green", 4, 0.7),
                                                         (SLATE, 1, 1.1)]
    assert av.fold_flashes([SLATE, FLASH, SLATE]) == [SLATE, FLASH, SLATE]  # a white frame out of nowhere stays one


def test_flash_onsets_and_pairing():
    frames = [Frame(t / 10, (0, 0, 0), (255, 255, 255) if t in (0, 10, 11, 20) else (255, 0, 0)) for t in range(25)]
    assert av.flash_onsets(frames) == [0.0, 1.0, 2.0]
    pairs = av.pair_offsets([0.0, 1.0, 2.0], [1.012, 2.1, 5.0])
    assert pairs == [(1.0, 12.0), (2.0, 100.0)]  # no beep near 0.0; 5.0 belongs to no flash
    # a flash whose beep went unseen is not paired with the beep of the flash before it (0.3 s away)
    assert av.pair_offsets([3.821, 4.101, 5.101], [3.803, 5.101]) == [(3.821, -18.0), (5.101, 0.0)]


def test_largest_step_and_monotonic():
    assert av.largest_step([0.0, 0.033, 0.066, 0.4]) == pytest.approx(0.334)
    assert av.monotonic([0, 1, 1, 2]) and not av.monotonic([0, 2, 1])


# -- pure: ffmpeg's text -----------------------------------------------------------------------------------------------

FRAMECRC = """#tb 0: 1/1000
#media_type 0: video
#tb 1: 1/48000
#media_type 1: audio
1,          0,          0,     1024,      187, 0x33ac4e12
0,         21,         42,       40,      827, 0x369c4ccd
1,       1024,       1024,     1024,      275, 0xa444916d
0,         61,         61,       40,      364, 0x888f07a1, F=0x0
"""


def test_parse_framecrc():
    kinds, pkts = av.parse_framecrc(FRAMECRC)
    assert kinds == {0: "video", 1: "audio"}
    assert [(p.stream, p.dts, p.pts) for p in pkts] == [(1, 0.0, 0.0), (0, 0.021, 0.042),
                                                         (1, 1024 / 48000, 1024 / 48000), (0, 0.061, 0.061)]
    assert pkts[0].duration == pytest.approx(1024 / 48000)


SHOWINFO = """[Parsed_showinfo_2 @ 0x7f2cd4005800] n:   0 pts:     21 pts_time:0.021   duration:     40 duration_time:0.04    fmt:yuv420p cl:left sar:1/1 s:16x16 i:P iskey:1 type:I checksum:A4352B0F plane_checksum:[FC5BEB00 103C2000 103C2000] mean:[42 144 119] stdev:[0.0 0.0 0.0]
[Parsed_showinfo_4 @ 0x7f2cd4006140] n:   0 pts:     21 pts_time:0.021   duration:     40 duration_time:0.04    fmt:yuv420p cl:left sar:1/1 s:16x16 i:P iskey:1 type:I checksum:A4352B0F plane_checksum:[FC5BEB00 103C2000 103C2000] mean:[235 128 128] stdev:[0.0 0.0 0.0]
[Parsed_silencedetect_5 @ 0x7f2cd4006580] silence_start: 0.121167
[Parsed_showinfo_4 @ 0x7f2cd4006140] n:   1 pts:     61 pts_time:0.061   duration:     40 duration_time:0.04    fmt:yuv420p cl:left sar:1/1 s:16x16 i:P iskey:0 type:P checksum:0 plane_checksum:[0 0 0] mean:[81 90 240] stdev:[0.0 0.0 0.0]
[Parsed_showinfo_2 @ 0x7f2cd4005800] n:   1 pts:     61 pts_time:0.061   duration:     40 duration_time:0.04    fmt:yuv420p cl:left sar:1/1 s:16x16 i:P iskey:0 type:P checksum:0 plane_checksum:[0 0 0] mean:[81 90 240] stdev:[0.0 0.0 0.0]
[Parsed_silencedetect_5 @ 0x7f2cd4006580] silence_end: 1.021187 | silence_duration: 0.900021
"""


def test_parse_showinfo_pairs_corner_and_centre_by_frame_number():
    frames = av.parse_frames(SHOWINFO)
    assert [f.pts for f in frames] == [0.021, 0.061]
    assert [classify(f) for f in frames] == [SLATE, "red"]
    assert av.parse_onsets(SHOWINFO) == [1.021187]


# -- files made here -----------------------------------------------------------------------------------------------

def test_a_clean_marker_file_passes(good):
    r = av.analyze(good)
    assert r.problems(min_offsets=3) == [], r.describe()
    assert r.sequence() == ["red"] and r.frames_of("red") + r.frames_of(FLASH) == len(r.frames) == 125
    assert len(r.offsets) == 4, r.describe()  # beeps at 1..4 s (the one at 0 follows no silence)
    assert all(abs(o) <= 25 for _, o in r.offsets), r.offsets
    assert 4.9 <= r.duration <= 5.1 and r.video_gap == pytest.approx(0.04, abs=0.002) and r.audio_gap < 0.03
    assert av.av_offsets(good) == [o for _, o in r.offsets]


def test_a_300_ms_gap_is_caught(good, media):
    gap = media / "gap.flv"
    # every packet from 2 s on is stamped 300 ms later: a hole in both streams
    ffmpeg("-i", str(good), "-c", "copy", "-bsf", "setts=ts=if(gte(TS*TB\\,2)\\,TS+0.3/TB\\,TS)", "-f", "flv", "-y",
           str(gap))
    r = av.analyze(gap)
    assert r.video_gap == pytest.approx(0.34, abs=0.005) and r.audio_gap > 0.3, r.describe()
    problems = r.problems()
    assert any(p.startswith("video timestamp gap 340 ms") for p in problems), problems
    assert any(p.startswith("audio timestamp gap") for p in problems), problems
    assert r.problems(max_gap=0.35) == [], "the gap is the only problem"


def test_a_constant_100_ms_av_shift_is_measured(media):
    late = av.marker_file(media / "late.flv", seconds=4, audio_graph=av.marker_audio(shift_s=0.1))
    offsets = av.av_offsets(late)
    assert len(offsets) == 4 and all(90 <= o <= 115 for o in offsets), offsets  # 0.1 s of silence: the first too


def test_a_100_ms_shift_half_way_is_not_constant(media):
    drift = av.marker_file(media / "drift.flv", seconds=6, audio_graph=av.marker_audio(shift_s=0.1, shift_after_s=3))
    r = av.analyze(drift)
    ms = [o for _, o in r.offsets]
    assert [round(o, -2) for o in ms] == [0, 0, 100, 100, 100], ms
    assert any("A/V offset not constant" in p for p in r.problems()), r.problems()
    assert r.problems(av_within=60) == []


def restamp_flv(data: bytes, change) -> bytes:
    """``data`` (an FLV file) with each tag's timestamp replaced by ``change(kind, ms)``: ffmpeg would repair
    backwards timestamps on the way into any file it writes, so this writes them by hand."""
    out = bytearray(data)
    pos = int.from_bytes(data[5:9], "big") + 4
    while pos + 11 <= len(data):
        size = int.from_bytes(data[pos + 1:pos + 4], "big")
        ts = int.from_bytes(data[pos + 4:pos + 7], "big") | data[pos + 7] << 24
        new = change(data[pos] & 0x1F, ts)
        out[pos + 4:pos + 7] = (new & 0xFFFFFF).to_bytes(3, "big")
        out[pos + 7] = new >> 24 & 0xFF
        pos += 11 + size + 4
    return bytes(out)


def test_backwards_timestamps_are_caught(good, media):
    back = media / "back.flv"
    back.write_bytes(restamp_flv(good.read_bytes(), lambda kind, ms: ms - 500 if kind == 9 and ms >= 2000 else ms))
    r = av.analyze(back)
    assert not r.monotonic and "timestamps go backwards" in r.problems(), r.describe()
    # ffmpeg repairs them on the way into a file, and says so in its log: the receivers' logs are read for it
    log = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-i", str(back), "-c", "copy", "-f", "flv", "-y",
                          str(media / "repaired.flv")], capture_output=True, text=True, timeout=60).stderr
    assert av.fixups(log), log[-2000:]
    assert av.analyze(media / "repaired.flv").monotonic
    assert av.fixups(subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-i", str(good), "-c", "copy", "-f", "flv",
                                     "-y", str(media / "copy.flv")], capture_output=True, text=True,
                                    timeout=60).stderr) == []


def test_parse_flv_matches_ffmpeg_on_a_clean_file(good):
    kinds, pkts = av.parse_flv(good.read_bytes())
    kinds2, pkts2 = av.parse_framecrc(subprocess.run(
        [FFMPEG, "-v", "error", "-i", str(good), "-map", "0", "-c", "copy", "-f", "framecrc", "-"],
        capture_output=True, text=True, timeout=60).stdout)
    assert kinds == kinds2
    assert [(p.stream, round(p.dts, 3), round(p.pts, 3)) for p in pkts] == \
        [(p.stream, round(p.dts, 3), round(p.pts, 3)) for p in pkts2]
    torn = av.parse_flv(good.read_bytes()[:-100])[1]
    assert 0 < len(torn) < len(pkts)  # a receiver killed mid-tag leaves a torn tail: the rest still reads


def test_decode_errors_are_caught(good, media):
    data = bytearray(good.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 3000] = bytes(range(256)) * 11 + bytes(184)  # garbage over a stretch of packets
    broken = media / "broken.flv"
    broken.write_bytes(bytes(data))
    r = av.analyze(broken)
    assert r.decode_errors.strip(), r.describe()
    assert any(p.startswith("decode errors") for p in r.problems())


def test_slate_publisher_and_pillarbox_sequence(media):
    seq = media / "seq.flv"
    # red 320x180, then a slate card (its background, a white box standing for the text), then green at 4:3
    # pillarboxed into 16:9, then a magenta frame run of 2 (what a leak would look like)
    ffmpeg("-f", "lavfi", "-i",
           f"color=c=0xFF0000:s=320x180:r=30:d=1[a];"
           f"color=c={av.hex_colour(SLATE_RGB)}:s=320x180:r=30:d=1,"
           f"drawbox=x=100:y=60:w=120:h=60:color=white:t=fill[b];"
           f"color=c=0x00C000:s=240x180:r=30:d=1,pad=320:180:40:0[c];"
           f"color=c=0xFF00FF:s=320x180:r=30:d=0.06[d];[a][b][c][d]concat=n=4",
           "-c:v", "libx264", "-preset", "ultrafast", "-f", "flv", "-y", str(seq))
    r = av.analyze(seq)
    assert r.sequence() == ["red", SLATE, "green", "magenta"], r.describe()
    assert r.frames_of("magenta") == 2
    assert r.sequence(min_frames=3) == ["red", SLATE, "green"]


def test_marker_publisher_argv_shapes():
    rtmp = av.marker_publisher("rtmp://127.0.0.1:1/live/k", size="640x360", fps=30, colour="green", seconds=3)
    joined = " ".join(rtmp)
    assert rtmp[-2:] == ["flv", "rtmp://127.0.0.1:1/live/k"] and joined.count("-re ") == 2
    assert "-g 60" in joined and "0x00C000" in joined and "mod(n\\,30)" in joined and "-c:a aac" in joined
    silent = av.marker_publisher("srt://127.0.0.1:1?mode=caller", audio=False, fmt="mpegts")
    assert "aevalsrc" not in " ".join(silent) and "-c:a" not in silent and silent[-2] == "mpegts"
    assert "-map 1:a" not in " ".join(silent)
