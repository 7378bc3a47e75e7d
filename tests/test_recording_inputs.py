"""Issue 12, first items: recordings never destroy a file, long durations, options refused up front, inputs that
lack a video or an audio track. Pure checks first, then the CLI (exit code first), then real broadcasts."""

from __future__ import annotations

import os
import re
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restream import events as ev
from restream import plan, recording, status, view
from restream.errors import UsageError
from restream.plan import Encoding, Input
from conftest import one_error_line
from support import FFMPEG, make_clip, probe







# -- names: placeholders ---------------------------------------------------------------------------------------------

def test_placeholders_are_filled_in():
    now = datetime(2026, 12, 1, 19, 30, 5)
    assert recording.expand("show-{date}_{time}-{profile}.mkv", "events", now) == \
        "show-2026-12-01_19-30-05-events.mkv"
    assert recording.expand("plain.mkv", "p", now) == "plain.mkv"


@pytest.mark.parametrize("template", ["x-{day}.mkv", "x-{date.mkv", "x-}.mkv", "{}.mkv"])
def test_bad_placeholders_are_refused(template):
    with pytest.raises(UsageError, match="--record"):
        recording.expand(template, "p")


# -- never destructive -----------------------------------------------------------------------------------------------

def test_the_input_is_never_recorded_onto(tmp_path):
    src = tmp_path / "self.mp4"
    src.write_bytes(b"precious")
    (tmp_path / "link.mp4").symlink_to(src)
    os.link(src, tmp_path / "hard.mp4")
    for path in (src, tmp_path / "link.mp4", tmp_path / "hard.mp4", tmp_path / "." / "self.mp4"):
        with pytest.raises(UsageError, match="that is the input file"):
            recording.check(str(path), inputs=[str(src)], overwrite=True)
    assert src.read_bytes() == b"precious"


def test_an_existing_file_needs_overwrite(tmp_path):
    old = tmp_path / "precious.mp4"
    old.write_bytes(b"last week")
    with pytest.raises(UsageError, match="file exists; add --overwrite"):
        recording.check(str(old))
    assert recording.check(str(old), overwrite=True) == str(old)
    dangling = tmp_path / "dangling.mkv"
    dangling.symlink_to(tmp_path / "elsewhere.mkv")
    with pytest.raises(UsageError, match="file exists"):
        recording.check(str(dangling))


def test_the_directory_is_checked(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        recording.check(str(tmp_path / "nonexistent" / "dir" / "x.mkv"))
    (tmp_path / "d.mkv").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        recording.check(str(tmp_path / "d.mkv"), overwrite=True)
    assert recording.check(str(tmp_path / "new.mkv")) == str(tmp_path / "new.mkv")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_directory_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(UsageError, match="not writable"):
        recording.check(str(ro / "x.mkv"))


def test_the_record_slave_is_never_retried():
    """A fifo retry reopens (and so truncates) the file: the recording is written without fifo."""
    slave = plan.record_slave("x.mkv")
    assert ("use_fifo", "0") in slave.options
    assert plan.slave_spec(slave).startswith("[f=matroska:onfail=ignore:use_fifo=0]")


def test_cli_refuses_before_anything_connects(cli, dest, tmp_path):
    clip = tmp_path / "self.mp4"
    clip.write_bytes(b"not really a video, never read")
    before = clip.stat()
    code, out, err = cli("go", str(clip), "--record", str(clip), "--overwrite")
    assert code == 2, err
    assert "that is the input file" in one_error_line(err)
    assert clip.stat().st_size == before.st_size and clip.stat().st_mtime_ns == before.st_mtime_ns
    old = tmp_path / "precious.mkv"
    old.write_bytes(b"x" * 100)
    code, _, err = cli("go", "--test-pattern", "--record", str(old), "--duration", "3s")
    assert code == 2 and "file exists; add --overwrite" in one_error_line(err)
    assert old.read_bytes() == b"x" * 100
    code, _, err = cli("go", "--test-pattern", "--record", "/nonexistent/dir/x.mkv")
    assert code == 2 and "directory /nonexistent/dir does not exist" in one_error_line(err)
    code, _, err = cli("go", "--test-pattern", "--record", str(tmp_path / "x.avi"))
    assert code == 2 and ".mkv, .mp4, .mov, .flv, .ts" in one_error_line(err)


def test_cli_fills_in_placeholders(cli, dest, tmp_path):
    code, out, err = cli("go", "--test-pattern", "--dry-run", "--record", str(tmp_path / "{profile}-{date}.mkv"))
    assert code == 0, err
    today = datetime.now().strftime("%Y-%m-%d")
    assert f"default\\-{today.replace('-', chr(92) + '-')}\\.mkv" in out, out


def test_go_help_documents_placeholders_and_overwrite(cli):
    code, out, _ = cli("go", "--help")
    assert code == 0
    flat = " ".join(out.split())
    for word in ("{date}", "{time}", "{profile}", "--overwrite", ".mov", "--image"):
        assert word in flat, word


# -- durations ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("278h", 1_000_800), ("30d", 2_592_000), ("7d12h", 648_000),
                                           ("1h30m", 5400), ("0.5s", 0.5), ("1.25", 1.25), ("366d", 31_622_400)])
