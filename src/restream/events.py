"""Pure: the typed events of a broadcast, and parsers for ffmpeg's ``-progress`` blocks and log lines.

Every event carries ``ts`` (wall-clock seconds, ``time.time()``). Text in events is already redacted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Destination states, in the order a healthy destination passes them.
CONNECTING, LIVE, RETRYING, FAILED, STOPPED = "connecting", "live", "retrying", "failed", "stopped"
STALLED = "stalled"  # live, but the destination has taken no data for a while (it is not reading)
WAITING = "waiting"  # relay mode: no publisher is connected; the destination waits for the next one
ADDED, REMOVED = "added", "removed"  # a destination assigned to / taken off a slot while live
STATES = (CONNECTING, LIVE, STALLED, RETRYING, WAITING, FAILED, STOPPED, ADDED, REMOVED)


@dataclass(frozen=True)
class Started:
    ts: float
    profile: str
    input: str  # redacted description of the input
    ffmpeg: str  # path and version
    pid: int | None  # None with --slate: ffmpeg starts when the first source delivers
    destinations: tuple[tuple[str, str], ...]  # (name, url without key)


@dataclass(frozen=True)
class Progress:
    ts: float
    frame: int | None = None
    fps: float | None = None
    out_time_s: float | None = None
    speed: float | None = None
    bitrate_kbps: float | None = None
    total_size: int | None = None
    dup_frames: int = 0
    drop_frames: int = 0
    end: bool = False


@dataclass(frozen=True)
class DestState:
    ts: float
    name: str
    state: str
    error: str | None = None
    url: str | None = None  # with ADDED: the destination's URL (no key)
    since: float | None = None  # with STALLED: ts of the last byte the destination took


@dataclass(frozen=True)
class Traffic:
    """Bytes sent so far per destination (from the relay), sampled periodically."""

    ts: float
    sent: tuple[tuple[str, int], ...]
    ingests: tuple[tuple[str, str, int], ...] = ()  # backup = "both": (name, ingest, bytes sent to it so far)


@dataclass(frozen=True)
class Log:
    ts: float
    level: str  # ffmpeg level: error, warning, info, verbose, ...; or "restream"
    text: str


@dataclass(frozen=True)
class Recording:
    """The local recording (``--record``): "recording" when the broadcast starts, "failed" with ffmpeg's reason."""

    ts: float
    path: str
    state: str  # "recording" | "failed"
    error: str | None = None


@dataclass(frozen=True)
class Ended:
    ts: float
    exit_code: int
    reason: str  # "input ended", "duration reached", "interrupted", "terminated", "ffmpeg failed: …"
    ffmpeg_returncode: int | None = None
    sessions: int | None = None  # relay mode: publisher sessions carried
    slate_s: float | None = None  # --slate: time the slate was on air
    handovers: int | None = None  # --slate: switches from the slate back to a live source


@dataclass(frozen=True)
class NewSession:
    """Relay mode: a new ffmpeg process (the next publisher session) took over; its stream clock starts at 0.
    (The native fan-out has no ffmpeg: ``pid`` None, the next session's clock starts at 0 all the same.)"""

    ts: float
    pid: int | None


@dataclass(frozen=True)
class IngestSwitch:
    """A destination with a backup ingest: its slot now publishes to ``ingest`` ("primary" | "backup"), and why."""

    ts: float
    name: str
    ingest: str
    reason: str  # already redacted


@dataclass(frozen=True)
class SourceState:
    """--slate: the source as the destinations see it: ``waiting`` (none yet), ``live``, ``lost`` (its frames
    stopped; the last picture is held for up to half a second), ``slate`` (the slate is on air)."""

    ts: float
    state: str
    detail: str  # already redacted


@dataclass(frozen=True)
class IngestState:
    """A destination with ``backup = "both"``: one of its ingests ("primary" | "backup") changed state (connecting,
    live, stalled, retrying; at the end its verdict, stopped = delivered, or failed)."""

    ts: float
    name: str
    ingest: str
    state: str
    error: str | None = None  # already redacted


Event = (Started | Progress | DestState | Traffic | Log | Recording | Ended | NewSession | IngestSwitch
         | SourceState | IngestState)


# -- -progress parsing --------------------------------------------------------------------------------------------

def _num(value: str | None, cast=float):
    if value is None:
        return None
    value = value.strip().rstrip("x")
    if value in ("", "N/A", "nan", "inf"):
        return None
    try:
        return cast(value)
    except ValueError:
        return None


def _bitrate(value: str | None) -> float | None:
    if not value:
        return None
    m = re.fullmatch(r"\s*([\d.]+)kbits/s\s*", value)
    return float(m.group(1)) if m else None


@dataclass
class ProgressParser:
    """Feed it ``key=value`` lines from ``-progress``; it returns a Progress at each ``progress=`` line."""

    fields: dict[str, str] = field(default_factory=dict)

    def feed(self, line: str, ts: float) -> Progress | None:
        key, sep, value = line.strip().partition("=")
        if not sep:
            return None
        if key != "progress":
            self.fields[key] = value
            return None
        f, self.fields = self.fields, {}
        out_us = _num(f.get("out_time_us"), int)
        return Progress(
            ts=ts,
            frame=_num(f.get("frame"), int),
            fps=_num(f.get("fps")),
            out_time_s=out_us / 1e6 if out_us is not None and out_us >= 0 else None,
            speed=_num(f.get("speed")),
            bitrate_kbps=_bitrate(f.get("bitrate")),
            total_size=_num(f.get("total_size"), int),
            dup_frames=_num(f.get("dup_frames"), int) or 0,
            drop_frames=_num(f.get("drop_frames"), int) or 0,
            end=value.strip() == "end",
        )


# -- log lines ----------------------------------------------------------------------------------------------------

_LEVEL = re.compile(r"^(?:\[(?P<ctx>[^\]]+@ 0x[0-9a-f]+)\] )?\[(?P<level>panic|fatal|error|warning|info|verbose|debug|trace)\] ")
_SLAVE_FAILED = re.compile(r"Slave muxer #(\d+) failed: (.*?)(?:, continuing with .*)?$")


# Warnings ffmpeg prints in every healthy broadcast: kept in the log file, not shown as problems.
BENIGN = (
    "Failed to update header with correct",  # FLV to a network output cannot seek back at the end
    "Resumed reading at pts",  # -re catching up after encoder start-up
)


def parse_log_line(line: str, ts: float) -> Log:
    """Split ffmpeg's ``-loglevel level+…`` prefix off a line."""
    line = line.rstrip("\r\n")
    m = _LEVEL.match(line)
    if not m:
        return Log(ts, "info", line)
    text = line[m.end():]
    if m.group("ctx"):
        text = f"[{m.group('ctx').split(' @ ')[0]}] {text}"
    level = m.group("level")
    if level == "warning" and any(b in text for b in BENIGN):
        level = "info"  # expected in every healthy broadcast: logged, not shown as a problem
    return Log(ts, level, text)


def slave_failure(text: str) -> tuple[int, str] | None:
    """``Slave muxer #2 failed: Broken pipe, continuing with 4/5 slaves.`` -> (2, "Broken pipe")."""
    m = _SLAVE_FAILED.search(text)
    return (int(m.group(1)), m.group(2).strip().rstrip(".")) if m else None


def is_problem(log: Log) -> bool:
    return log.level in ("panic", "fatal", "error", "warning")
