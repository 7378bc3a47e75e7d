"""--slate [FILE] and --slate-timeout: what is refused up front (one line, exit 2, nothing started), the argv of the
switcher's broadcast ffmpeg and of a source session, and the source's state in the status and the views."""

from __future__ import annotations

import io
import json

import pytest

from restream import events as ev
from conftest import one_error_line
from restream import plan, status, view







@pytest.mark.parametrize("args, message", [
    (["go", "--test-pattern", "--slate"], "--slate is for live inputs"),
    (["go", "-", "--slate"], "cannot reopen standard input"),
    (["go", "rtmp://127.0.0.1:9/live/x", "--slate", "--copy"], "leave out --copy"),
    (["go", "rtmp://127.0.0.1:9/live/x", "--slate-timeout", "5m"], "--slate-timeout goes with --slate"),
    (["go", "--slate", "rtmp://127.0.0.1:9/live/x"], "put --slate after the input"),
    (["go", "rtmp://127.0.0.1:9/live/x", "--slate", "--slate-timeout", "soon"], "invalid duration"),
    (["relay", "--slate", "--once"], "use one or the other"),
    (["relay", "--size", "640x360"], "add --slate or --transcode"),
])
def test_refused_up_front(cli, dest, args, message):
    code, out, err = cli(*args)
    assert code == 2, err
    assert message in one_error_line(err)


def test_a_slate_file_that_is_not_media_is_refused(cli, dest, tmp_path):
    junk = tmp_path / "slate.png"
    junk.write_text("not a picture")
    code, _, err = cli("go", "rtmp://127.0.0.1:9/live/x", "--slate", str(junk), "--dry-run")
    assert code == 2 and "slate.png" in one_error_line(err)
    code, _, err = cli("go", "rtmp://127.0.0.1:9/live/x", f"--slate={tmp_path / 'missing.png'}", "--dry-run")
    assert code == 2 and "not found" in one_error_line(err)


def test_dry_run_shows_the_switcher_s_pipes(cli, dest):
    code, out, err = cli("go", "rtmp://127.0.0.1:9/live/x", "--slate", "--size", "640x360", "--fps", "25",
                         "--dry-run")
    assert code == 0, err
    assert "--slate" in out and "-f rawvideo -pix_fmt yuv420p -video_size 640x360 -framerate 25" in out
    assert "-f s16le -sample_rate 48000 -ch_layout stereo" in out and "-map 0:v:0 -map 1:a:0" in out
    assert "-re" not in out.split()  # the switcher paces, by the wall clock


def test_help_shows_slate_with_an_example(cli):
    for command in ("go", "relay"):
        code, out, _ = cli(command, "--help")
        assert code == 0 and "--slate" in out and "--slate-timeout" in out
    assert "--slate" in cli("relay", "--help")[1].split("Examples")[-1]


def test_broadcast_argv_reads_raw_frames_and_encodes_once():
    raw = plan.Raw((1280, 720), "30000/1001", 5, 6)
    inp = plan.Input("switch", raw=raw)
    p = plan.build("ffmpeg", inp, plan.Encoding(), (plan.relay_slave("slot-0", "rtmp://127.0.0.1:1/slot/slot-0"),))
    argv = list(p.argv)
    assert argv[argv.index("-video_size") + 1] == "1280x720" and argv[argv.index("-framerate") + 1] == "30000/1001"
    assert "pipe:5" in argv and "pipe:6" in argv
    assert "-vf" not in argv  # the switcher already made the frames at the size and rate
    assert argv[argv.index("-g") + 1] == "60"  # two-second keyframes at 29.97


def test_source_argv_fits_any_picture_and_maps_sound_if_there_is_some():
    argv = plan.source_argv("ffmpeg", plan.Input("listen"), (1280, 720), "30", 7, 8)
    assert argv[argv.index("-fpsprobesize") + 1] == "0" and "-threads" in argv
    assert argv[argv.index("-i") - 2:argv.index("-i") + 2] == ["-f", "flv", "-i", "pipe:0"]
    vf = argv[argv.index("-vf") + 1]
    assert vf.startswith("fps=fps=30:start_time=0,scale=1280:720:force_original_aspect_ratio=decrease,pad=1280:720")
    assert "0:a:0?" in argv and "aresample=48000:async=1:first_pts=0" in argv
    tee = argv[-1]
    assert "[f=rawvideo:select=v:flush_packets=1]pipe\\:7" in tee
    assert "[f=s16le:select=a:flush_packets=1:onfail=ignore]pipe\\:8" in tee  # no sound: that slave fails alone
    first = plan.source_argv("ffmpeg", plan.Input("url", "srt://127.0.0.1:9000?mode=listener"), None, None, 3, 4)
    assert first[first.index("-vf") + 1].startswith("fps=fps=source_fps:start_time=0,scale=trunc(iw/2)*2")


def test_source_state_in_the_status_and_the_views():
    s = status.initial(profile="p")
    s = status.reduce(s, ev.Started(100.0, "p", "relay ingest", "ffmpeg", None, (("a", "rtmp://h/live"),)))
    s = status.reduce(s, ev.SourceState(100.0, "waiting", "waiting for a publisher"))
    s = status.reduce(s, ev.SourceState(101.0, "live", "publisher #1"))
    s = status.reduce(s, ev.SourceState(105.0, "slate", "the source ended"))
    s = status.reduce(s, ev.SourceState(112.0, "live", "publisher #2"))
    s = status.reduce(s, ev.SourceState(120.0, "slate", "the source ended"))
    assert s.source.handovers == 1 and s.source.slate_total(123.0) == pytest.approx(10.0)
    out = io.StringIO()
    v = view.JsonView(out)
    v.update(s, ev.SourceState(120.0, "slate", "the source ended"))
    obj = json.loads(out.getvalue())
    assert obj["event"] == "source" and obj["state"] == "slate" and obj["handovers"] == 1
    s = status.reduce(s, ev.Ended(123.0, 0, "no source (--slate-timeout)", 0, slate_s=10.0, handovers=1))
    lines = view.summary_lines(s)
    assert "summary source: on the slate 00:00:10, 1 hand-over back to a live source" in lines
    out = io.StringIO()
    view.JsonView(out)._finish(s)
    end = json.loads(out.getvalue())
    assert end["slate_s"] == 10.0 and end["handovers"] == 1