def test_long_durations(text, seconds):
    assert plan.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["367d", "0s", "1e6", "1.2345s", "-5s", "5 s", "h"])
def test_durations_refused(text):
    with pytest.raises(UsageError):
        plan.parse_duration(text)


@settings(max_examples=300, deadline=None)
@given(days=st.integers(0, 30), hours=st.integers(0, 23), minutes=st.integers(0, 59), ms=st.integers(0, 59_999))
def test_argv_durations_are_never_in_exponent_form(days, hours, minutes, ms):
    text = f"{days}d{hours}h{minutes}m{ms / 1000:.3f}s"
    seconds = plan.parse_duration(text) if days or hours or minutes or ms else None
    if seconds is None:
        return
    expected = days * 86400 + hours * 3600 + minutes * 60 + ms / 1000
    assert abs(seconds - expected) < 1e-6
    argv = plan.build("ffmpeg", Input("test"), Encoding(), (plan.record_slave("x.mkv"),), seconds).argv
    value = argv[argv.index("-t") + 1]
    assert re.fullmatch(r"\d+(\.\d{1,6})?", value), value
    assert abs(float(value) - expected) < 1e-6


@given(st.floats(min_value=0.001, max_value=plan.MAX_DURATION_S, allow_nan=False))
def test_number_is_plain_decimal(value):
    text = plan.number(round(value, 3))
    assert re.fullmatch(r"\d+(\.\d+)?", text), text
    assert abs(float(text) - round(value, 3)) < 1e-6


def test_cli_long_duration_dry_run_and_schedule(cli, dest):
    code, out, err = cli("go", "--test-pattern", "--duration", "278h", "--dry-run")
    assert code == 0, err
    assert " -t 1000800 " in out and "e+" not in out
    code, out, err = cli("schedule", "add", "@daily", "--print", "--", "go", "--test-pattern", "--duration", "30d")
    assert code == 0, err
    assert "--duration 30d" in out
    code, out, err = cli("schedule", "add", "@daily", "--print", "--", "go", "--test-pattern", "--duration", "400d")
    assert code == 2 and "more than a year" in one_error_line(err)


# -- options that cannot work together ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--test-pattern", "--copy"], "--copy cannot be used with --test-pattern"),
    (["v4l2:/dev/video0", "--copy"], "--copy cannot be used with a capture device"),
    (["v4l2:/dev/video0", "--audio", "pulse:default", "--copy"], "capture device"),
    (["x.mp4", "--copy", "--size", "640x360"], "cannot be used with --copy"),
    (["x.m4a", "--copy", "--image", "c.png"], "--image cannot be used with --copy"),
    (["--test-pattern", "--image", "c.png"], "--image goes with an audio-only input file"),
    (["--test-pattern", "--plain", "--json"], "--plain and --json"),
])
def test_conflicting_options_are_refused_up_front(cli, dest, args, message):
    code, out, err = cli("go", *args, "--duration", "10s")
    assert code == 2, err
    assert message in one_error_line(err)


# -- audio-only and video-only inputs -----------------------------------------------------------------------------------

AUDIO_ONLY = Input("file", "talk.m4a", has_video=False)


def test_audio_only_argv_black_and_cover():
    argv = plan.build("ffmpeg", AUDIO_ONLY, Encoding(fps=25), (plan.record_slave("x.mkv"),)).argv
    a = " ".join(argv)
    assert "-re -i talk.m4a -f lavfi -i color=c=black:size=1280x720:rate=25 -map 1:v:0 -map 0:a:0 -shortest" in a
    assert "-g 50" in a
    cover = Input("file", "talk.m4a", has_video=False, image="cover.png")
    a = " ".join(plan.build("ffmpeg", cover, Encoding(size=(640, 360)), (plan.record_slave("x.mkv"),)).argv)
    assert "-re -i talk.m4a -loop 1 -framerate 30 -i cover.png -map 1:v:0 -map 0:a:0 -shortest" in a
    assert "-vf scale=640:360:force_original_aspect_ratio=decrease,pad=640:360:(ow-iw)/2:(oh-ih)/2,setsar=1" in a
    with pytest.raises(UsageError, match="--copy"):
        plan.build("ffmpeg", AUDIO_ONLY, Encoding(copy=True), (plan.record_slave("x.ts"),))


