"""Render status snapshots: a Rich live table, plain timestamped lines, JSON lines, and a log file.

Every view has ``update(snapshot, event)`` (called after each event, with the snapshot that event produced) and
``close(snapshot)``. Views only show what is in the snapshot or the event; text in events is redacted upstream.

Rich is imported lazily, inside the live view, so the plain and JSON paths stay light.
Timing (progress cadence, throttling of repeats) uses the events' ``ts``, never the clock: what views show is
deterministic. Only how often the live view redraws its table (at most every ``REDRAW_GAP_S``) follows the clock.

Formats (documented for users in ``docs/json-events.md``):

* plain: ``2026-11-27T05:31:02Z youtube: retrying (Connection refused)``; timestamps are UTC, to the second.
* JSON: one object per line; ``ts`` is an ISO-8601 UTC string with milliseconds, ``2026-11-27T05:31:02.123Z``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import OrderedDict
from datetime import datetime, timezone
from typing import IO, Any, Protocol

from restream import events as ev
from restream.redact import mask_url
from restream.status import DestStatus, Snapshot, ingests_label, outcome

PROBLEM_LEVELS = ("panic", "fatal", "error", "warning")
NOTICE_LEVEL = "restream"  # restream's own messages: shown in plain (not quiet) and JSON, not in the live view
REPEAT_WINDOW_S = 60.0  # an identical message is shown at most once per this many seconds of event time
REDRAW_GAP_S = 0.25  # the live table is redrawn at most 4 times a second, however many events come
TRAFFIC_REDRAW_S = 0.9  # a traffic count alone redraws a screen nothing else redrew for this long


class View(Protocol):
    def update(self, snap: Snapshot, event: ev.Event) -> None: ...

    def close(self, snap: Snapshot) -> None: ...


def make_view(mode: str, *, stream: IO[str] | None = None, err: IO[str] | None = None, quiet: bool = False,
              status_interval: float = 10.0, no_color: bool | None = None) -> View:
    """``mode``: "live" | "plain" | "json". ``stream``/``err`` default to sys.stdout/sys.stderr at call time.

    ``quiet`` applies to plain, and to live, which then falls back to quiet plain lines (a live table is not quiet);
    JSON ignores it (a script reading the stream wants all of it). ``no_color=None``: Rich reads ``NO_COLOR``.
    """
    stream = sys.stdout if stream is None else stream
    err = sys.stderr if err is None else err
    if mode == "json":
        return JsonView(stream, status_interval=status_interval)
    if mode == "plain" or (mode == "live" and quiet):
        return PlainView(stream, quiet=quiet, status_interval=status_interval)
    if mode == "live":
        return LiveView(stream=stream, err=err, no_color=no_color)
    raise ValueError(f"unknown view mode {mode!r} (live, plain or json)")


class Tee:
    """Several views as one (e.g. the screen view plus a LogFile)."""

    def __init__(self, *views: View) -> None:
        self.views = views

    def update(self, snap: Snapshot, event: ev.Event) -> None:
        for v in self.views:
            v.update(snap, event)

    def close(self, snap: Snapshot) -> None:
        for v in self.views:
            v.close(snap)


# -- formatting ---------------------------------------------------------------------------------------------------

def iso(ts: float, ms: bool = False) -> str:
    """UTC ISO-8601 with a ``Z``: ``2026-11-27T05:31:02Z`` (or ``…02.123Z``)."""
    moment = datetime.fromtimestamp(ts, tz=timezone.utc)
    if ms:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def clock(seconds: float | None) -> str:
    """``5423.7`` -> ``01:30:23``; None -> ``--:--:--``."""
    if seconds is None or not math.isfinite(seconds):
        return "--:--:--"
    whole = int(max(0.0, seconds))
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def age(seconds: float) -> str:
    """A short age: ``9s``, ``3m04s``, ``1h02m``, ``2d03h``."""
    whole = int(max(0.0, seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole // 60 % 60:02d}m"
    return f"{whole // 86400}d{whole // 3600 % 24:02d}h"


def human_bytes(n: int) -> str:
    """Decimal units: ``0 B``, ``950 B``, ``12.3 kB``, ``1.2 GB``."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


def _fig(value: float | None, fmt: str, none: str = "-") -> str:
    return none if value is None or not math.isfinite(value) else format(value, fmt)


def stream_time(snap: Snapshot) -> str:
    """``00:01:30``, or ``00:01:30/00:05:00`` when the input's length is known."""
    if snap.input_duration:
        return f"{clock(snap.out_time_s)}/{clock(snap.input_duration)}"
    return clock(snap.out_time_s)


def one_line(text: str) -> str:
    return " ".join(text.split())


def state_line(name: str, state: str, error: str | None) -> str:
    return f"{name}: {state}" + (f" ({one_line(error)})" if error else "")


