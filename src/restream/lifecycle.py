"""Pure: the lifecycle of a broadcast and of each destination, and the verdicts at its end.

``step(life, event) -> life`` is the only way a ``Life`` changes; ``changes(old, new)`` lists the destination
states to announce. run.py feeds it what happens (slot events, publisher sessions, stop requests, ffmpeg's exit) and
never decides a state or a verdict itself. No I/O, no clock: time comes with the events.

What the verdicts mean (the README's exit codes and docs/json-events.md say the same):

* A destination has **delivered** when it was live at the moment the stop began (the input ended, the duration was
  reached, a signal, relay mode's ``--once`` publisher gone) and restream then closed it in order. A destination whose
  stream ended in order (ffmpeg unpublished it) just before the stop counts as live at the stop.
* Anything that happens to a connection after the stop began is part of stopping, never a failure — except a
  destination that would not take the end of the stream and had to be cut (``Forced``): it did not deliver.
* Relay mode: each publisher session is judged the same way at its own end (the publisher left). A destination
  delivered the broadcast when it delivered every session it was part of. Between sessions it is ``waiting``.
* ``backup = "both"``: each ingest (primary, backup) has its own lifecycle and verdict (``Dest.legs``, fed by the
  events that name an ``ingest``); the destination is live while either is, stalled when its live ones all are, and
  delivered a session when at least one ingest did (``legs_final`` says which).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from restream.events import CONNECTING, FAILED, LIVE, REMOVED, RETRYING, STALLED, STOPPED, WAITING

# -- what happens (the inputs) ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionStart:
    """go: ffmpeg started. Relay mode: a publisher whose key was verified started a session."""


@dataclass(frozen=True)
class SessionEnd:
    """Relay mode: the publisher left (its ffmpeg is ending); the destinations wait for the next one."""


@dataclass(frozen=True)
class Connecting:
    name: str
    ingest: str | None = None  # backup = "both": the event of that ingest


@dataclass(frozen=True)
class Live:
    name: str
    ingest: str | None = None  # backup = "both": the event of that ingest


@dataclass(frozen=True)
class Stalled:
    name: str
    since: float  # ts of the last byte the destination took
    ingest: str | None = None


@dataclass(frozen=True)
class Resumed:
    name: str
    ingest: str | None = None  # backup = "both": the event of that ingest


@dataclass(frozen=True)
class Unpublished:
    """ffmpeg ended this destination's stream in order (FCUnpublish, then close)."""

    name: str
    ingest: str | None = None


@dataclass(frozen=True)
class Down:
    name: str
    error: str | None
    ingest: str | None = None


@dataclass(frozen=True)
class Forced:
    """While stopping, restream had to cut this destination: it would not take the end of the stream."""

    name: str
    error: str
    ingest: str | None = None


@dataclass(frozen=True)
class Added:
    name: str


@dataclass(frozen=True)
class Removed:
    name: str


@dataclass(frozen=True)
class StopBegan:
    reason: str  # "input ended", "duration reached", "interrupted", "terminated", "publisher gone"


Event = (SessionStart | SessionEnd | Connecting | Live | Stalled | Resumed | Unpublished | Down | Forced | Added
         | Removed | StopBegan)

# -- the state ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dest:
    name: str
    state: str = CONNECTING
    error: str | None = None       # the last error (kept after recovery)
    ever_live: bool = False
    session_live: bool = False     # went live in the current publisher session
    ended_clean: bool = False      # the current session's stream ended in order while live
    stalled_since: float | None = None
    sessions: int = 0              # publisher sessions it was part of
    delivered: int = 0             # ... and delivered
    undelivered: str | None = None  # why a session it was part of was not delivered (the first such reason)
    verdict: str | None = None     # once the stop began: STOPPED (delivered) or FAILED
    removed: bool = False
    legs: tuple["Dest", ...] = ()  # backup = "both": each ingest's own lifecycle (a Dest named after it)


@dataclass(frozen=True)
class Life:
    relay: bool = False            # relay mode: publisher sessions, waiting between them
    phase: str = "running"         # running | waiting (relay mode: between publishers) | stopping
    stop_reason: str | None = None
    sessions: int = 0
    dests: tuple[Dest, ...] = ()

    def dest(self, name: str) -> Dest | None:
        return next((d for d in self.dests if d.name == name), None)

    @property
    def stopping(self) -> bool:
        return self.phase == "stopping"


def initial(names, relay: bool = False) -> Life:
    """go: one session, running from the start. Relay mode: waiting for the first publisher."""
    if relay:
        return Life(relay=True, phase="waiting", dests=tuple(Dest(n, state=WAITING) for n in names))
    return Life(phase="running", sessions=1, dests=tuple(Dest(n, sessions=1) for n in names))


# -- the steps ----------------------------------------------------------------------------------------------------

