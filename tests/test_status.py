"""The pure reducer, on recorded event sequences with explicit timestamps."""

from __future__ import annotations

import dataclasses
from functools import reduce as fold

import pytest

from restream import events as ev
from restream import status
from restream.status import host_of, initial, outcome, reduce

T0 = 1_800_000_000.0

START = ev.Started(T0, "default", "testsrc 1280x720@30", "/usr/bin/ffmpeg (7.0)", 4242,
                   (("youtube", "rtmp://a.rtmp.youtube.com/live2"), ("twitch", "rtmps://live.twitch.tv:443/app"),
                    ("local", "rtmp://127.0.0.1:19350/live")))


def run(*evs, s=None):
    return fold(reduce, evs, s or initial())


def row(s, name):
    d = s.destination(name)
    assert d is not None, name
    return d


# A destination that connects, goes live, fails (retrying with an error), recovers, and the broadcast ends.
TRANSCRIPT = (
    START,
    ev.DestState(T0 + 1, "youtube", ev.LIVE),
    ev.DestState(T0 + 1.5, "twitch", ev.LIVE),
    ev.Progress(T0 + 2, frame=60, fps=30.0, out_time_s=2.0, speed=1.0),
    ev.DestState(T0 + 11, "youtube", ev.RETRYING, error="Connection refused"),
    ev.Log(T0 + 12, "warning", "something"),
    ev.DestState(T0 + 16, "youtube", ev.LIVE),
    ev.Progress(T0 + 20, frame=600, fps=30.0, out_time_s=20.0, speed=1.0, drop_frames=2, dup_frames=1),
    ev.Ended(T0 + 21, 0, "input ended", 0),
)


def test_transcript_fail_retry_recover():
    states = []
    s = initial()
    for e in TRANSCRIPT:
        s = reduce(s, e)
        states.append(row(s, "youtube").state if s.destinations else None)
    assert states == ["connecting", "live", "live", "live", "retrying", "retrying", "live", "live", "stopped"]
    yt = row(s, "youtube")
    assert yt.reconnects == 1 and yt.ever_live
    assert yt.last_error == "Connection refused"  # kept after recovery: the *last* error
    assert yt.uptime_s == pytest.approx(10 + 5)  # 1..11 and 16..21
    assert yt.since == T0 + 21
    assert row(s, "twitch").uptime_s == pytest.approx(19.5) and row(s, "twitch").reconnects == 0
    local = row(s, "local")
    assert local.state == "connecting" and not local.ever_live and local.uptime_s == 0  # never made it: not stopped
    assert s.frame == 600 and s.out_time_s == 20.0 and s.drop_frames == 2 and s.dup_frames == 1
    assert s.elapsed_s == pytest.approx(21) and s.ended == TRANSCRIPT[-1]


def test_started_sets_header_and_rows_with_host_only():
    s = run(START)
    assert (s.profile, s.input, s.ffmpeg, s.started_at, s.pid) == ("default", "testsrc 1280x720@30",
                                                                   "/usr/bin/ffmpeg (7.0)", T0, 4242)
    assert [(d.name, d.host, d.state, d.since) for d in s.destinations] == [
        ("youtube", "a.rtmp.youtube.com", "connecting", T0),
        ("twitch", "live.twitch.tv:443", "connecting", T0),
        ("local", "127.0.0.1:19350", "connecting", T0)]


@pytest.mark.parametrize("url, host", [
    ("rtmp://a.rtmp.youtube.com/live2/SECRET", "a.rtmp.youtube.com"),
    ("rtmp://user:SECRET@host.example:1935/app?key=SECRET", "host.example:1935"),
    ("srt://[::1]:9000?streamid=SECRET", "[::1]:9000"),
    ("rtmp://Host.Example:99999/x", ""),  # a bad port: say nothing rather than guess
    ("SECRET", ""), ("", ""), (None, ""),
])
def test_host_of_never_carries_more_than_host_and_port(url, host):
    assert host_of(url) == host