def state_text(d: DestStatus, now: float) -> str:
    """The state as shown in tables: a stalled destination says for how long."""
    if d.ingests and d.state in (ev.LIVE, ev.STALLED, ev.STOPPED):  # backup = "both"
        base = f"stalled {age(now - d.stalled_since)}" if d.state == ev.STALLED and d.stalled_since else d.state
        return f"{base} ({ingests_text(d)})"
    if d.state == ev.STALLED and d.stalled_since is not None:
        return f"stalled {age(now - d.stalled_since)}"
    if d.ingest == "backup" and d.state in (ev.LIVE, ev.STALLED, ev.STOPPED):
        return f"{d.state} (backup)"
    return d.state


def ingests_text(d: DestStatus) -> str:
    """backup = "both": ``primary+backup``, ``primary; backup retrying``."""
    return ingests_label((i.ingest, i.state) for i in d.ingests)


def ingest_state_line(e: "ev.IngestState") -> str:
    state = "delivered" if e.state == ev.STOPPED else e.state
    return f"{e.name}: {e.ingest} ingest {state}" + (f" ({one_line(e.error)})" if e.error else "")


def ingest_line(e: "ev.IngestSwitch") -> str:
    return f"{e.name}: switched to the {e.ingest} ingest ({one_line(e.reason)})"


def stalled_note(d: DestStatus, now: float) -> str | None:
    if d.state == ev.STALLED and d.stalled_since is not None:
        return f"took no data for {age(now - d.stalled_since)}"
    return None


def progress_line(snap: Snapshot) -> str:
    parts = [f"{stream_time(snap)} stream", f"{_fig(snap.fps, '.1f')} fps", f"{_fig(snap.bitrate_kbps, '.0f')} kbit/s",
             f"{_fig(snap.speed, '.2f')}x", f"{snap.live_count}/{snap.active_count} live"]
    if snap.drop_frames:
        parts.append(f"{snap.drop_frames} dropped")
    return "progress: " + ", ".join(parts)


def recording_line(snap: Snapshot) -> str | None:
    """``recording: failed (No space left on device), show.mkv`` / ``recording: recorded, show.mkv``."""
    rec = snap.recording
    if rec is None:
        return None
    return f"recording: {rec.state}" + (f" ({one_line(rec.error)})" if rec.error else "") + f", {rec.path}"


def delivered(d: DestStatus) -> bool:
    """Stopped in order after carrying something (relay mode, --slate: one never reached by a source is not)."""
    return d.state == ev.STOPPED and (d.uptime_s > 0 or d.bytes_sent > 0)


def verdict_text(d: DestStatus) -> str:
    if d.state == ev.STOPPED:
        return "delivered" if delivered(d) else "never live (no source)"
    return d.state


def summary_lines(snap: Snapshot) -> list[str]:
    """One line per destination, the recording's, and one overall (no timestamps)."""
    lines = []
    for d in snap.destinations:
        verdict = verdict_text(d)
        if d.ingests:
            verdict += f" ({ingests_text(d)})"
        text = (f"summary {d.name}: {verdict}, live {clock(d.uptime_s)}, "
                f"{d.reconnects} reconnect{'' if d.reconnects == 1 else 's'}, {human_bytes(d.bytes_sent)} sent")
        if d.last_error:
            text += f", last error: {one_line(d.last_error)}"
        lines.append(text)
    if snap.recording is not None:
        lines.append("summary " + recording_line(snap))
    if (line := slate_line(snap)) is not None:
        lines.append("summary " + line)
    lines.append("end: " + overall(snap))
    return lines


def source_line(snap: Snapshot) -> str:
    """``source: slate (the source ended), 12s``."""
    src = snap.source
    if src is None:
        return "source: -"
    detail = f" ({one_line(src.detail)})" if src.detail else ""
    return f"source: {src.state}{detail}"


def slate_counts(snap: Snapshot) -> tuple[float, int] | None:
    """(time on the slate, hand-overs): the switcher's own count at the end, else the events'."""
    end = snap.ended
    if end is not None and end.slate_s is not None:
        return end.slate_s, end.handovers or 0
    if snap.source is None or (end is not None and snap.source.state == "waiting"):
        return None  # (no --slate, or no source ever came: nothing went out)
    return snap.source.slate_total(snap.now), snap.source.handovers


def slate_line(snap: Snapshot) -> str | None:
    """``source: on the slate 1m12s, 3 hand-overs back to a live source``."""
    counts = slate_counts(snap)
    if counts is None:
        return None
    secs, handovers = counts
    return (f"source: on the slate {clock(secs)}, {handovers} hand-over{'' if handovers == 1 else 's'} back to a "
            "live source")


def _recording_dict(snap: Snapshot) -> dict | None:
    rec = snap.recording
    return None if rec is None else {"path": rec.path, "state": rec.state, "error": rec.error}


def overall(snap: Snapshot) -> str:
    """The end line: why and how it ended, time, stream time and bytes over every session, the verdicts."""
    end = snap.ended
    head = f"{end.reason}, exit {end.exit_code}" if end else "no end event"
    rows = [d for d in snap.destinations if d.state != ev.REMOVED]
    good = sum(1 for d in rows if delivered(d))
    sessions = end.sessions if end else None
    per = f"{sessions} publisher session{'' if sessions == 1 else 's'}, " if sessions is not None else ""
    return (f"{head}, elapsed {clock(snap.elapsed_s)}, {per}stream {clock(snap.stream_total_s)}, "
            f"{human_bytes(snap.bytes_out)} out, {good}/{len(rows)} destinations delivered")