def test_generated_tracks_end_with_the_file_when_its_length_is_known():
    """Unpaced, the picture (or the silence) runs ahead of the -re file and -shortest let it overrun the sound by
    over a second on a loaded machine: the generated input is cut at the file's probed length instead."""
    known = Input("file", "talk.m4a", has_video=False, length=3.008)
    a = " ".join(plan.build("ffmpeg", known, Encoding(fps=25), (plan.record_slave("x.mkv"),)).argv)
    assert "-re -i talk.m4a -f lavfi -t 3.008 -i color=c=black:size=1280x720:rate=25 -map 1:v:0 -map 0:a:0 " \
           "-shortest" in a
    cover = replace(known, image="cover.png")
    a = " ".join(plan.build("ffmpeg", cover, Encoding(), (plan.record_slave("x.mkv"),)).argv)
    assert "-loop 1 -framerate 30 -t 3.008 -i cover.png" in a
    silent = Input("file", "v.mp4", has_audio=False, fps=30.0, length=12.5)
    a = " ".join(plan.build("ffmpeg", silent, Encoding(), (plan.record_slave("x.mkv"),)).argv)
    assert "-f lavfi -t 12.5 -i anullsrc" in a
    looped = replace(known, loop=True)  # a looped file never ends: nothing to cut at
    assert "-t" not in plan.build("ffmpeg", looped, Encoding(), (plan.record_slave("x.mkv"),)).argv


