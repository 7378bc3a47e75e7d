"""The views over status snapshots: plain lines, JSON lines, the Rich live table, the log file.

Deterministic: explicit event timestamps, no sleeps; Rich rendered to recording consoles of fixed width.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time

import pytest
from rich.console import Console

from restream import events as ev
from restream import status, view
from restream.status import host_of

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
ISO_S = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
MARK = "ERRMARK-7f3a"  # a marker in an error string: views print it as given (redaction happens upstream)

DESTS = (("youtube", "rtmp://a.rtmp.youtube.com/live2"), ("twitch", "rtmps://live.twitch.tv:443/app"),
         ("local-recorder", "rtmp://127.0.0.1:19350/live"), ("facebook", "rtmps://live-api-s.facebook.com:443/rtmp/"),
         ("kick", "rtmps://fa723fc1b171.global-contribute.live-video.net/app"))


def transcript(interval_events: int = 35) -> list:
    """Five destinations; facebook fails and retries; youtube drops and recovers; a warning repeats."""
    out = [ev.Started(T0, "default", "testsrc 1280x720@30", "/usr/bin/ffmpeg (7.0.2)", 4242, DESTS)]
    out += [ev.DestState(T0 + 1, n, ev.LIVE) for n in ("youtube", "twitch", "local-recorder", "kick")]
    out.append(ev.DestState(T0 + 1.2, "facebook", ev.RETRYING, error=f"Connection refused {MARK}"))
    for i in range(1, interval_events + 1):
        t = T0 + 1 + i
        out.append(ev.Progress(t, frame=30 * i, fps=30.0, out_time_s=float(i), speed=1.0, drop_frames=0))
        out.append(ev.Traffic(t, tuple((n, 600_000 * i) for n in ("youtube", "twitch", "local-recorder", "kick"))))
        if i in (3, 4, 5):
            out.append(ev.Log(t, "warning", "[flv @ 0x55d0] Failed to update header with correct duration."))
        if i == 6:
            out.append(ev.DestState(t, "facebook", ev.RETRYING, error=f"Connection refused {MARK}"))  # same again
        if i == 8:
            out.append(ev.DestState(t, "youtube", ev.RETRYING, error="Broken pipe"))
        if i == 12:
            out.append(ev.DestState(t, "youtube", ev.LIVE))
        if i == 14:
            out.append(ev.Log(t, "info", "Stream mapping: verbose details"))
            out.append(ev.Log(t, "restream", "relay slot 2 assigned to kick"))
    out.append(ev.Ended(T0 + interval_events + 2, 0, "duration reached", 0))
    return out


def drive(v, evs, close=True):
    s = status.initial()
    for e in evs:
        s = status.reduce(s, e)
        v.update(s, e)
    if close:
        v.close(s)
    return s


# -- plain --------------------------------------------------------------------------------------------------------

def test_plain_lines_format_and_cadence():
    buf = io.StringIO()
    drive(view.make_view("plain", stream=buf, status_interval=10), transcript())
    lines = buf.getvalue().splitlines()
    assert all(ISO_S.match(line) for line in lines), lines
    text = buf.getvalue()
    assert lines[0] == ("2027-01-15T08:00:00Z start: profile default, input testsrc 1280x720@30, "
                        "ffmpeg /usr/bin/ffmpeg (7.0.2), destinations: youtube (a.rtmp.youtube.com), "
                        "twitch (live.twitch.tv:443), local-recorder (127.0.0.1:19350), "
                        "facebook (live-api-s.facebook.com:443), kick (fa723fc1b171.global-contribute.live-video.net)")
    assert "2027-01-15T08:00:01Z youtube: live" in lines
    assert f"2027-01-15T08:00:01Z facebook: retrying (Connection refused {MARK})" in lines  # verbatim, not re-redacted
    assert "2027-01-15T08:00:09Z youtube: retrying (Broken pipe)" in lines
    assert "2027-01-15T08:00:13Z youtube: live" in lines
    assert text.count("Z facebook: retrying") == 1  # the identical repeat is not news
    progress = [line for line in lines if " progress: " in line]
    assert [p[:20] for p in progress] == ["2027-01-15T08:00:10Z", "2027-01-15T08:00:20Z", "2027-01-15T08:00:30Z"]
    assert progress[0] == ("2027-01-15T08:00:10Z progress: 00:00:09 stream, 30.0 fps, 4800 kbit/s, 1.00x, 3/5 live")
    assert "warning: [flv @ 0x55d0] Failed to update header" in text and text.count("Failed to update header") == 1
    assert "restream: relay slot 2 assigned to kick" in text
    assert "Stream mapping" not in text  # info-level ffmpeg lines stay out of plain output
    assert lines[-1].startswith("2027-01-15T08:00:37Z end: duration reached, exit 0, elapsed 00:00:37, stream 00:00:35")
    assert lines[-1].endswith("4/5 destinations delivered")
    summary = [line for line in lines if " summary " in line]
    assert summary[0] == "2027-01-15T08:00:37Z summary youtube: delivered, live 00:00:32, 1 reconnect, 21.0 MB sent, " \
                         "last error: Broken pipe"
    assert summary[3].startswith("2027-01-15T08:00:37Z summary facebook: retrying, live 00:00:00, 0 reconnects, 0 B")
    assert len(summary) == 5


def test_plain_file_input_shows_position_and_length():
    buf = io.StringIO()
    v = view.PlainView(buf, status_interval=5)
    s = status.initial(input_duration=90.0)
    for e in (ev.Started(T0, "p", "clip.mp4", "ff", 1, ()), ev.Progress(T0 + 5, out_time_s=4.5, fps=25.0)):
        s = status.reduce(s, e)
        v.update(s, e)
    last = buf.getvalue().splitlines()[-1]
    assert last.endswith("progress: 00:00:04/00:01:30 stream, 25.0 fps, - kbit/s, -x, 0/0 live")


def test_plain_throttles_repeats_and_counts_them():
    buf = io.StringIO()
    v = view.PlainView(buf)
    s = status.reduce(status.initial(), ev.Started(T0, "p", "i", "f", 1, ()))
    for t in (1, 2, 3, 30, 62, 63):
        e = ev.Log(T0 + t, "error", "Error writing trailer: Broken pipe")
        s = status.reduce(s, e)
        v.update(s, e)
    lines = [line for line in buf.getvalue().splitlines() if "Broken pipe" in line]
    assert lines == ["2027-01-15T08:00:01Z error: Error writing trailer: Broken pipe",
                     "2027-01-15T08:01:02Z error: Error writing trailer: Broken pipe (repeated 3 more times)"]


def test_plain_quiet_only_problems_and_summary():
    buf = io.StringIO()
    drive(view.make_view("plain", stream=buf, quiet=True, status_interval=1), transcript())
    text = buf.getvalue()
    assert " start: " not in text and " progress: " not in text and ": live\n" not in text
    assert "relay slot" not in text  # restream notices are not problems
    assert f"facebook: retrying (Connection refused {MARK})" in text and "youtube: retrying (Broken pipe)" in text
    assert "warning: [flv @ 0x55d0]" in text
    assert text.count(" summary ") == 5 and " end: duration reached" in text


def test_live_quiet_falls_back_to_quiet_plain():
    assert isinstance(view.make_view("live", stream=io.StringIO(), quiet=True), view.PlainView)
    with pytest.raises(ValueError):
        view.make_view("fancy")


# -- JSON ---------------------------------------------------------------------------------------------------------

REQUIRED = {
    "start": {"event", "ts", "profile", "input", "ffmpeg", "destinations"},
    "state": {"event", "ts", "destination", "state", "error"},
    "progress": {"event", "ts", "time_s", "fps", "bitrate_kbps", "speed", "frames", "dropped"},
    "log": {"event", "ts", "level", "message"},
    "end": {"event", "ts", "exit_code", "duration_s", "destinations"},
}


def json_lines(evs, **kw):
    buf = io.StringIO()
    drive(view.make_view("json", stream=buf, **kw), evs)
    raw = buf.getvalue()
    assert raw.endswith("\n")
    return [json.loads(line) for line in raw.splitlines()]  # every line parses, nothing else on the stream


def test_json_every_line_parses_with_the_required_keys():
    objs = json_lines(transcript(), status_interval=5)
    kinds = [o["event"] for o in objs]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("end") == 1
    for o in objs:
        assert REQUIRED[o["event"]] <= o.keys(), o
        assert ISO_MS.match(o["ts"])
    start = objs[0]
    assert start["destinations"][0] == {"name": "youtube", "url": "rtmp://a.rtmp.youtube.com/live2",
                                        "host": "a.rtmp.youtube.com"}
    assert start["ts"] == "2027-01-15T08:00:00.000Z" and start["profile"] == "default"
    states = [(o["destination"], o["state"], o["error"]) for o in objs if o["event"] == "state"]
    assert states == [("youtube", "live", None), ("twitch", "live", None), ("local-recorder", "live", None),
                      ("kick", "live", None), ("facebook", "retrying", f"Connection refused {MARK}"),
                      ("youtube", "retrying", "Broken pipe"), ("youtube", "live", None)]
    progress = [o for o in objs if o["event"] == "progress"]
    assert [o["ts"][11:19] for o in progress] == ["08:00:05", "08:00:10", "08:00:15", "08:00:20", "08:00:25",
                                                  "08:00:30", "08:00:35"]
    p = progress[1]
    assert (p["time_s"], p["fps"], p["speed"], p["frames"], p["dropped"], p["bitrate_kbps"]) == (
        9.0, 30.0, 1.0, 270, 0, 4800.0)
    logs = [o for o in objs if o["event"] == "log"]
    assert [(o["level"], o["message"][:12]) for o in logs] == [("warning", "[flv @ 0x55d"),
                                                               ("restream", "relay slot 2")]
    end = objs[-1]
    assert end["exit_code"] == 0 and end["duration_s"] == 37.0 and end["reason"] == "duration reached"
    assert {n: (d["state"], d["reconnects"], d["uptime_s"]) for n, d in end["destinations"].items()} == {
        "youtube": ("stopped", 1, 32.0), "twitch": ("stopped", 0, 36.0), "local-recorder": ("stopped", 0, 36.0),
        "facebook": ("retrying", 0, 0.0), "kick": ("stopped", 0, 36.0)}


def _strings(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, (*path, k))
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v, path)
    elif isinstance(obj, str):
        yield path, obj


def _given(evs) -> set[str]:
    """Every string the events carry (the only text a view may print), plus the hosts derived from their URLs."""
    found: set[str] = set()

    def walk(x):
        if isinstance(x, str):
            found.add(x)
            found.add(host_of(x))
        elif isinstance(x, tuple):
            for y in x:
                walk(y)
        elif hasattr(x, "__dataclass_fields__"):
            for name in x.__dataclass_fields__:
                walk(getattr(x, name))

    for e in evs:
        walk(e)
    return found


def test_json_prints_only_what_the_events_and_snapshot_hold():
    evs = transcript()
    kick_url = "rtmps://fa723fc1b171.global-contribute.live-video.net/app"
    evs.insert(8, ev.DestState(T0 + 3, "kick", ev.ADDED, url=kick_url))
    evs.insert(9, ev.DestState(T0 + 3, "local-recorder", ev.REMOVED))
    objs = json_lines(evs, status_interval=10)
    allowed = _given(evs) | set(ev.STATES) | set(REQUIRED) | {"removed"}
    for o in objs:
        for path, value in _strings(o):
            if path[-1] == "ts":
                continue
            assert value in allowed, (path, value)
    transitions = [(o["destination"], o["state"]) for o in objs if o["event"] == "state"]
    assert ("kick", "added") in transitions and ("local-recorder", "removed") in transitions
    added = next(o for o in objs if o.get("state") == "added")
    assert added["url"] == "rtmps://fa723fc1b171.global-contribute.live-video.net/app"
    # the marker from the error string is carried verbatim, and only where that error belongs
    carriers = {(o["event"], path) for o in objs for path, value in _strings(o) if MARK in value}
    assert carriers == {("state", ("error",)), ("end", ("destinations", "facebook", "last_error"))}


def test_json_end_without_ended_event_and_only_once():
    buf = io.StringIO()
    v = view.JsonView(buf)
    s = drive(v, transcript()[:10], close=False)
    v.close(s)
    v.close(s)
    objs = [json.loads(line) for line in buf.getvalue().splitlines()]
    ends = [o for o in objs if o["event"] == "end"]
    assert len(ends) == 1 and ends[0]["exit_code"] is None and ends[0]["destinations"]["youtube"]["state"] == "live"


# -- live ---------------------------------------------------------------------------------------------------------

def _final(evs):
    s = status.initial()
    for e in evs:
        s = status.reduce(s, e)
    return s


@pytest.mark.parametrize("width", [80, 120])
def test_live_table_fits_and_shows_every_row(width):
    evs = transcript()[:-1]  # still running
    s = _final(evs)
    console = Console(width=width, record=True, file=io.StringIO(), force_terminal=True)
    console.print(view.LiveView.render(s))
    screen = console.export_text()
    lines = screen.splitlines()
    assert all(len(line) <= width for line in lines)
    rows = {line.split()[0]: line for line in lines if line and line.split()[0] in dict(DESTS)}
    assert set(rows) == set(dict(DESTS)), screen
    for d in s.destinations:
        assert d.state in rows[d.name].split(), (d.name, rows[d.name])
    assert "elapsed 00:00:36" in screen and "stream 00:00:35" in screen and "4800 kbit/s" in screen
    assert "fps 30.0" in screen and "live 4/5" in screen and "frames 1050" in screen and "dropped 0" in screen
    assert "Connection re" in rows["facebook"]  # last error, truncated
    if width >= 120:
        assert "a.rtmp.youtube.com" in rows["youtube"]  # hosts fit on a wide screen
    else:
        assert "a.rtmp.youtube.com" not in screen  # the host column is the first to go


def test_live_table_narrow_keeps_name_and_state():
    s = _final(transcript()[:-1])
    console = Console(width=50, record=True, file=io.StringIO())
    console.print(view.LiveView.render(s))
    screen = console.export_text()
    assert all(len(line) <= 50 for line in screen.splitlines())
    for d in s.destinations:
        assert any(line.startswith(d.name[:10]) and d.state in line for line in screen.splitlines()), d.name


def test_live_header_shows_file_position():
    s = status.initial(input_duration=600.0)
    for e in (ev.Started(T0, "p", "talk.mp4", "ff", 1, DESTS[:1]), ev.Progress(T0 + 62, out_time_s=61.0)):
        s = status.reduce(s, e)
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(view.LiveView.render(s))
    assert "stream 00:01:01/00:10:00" in console.export_text()


SGR_COLOUR = re.compile(r"\x1b\[[0-9;]*(?:3[0-9]|9[0-7]|4[0-9]|10[0-7])(?:;[0-9;]*)?m")


def _live_run(width: int, no_color: bool | None, err=None):
    buf = io.StringIO()
    console = Console(file=buf, width=width, force_terminal=True, color_system="truecolor", no_color=no_color,
                      record=True)
    v = view.LiveView(console, err=err)
    drive(v, transcript())
    return buf.getvalue(), console


def test_live_no_color(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    raw, _ = _live_run(80, None)
    assert "live" in raw and not SGR_COLOUR.search(raw)
    monkeypatch.delenv("NO_COLOR")
    raw, _ = _live_run(80, None)
    assert SGR_COLOUR.search(raw)  # the check above is meaningful: with colour allowed there is colour


def test_live_close_leaves_a_summary_and_problems_go_to_err():
    err = io.StringIO()
    raw, console = _live_run(80, True, err=err)
    tail = raw[raw.rindex("summary"):]
    for name, _ in DESTS:
        assert name in tail
    assert "stopped" in tail and "retrying" in tail and "reconnects" in tail and "00:00:32" in tail
    assert "duration reached, exit 0" in tail
    # Live stopped: Rich's stop() signals its refresh thread without joining it, so give the thread a moment to end
    deadline = time.monotonic() + 3
    while [t for t in threading.enumerate() if type(t).__name__ == "_RefreshThread"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not [t for t in threading.enumerate() if type(t).__name__ == "_RefreshThread"]
    problems = err.getvalue().splitlines()
    assert problems == [
        f"2027-01-15T08:00:01Z facebook: retrying (Connection refused {MARK})",
        "2027-01-15T08:00:04Z warning: [flv @ 0x55d0] Failed to update header with correct duration.",
        "2027-01-15T08:00:09Z youtube: retrying (Broken pipe)"]


def test_live_problems_above_the_table_when_err_is_the_screen():
    raw, console = _live_run(80, True, err=None)
    text = console.export_text()
    assert "[00:00:01] facebook: retrying (Connection refused" in text
    assert text.count("Failed to update header") == 1
    # (a recording keeps no cursor moves, so a problem line follows the last live frame on the same text line)
    said = [line[line.index("[00:"):] for line in text.splitlines() if "[00:" in line]
    assert len(said) == 3 and all(len(line) <= 80 for line in said)
    assert said[1].endswith("duratio…") and len(said[1]) == 80


def test_live_view_on_a_non_terminal_prints_only_the_summary():
    buf = io.StringIO()
    v = view.make_view("live", stream=buf, err=io.StringIO(), no_color=True)
    drive(v, transcript())
    out = buf.getvalue()
    assert out.lstrip().startswith("summary") and "\x1b[" not in out


# -- log file -----------------------------------------------------------------------------------------------------

def test_log_file_appends_everything_with_mode_0600(tmp_path):
    path = tmp_path / "run.log"
    lf = view.LogFile(path, status_interval=10)
    drive(lf, transcript())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = path.read_text()
    lines = text.splitlines()
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", line) for line in lines)
    assert "info: Stream mapping: verbose details" in text  # all ffmpeg levels, unlike plain
    assert "youtube: retrying (Broken pipe)" in text and " progress: " in text and " end: duration reached" in text
    first = len(lines)
    lf2 = view.LogFile(path)
    drive(lf2, transcript()[:3])
    assert path.read_text().splitlines()[:first] == lines  # appended, not truncated
    closed = path.read_text()
    assert closed.splitlines()[-1].split(" ", 1)[1].startswith("end: "), closed  # the first close wrote the end
    # mutation caught: LogFile.close writing the summary again (or raising) when called a second time
    lf2.close(_final(transcript()[:3]))  # idempotent: nothing more written, no error
    assert path.read_text() == closed and lf2.file.closed


def test_log_file_keeps_mode_of_an_existing_file(tmp_path):
    path = tmp_path / "shared.log"
    path.write_text("before\n")
    os.chmod(path, 0o640)
    lf = view.LogFile(path)
    drive(lf, transcript()[:2])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640 and path.read_text().startswith("before\n")


def test_tee_fans_out():
    a, b = io.StringIO(), io.StringIO()
    drive(view.Tee(view.PlainView(a), view.JsonView(b)), transcript()[:6])
    assert " start: " in a.getvalue() and '"event":"start"' in b.getvalue()


def test_plain_and_json_paths_do_not_import_rich():
    code = ("import sys, io; from restream import view, status; "
            "view.make_view('json', stream=io.StringIO()); view.make_view('plain', stream=io.StringIO()); "
            "print('rich' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_live_draws_a_burst_of_events_once_then_its_last_state():
    """ffmpeg's start-up lines and the destinations' first states come as a burst: the live table is drawn at most
    every REDRAW_GAP_S (each redraw costs ~5 ms of CPU), and what the burst left is drawn when the gap is over."""
    import asyncio

    buf = io.StringIO()
    console = Console(file=buf, width=100, force_terminal=True, color_system=None)
    v = view.LiveView(console, err=io.StringIO())
    burst = [ev.Started(T0, "default", "testsrc 1280x720@30", "/usr/bin/ffmpeg (7.0.2)", 4242, DESTS)]
    burst += [ev.Log(T0, "info", f"ffmpeg start-up line {i}") for i in range(40)]
    burst += [ev.DestState(T0 + 0.1, n, ev.LIVE) for n, _ in DESTS]

    async def run() -> tuple[int, str]:
        s = status.initial()
        for e in burst:
            s = status.reduce(s, e)
            v.update(s, e)
        drawn = buf.getvalue().count("elapsed")
        deadline = time.monotonic() + 5
        while "live 5/5" not in buf.getvalue() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # the held-back redraw is a timer on this loop
        v.close(s)
        return drawn, buf.getvalue()

    drawn, out = asyncio.run(run())
    assert 1 <= drawn <= 2, f"{drawn} redraws for a burst of {len(burst)} events"
    assert "live 5/5" in out, "the burst's last state was never drawn"


def _cells(console, renderable, width: int) -> list[list[tuple[str, object]]]:
    """Each line as (character, style) pairs; spaces carry no visible style here (no background or underline is
    used), so theirs is dropped, and trailing spaces too."""
    from rich.segment import Segment

    out = []
    for line in console.render_lines(renderable, console.options.update_width(width), pad=False):
        chars = [(ch, None if ch == " " else seg.style or None) for seg in Segment.simplify(line) for ch in seg.text]
        while chars and chars[-1] == (" ", None):
            chars.pop()
        out.append(chars)
    return out


@pytest.mark.parametrize("width", [34, 45, 60, 80, 100, 120, 200])
def test_live_table_draws_what_richs_table_draws(width):
    """The live table is drawn straight as segments (Rich's Table costs ~5 ms a redraw): character for character
    and style for style, it is what Rich's Table draws for the same columns, over every state, a removed row, long
    and wide (CJK, emoji) names cut with an ellipsis, errors with and without room for them."""
    now = T0 + 100
    states = [ev.LIVE, ev.STALLED, ev.WAITING, ev.CONNECTING, ev.RETRYING, ev.FAILED, ev.STOPPED, "removed"]
    names = ["youtube", "twitch-main-channel-with-a-long-name", "配信テスト先の名前", "🎥 stream 🎥 camera", "k",
             "facebook", "x" * 40, "r"]
    for with_errors in (False, True):
        rows = tuple(
            status.DestStatus(name=n, host=f"host-{i}.example.net:1935" if i % 2 else "a.rtmp.youtube.com",
                              state=st, since=now - 7 * i, reconnects=i, uptime_s=61.0 * i,
                              last_error=(f"Connection refused {MARK} " * (i % 3)).strip() or None
                              if with_errors else None,
                              kbps=4500.0 + i if st == ev.LIVE else None)
            for i, (n, st) in enumerate(zip(names, states)))
        snap = status.Snapshot(profile="default", started_at=T0, now=now, destinations=rows)
        fast = view._dest_table(snap, width)
        assert isinstance(fast, view._FixedTable), "these widths fit the kept columns"
        reference = view._rich_table(fast.columns, fast.body, fast.row_styles)
        if fast.reasons:
            reference = view._WithReasons(reference, fast.reasons, head=2)
        console = Console(width=width, force_terminal=True, color_system="truecolor", file=io.StringIO())
        ours, richs = _cells(console, fast, width), _cells(console, reference, width)
        assert ours == richs, "\n".join(
            f"{''.join(c for c, _ in a)!r}\n{''.join(c for c, _ in b)!r}" for a, b in zip(ours, richs) if a != b)
        if width <= 120:  # (at 200 columns every name fits its column)
            assert any("…" in "".join(c for c, _ in line) for line in ours), "a cut cell is covered"
