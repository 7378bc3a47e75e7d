"""Encode groups end to end (issue 14): the real CLI, one real ffmpeg, ffmpeg ``-listen`` receivers on loopback.
Also: live changes into a group (or refused), and relay mode's copy next to an encode (the publisher's packets).

Three destinations in three groups: the broadcast's encoding, one capped by the twitch preset, a vertical 9:16 one.
Each receiver gets its group's size, bitrate and keyframes every 2 s; killing one group's receiver leaves the other
groups untouched. The source is a noisy clip, so that the encoder really spends the bitrate it is given (a test
card compresses far below any cap, and its bitrate would prove nothing).
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from support import FFMPEG, event_ts as _ts, probe, receivers_done, timing, wait_for

pytestmark = pytest.mark.e2e


def noise_clip(path: Path) -> Path:
    """6 s of 320x180 15 fps noise (about 11 Mbit/s at qp 10): every group's encoder meets its bitrate."""
    subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi",
                    "-i", "testsrc2=size=320x180:rate=15,noise=alls=60:allf=t", "-f", "lavfi", "-i",
                    "sine=f=440:r=48000", "-t", "6", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "10",
                    "-g", "15", "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2", "-y", str(path)],
                   check=True, timeout=60)
    return path


def video_kbps(path: Path, skip_s: float = 2.0) -> tuple[float, str]:
    """The received video bitrate (kbit/s) after the first ``skip_s`` (the rate control settles), and its size."""
    crc = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0",
                          "-c", "copy", "-f", "framecrc", "-"], capture_output=True, text=True, timeout=60).stdout
    info = subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True,
                          timeout=60).stderr
    size = re.search(r"Video: h264.*?, (\d+x\d+)", info)
    tb, rows = 1 / 1000, []
    for line in crc.splitlines():
        if line.startswith("#tb 0:"):
            num, den = line.split(":", 1)[1].strip().split("/")
            tb = int(num) / int(den)
        elif line.strip() and not line.startswith("#"):
            cols = [c.strip() for c in line.split(",")]
            rows.append((int(cols[2]) * tb, int(cols[4])))
    start = rows[0][0] + skip_s
    kept = [(t, n) for t, n in rows if t >= start]
    seconds = kept[-1][0] - kept[0][0] + (kept[1][0] - kept[0][0])
    return sum(n for _, n in kept) * 8 / 1000 / seconds, size.group(1) if size else "?"


def keyframe_gaps(path: Path) -> list[float]:
    keys = probe(path).keyframe_times
    return [round(b - a, 3) for a, b in zip(keys, keys[1:])]


def three_groups(cli, add, main, twitch, vertical) -> None:
    """main: the broadcast's encoding; twitch: the twitch preset (capped at 6000k); vertical: 9:16 at 1000k."""
    add("main", main.url, "key-main")
    code, _, err = cli("add", "twitch", "--platform", "twitch", "--url", twitch.url, "--key-stdin",
                       input="key-twitch\n")
    assert code == 0, err
    add("vertical", vertical.url, "key-vertical")
    code, _, err = cli("edit", "vertical", "--crop", "9:16", "--size", "180x320", "--video-bitrate", "1000k")
    assert code == 0, err