def test_video_only_argv_gets_silence_also_with_copy():
    silent = Input("file", "v.mp4", has_audio=False, fps=30.0)
    a = " ".join(plan.build("ffmpeg", silent, Encoding(), (plan.record_slave("x.mkv"),)).argv)
    assert "-re -i v.mp4 -f lavfi -i anullsrc=channel_layout=stereo:sample_rate=48000 -map 0:v:0 -map 1:a:0" in a
    assert "-c:a aac" in a
    a = " ".join(plan.build("ffmpeg", silent, Encoding(copy=True), (plan.record_slave("x.ts"),)).argv)
    assert "-c copy -tag:v 7 -c:a aac" in a and "-tag:a" not in a


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    import subprocess

    folder = tmp_path_factory.mktemp("media")
    talk, vid, cover = folder / "talk.m4a", folder / "vid.mp4", folder / "cover.png"
    run = dict(check=True, timeout=60, capture_output=True)
    subprocess.run([FFMPEG, "-nostdin", "-y", "-f", "lavfi", "-i", "sine=f=440:r=48000", "-t", "3", "-c:a", "aac",
                    str(talk)], **run)
    subprocess.run([FFMPEG, "-nostdin", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=15", "-t", "3",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(vid)], **run)
    subprocess.run([FFMPEG, "-nostdin", "-y", "-f", "lavfi", "-i", "testsrc2=size=200x300", "-frames:v", "1",
                    str(cover)], **run)
    return {"talk": talk, "vid": vid, "cover": cover}


def test_cli_announces_the_added_track_in_one_line(cli, dest, media):
    code, out, err = cli("go", str(media["talk"]), "--dry-run")
    assert code == 0, err
    notes = [ln for ln in err.splitlines() if ln.startswith("restream: notice:")]
    assert len(notes) == 1 and "has no video" in notes[0] and "black picture at 1280x720, 30 fps" in notes[0], err
    code, out, err = cli("go", str(media["talk"]), "--dry-run", "--image", str(media["cover"]), "--size", "640x360")
    assert code == 0, err
    assert f"{media['cover']} (fitted) at 640x360" in err
    code, out, err = cli("go", str(media["vid"]), "--dry-run")
    assert code == 0, err
    assert [ln for ln in err.splitlines() if "notice" in ln] == [
        f"restream: notice: {media['vid']} has no audio: adding silent AAC (48 kHz stereo), as platforms expect an "
        "audio track"]


def test_cli_refuses_what_cannot_be_done_with_such_inputs(cli, dest, media):
    code, _, err = cli("go", str(media["talk"]), "--copy")
    assert code == 2 and "has no video" in one_error_line(err)
    code, _, err = cli("go", str(media["vid"]), "--image", str(media["cover"]))
    assert code == 2 and "--image is for audio-only inputs" in one_error_line(err)
    code, _, err = cli("go", str(media["talk"]), "--image", str(media["talk"]))
    assert code == 2 and "not a picture" in one_error_line(err)


# -- the recording's state in snapshots and views ----------------------------------------------------------------------

def _fold(*events):
    snap = status.initial("p")
    for e in events:
        snap = status.reduce(snap, e)
    return snap


def test_a_failed_recording_is_in_the_summary_and_the_json_end():
    import io
    import json

    start = ev.Started(1.0, "p", "in", "ff", 1, (("a", "rtmp://h/live"),))
    events = [start, ev.Recording(1.0, "rec.mkv", "recording"), ev.DestState(1.5, "a", "live"),
              ev.Recording(3.0, "rec.mkv", "failed", "No space left on device"),
              ev.Recording(3.1, "rec.mkv", "recording"), ev.Ended(5.0, 1, "duration reached", 0)]
    snap = _fold(*events)
    assert snap.recording == status.RecordStatus("rec.mkv", "failed", "No space left on device")
    assert "summary recording: failed (No space left on device), rec.mkv" in view.summary_lines(snap)
    out = io.StringIO()
    v = view.JsonView(out)
    s = status.initial("p")
    for e in events:
        s = status.reduce(s, e)
        v.update(s, e)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [x["state"] for x in lines if x["event"] == "recording"][:2] == ["recording", "failed"]
    assert lines[-1]["recording"] == {"path": "rec.mkv", "state": "failed", "error": "No space left on device"}
    ok = _fold(start, ev.Recording(1.0, "rec.mkv", "recording"), ev.Ended(5.0, 0, "input ended", 0))
    assert ok.recording.state == "recorded"


# -- real broadcasts ------------------------------------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_a_recording_that_fails_mid_broadcast_is_reported_and_exits_1(cli, tmp_path):
    import json
    import subprocess
    import sys

    from support import Receiver, free_port

    r = Receiver(free_port(), tmp_path / "r.flv", key="key-r").start()
    try:
        assert cli("add", "r", "--url", r.url, "--key", "key-r")[0] == 0
        full = tmp_path / "full.ts"
        full.symlink_to("/dev/full")  # every write fails: "No space left on device"
        proc = subprocess.run(
            [sys.executable, "-m", "restream", "go", "--test-pattern", "--size", "320x180", "--fps", "15",
             "--video-bitrate", "1500k", "--duration", "4s", "--json", "--record", str(full), "--overwrite"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        r.kill()
    events = [json.loads(x) for x in proc.stdout.splitlines()]
    assert proc.returncode == 1, proc.stderr
    rec = [e for e in events if e["event"] == "recording"]
    assert rec[0]["state"] == "recording" and rec[-1]["state"] == "failed", rec
    assert "No space left" in rec[-1]["error"]
    end = events[-1]
    assert end["event"] == "end" and end["exit_code"] == 1 and end["recording"]["state"] == "failed"
    assert end["destinations"]["r"]["state"] == "stopped"


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_an_audio_only_file_goes_out_with_a_picture(cli, tmp_path, media):
    import subprocess
    import sys

    from support import Receiver, free_port

    r = Receiver(free_port(), tmp_path / "r.flv", key="key-r").start()
    rec = tmp_path / "rec-{profile}.mkv"
    try:
        assert cli("add", "r", "--url", r.url, "--key", "key-r")[0] == 0
        proc = subprocess.run(
            [sys.executable, "-m", "restream", "go", str(media["talk"]), "--plain", "--size", "320x180",
             "--video-bitrate", "300k", "--record", str(rec)],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        r.proc.wait(10)
    finally:
        r.kill()
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "has no video" in proc.stderr
    for path in (r.out, tmp_path / "rec-default.mkv"):
        m = probe(path)
        assert (m.video_codec, m.audio_codec) == ("h264", "aac") and m.decodes, m
        assert abs(m.duration - 3) <= 0.5, m  # the picture ends with the sound (it overran by 1.3 s under load)
    assert "summary recording: recorded" in proc.stdout


def test_relay_record_needs_once_and_is_checked(cli, dest, tmp_path):
    code, _, err = cli("relay", "--record", str(tmp_path / "r.mkv"))
    assert code == 2 and "--record in relay mode needs --once" in one_error_line(err)
    old = tmp_path / "old.mkv"
    old.write_bytes(b"keep")
    code, _, err = cli("relay", "--once", "--record", str(old))
    assert code == 2 and "file exists" in one_error_line(err)
    assert old.read_bytes() == b"keep"


def test_demo_sample_never_replaces_a_file(cli, tmp_path):
    old = tmp_path / "show.mp4"
    old.write_bytes(b"mine")
    code, _, err = cli("demo", "--sample", str(old))
    assert code == 2 and "file exists" in one_error_line(err)
    assert old.read_bytes() == b"mine"
    code, _, err = cli("demo", "--sample", str(tmp_path / "no" / "dir.mp4"))
    assert code == 2 and "No such file or directory" in one_error_line(err)