# -- shared bookkeeping -------------------------------------------------------------------------------------------

class Throttle:
    """Show an identical message at most once per ``window`` seconds of event time; count what was held back."""

    def __init__(self, window: float = REPEAT_WINDOW_S, size: int = 256) -> None:
        self.window, self.size = window, size
        self._seen: OrderedDict[Any, list] = OrderedDict()  # key -> [last shown ts, repeats held back]

    def check(self, key: Any, ts: float) -> int | None:
        """None: hold this one back. Otherwise the number of repeats held back since it was last shown."""
        entry = self._seen.get(key)
        if entry is not None and ts - entry[0] < self.window:
            entry[1] += 1
            return None
        held = entry[1] if entry else 0
        self._seen[key] = [ts, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return held


class Ticker:
    """Due every ``interval`` seconds of event time, counted from the first time it is asked."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next: float | None = None

    def due(self, ts: float, start: float | None) -> bool:
        if self.interval <= 0:
            return True
        if self._next is None:
            self._next = (start if start is not None else ts) + self.interval
        if ts < self._next:
            return False
        while self._next <= ts:
            self._next += self.interval
        return True


class StateChanges:
    """Which DestState events are news: a new state, a new error, or an added/removed transition."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, str | None]] = {}

    def news(self, snap: Snapshot, e: ev.DestState) -> DestStatus | None:
        row = snap.destination(e.name)
        if row is None:
            return None
        key = (row.state, e.error)
        if e.state in (ev.ADDED, ev.REMOVED) or self._last.get(e.name) != key:
            self._last[e.name] = key
            return row
        return None


def _repeated(text: str, held: int) -> str:
    return f"{text} (repeated {held} more time{'s' if held != 1 else ''})" if held else text


# -- plain --------------------------------------------------------------------------------------------------------

class PlainView:
    """Timestamped lines: state changes, progress every ``status_interval`` s, problems, a final summary."""

    def __init__(self, stream: IO[str], *, quiet: bool = False, status_interval: float = 10.0,
                 all_logs: bool = False, ms: bool = False) -> None:
        self.stream, self.quiet, self.all_logs, self.ms = stream, quiet, all_logs, ms
        self._ticker = Ticker(status_interval)
        self._throttle = Throttle()
        self._changes = StateChanges()
        self._finished = False

    def _line(self, ts: float, text: str) -> None:
        self.stream.write(f"{iso(ts, self.ms)} {text}\n")
        self.stream.flush()

    def update(self, snap: Snapshot, event: ev.Event) -> None:
        if self._finished:
            return
        e = event
        if isinstance(e, ev.Started):
            if not self.quiet:
                dests = ", ".join(f"{d.name} ({d.host})" if d.host else d.name for d in snap.destinations)
                self._line(e.ts, f"start: profile {snap.profile}, input {snap.input}, ffmpeg {snap.ffmpeg}, "
                                 f"destinations: {dests or 'none'}")
        elif isinstance(e, ev.DestState):
            row = self._changes.news(snap, e)
            if row is None or (self.quiet and not e.error and row.state not in (ev.RETRYING, ev.FAILED)):
                return
            state = e.state if e.state in (ev.ADDED, ev.REMOVED) else row.state
            if state == ev.LIVE and row.ingest == "backup":
                state = "live (backup)"
            elif state in (ev.LIVE, ev.STOPPED) and row.ingests:
                state = f"{state} ({ingests_text(row)})"
            extra = e.error or (row.host if e.state == ev.ADDED and row.host else None) or stalled_note(row, snap.now)
            self._line(snap.now, state_line(row.name, state, extra))
        elif isinstance(e, ev.IngestSwitch):
            self._line(snap.now, ingest_line(e))
        elif isinstance(e, ev.SourceState):
            if not self.quiet or e.state in ("lost", "slate"):
                self._line(snap.now, source_line(snap))
        elif isinstance(e, ev.IngestState):
            if not self.quiet or e.error or e.state == ev.FAILED:
                self._line(snap.now, ingest_state_line(e))
        elif isinstance(e, ev.Log):
            shown = e.level in PROBLEM_LEVELS or self.all_logs or (e.level == NOTICE_LEVEL and not self.quiet)
            if shown:
                # restream's own notices (a publisher came or left) are never held back as repeats
                held = 0 if e.level == NOTICE_LEVEL else self._throttle.check((e.level, e.text), e.ts)
                if held is not None:
                    self._line(snap.now, _repeated(f"{e.level}: {one_line(e.text)}", held))
        elif isinstance(e, ev.Recording):
            if e.state == "failed" or not self.quiet:
                self._line(snap.now, recording_line(snap) or "")
        elif isinstance(e, ev.Ended):
            self._finish(snap)
        elif isinstance(e, (ev.Progress, ev.Traffic)):
            if not self.quiet and self._ticker.due(snap.now, snap.started_at):
                self._line(snap.now, progress_line(snap))

    def _finish(self, snap: Snapshot) -> None:
        if not self._finished:
            self._finished = True
            for text in summary_lines(snap):
                self._line(snap.now, text)

    def close(self, snap: Snapshot) -> None:
        self._finish(snap)


class LogFile:
    """``--log-file PATH``: every (redacted) ffmpeg log line, state changes and progress, appended with timestamps.

    Line-buffered; created with mode 0600 (an existing file keeps its mode). Identical lines repeated within
    a minute are written once, with the count of repeats on the next one.
    """

    def __init__(self, path: str | os.PathLike, status_interval: float = 10.0) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.file = os.fdopen(fd, "a", buffering=1, encoding="utf-8", errors="replace")
        self._plain = PlainView(self.file, status_interval=status_interval, all_logs=True, ms=True)

    def update(self, snap: Snapshot, event: ev.Event) -> None:
        self._plain.update(snap, event)

    def close(self, snap: Snapshot) -> None:
        if not self.file.closed:
            self._plain.close(snap)
            self.file.close()


# -- JSON lines ---------------------------------------------------------------------------------------------------

def _num(value: float | None, digits: int = 3) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


class JsonView:
    """One JSON object per line on ``stream`` and nothing else; each line flushed. See docs/json-events.md."""

    def __init__(self, stream: IO[str], *, status_interval: float = 10.0) -> None:
        self.stream = stream
        self._ticker = Ticker(status_interval)
        self._throttle = Throttle()
        self._changes = StateChanges()
        self._finished = False

    def emit(self, obj: dict) -> None:
        self.stream.write(json.dumps(obj, allow_nan=False, separators=(",", ":")) + "\n")
        self.stream.flush()

    def update(self, snap: Snapshot, event: ev.Event) -> None:
        if self._finished:
            return
        e = event
        if isinstance(e, ev.Started):
            self.emit({"event": "start", "ts": iso(e.ts, True), "profile": snap.profile, "input": snap.input,
                       "ffmpeg": snap.ffmpeg, "pid": e.pid,
                       "destinations": [{"name": name, "url": mask_url(url), "host": _host(snap, name)}
                                        for name, url in e.destinations]})
        elif isinstance(e, ev.DestState):
            row = self._changes.news(snap, e)
            if row is not None:
                obj = {"event": "state", "ts": iso(snap.now, True), "destination": row.name,
                       "state": e.state if e.state in (ev.ADDED, ev.REMOVED) else row.state, "error": e.error,
                       "host": row.host, "reconnects": row.reconnects, "uptime_s": _num(row.uptime_s)}
                if e.url:
                    obj["url"] = mask_url(e.url)
                if row.state == ev.STALLED and row.stalled_since is not None:
                    obj["stalled_s"] = _num(max(0.0, snap.now - row.stalled_since), 1)
                if row.ingest:
                    obj["ingest"] = row.ingest
                if row.ingests:
                    obj["ingests"] = {i.ingest: i.state for i in row.ingests}
                self.emit(obj)
        elif isinstance(e, ev.IngestSwitch):
            self.emit({"event": "ingest", "ts": iso(snap.now, True), "destination": e.name, "ingest": e.ingest,
                       "reason": e.reason})
        elif isinstance(e, ev.SourceState):
            src = snap.source
            self.emit({"event": "source", "ts": iso(snap.now, True), "state": e.state, "detail": e.detail,
                       "slate_s": _num(src.slate_total(snap.now) if src else 0.0, 1),
                       "handovers": src.handovers if src else 0})
        elif isinstance(e, ev.IngestState):
            self.emit({"event": "ingest_state", "ts": iso(snap.now, True), "destination": e.name,
                       "ingest": e.ingest, "state": e.state, "error": e.error})
        elif isinstance(e, ev.Log):
            if e.level in PROBLEM_LEVELS or e.level == NOTICE_LEVEL:
                held = 0 if e.level == NOTICE_LEVEL else self._throttle.check((e.level, e.text), e.ts)
                if held is not None:
                    obj = {"event": "log", "ts": iso(snap.now, True), "level": e.level, "message": e.text}
                    if held:
                        obj["repeated"] = held
                    self.emit(obj)
        elif isinstance(e, ev.Recording):
            self.emit({"event": "recording", "ts": iso(snap.now, True), **(_recording_dict(snap) or {})})
        elif isinstance(e, ev.Ended):
            self._finish(snap)
        elif isinstance(e, (ev.Progress, ev.Traffic)):
            if self._ticker.due(snap.now, snap.started_at):
                self.emit(self.progress(snap))

    def error(self, message: str, exit_code: int) -> None:
        """A failure before the start (nothing went live): the only event of the run."""
        import time

        self._finished = True
        self.emit({"event": "error", "ts": iso(time.time(), True), "message": message, "exit_code": exit_code})

    @staticmethod
    def progress(snap: Snapshot) -> dict:
        return {"event": "progress", "ts": iso(snap.now, True), "time_s": _num(snap.out_time_s),
                "fps": _num(snap.fps, 2), "bitrate_kbps": _num(snap.bitrate_kbps, 1), "speed": _num(snap.speed),
                "frames": snap.frame, "dropped": snap.drop_frames, "duplicated": snap.dup_frames,
                "bytes_out": snap.bytes_out, "elapsed_s": _num(snap.elapsed_s), "duration_s": snap.input_duration,
                "live": snap.live_count,
                "destinations": {d.name: {"state": d.state, "kbps": _num(d.kbps, 1), "bytes_sent": d.bytes_sent,
                                          **({"stalled_s": _num(max(0.0, snap.now - d.stalled_since), 1)}
                                             if d.state == ev.STALLED and d.stalled_since is not None else {})}
                                 for d in snap.destinations}}

    def _finish(self, snap: Snapshot) -> None:
        if self._finished:
            return
        self._finished = True
        end = snap.ended
        self.emit({"event": "end", "ts": iso(snap.now, True), "exit_code": end.exit_code if end else None,
                   "reason": end.reason if end else None,
                   "ffmpeg_returncode": end.ffmpeg_returncode if end else None,
                   "duration_s": _num(snap.elapsed_s), "time_s": _num(snap.stream_total_s), "bytes_out": snap.bytes_out,
                   "sessions": end.sessions if end else None, "destinations": outcome(snap), "recording": _recording_dict(snap),
                   **({"slate_s": _num(counts[0], 1), "handovers": counts[1]}
                      if (counts := slate_counts(snap)) is not None else {})})

    def close(self, snap: Snapshot) -> None:
        self._finish(snap)


def _host(snap: Snapshot, name: str) -> str:
    row = snap.destination(name)
    return row.host if row else ""


# -- live (Rich) --------------------------------------------------------------------------------------------------

STATE_STYLE = {ev.STALLED: "bold magenta", ev.WAITING: "cyan",
               ev.LIVE: "bold green", ev.CONNECTING: "cyan", ev.RETRYING: "bold yellow", ev.FAILED: "bold red",
               ev.STOPPED: "dim", "removed": "dim"}
_GAP = 3  # a SIMPLE_HEAD table without edges: 1 padding + 1 divider + 1 padding between columns


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def fit_columns(widths: dict[str, int], flexible: str | None, flexible_min: int, drop_order: list[str],
                width: int) -> list[str]:
    """Column keys (in ``widths`` order) that fit ``width``, dropping ``drop_order`` first to last as needed."""
    keep = list(widths)

    def needed() -> int:
        fixed = sum(flexible_min if k == flexible else widths[k] for k in keep)
        return fixed + _GAP * (len(keep) - 1)

    order = list(drop_order)
    while needed() > width and order:
        key = order.pop(0)
        if key in keep:
            keep.remove(key)
    return keep


def _spare(widths: dict[str, int], keep: list[str], width: int, most: int = 60) -> int:
    """What is left for the flexible "error" column once the fixed columns and gaps are placed (10..most)."""
    used = sum(widths[k] for k in keep if k != "error") + _GAP * (len(keep) - 1)
    return max(10, min(most, width - used))


def _reason_rows(rows, keep: list[str]) -> dict[int, DestStatus]:
    """Rows whose reason would not be seen: no error column fits, and the row is not live (retrying, failed, …)."""
    if "error" in keep:
        return {}
    return {i: d for i, d in enumerate(rows)
            if d.last_error and d.state not in (ev.LIVE, ev.STOPPED, ev.CONNECTING, "removed")}


def _reason_line(d: DestStatus, width: int, indent: int = 2):
    """``  ↳ Connection refused`` under a row, cut to the width."""
    from rich.text import Text

    line = Text(" " * indent + "↳ " + one_line(d.last_error or ""), style=STATE_STYLE.get(d.state, ""),
                no_wrap=True, overflow="ellipsis")
    line.truncate(width, overflow="ellipsis")
    return line


class _WithReasons:
    """A table whose rows are one line each, with a reason line under the rows in ``reasons`` (by row index)."""

    def __init__(self, table, reasons: dict[int, DestStatus], head: int) -> None:
        self.table, self.reasons, self.head = table, reasons, head

    def __rich_console__(self, console, options):
        from rich.segment import Segment

        lines = console.render_lines(self.table, options, pad=False, new_lines=False)
        for i, line in enumerate(lines):
            yield from line
            yield Segment.line()
            d = self.reasons.get(i - self.head)
            if d is not None:
                yield _reason_line(d, options.max_width)


def _dest_table(snap: Snapshot, width: int):
    """The per-destination table, with as many columns as fit ``width``; when the error column does not fit, a
    retrying or failed row gets its reason on a second line."""
    rows = snap.destinations
    has_error = any(d.last_error for d in rows)
    cells = {
        "name": [d.name for d in rows],
        "host": [d.host for d in rows],
        "state": [state_text(d, snap.now) for d in rows],
        "since": [age(snap.now - d.since) for d in rows],
        "uptime": [clock(d.uptime_s) for d in rows],
        "recon": [str(d.reconnects) for d in rows],
        "kbps": [_fig(d.kbps, ".0f") if d.state == ev.LIVE else "-" for d in rows],
        "error": [one_line(d.last_error or "") for d in rows],
    }
    headers = {"name": "destination", "host": "host", "state": "state", "since": "since", "uptime": "uptime",
               "recon": "recon", "kbps": "kbit/s", "error": "last error"}
    caps = {"name": max(12, width // 5), "host": 28}
    if not has_error:
        del cells["error"]
    widths = {}
    for key, values in cells.items():
        w = max([len(headers[key]), *map(len, values)]) if key != "error" else 0
        widths[key] = min(w, caps.get(key, w))
    if width < 90:  # a shorter header so the name column does not cost its header's width
        headers["name"] = "dest"
        widths["name"] = min(max([4, *map(len, cells["name"])]), caps["name"])
    keep = fit_columns(widths, "error" if has_error else None, 10, ["host", "error", "recon", "since", "kbps",
                                                                     "uptime"], width)
    spare = _spare(widths, keep, width)
    right = ("since", "uptime", "recon", "kbps")
    columns = [(key, headers[key], spare if key == "error" else widths[key], key in right) for key in keep]

    def styled(i: int, key: str) -> tuple[str, str]:
        d = rows[i]
        if key == "state":
            return cells[key][i], STATE_STYLE.get(d.state, "")
        return cells[key][i], "dim" if key == "error" and d.state == ev.LIVE else ""

    body = [[styled(i, key) for key in keep] for i in range(len(rows))]
    row_styles = ["dim" if d.state == "removed" else "" for d in rows]
    reasons = _reason_rows(rows, keep)
    if sum(c[2] for c in columns) + _GAP * (len(columns) - 1) <= width:
        return _FixedTable(columns, body, row_styles, reasons)
    # narrower than even the columns kept (a terminal under ~30 columns): Rich's Table shrinks the columns
    table = _rich_table(columns, body, row_styles)
    return _WithReasons(table, reasons, head=2) if reasons else table


def _rich_table(columns: list[tuple[str, str, int, bool]], body: list[list[tuple[str, str]]], row_styles: list[str]):
    """The destination table as a Rich ``Table``: ``columns`` (key, header, width, right-justified), ``body`` a
    (text, style) per cell, ``row_styles`` a style per row ("" for none)."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold", expand=False)
    for _, header, w, right in columns:
        table.add_column(header, justify="right" if right else "left", no_wrap=True, overflow="ellipsis",
                         min_width=w, max_width=w)
    for line, row_style in zip(body, row_styles):
        table.add_row(*(Text(text, style=style) for text, style in line), style=row_style or None)
    return table


class _FixedTable:
    """What ``_rich_table`` draws when its columns fit the width (a bold header, a rule, one line per row, cells cut
    with an ellipsis, 3 spaces between columns), drawn straight as segments: Rich's Table measures every cell on
    every redraw, ~5 ms of CPU for 5 rows, which was most of the live view's cost (this takes ~0.5 ms).
    ``reasons``: a reason line under a row (by row index) when no error column fits."""

    def __init__(self, columns: list[tuple[str, str, int, bool]], body: list[list[tuple[str, str]]],
                 row_styles: list[str], reasons: dict[int, DestStatus]) -> None:
        self.columns, self.body, self.row_styles, self.reasons = columns, body, row_styles, reasons

    def _line(self, console, cells: list[tuple[str, str]], row_style: str):
        from rich.cells import cell_len, set_cell_size
        from rich.segment import Segment

        base = console.get_style(row_style) if row_style else None
        gap = Segment(" " * _GAP, base)
        for k, ((text, style), (_, _, w, right)) in enumerate(zip(cells, self.columns)):
            if k:
                yield gap
            st = console.get_style(style) if style else None
            st = base + st if base is not None and st is not None else st or base
            width = cell_len(text)
            if width > w:  # as Rich's overflow="ellipsis": cut to one cell short of the width, then "…"
                text, width = set_cell_size(text, w - 1) + "…", w
            pad = " " * (w - width)
            yield Segment(pad + text if right else text + pad, st)
        yield Segment.line()

    def __rich_console__(self, console, options):
        from rich.segment import Segment

        yield from self._line(console, [(header, "bold") for _, header, _, _ in self.columns], "")
        yield Segment("─" * (sum(c[2] for c in self.columns) + _GAP * (len(self.columns) - 1)))
        yield Segment.line()
        for i, (cells, row_style) in enumerate(zip(self.body, self.row_styles)):
            yield from self._line(console, cells, row_style)
            d = self.reasons.get(i)
            if d is not None:
                yield _reason_line(d, options.max_width)


def _pack(items: list, width: int, sep: str = "   "):
    """Header items (Text) packed greedily into lines no wider than ``width``."""
    from rich.text import Text

    lines, current = [], Text()
    for item in items:
        if current.cell_len and current.cell_len + len(sep) + item.cell_len > width:
            lines.append(current)
            current = Text()
        if current.cell_len:
            current.append(sep)
        current.append_text(item)
    if current.cell_len:
        lines.append(current)
    return lines


def _header(snap: Snapshot, width: int):
    from rich.text import Text

    def item(label: str, value: str) -> Text:
        return Text.assemble((label + " ", "dim"), (value, "bold"))

    title = Text.assemble(("restream", "bold"), " ", (snap.profile or "-", "bold cyan"), " ← ", snap.input or "-")
    title.truncate(width, overflow="ellipsis")
    items = [item("elapsed", clock(snap.elapsed_s)), item("stream", stream_time(snap)),
             item("fps", _fig(snap.fps, ".1f")), item("bitrate", _fig(snap.bitrate_kbps, ".0f") + " kbit/s"),
             item("speed", _fig(snap.speed, ".2f") + "x"), item("frames", str(snap.frame or 0)),
             item("dropped", str(snap.drop_frames)), item("dup", str(snap.dup_frames)),
             item("out", human_bytes(snap.bytes_out)),
             item("live", f"{snap.live_count}/{snap.active_count}")]
    if snap.source is not None:
        src = snap.source
        style = "bold green" if src.state == "live" else "bold yellow" if src.state in ("lost", "slate") else "bold"
        text = src.state + (f" {age(snap.now - src.since)}" if src.state in ("lost", "slate") else "")
        items.append(Text.assemble(("source ", "dim"), (text, style)))
    if snap.recording is not None:
        failed = snap.recording.state == "failed"
        items.append(Text.assemble(("rec ", "dim"), ("FAILED" if failed else "on", "bold red" if failed else "bold")))
    if snap.ended:
        items.append(item("ended", f"{snap.ended.reason} (exit {snap.ended.exit_code})"))
    return [title, *_pack(items, width)]


class _Screen:
    """The live renderable: header and table, laid out for the width at render time (so resizes just work)."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def __rich_console__(self, console, options):
        width = options.max_width
        yield from _header(self.snap, width)
        yield _dest_table(self.snap, width)


def summary_table(snap: Snapshot, width: int):
    from rich import box
    from rich.table import Table
    from rich.text import Text

    rows = snap.destinations
    has_error = any(d.last_error for d in rows)
    cols = {"name": "destination", "state": "state", "uptime": "uptime", "recon": "reconnects", "sent": "sent"}
    cells = {"name": [d.name for d in rows], "state": [d.state for d in rows],
             "uptime": [clock(d.uptime_s) for d in rows], "recon": [str(d.reconnects) for d in rows],
             "sent": [human_bytes(d.bytes_sent) for d in rows]}
    widths = {k: max([len(cols[k]), *map(len, v)]) for k, v in cells.items()}
    if has_error:
        cols["error"], cells["error"], widths["error"] = "last error", [one_line(d.last_error or "") for d in rows], 0
    keep = fit_columns(widths, "error" if has_error else None, 10, ["error", "sent"], width)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold", title="summary",
                  title_justify="left", title_style="bold")
    spare = _spare(widths, keep, width)
    for key in keep:
        w = spare if key == "error" else widths[key]
        table.add_column(cols[key], justify="right" if key in ("uptime", "recon", "sent") else "left", no_wrap=True,
                         overflow="ellipsis", min_width=w, max_width=w)
    for i, d in enumerate(rows):
        table.add_row(*(Text(cells[k][i], style=STATE_STYLE.get(d.state, "") if k == "state" else "")
                        for k in keep))
    reasons = _reason_rows(rows, keep) if has_error else {}
    return _WithReasons(table, reasons, head=3) if reasons else table


def _no_echoctl():
    """While the live table is up, the terminal does not echo Ctrl-C as ``^C``: the echo lands after the table's
    last line, may wrap it, and Rich then erases one line too few (the title was left on screen twice).
    Returns what to restore, or None."""
    try:
        import termios

        fd = sys.stdin.fileno()
        if not os.isatty(fd):
            return None
        before = termios.tcgetattr(fd)
        after = list(before)
        after[3] &= ~termios.ECHOCTL
        termios.tcsetattr(fd, termios.TCSANOW, after)
        return fd, before
    except (ImportError, AttributeError, OSError, ValueError):
        return None


def _restore_tty(saved) -> None:
    if saved:
        try:
            import termios

            termios.tcsetattr(saved[0], termios.TCSANOW, saved[1])
        except (OSError, ValueError):
            pass


def _call_later(delay: float, callback):
    """``callback`` after ``delay`` seconds on the running event loop (the broadcast's); None without one."""
    asyncio = sys.modules.get("asyncio")  # never imported here: with no asyncio there is no loop either
    if asyncio is None:
        return None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop.call_later(max(0.0, delay), callback)


class LiveView:
    """A Rich ``Live`` table on a terminal, a final summary table left on screen at ``close``.

    Problems (ffmpeg warnings/errors, destination errors) are printed one line each, identical ones throttled:
    above the live table when ``err`` is a terminal too (or None), else written to ``err`` as timestamped lines.
    """

    def __init__(self, console=None, *, stream: IO[str] | None = None, err: IO[str] | None = None,
                 no_color: bool | None = None) -> None:
        self._console = console
        self._stream = sys.stdout if stream is None else stream
        self._no_color = no_color
        self._err = err
        self._live = None
        self._drawn = 0.0   # time.monotonic() of the last redraw
        self._latest: Snapshot | None = None  # the newest snapshot, drawn by the next redraw
        self._later = None  # a redraw held back by REDRAW_GAP_S (an asyncio timer handle)
        self._throttle = Throttle()
        self._changes = StateChanges()
        self._closed = False

    @property
    def console(self):
        """Rich's console, made at first use: Rich's import (~30 ms) then runs while ffmpeg starts, not before."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self._stream, no_color=self._no_color, highlight=False)
        return self._console

    @property
    def _err_on_screen(self) -> bool:
        return self._err is None or (_isatty(self._err) and self.console.is_terminal)

    @staticmethod
    def render(snap: Snapshot):
        return _Screen(snap)

    def _start(self, snap: Snapshot) -> None:
        from rich.live import Live

        # Redrawn by update(), not by Rich's refresh thread: what the table shows changes only with events, and
        # redrawing an unchanged table 4 times a second was most of the live view's CPU.
        self._live = Live(self.render(snap), console=self.console, auto_refresh=False, transient=True,
                          redirect_stdout=self.console.file is sys.stdout,
                          redirect_stderr=self._err is sys.stderr)
        self._live.start(refresh=True)
        self._drawn = time.monotonic()
        self._quiet_ctl = _no_echoctl()

    def update(self, snap: Snapshot, event: ev.Event) -> None:
        if self._closed:
            return
        if self._live is None:
            self._start(snap)
        problem = self._problem(snap, event)
        if problem is not None:
            self._say(snap, *problem)
        self._latest = snap
        since = time.monotonic() - self._drawn
        if isinstance(event, ev.Traffic):
            # the per-second traffic count (its bitrate shows with the next progress, 0.5 s later) redraws only a
            # screen nothing else redrew for a second (relay mode between publishers: no progress)
            if since >= TRAFFIC_REDRAW_S:
                self._redraw()
        elif since >= REDRAW_GAP_S:
            self._redraw()  # progress every 0.5 s: the promised >= 2 Hz
        elif self._later is None:
            # a state change, a problem, ffmpeg's start-up lines: shown within REDRAW_GAP_S, a burst of them drawn
            # once (each redraw of the table costs ~5 ms of CPU; ffmpeg's start alone sends dozens of lines)
            self._later = _call_later(REDRAW_GAP_S - since, self._redraw)
            if self._later is None:  # no event loop running (a caller outside the broadcast): draw now
                self._redraw()

    def _redraw(self) -> None:
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self._closed or self._live is None or self._latest is None:
            return
        self._drawn = time.monotonic()
        self._live.update(self.render(self._latest), refresh=True)

    def _problem(self, snap: Snapshot, e: ev.Event) -> tuple[str, str] | None:
        if isinstance(e, ev.DestState):
            row = self._changes.news(snap, e)
            if row is not None and e.error:
                return state_line(row.name, row.state, e.error), "red"
        elif isinstance(e, ev.Recording) and e.state == "failed":
            return recording_line(snap) or "", "red"
        elif isinstance(e, ev.IngestSwitch):
            return ingest_line(e), "yellow"
        elif isinstance(e, ev.IngestState) and e.error:
            return ingest_state_line(e), "yellow"
        elif isinstance(e, ev.Log) and e.level in PROBLEM_LEVELS:
            held = self._throttle.check((e.level, e.text), e.ts)
            if held is not None:
                return _repeated(f"{e.level}: {one_line(e.text)}", held), ("yellow" if e.level == "warning"
                                                                            else "red")
        return None

    def _say(self, snap: Snapshot, text: str, style: str) -> None:
        if self._err_on_screen:
            from rich.text import Text

            line = Text.assemble((f"[{clock(snap.elapsed_s)}] ", "dim"), (text, style))
            line.truncate(self.console.width, overflow="ellipsis")
            self.console.print(line, no_wrap=True, crop=True)
        else:
            self._err.write(f"{iso(snap.now)} {text}\n")
            self._err.flush()

    def close(self, snap: Snapshot) -> None:
        if self._closed:
            return
        self._closed = True
        if self._later is not None:
            self._later.cancel()
            self._later = None
        if self._live is not None:
            self._live.update(self.render(snap))
            self._live.stop()
            _restore_tty(getattr(self, "_quiet_ctl", None))
        from rich.text import Text

        self.console.print(summary_table(snap, self.console.width))
        rec = recording_line(snap)
        if rec:
            self.console.print(Text(rec, style="bold red" if snap.recording.state == "failed" else ""))
        self.console.print(Text(overall(snap)))