@pytest.mark.timeout(120)
def test_three_groups_get_their_size_bitrate_and_keyframes(procs, add, cli, tmp_path):
    clip = noise_clip(tmp_path / "noise.mp4")
    main, twitch, vertical = (procs.receiver(n, f"key-{n}") for n in ("main", "twitch", "vertical"))
    three_groups(cli, add, main, twitch, vertical)

    go = procs.go(str(clip), "--loop", "--video-bitrate", "8000k", "--audio-bitrate", "64k", "--duration", "14s",
                  "--json")
    assert go.wait(90) == 0, (go.stderr, go.summary(), go.events[-1:] if go.events else None)
    receivers_done(main, twitch, vertical)
    assert "twitch: capped: video 8000k -> 6000k" in go.stderr
    assert ("3 encode groups, one ffmpeg: 8000k video, 64k audio: main; 6000k video, 64k audio: twitch; 1000k video, "
            "64k audio, 180x320 (9:16 crop): vertical") in go.stderr, go.stderr
    assert len(go.tee_ffmpegs()) == 1, "one ffmpeg for three groups"
    expected = {"main": (main, "320x180", 8000), "twitch": (twitch, "320x180", 6000),
                "vertical": (vertical, "180x320", 1000)}
    report = []
    for name, (r, size, kbps) in expected.items():
        m = probe(r.out)
        assert m.decodes and m.first_packet_key, (name, m.errors)
        assert (m.video_codec, m.audio_codec) == ("h264", "aac")
        got, got_size = video_kbps(r.out)
        gaps = keyframe_gaps(r.out)
        report.append(f"{name}: {got_size} {got:.0f} kbit/s (target {kbps}), keyframe gaps {gaps}")
        assert got_size == size, report[-1]
        assert abs(got - kbps) <= 0.15 * kbps, report[-1]
        assert len(gaps) >= 4 and all(abs(g - 2.0) <= 0.07 for g in gaps), report[-1]
    # the groups' keyframes fall at the same stream times (one frame at 15 fps: 0.067 s)
    keys = {name: probe(r.out).keyframe_times for name, (r, _, _) in expected.items()}
    common = min(len(k) for k in keys.values())
    assert common >= 5 and all(abs(a - b) <= 0.067 for ks in zip(*(k[:common] for k in keys.values()))
                                for a in ks for b in ks), keys
    print("\n".join(report))


@timing
@pytest.mark.timeout(120)
def test_killing_one_groups_receiver_leaves_the_others_untouched(procs, add, cli):
    main, twitch, vertical = (procs.receiver(n, f"key-{n}") for n in ("main", "twitch", "vertical"))
    three_groups(cli, add, main, twitch, vertical)
    go = procs.go("--test-pattern", "--size", "320x180", "--fps", "15", "--video-bitrate", "8000k",
                  "--audio-bitrate", "64k", "--duration", "12s", "--json", "--status-interval", "0.5")
    lives = go.wait_live(["main", "twitch", "vertical"])
    vertical.kill()
    killed = time.time()
    retrying = go.wait_state("vertical", "retrying", 8, after=killed)
    assert go.state_now("main") == go.state_now("twitch") == "live"
    assert go.wait(60) == 1, go.stderr  # vertical never came back: some destinations failed
    receivers_done(main, twitch)
    end = go.events[-1]
    for name, r in (("main", main), ("twitch", twitch)):
        assert [e["state"] for e in go.states(name)] == ["connecting", "live", "stopped"], go.states(name)
        assert end["destinations"][name]["reconnects"] == 0
        m = probe(r.out)
        assert m.decodes and m.first_packet_key, m.errors
        assert abs(m.duration - (_ts(end) - _ts(lives[name]))) <= 1.5, (name, m.duration)
        assert m.max_gap < 0.5, f"{name}: a hole of {m.max_gap:.2f} s while vertical was down"
    print(f"vertical retrying {_ts(retrying) - killed:.2f} s after its receiver was killed; main and twitch "
          f"received {probe(main.out).duration:.1f} s and {probe(twitch.out).duration:.1f} s without a hole")


