"""Pure: fold the engine's events into an immutable snapshot of the broadcast.

``reduce(snapshot, event) -> snapshot`` is the only way a snapshot changes; every view (live table, plain lines, JSON
lines, log file) renders snapshots, so they can never disagree. No I/O, no Rich, no clock: time is the events' ``ts``.

Time never runs backwards: ``now`` is the largest ``ts`` seen, and a late event is applied at ``now``.

Derived figures, documented here because views show them:

* ``DestStatus.kbps``: ``(bytes_sent delta) * 8 / 1000 / (seconds between two Traffic samples)`` for that destination;
  ``None`` until a second sample, and reset to ``None`` when the destination leaves ``live``.
* ``DestStatus.bytes_sent``: monotonic; if the relay's counter goes down (slot re-assigned), counting continues from
  the new sample instead of going backwards.
* ``Snapshot.bitrate_kbps``: ffmpeg's ``bitrate`` when it gives one (it says N/A with the tee muxer); otherwise the
  mean ``kbps`` of the live destinations that have one (``bitrate_source`` says which: "ffmpeg", "traffic" or None).
* ``Snapshot.bytes_out``: sum of ``bytes_sent`` over all rows (removed ones included); while no Traffic sample has
  been seen, ffmpeg's ``total_size`` if it reports one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from restream import events
from restream.events import CONNECTING, LIVE, REMOVED, STALLED, STOPPED, WAITING

REMOVED_STATE = REMOVED  # a removed row keeps its place with this state


@dataclass(frozen=True)
class DestStatus:
    name: str
    host: str  # host[:port] only: never userinfo, path or query (they can carry a key)
    state: str  # connecting / live / stalled / retrying / waiting / failed / stopped / removed
    since: float  # ts of the last state change
    reconnects: int = 0  # times it went live again after having been live before
    last_error: str | None = None  # kept after recovery: the last error seen
    uptime_s: float = 0.0  # total seconds live, up to Snapshot.now for the current session
    bytes_sent: int = 0
    kbps: float | None = None
    ever_live: bool = False
    sample_bytes: int | None = None  # the last Traffic sample as the relay reported it
    sample_ts: float | None = None  # ... and when
    session_live: bool = False  # went live in the current session (relay mode: publisher session)
    stalled_since: float | None = None  # state "stalled": ts of the last byte the destination took
    ingest: str | None = None  # with a backup ingest: "primary" | "backup" (None until the first switch: primary)
    switches: int = 0  # times its slot switched ingests
    ingests: tuple[IngestStatus, ...] = ()  # backup = "both": each ingest's own state (primary first)


@dataclass(frozen=True)
class IngestStatus:
    """One ingest of a ``backup = "both"`` destination."""

    ingest: str  # "primary" | "backup"
    state: str  # connecting / live / stalled / retrying; at the end stopped (delivered) / failed
    error: str | None = None  # its last error
    bytes_sent: int = 0  # written to it (each ingest gets the stream once; the destination's bytes_sent is the sum)


def ingests_label(ingests) -> str:
    """Which ingests carry a "both" destination, from (ingest, state) pairs: ``primary+backup``,
    ``primary; backup retrying``, at the end ``backup; primary failed``."""
    ingests = list(ingests)
    ok = [i for i, st in ingests if st in (LIVE, STOPPED)]
    rest = [f"{i} {st}" for i, st in ingests if st not in (LIVE, STOPPED)]
    return "; ".join((["+".join(ok)] if ok else []) + rest)


@dataclass(frozen=True)
class RecordStatus:
    path: str
    state: str  # recording / failed / recorded (the broadcast ended with the recording intact)
    error: str | None = None


@dataclass(frozen=True)
class SourceStatus:
    """--slate: the source's state (waiting, live, lost, slate), since when, time on the slate, hand-overs."""

    state: str
    detail: str = ""
    since: float = 0.0
    slate_s: float = 0.0  # finished spells on the slate (the current one is added by ``slate_total``)
    handovers: int = 0  # switches from the slate back to a live source

    def slate_total(self, now: float) -> float:
        return self.slate_s + (max(0.0, now - self.since) if self.state == "slate" else 0.0)