def test_uptime_grows_with_now_while_live():
    s = run(START, ev.DestState(T0 + 2, "youtube", ev.LIVE), ev.Log(T0 + 7, "info", "x"))
    assert row(s, "youtube").uptime_s == pytest.approx(5)
    s = run(ev.Progress(T0 + 9.5), s=s)
    assert row(s, "youtube").uptime_s == pytest.approx(7.5)
    s = run(ev.DestState(T0 + 10, "youtube", ev.FAILED, error="Broken pipe"), ev.Log(T0 + 100, "info", "x"), s=s)
    assert row(s, "youtube").uptime_s == pytest.approx(8)  # stops counting when not live
    s = run(ev.DestState(T0 + 110, "youtube", ev.LIVE), ev.Ended(T0 + 113, 0, "interrupted"), s=s)
    assert row(s, "youtube").uptime_s == pytest.approx(11) and row(s, "youtube").reconnects == 1


def test_now_never_goes_backwards():
    s = run(START, ev.Log(T0 + 10, "info", "x"), ev.DestState(T0 + 5, "youtube", ev.LIVE))
    assert s.now == T0 + 10 and row(s, "youtube").since == T0 + 10


def test_repeated_live_is_not_a_reconnect_and_keeps_since():
    s = run(START, ev.DestState(T0 + 1, "youtube", ev.LIVE), ev.DestState(T0 + 3, "youtube", ev.LIVE))
    assert row(s, "youtube").reconnects == 0 and row(s, "youtube").since == T0 + 1


def test_unknown_destination_adds_a_row_and_never_raises():
    s = run(START, ev.DestState(T0 + 1, "mystery", ev.RETRYING, error="Input/output error"),
            ev.Traffic(T0 + 2, (("ghost", 100), ("youtube", 10))))
    m = row(s, "mystery")
    assert (m.host, m.state, m.last_error) == ("", "retrying", "Input/output error")
    assert s.destination("ghost") is None  # traffic alone does not invent a row
    s = run(ev.DestState(T0 + 3, "late", ev.LIVE), s=initial())  # even before Started
    assert row(s, "late").state == "live" and row(s, "late").ever_live


def test_added_and_removed():
    s = run(START, ev.DestState(T0 + 1, "youtube", ev.LIVE),
            ev.DestState(T0 + 5, "kick", ev.ADDED, url="rtmps://fa723fc1b171.global-contribute.live-video.net/app"),
            ev.DestState(T0 + 6, "kick", ev.LIVE),
            ev.DestState(T0 + 8, "youtube", ev.REMOVED))
    assert [d.name for d in s.destinations] == ["youtube", "twitch", "local", "kick"]
    kick, yt = row(s, "kick"), row(s, "youtube")
    assert kick.host == "fa723fc1b171.global-contribute.live-video.net" and kick.state == "live"
    assert yt.state == "removed" and yt.uptime_s == pytest.approx(7)
    s = run(ev.Ended(T0 + 10, 0, "interrupted"), s=s)
    assert row(s, "youtube").state == "removed" and row(s, "kick").state == "stopped"
    # re-adding a known name: back to connecting, going live again counts as a reconnect
    s2 = run(START, ev.DestState(T0 + 1, "youtube", ev.LIVE), ev.DestState(T0 + 2, "youtube", ev.REMOVED),
             ev.DestState(T0 + 3, "youtube", ev.ADDED, url="rtmp://b.rtmp.youtube.com/live2"))
    assert row(s2, "youtube").state == "connecting" and row(s2, "youtube").host == "b.rtmp.youtube.com"
    s2 = run(ev.DestState(T0 + 4, "youtube", ev.LIVE), s=s2)
    assert row(s2, "youtube").reconnects == 1