@timing
@pytest.mark.timeout(120)
def test_live_add_joins_its_group_and_one_needing_a_new_encoder_waits_for_the_next_go(procs, add, cli):
    """While live: a destination with the vertical group's settings joins that group (a free slot carries it)
    and receives the vertical picture; one that would need a new encoder is refused with a clear message and
    its receiver gets nothing."""
    main, vertical, shorts, odd = (procs.receiver(n, f"key-{n}") for n in ("main", "vertical", "shorts", "odd"))
    vert_opts = ["--crop", "9:16", "--size", "180x320", "--video-bitrate", "200k"]
    add("main", main.url, "key-main")
    add("vertical", vertical.url, "key-vertical")
    assert cli("edit", "vertical", *vert_opts)[0] == 0
    go = procs.go("--test-pattern", "--size", "320x180", "--fps", "15", "--video-bitrate", "300k",
                  "--audio-bitrate", "64k", "--duration", "12s", "--json")
    go.wait_live(["main", "vertical"])
    code, _, err = cli("add", "shorts", "--url", shorts.url, "--key-stdin", *vert_opts, input="key-shorts\n")
    assert code == 0, err
    added = time.time()
    go.wait_state("shorts", "live", 8, after=added - 1)
    code, _, err = cli("add", "odd", "--url", odd.url, "--key-stdin", "--size", "640x360", input="key-odd\n")
    assert code == 0, err
    wanted = ("profile change not applied: odd: its encoding (300k video, 64k audio, 640x360, 15 fps) needs an "
              "encoder this broadcast does not run; it applies at the next 'restream go'")
    wait_for(lambda: any(e.get("event") == "log" and e["message"] == wanted for e in go.events), 8,
             what="the refusal of odd")
    assert go.wait(60) == 0, go.stderr
    receivers_done(main, vertical, shorts)
    assert not odd.connected() and go.states("odd") == []
    sizes = {}
    for name, r in (("main", main), ("vertical", vertical), ("shorts", shorts)):
        m = probe(r.out)
        assert m.decodes and m.first_packet_key, (name, m.errors)
        sizes[name] = video_kbps(r.out, skip_s=0.5)[1]
    assert sizes == {"main": "320x180", "vertical": "180x320", "shorts": "180x320"}
    assert len(go.tee_ffmpegs()) == 1


def packet_hashes(path: Path) -> list[tuple[str, str]]:
    """(size, md5) of every video packet, as stored (no decode)."""
    out = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0",
                          "-c", "copy", "-f", "framemd5", "-"], capture_output=True, text=True, timeout=60).stdout
    return [tuple(c.strip() for c in line.split(",")[4:6]) for line in out.splitlines()
            if line.strip() and not line.startswith("#")]


@pytest.mark.timeout(120)
def test_relay_copy_next_to_an_encode_gets_the_publishers_exact_packets(tmp_path, cli):
    """Relay mode: a copy destination and a vertical one in one ffmpeg: the first receives the publisher's exact
    packets (same hashes, in order), the second the 9:16 encode."""
    import test_relay_mode as rm
    from support import make_clip

    clip = make_clip(tmp_path / "clip.mp4", seconds=5)
    procs_ = rm.Procs(tmp_path)
    try:
        copy_r = procs_.receiver("copy", "key-copy")
        vert_r = procs_.receiver("vert", "key-vert")
        for name, r, extra in (("copy", copy_r, []), ("vert", vert_r, ["--crop", "9:16", "--size", "180x320",
                                                                        "--video-bitrate", "300k"])):
            code, _, err = cli("add", name, "--url", r.url, "--key-stdin", *extra, input=f"key-{name}\n")
            assert code == 0, err
        relay = procs_.relay(rm.INGEST_KEY, "--once")
        pub = subprocess.Popen([FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-i", str(clip),
                                "-c", "copy", "-f", "flv", f"rtmp://127.0.0.1:{relay.port}/live/{rm.INGEST_KEY}"],
                               stdin=subprocess.DEVNULL, start_new_session=True)
        assert pub.wait(30) == 0
        assert relay.proc.wait(30) == 0, relay.stderr
        receivers_done(copy_r, vert_r)
        argv = " ".join(relay.argv_of(relay.ffmpegs()[0]))
        assert "-c:v:0 copy" in argv and "-c:v:1 libx264" in argv, argv
        sent, got = packet_hashes(clip), packet_hashes(copy_r.out)
        # all of them (relay mode's fifo queue holds the start-up burst); at most the first two may be lost
        assert len(got) >= len(sent) - 2 and got == sent[len(sent) - len(got):], \
            f"{len(got)} packets received, {len(sent)} sent, not the same"
        assert video_kbps(vert_r.out, skip_s=0.5)[1] == "180x320"
        assert probe(vert_r.out).decodes
        print(f"copy: {len(got)} of {len(sent)} packets, identical; vertical: 180x320")
    finally:
        procs_.close()