@dataclass(frozen=True)
class Snapshot:
    profile: str = ""
    input: str = ""
    ffmpeg: str = ""
    started_at: float | None = None
    now: float = 0.0
    destinations: tuple[DestStatus, ...] = ()
    frame: int | None = None
    fps: float | None = None
    out_time_s: float | None = None
    speed: float | None = None
    bitrate_kbps: float | None = None
    bytes_out: int = 0
    dup_frames: int = 0
    drop_frames: int = 0
    input_duration: float | None = None  # known length of a file input (for position / length)
    ended: events.Ended | None = None
    bitrate_source: str | None = None  # "ffmpeg" | "traffic" | None
    pid: int | None = None
    stream_base_s: float = 0.0  # relay mode: stream time of the publisher sessions before the current one
    recording: RecordStatus | None = None  # --record
    source: SourceStatus | None = None  # --slate: the source as the destinations see it

    @property
    def stream_total_s(self) -> float | None:
        """Stream time over every session (relay mode restarts ffmpeg, and its clock, per publisher)."""
        if self.out_time_s is None:
            return self.stream_base_s or None
        return self.stream_base_s + self.out_time_s

    @property
    def elapsed_s(self) -> float:
        return max(0.0, self.now - self.started_at) if self.started_at is not None else 0.0

    @property
    def live_count(self) -> int:
        return sum(1 for d in self.destinations if d.state == LIVE)

    @property
    def active_count(self) -> int:
        """Rows that are part of the broadcast (not removed)."""
        return sum(1 for d in self.destinations if d.state != REMOVED_STATE)

    def destination(self, name: str) -> DestStatus | None:
        for d in self.destinations:
            if d.name == name:
                return d
        return None