def test_traffic_rates_and_bytes_out():
    s = run(START, ev.DestState(T0 + 1, "youtube", ev.LIVE), ev.DestState(T0 + 1, "twitch", ev.LIVE),
            ev.Traffic(T0 + 2, (("youtube", 1_000), ("twitch", 2_000))))
    assert row(s, "youtube").kbps is None and s.bytes_out == 3_000 and s.bitrate_kbps is None
    s = run(ev.Traffic(T0 + 4, (("youtube", 1_000_000), ("twitch", 1_002_000))), s=s)
    assert row(s, "youtube").kbps == pytest.approx(999_000 * 8 / 1000 / 2)
    assert row(s, "twitch").kbps == pytest.approx(1_000_000 * 8 / 1000 / 2)
    assert s.bytes_out == 2_002_000
    # ffmpeg says N/A with tee: the overall bitrate is the mean rate of the live destinations
    assert s.bitrate_source == "traffic" and s.bitrate_kbps == pytest.approx((3996 + 4000) / 2)
    # the relay's counter resets (slot re-assigned): bytes_sent keeps counting forward
    s = run(ev.Traffic(T0 + 5, (("youtube", 500), ("twitch", 1_002_000))), s=s)
    assert row(s, "youtube").bytes_sent == 1_000_500 and s.bytes_out == 1_000_500 + 1_002_000
    # leaving live clears the rate
    s = run(ev.DestState(T0 + 6, "twitch", ev.RETRYING, error="x"), s=s)
    assert row(s, "twitch").kbps is None


def test_ffmpeg_bitrate_wins_over_traffic_once_given():
    s = run(START, ev.DestState(T0 + 1, "youtube", ev.LIVE), ev.Progress(T0 + 1.5, bitrate_kbps=4650.0),
            ev.Traffic(T0 + 2, (("youtube", 0),)), ev.Traffic(T0 + 3, (("youtube", 125_000),)))
    assert s.bitrate_kbps == 4650.0 and s.bitrate_source == "ffmpeg"
    s = run(ev.Progress(T0 + 4, bitrate_kbps=None, fps=29.97), s=s)
    assert s.bitrate_kbps == 4650.0 and s.fps == 29.97


def test_progress_keeps_figures_through_na_and_total_size_without_traffic():
    s = run(START, ev.Progress(T0 + 1, frame=30, fps=30.0, out_time_s=1.0, speed=1.01, total_size=5000),
            ev.Progress(T0 + 2, frame=None, fps=None, out_time_s=None, speed=None))
    assert (s.frame, s.fps, s.out_time_s, s.speed, s.bytes_out) == (30, 30.0, 1.0, 1.01, 5000)


def test_ended_freezes():
    s = run(*TRANSCRIPT)
    after = run(ev.DestState(T0 + 30, "youtube", ev.LIVE), ev.Progress(T0 + 31, frame=9999),
                ev.Traffic(T0 + 32, (("youtube", 10**9),)), ev.Log(T0 + 40, "error", "x"), s=s)
    assert after is s and after.now == T0 + 21


def test_snapshots_are_immutable():
    s = run(*TRANSCRIPT[:3])
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.now = 0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.destinations[0].state = "x"  # type: ignore[misc]
    before = s
    reduce(s, ev.DestState(T0 + 3, "youtube", ev.FAILED))
    assert before.destination("youtube").state == "live"


def test_initial_and_elapsed():
    s = initial(profile="p", input="clip.mp4", ffmpeg="ff", input_duration=90.0)
    assert s.elapsed_s == 0 and s.input_duration == 90.0 and s.destinations == () and s.ended is None
    s = run(START, ev.Progress(T0 + 12.5), s=s)
    assert s.elapsed_s == pytest.approx(12.5) and s.input_duration == 90.0


def test_outcome():
    s = run(*TRANSCRIPT)
    out = outcome(s)
    assert list(out) == ["youtube", "twitch", "local"]
    assert {k: out["youtube"][k] for k in ("state", "reconnects", "uptime_s")} == {
        "state": "stopped", "reconnects": 1, "uptime_s": 15.0}
    assert out["local"]["state"] == "connecting" and out["local"]["uptime_s"] == 0
    assert status.REMOVED_STATE == "removed"