def step(life: Life, e: Event) -> Life:
    if isinstance(e, StopBegan):
        return _stop(life, e.reason)
    if isinstance(e, SessionStart):
        return _session_start(life)
    if isinstance(e, SessionEnd):
        return _session_end(life)
    if isinstance(e, Added):
        if life.dest(e.name) is not None and not life.dest(e.name).removed:  # type: ignore[union-attr]
            return life
        new = Dest(e.name, state=WAITING if life.phase == "waiting" else CONNECTING,
                   sessions=1 if life.phase == "running" else 0)
        rows = tuple(d for d in life.dests if d.name != e.name) + (new,)
        return replace(life, dests=rows)
    d = life.dest(e.name)  # type: ignore[union-attr]
    if d is None or d.removed:
        return life
    if isinstance(e, Removed):
        return _put(life, replace(d, removed=True, state=REMOVED))
    ingest = getattr(e, "ingest", None)
    if life.stopping:
        if isinstance(e, Forced) and ingest is not None:
            return _put(life, _leg_forced(d, ingest, e.error))
        if isinstance(e, Forced) and d.verdict == STOPPED:
            return _put(life, replace(d, verdict=FAILED, error=e.error))
        return life  # part of stopping: never a failure
    if life.phase == "waiting":
        return life  # between publisher sessions: ffmpeg's last session is closing
    if ingest is not None:
        return _put(life, _leg_step(d, ingest, e))
    if d.legs:  # no longer fed both ways (edited while live): judged as one connection again
        d = replace(d, legs=())
    return _put(life, _dest_step(d, e))


def _leg_step(d: Dest, ingest: str, e: Event) -> Dest:
    """One ingest of a "both" destination changed; the destination's state follows from its ingests'."""
    old = next((x for x in d.legs if x.name == ingest), None) or Dest(ingest, sessions=max(d.sessions, 1))
    leg = _dest_step(old, e)
    legs = tuple(sorted([x for x in d.legs if x.name != ingest] + [leg], key=lambda x: (x.name != "primary", x.name)))
    states = [x.state for x in legs]
    state = next((s for s in (LIVE, STALLED, CONNECTING) if s in states), RETRYING)  # retrying: when all are
    stalled = [x.stalled_since for x in legs if x.state == STALLED and x.stalled_since is not None]
    error = f"{ingest}: {leg.error}" if leg.error and leg.error != old.error else d.error
    return replace(d, legs=legs, state=state, error=error, ever_live=any(x.ever_live for x in legs),
                   session_live=any(x.session_live for x in legs), ended_clean=any(x.ended_clean for x in legs),
                   stalled_since=min(stalled) if state == STALLED and stalled else None)


def _leg_forced(d: Dest, ingest: str, error: str) -> Dest:
    """While stopping, one ingest had to be cut: it did not deliver; the destination did if another one did."""
    legs = tuple(replace(x, verdict=FAILED, error=error) if x.name == ingest and x.verdict == STOPPED else x
                 for x in d.legs)
    if any(x.verdict == STOPPED for x in legs):
        return replace(d, legs=legs)
    if d.verdict == STOPPED:
        return replace(d, legs=legs, verdict=FAILED, error=f"{ingest}: {error}")
    return replace(d, legs=legs)


def _dest_step(d: Dest, e: Event) -> Dest:
    if isinstance(e, Connecting):
        # a new session after a live one is a reconnection; another attempt keeps the last error shown
        if d.state in (LIVE, STALLED):
            return replace(d, state=RETRYING, ended_clean=False, stalled_since=None)
        if d.state == RETRYING:
            return replace(d, ended_clean=False)
        return replace(d, state=CONNECTING, ended_clean=False)
    if isinstance(e, Live):
        return replace(d, state=LIVE, ever_live=True, session_live=True, ended_clean=False, stalled_since=None)
    if isinstance(e, Stalled):
        return replace(d, state=STALLED, stalled_since=e.since) if d.state == LIVE else d
    if isinstance(e, Resumed):
        return replace(d, state=LIVE, stalled_since=None) if d.state == STALLED else d
    if isinstance(e, Unpublished):
        # the stream ended in order: still counts as live until we learn it was not the end (a new session)
        return replace(d, ended_clean=d.state in (LIVE, STALLED), state=LIVE if d.state == STALLED else d.state)
    if isinstance(e, (Down, Forced)):
        error = e.error
        if error is None:
            return d  # closed without an error: the end of the stream or a reconnect ("connecting" follows)
        return replace(d, state=RETRYING, error=error, ended_clean=False, stalled_since=None)
    return d


def _judge(d: Dest) -> tuple[bool, str | None]:
    """Did ``d`` deliver the session that is ending now? (and if not, why)."""
    if d.legs:
        judged = [(x.name, *_judge(x)) for x in d.legs]
        if any(ok for _, ok, _ in judged):
            return True, None
        return False, "; ".join(f"{name}: {_with_error(why, x.error)}" for (name, _, why), x in zip(judged, d.legs))
    if d.state == LIVE or d.ended_clean:
        return True, None
    if d.state == STALLED:
        return False, "stalled when the broadcast ended"
    if not d.session_live and not d.ever_live:
        return False, "never went live"
    return False, "not live when the broadcast ended"