def host_of(url: str | None) -> str:
    """``rtmp://user:pw@a.rtmp.youtube.com:1935/live2/KEY?x=1`` -> ``a.rtmp.youtube.com:1935``; "" if unsure."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return ""
    if not host:
        return ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port else host


def initial(profile: str = "", input: str = "", ffmpeg: str = "", input_duration: float | None = None) -> Snapshot:
    return Snapshot(profile=profile, input=input, ffmpeg=ffmpeg, input_duration=input_duration)


def reduce(s: Snapshot, e: events.Event) -> Snapshot:
    """The snapshot after event ``e``. Never raises on an unknown destination; ignores everything after Ended."""
    if s.ended is not None:
        return s
    now = max(s.now, e.ts)
    s = _advance(s, now)
    if isinstance(e, events.Started):
        return _started(s, e)
    if isinstance(e, events.DestState):
        return _dest_state(s, e)
    if isinstance(e, events.Traffic):
        return _traffic(s, e)
    if isinstance(e, events.Progress):
        return _progress(s, e)
    if isinstance(e, events.IngestSwitch):
        row = s.destination(e.name)
        if row is None:
            return s
        return replace(s, destinations=_put(s.destinations, replace(row, ingest=e.ingest,
                                                                     switches=row.switches + 1)))
    if isinstance(e, events.IngestState):
        return _ingest_state(s, e)
    if isinstance(e, events.NewSession):  # relay mode: the next ffmpeg's clock starts at 0
        return replace(s, stream_base_s=s.stream_base_s + (s.out_time_s or 0.0), out_time_s=None, pid=e.pid)
    if isinstance(e, events.SourceState):
        return replace(s, source=_source(s.source, e))
    if isinstance(e, events.Recording):
        if s.recording is not None and s.recording.state == "failed":
            return s  # a failure stays reported
        return replace(s, recording=RecordStatus(e.path, e.state, e.error))
    if isinstance(e, events.Ended):
        rows = tuple(replace(d, state=STOPPED, since=now, kbps=None) if d.state == LIVE else d
                     for d in s.destinations)
        rec = s.recording
        if rec is not None and rec.state == "recording":
            rec = replace(rec, state="recorded")
        return replace(s, destinations=rows, ended=e, recording=rec)
    return s  # Log and anything else: time only


def outcome(s: Snapshot) -> dict[str, dict]:
    """Per destination: {"state", "reconnects", "uptime_s"} (plus "bytes_sent", "last_error"), in row order."""
    return {d.name: {"state": d.state, "reconnects": d.reconnects, "uptime_s": round(d.uptime_s, 3),
                     "bytes_sent": d.bytes_sent, "last_error": d.last_error,
                     **({"ingest": d.ingest, "ingest_switches": d.switches} if d.ingest else {}),
                     **({"ingests": {i.ingest: {"state": i.state, "bytes_sent": i.bytes_sent, "last_error": i.error}
                                     for i in d.ingests}} if d.ingests else {})}
            for d in s.destinations}


# -- the steps ----------------------------------------------------------------------------------------------------

def _advance(s: Snapshot, now: float) -> Snapshot:
    """Move the clock to ``now``; live rows accumulate uptime."""
    if now == s.now:
        return s
    if any(d.state == LIVE for d in s.destinations):
        rows = tuple(replace(d, uptime_s=d.uptime_s + now - max(s.now, d.since)) if d.state == LIVE else d
                     for d in s.destinations)
        return replace(s, now=now, destinations=rows)
    return replace(s, now=now)


def _source(old: SourceStatus | None, e: events.SourceState) -> SourceStatus:
    if old is None:
        return SourceStatus(e.state, e.detail, e.ts)
    if old.state == e.state:
        return replace(old, detail=e.detail)
    slate_s = old.slate_s + (max(0.0, e.ts - old.since) if old.state == "slate" else 0.0)
    back = old.state == "slate" and e.state == "live"
    return SourceStatus(e.state, e.detail, e.ts, slate_s, old.handovers + (1 if back else 0))


def _started(s: Snapshot, e: events.Started) -> Snapshot:
    rows = {d.name: d for d in s.destinations}
    order = [name for name, _ in e.destinations]
    for name, url in e.destinations:
        if name in rows:
            rows[name] = replace(rows[name], host=host_of(url) or rows[name].host)
        else:
            rows[name] = DestStatus(name=name, host=host_of(url), state=CONNECTING, since=s.now)
    order += [d.name for d in s.destinations if d.name not in order]
    return replace(s, started_at=e.ts if s.started_at is None else s.started_at, profile=e.profile, input=e.input,
                   ffmpeg=e.ffmpeg, pid=e.pid, destinations=tuple(rows[n] for n in order))


def _dest_state(s: Snapshot, e: events.DestState) -> Snapshot:
    now = s.now
    row = s.destination(e.name)
    state = CONNECTING if e.state == events.ADDED else e.state
    if row is None:
        new = DestStatus(name=e.name, host=host_of(e.url), state=state, since=now, last_error=e.error)
        if state == LIVE:
            new = replace(new, ever_live=True, session_live=True)
        return replace(s, destinations=s.destinations + (new,))
    changes: dict = {}
    if e.url and e.state == events.ADDED:
        changes["host"] = host_of(e.url) or row.host
    if e.error:
        changes["last_error"] = e.error
    if state != row.state:
        changes.update(state=state, since=now)
        if state == LIVE:
            changes["ever_live"] = True
            changes["session_live"] = True
            if row.session_live and row.state != STALLED:
                changes["reconnects"] = row.reconnects + 1  # a stall that ended, or a new publisher, is none
        elif row.state == LIVE and state != STALLED:
            changes["kbps"] = None
        if state == WAITING:
            changes["session_live"] = False
        changes["stalled_since"] = e.since if state == STALLED else None
    return replace(s, destinations=_put(s.destinations, replace(row, **changes))) if changes else s


def _ingest_state(s: Snapshot, e: events.IngestState) -> Snapshot:
    row = s.destination(e.name)
    if row is None:
        return s
    old = next((i for i in row.ingests if i.ingest == e.ingest), None) or IngestStatus(e.ingest, e.state)
    new = replace(old, state=e.state, error=e.error or old.error)
    rows = sorted([i for i in row.ingests if i.ingest != e.ingest] + [new], key=lambda i: i.ingest != "primary")
    return replace(s, destinations=_put(s.destinations, replace(row, ingests=tuple(rows))))


def _traffic(s: Snapshot, e: events.Traffic) -> Snapshot:
    if e.ingests:
        per = {(name, ingest): n for name, ingest, n in e.ingests}
        s = replace(s, destinations=tuple(
            replace(d, ingests=tuple(replace(i, bytes_sent=per.get((d.name, i.ingest), i.bytes_sent))
                                     for i in d.ingests)) if d.ingests else d for d in s.destinations))
    sent = dict(e.sent)
    rows = []
    for d in s.destinations:
        value = sent.get(d.name)
        if value is None:
            rows.append(d)
            continue
        if d.sample_bytes is None:
            rows.append(replace(d, bytes_sent=d.bytes_sent + value, sample_bytes=value, sample_ts=s.now))
            continue
        delta = value - d.sample_bytes if value >= d.sample_bytes else value  # counter reset: count from zero
        dt = s.now - (d.sample_ts if d.sample_ts is not None else s.now)
        kbps = delta * 8 / 1000 / dt if dt > 0 else d.kbps
        rows.append(replace(d, bytes_sent=d.bytes_sent + delta, sample_bytes=value, sample_ts=s.now, kbps=kbps))
    rows_t = tuple(rows)
    s = replace(s, destinations=rows_t, bytes_out=sum(d.bytes_sent for d in rows_t))
    if s.bitrate_source != "ffmpeg":
        rates = [d.kbps for d in rows_t if d.state == LIVE and d.kbps is not None]
        s = replace(s, bitrate_kbps=sum(rates) / len(rates) if rates else None,
                    bitrate_source="traffic" if rates else None)
    return s


def _progress(s: Snapshot, e: events.Progress) -> Snapshot:
    def keep(new, old):
        return old if new is None else new

    changes = dict(frame=keep(e.frame, s.frame), fps=keep(e.fps, s.fps), out_time_s=keep(e.out_time_s, s.out_time_s),
                   speed=keep(e.speed, s.speed), dup_frames=max(e.dup_frames, s.dup_frames),
                   drop_frames=max(e.drop_frames, s.drop_frames))
    if e.bitrate_kbps is not None:
        changes.update(bitrate_kbps=e.bitrate_kbps, bitrate_source="ffmpeg")
    if e.total_size is not None and not any(d.sample_bytes is not None for d in s.destinations):
        changes["bytes_out"] = e.total_size
    return replace(s, **changes)


def _put(rows: tuple[DestStatus, ...], new: DestStatus) -> tuple[DestStatus, ...]:
    return tuple(new if d.name == new.name else d for d in rows)
