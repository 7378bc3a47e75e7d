"""Compliance of what a receiver recorded, against the platform preset the destination uses.

A real `restream go` (the CLI, ``--json``) sends to an ffmpeg ``-listen`` receiver added with ``--platform``; the
recorded FLV is read packet by packet (``ffmpeg -c copy -f framecrc``: timestamps, sizes, key flags, exactly as
received) and decoded:

* keyframe interval: 2 s (±1 frame), and no longer than the preset's figure;
* video bitrate over every 10 s window (sliding by 1 s): within ±10 % of ``--video-bitrate``;
* pixel format yuv420p; audio AAC at the preset's sample rate (48000 Hz) in stereo;
* decodes from the first frame: the first packet is a keyframe, and every video packet decodes, without error;
* ``--loop``: no timestamp jump at the loop boundaries (monotonic, no gap over 0.2 s).

The bitrate run is the costly one (640x360 at 30 fps, 1500k, 22 s): the rate control is what is being checked.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from restream import platforms
from support import FFMPEG, make_clip, near, probe, timing
from test_go_e2e import CHEAP, receivers_done

pytestmark = pytest.mark.e2e

VIDEO_K = 1500
FPS = 30
SECONDS = 22
WINDOW_S = 10.0
TOLERANCE = 0.10
MAX_GAP_S = 0.2


@dataclass(frozen=True)
class Packet:
    stream: int
    dts: float
    pts: float
    size: int
    key: bool


def packets(path: Path) -> dict[int, list[Packet]]:
    """Every packet of every stream, as stored (no decoding), in file order."""
    out = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-map", "0",
                          "-c", "copy", "-f", "framecrc", "-"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    tb: dict[int, float] = {}
    found: dict[int, list[Packet]] = {}
    for line in out.stdout.splitlines():
        if line.startswith("#tb "):
            idx, frac = line[4:].split(":", 1)
            num, den = frac.strip().split("/")
            tb[int(idx)] = int(num) / int(den)
            continue
        if line.startswith("#") or not line.strip():
            continue
        cols = [c.strip() for c in line.split(",")]
        s = int(cols[0])
        flags = int(cols[6].split("=")[1], 16) if len(cols) > 6 else 1
        found.setdefault(s, []).append(Packet(s, int(cols[1]) * tb[s], int(cols[2]) * tb[s], int(cols[4]),
                                              bool(flags & 1)))
    return found


def decoded_video_frames(path: Path) -> tuple[int, str]:
    out = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-xerror", "-i", str(path),
                          "-map", "0:v:0", "-f", "framecrc", "-"], capture_output=True, text=True, timeout=120)
    frames = sum(1 for line in out.stdout.splitlines() if line and not line.startswith("#"))
    return frames, out.stderr


def video_windows(video: list[Packet], window: float = WINDOW_S, step: float = 1.0) -> list[tuple[float, float]]:
    """(start, kbit/s) of each full ``window``-second span of the video packets (by dts), sliding by ``step``."""
    t0, t1 = video[0].dts, video[-1].dts
    out = []
    start = t0
    while start + window <= t1 + 1e-9:
        size = sum(p.size for p in video if start <= p.dts < start + window)
        out.append((start - t0, size * 8 / window / 1000))
        start += step
    return out


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


@timing
@pytest.mark.timeout(150)
@pytest.mark.parametrize("preset", ["youtube"])
def test_preset_compliance(procs, cli, preset):
    pf = platforms.get(preset)
    r = procs.receiver(preset, "key-" + preset)
    code, _, err = cli("add", preset, "--platform", preset, "--url", r.url, "--key-stdin",
                       input="key-" + preset + "\n")
    assert code == 0, err
    go = procs.go("--test-pattern", "--video-bitrate", f"{VIDEO_K}k", "--size", "640x360", "--fps", str(FPS),
                  "--duration", f"{SECONDS}s", "--json")
    assert go.wait(90) == 0, go.stderr
    receivers_done(r)
    assert go.events[-1]["exit_code"] == 0, go.events[-1]

    m = probe(r.out)
    assert m.decodes, m.errors
    near(m.duration, SECONDS, 1.0, f"media received of a {SECONDS} s broadcast")
    # pixel format, audio
    assert (m.video_codec, m.pix_fmt) == ("h264", "yuv420p"), m
    assert (m.audio_codec, m.audio_rate, m.audio_channels) == ("aac", pf.audio_rate, "stereo"), m

    streams = packets(r.out)
    assert set(streams) == {0, 1}, streams.keys()
    video = streams[0]  # restream maps video first
    # decodes from the first frame: a keyframe first, then every video packet gives a frame, without error
    assert video[0].key, "the recording does not start on a keyframe"
    frames, errors = decoded_video_frames(r.out)
    assert frames == len(video) and not errors.strip(), f"{frames} frames from {len(video)} packets: {errors}"

    # keyframe interval: 2 s, ±1 frame; within the preset's maximum
    keys = [p.pts for p in video if p.key]
    kgaps = gaps(keys)
    assert len(kgaps) >= SECONDS // 2 - 2, kgaps
    assert all(abs(g - 2.0) <= 1 / FPS + 1e-3 for g in kgaps), f"keyframe gaps {kgaps}"
    assert max(kgaps) <= pf.keyframe_s + 1 / FPS + 1e-3

    # bitrate over 10 s windows: within ±10 % of the target (and under the preset's ceiling)
    windows = video_windows(video)
    assert len(windows) >= 8, windows
    rates = [k for _, k in windows]
    print(f"{preset}: {len(video)} video packets, keyframe gaps {min(kgaps):.3f}-{max(kgaps):.3f} s, "
          f"10 s windows {min(rates):.0f}-{max(rates):.0f} kbit/s (target {VIDEO_K})")
    bad = [(round(t, 1), round(k)) for t, k in windows if abs(k - VIDEO_K) > TOLERANCE * VIDEO_K]
    assert not bad, f"10 s windows off the {VIDEO_K}k target by more than 10 %: {bad}"
    assert pf.max_video_kbps is None or max(rates) <= pf.max_video_kbps


@timing
@pytest.mark.timeout(90)
def test_loop_boundaries_have_no_timestamp_jump(procs, cli, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", seconds=3)
    r = procs.receiver("loop", "key-loop")
    code, _, err = cli("add", "loop", "--platform", "youtube", "--url", r.url, "--key-stdin", input="key-loop\n")
    assert code == 0, err
    go = procs.go(str(clip), "--loop", "--duration", "10s", *CHEAP[1:], "--json")
    assert go.wait(60) == 0, go.stderr
    receivers_done(r)
    end = go.events[-1]
    assert end["exit_code"] == 0 and end["reason"] == "duration reached", end

    m = probe(r.out)
    assert m.decodes and m.first_packet_key, m.errors
    near(m.duration, 10, 1.0, "media received of a 10 s broadcast of a 3 s clip")
    streams = packets(r.out)
    assert set(streams) == {0, 1}, streams.keys()
    for s, pkts in streams.items():
        for what, times in (("dts", [p.dts for p in pkts]), ("pts", sorted(p.pts for p in pkts))):
            g = gaps(times)
            assert min(g) >= 0 if what == "pts" else all(x > 0 for x in g), \
                f"stream {s}: {what} not monotonic: {[(i, x) for i, x in enumerate(g) if x <= 0][:5]}"
            assert max(g) <= MAX_GAP_S, \
                f"stream {s}: {what} jumps {max(g):.3f} s at {times[g.index(max(g))]:.2f} s (loop every 3 s)"
        print(f"stream {s}: {len(pkts)} packets over {pkts[-1].dts - pkts[0].dts:.2f} s, "
              f"largest dts gap {max(gaps([p.dts for p in pkts])):.3f} s")
    # the loop really happened: more than three clips' worth of video frames (15 fps)
    assert len(streams[0]) >= 3 * 3 * 15, len(streams[0])