def _close_session(d: Dest) -> Dest:
    ok, why = _judge(d)
    legs = tuple(_close_session(x) for x in d.legs)
    if ok:
        return replace(d, delivered=d.delivered + 1, legs=legs)
    if d.legs:
        return replace(d, undelivered=d.undelivered or why, legs=legs)
    return replace(d, undelivered=d.undelivered or _with_error(why, d.error))


def _with_error(why: str | None, error: str | None) -> str | None:
    return f"{why} ({error})" if why and error else why


def _session_start(life: Life) -> Life:
    if life.stopping:
        return life
    rows = tuple(d if d.removed else replace(d, sessions=d.sessions + 1, session_live=False, ended_clean=False,
                                             state=CONNECTING, stalled_since=None,
                                             legs=tuple(replace(x, sessions=x.sessions + 1, session_live=False,
                                                                ended_clean=False, state=CONNECTING,
                                                                stalled_since=None) for x in d.legs))
                 for d in life.dests)
    return replace(life, phase="running", sessions=life.sessions + 1, dests=rows)


def _session_end(life: Life) -> Life:
    if life.phase != "running":
        return life
    rows = tuple(d if d.removed else replace(_close_session(d), state=WAITING, stalled_since=None)
                 for d in life.dests)
    return replace(life, phase="waiting", dests=rows)


def _stop(life: Life, reason: str) -> Life:
    if life.stopping:
        return life
    rows = []
    for d in life.dests:
        if d.removed:
            rows.append(d)
            continue
        if life.phase == "running":
            d = _close_session(d)
        if d.sessions == 0:
            verdict = STOPPED if life.relay else FAILED  # relay mode: no publisher came, nothing to deliver
            if not life.relay:
                d = replace(d, undelivered=d.undelivered or _with_error("never went live", d.error))
        else:
            verdict = STOPPED if d.delivered == d.sessions else FAILED
        legs = tuple(replace(x, verdict=STOPPED if x.sessions and x.delivered == x.sessions else FAILED)
                     for x in d.legs)
        rows.append(replace(d, verdict=verdict, legs=legs))
    return replace(life, phase="stopping", stop_reason=reason, dests=tuple(rows))


def _put(life: Life, new: Dest) -> Life:
    return replace(life, dests=tuple(new if d.name == new.name else d for d in life.dests))


# -- what to announce, and the end --------------------------------------------------------------------------------

def changes(old: Life, new: Life) -> list[tuple[str, str, str | None]]:
    """(name, state, error) for every destination whose shown state changed (or that got a new error)."""
    before = {d.name: d for d in old.dests}
    out = []
    for d in new.dests:
        b = before.get(d.name)
        if b is None or b.removed != d.removed:
            continue  # additions and removals are announced by run.py with their URL
        if (b.state, b.error) != (d.state, d.error) and not d.removed:
            out.append((d.name, d.state, d.error if d.state == RETRYING else None))
    return out


def final(life: Life) -> list[tuple[str, str, str | None]]:
    """The verdict of every destination still in the broadcast: (name, STOPPED | FAILED, why-not)."""
    out = []
    for d in life.dests:
        if d.removed:
            continue
        verdict = d.verdict or FAILED
        why = None
        if verdict == FAILED:
            why = d.undelivered or d.error or "not live when the broadcast ended"
            if life.relay and d.sessions > 1:
                why = f"{why}; delivered {d.delivered} of {d.sessions} publisher sessions"
        out.append((d.name, verdict, why))
    return out


def leg_changes(old: Life, new: Life) -> list[tuple[str, str, str, str | None]]:
    """(name, ingest, state, error) for every ingest of a "both" destination whose state or error changed."""
    before = {d.name: {x.name: x for x in d.legs} for d in old.dests}
    out = []
    for d in new.dests:
        if d.removed:
            continue
        for x in d.legs:
            b = before.get(d.name, {}).get(x.name)
            if b is None or (b.state, b.error) != (x.state, x.error):
                out.append((d.name, x.name, x.state, x.error if x.state == RETRYING else None))
    return out


def legs_final(life: Life) -> list[tuple[str, str, str, str | None]]:
    """The verdict of each ingest of the "both" destinations: (name, ingest, STOPPED | FAILED, why-not)."""
    out = []
    for d in life.dests:
        if d.removed:
            continue
        for x in d.legs:
            verdict = x.verdict or FAILED
            why = None if verdict == STOPPED else (x.undelivered or x.error or "not live when the broadcast ended")
            out.append((d.name, x.name, verdict, why))
    return out


def delivered(life: Life) -> dict[str, bool]:
    return {d.name: d.verdict == STOPPED for d in life.dests if not d.removed}


def exit_code(life: Life) -> int:
    """0 if every destination delivered, 1 if some did not, 5 if none did (signals and ffmpeg failures are run.py's).

    Relay mode with no publisher session at all has nothing to judge: 0."""
    verdicts = delivered(life)
    if life.relay and life.sessions == 0:
        return 0
    if not verdicts or not any(verdicts.values()):
        return 5
    return 0 if all(verdicts.values()) else 1
