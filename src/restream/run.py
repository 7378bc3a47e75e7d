"""Own one broadcast: the slot relay, the one ffmpeg process, its progress and log, stopping it cleanly.

Everything the broadcast does is reported as typed events (``restream.events``) through one callback; this module
never prints. Per-destination state comes from the relay (the truth: an upstream connection that accepted the
publish), not from guessing at ffmpeg's log.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from restream import events as ev
from restream import fanout, lifecycle, plan
from restream.errors import BroadcastError
from restream.redact import Redactor
from restream.slotrelay import STALL_TIMEOUT_S, SlotEvent, SlotRelay, Upstream

SLOTS = 5
# The end is bounded: from the moment the stop began, ffmpeg is gone within END_BOUND_S.
END_GRACE_S = 3.0  # a soft stop (input or -t ended): ffmpeg ends by itself within this, else "q"
Q_GRACE_S = 5.0  # after the stop began: "q" was not enough, first SIGINT
SIGNAL_GRACE_S = 1.5  # after each signal, before the next (a stalled ffmpeg needs a second one); SIGKILL last
END_BOUND_S = Q_GRACE_S + 2 * SIGNAL_GRACE_S + 1.0
END_SLACK_S = 0.25  # stream time this close to the end (-t, a file's length) counts as the end
TRAFFIC_INTERVAL_S = 1.0
SRT_SETTLE_S = 3.0
WATCH_INTERVAL_S = 0.25  # one stat() of the profile (and a trip round the loop); live changes apply within ~1 s (README)
NOTICE = "restream"  # level of restream's own notices in Log events
# Relay mode: what ffmpeg's listener says when a publisher is rejected or leaves; restream reports those itself.
RELAY_ROUTINE = ("Unexpected stream", "Error opening input", "Unable to read handshake", "Error during demuxing",
                 "Cannot open connection tcp://127.0.0.1")


@dataclass(frozen=True)
class Target:
    """A destination ready to go live: key resolved, nothing else to look up."""

    name: str
    server_url: str
    key: str | None
    ca_file: str | None = None
    enc: plan.Encoding | None = None  # its own encoding (settings, caps); None: the broadcast's
    backup_url: str | None = None  # a second ingest for the same key (the relay fails over to it)
    backup_mode: str | None = None  # "failover" or "both" when backup_url is set

    @property
    def via_relay(self) -> bool:
        return urlsplit(self.server_url).scheme.lower() in ("rtmp", "rtmps")

    def upstream(self) -> Upstream:
        url, key = self.server_url, self.key
        if key is None:  # the URL carries the stream name as its last path element
            parts = urlsplit(url)
            head, _, name = parts.path.rstrip("/").rpartition("/")
            url = parts._replace(path=head).geturl()
            key = name
        return Upstream(self.name, url, key, self.ca_file, backup_url=self.backup_url,
                        backup_mode=self.backup_mode or "failover")

    def __repr__(self) -> str:
        return f"Target(name={self.name!r}, server_url={self.server_url!r}, key='••••')"


def encode_groups(targets: list[Target], enc: plan.Encoding) -> tuple[plan.Group, ...]:
    """Destinations with the same encoding share one encode (the broadcast's own encoding first)."""
    return plan.groups([(t.name, t.enc or enc) for t in targets], enc)


def slot_groups(targets: list[Target], groups: tuple[plan.Group, ...]) -> dict[int, int]:
    """Relay slot -> the encode group it carries: each destination's slot its group's; the free slots (for
    destinations added while live) go round the groups, the first (the broadcast's own encoding) first."""
    group_of = {name: g.index for g in groups for name in g.members}
    relay = [t for t in targets if t.via_relay]
    out = {i: group_of.get(t.name, 0) for i, t in enumerate(relay)}
    free = range(len(relay), SLOTS - (len(targets) - len(relay)))
    for k, slot in enumerate(free):
        out[slot] = groups[k % len(groups)].index if groups else 0
    return out


def layout(targets: list[Target], slot_url: Callable[[int], str], record: str | None = None,
           groups: tuple[plan.Group, ...] | None = None) -> tuple[tuple[plan.Slave, ...], dict[str, int], int]:
    """The tee's slaves: one relay slot per RTMP(S) destination plus free slots up to five (for destinations
    added while live), a direct slave per SRT destination, and the recording. Returns (slaves, slot_of, slots).
    With several encode ``groups`` each slave selects its group's streams (the recording: the first group's)."""
    srt = [t for t in targets if not t.via_relay]
    relay_slots = SLOTS - len(srt)
    slaves = [plan.relay_slave(f"slot-{i}", slot_url(i)) for i in range(relay_slots)]
    slaves += [plan.srt_slave(t.name, t.server_url, t.key) for t in srt]
    if record:
        slaves.append(plan.record_slave(record))
    slot_of = {t.name: i for i, t in enumerate(t for t in targets if t.via_relay)}
    if groups is not None and (len(groups) > 1 or groups[0].enc.crop):
        from dataclasses import replace

        by_slot = slot_groups(targets, groups)
        group_of = {name: g for g in groups for name in g.members}
        picked = []
        for s in slaves:
            if s.name.startswith("slot-"):
                g = groups[by_slot[int(s.name[5:])]]
            else:
                g = group_of.get(s.name, groups[0])
            picked.append(replace(s, options=s.options + (("select", g.select),)))
        slaves = picked
    return tuple(slaves), slot_of, relay_slots


def relay_native(relay_mode: bool, enc: plan.Encoding, targets: list[Target], record: str | None,
                 slate: bool) -> bool:
    """Pure: relay mode fans the publisher's messages out itself, with no ffmpeg on the path (``fanout``), when it
    copies (no --transcode, no --slate), records nothing, and every destination is RTMP(S) and takes the
    broadcast's copy (one encode group: no destination with its own encoding). Anything else runs today's ffmpeg."""
    if not relay_mode or not enc.copy or slate or record or not all(t.via_relay for t in targets):
        return False
    groups = encode_groups(targets, enc)
    return len(groups) == 1 and groups[0].enc.copy and not groups[0].enc.crop


@dataclass(frozen=True)
class Slate:
    """--slate: what to show while no source delivers (None: restream's card), and how long before the end."""

    file: object | None = None  # a sources.SlateFile
    timeout: float | None = 600.0  # seconds on the slate before a clean end; None: never


def _libc(name: str):
    """A libc function, resolved once, here, in the main thread at import: never in a forked child (a child of a
    process with threads must not dlopen: the loader's lock may be held by a thread that is not there anymore)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None


_PRCTL = _libc("prctl")
_MALLOC_TRIM = _libc("malloc_trim")  # glibc: give freed heap memory back (a broadcast runs for hours)
TRIM_INTERVAL_S = 60.0


def die_with_parent() -> None:
    """In the child before exec: kill it if restream dies (even by SIGKILL), so no ffmpeg is left behind.

    SIGKILL, not SIGTERM: the relay died with restream, so there is nothing left to close cleanly, and an ffmpeg
    whose outputs are all gone may ignore a first SIGTERM. Only a call of the function resolved at import: with
    --slate the parent has threads, and a forked child may take no lock (no import, no dlopen).
    """
    if _PRCTL is not None:
        _PRCTL(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


class Broadcast:
    """One broadcast: the relay, ffmpeg (one process; relay mode runs one per publisher session), the stop.

    What happens is fed to ``lifecycle`` (pure), which decides every destination's state and verdict; this class
    only turns slot events, ingest events, signals and ffmpeg's exit into lifecycle events and the lifecycle's
    changes into ``events.DestState``.
    """

    def __init__(
        self,
        ffmpeg: str,
        inp: plan.Input,
        enc: plan.Encoding,
        targets: list[Target],
        on_event: Callable[[ev.Event], None],
        *,
        profile: str = "default",
        ffmpeg_label: str = "",
        record: str | None = None,
        duration: float | None = None,
        font: str | None = None,
        queue_size: int = 600,
        input_label: str = "",
        input_duration: float | None = None,
        watch: tuple[Path, Callable[[], list[Target]]] | None = None,
        gate=None,
        once: bool = False,
        secrets: tuple[str, ...] = (),
        stall_timeout: float = STALL_TIMEOUT_S,
        on_ready: Callable[[], None] | None = None,
        slate: Slate | None = None,
    ) -> None:
        self.ffmpeg, self.inp, self.enc = ffmpeg, inp, enc
        self.emit = on_event
        self.profile, self.ffmpeg_label, self.input_label = profile, ffmpeg_label, input_label
        self.record, self.duration, self.font, self.queue_size = record, duration, font, queue_size
        self.input_duration = input_duration  # a file's known length (not looped): its end is the stop
        self.targets: dict[str, Target] = {t.name: t for t in targets}
        self.secrets = tuple(secrets)  # besides the destinations' keys, e.g. relay mode's ingest key
        self.redact = Redactor([*(t.key for t in targets), *self.secrets])
        self.relay = SlotRelay(SLOTS, on_event=self._on_slot, stall_timeout=stall_timeout)
        self.slot_of: dict[str, int] = {}
        self.proc: asyncio.subprocess.Process | None = None
        self.stop_reason: str | None = None
        self._stop = asyncio.Event()       # the stop began
        self._hard = False                 # ... by a signal or a request: ask ffmpeg to end now
        self._stop_at = 0.0                # time.monotonic() when it began
        self._signalled = False            # restream had to signal ffmpeg to end it
        self._judged = False               # the verdicts were taken (lifecycle.StopBegan)
        self.relay_slots = SLOTS
        self.groups: tuple[plan.Group, ...] = ()
        self.slot_group: dict[int, int] = {}
        self.watch = watch
        self.gate, self.once = gate, once  # relay mode: an ingest.IngestGate in front of ffmpeg's listener
        self.on_ready = on_ready
        self.life = lifecycle.initial([t.name for t in targets], relay=gate is not None)
        self._codec_checked = False
        self.input_error: str | None = None  # ffmpeg said reading the input failed (ffmpeg still exits 0)
        self.publishers = 0  # relay mode: publishers whose key was verified so far
        self._publishing: set[str] = set()  # relay mode: peers announced as publishing
        self._srt_errors: dict[str, float] = {}
        self._srt_since = 0.0
        self._quiet_ports: set[str] = set()
        self._started_at: float | None = None
        self.record_index: int | None = None  # the recording's slave index in the tee (it is the last one)
        self.record_error: str | None = None  # the recording failed (ffmpeg: "Slave muxer #N failed: …")
        self._input_ready = asyncio.Event()  # relay mode: the running ffmpeg's stdin awaits a verified publisher
        self._fed = False  # relay mode: the running ffmpeg's stdin was handed to a publisher
        self._intruders = (0.0, 0)  # when the last refused connection was reported, and how many since
        self.slate = slate  # --slate: the sources feed a frame switcher; the destinations stay published throughout
        self._poke_slate = asyncio.Event()  # the source's state changed
        self.desk = None  # --slate: the sources.SourceDesk (made in run)
        self._pass_fds: tuple[int, ...] = ()
        self.native = False  # relay mode's native fan-out (``relay_native``; decided when the run starts)
        self._fan = None  # ... the open publisher session (a fanout.Feed)
        self._feed_over: asyncio.Event | None = None
        self._fan_done = None  # ... the publisher session that just ended (its last progress report is due)
        self._last_progress: tuple[float, int, float] | None = None

    @property
    def per_session(self) -> bool:
        """Relay mode without --slate: one ffmpeg per publisher, each session judged at its end."""
        return self.gate is not None and self.slate is None

    # -- state ------------------------------------------------------------------------------------------------

    def _feed(self, e: lifecycle.Event) -> None:
        old, self.life = self.life, lifecycle.step(self.life, e)
        if old is self.life:
            return
        for name, ingest, state, error in lifecycle.leg_changes(old, self.life):  # backup = "both"
            self.emit(ev.IngestState(time.time(), name, ingest, state, self.redact(error) if error else None))
        for name, state, error in lifecycle.changes(old, self.life):
            d = self.life.dest(name)
            since = d.stalled_since if d is not None and state == ev.STALLED else None
            self.emit(ev.DestState(time.time(), name, state, self.redact(error) if error else None, since=since))

    def _on_slot(self, e: SlotEvent) -> None:
        name = e.name
        if name is None or self.slot_of.get(name) != e.slot:
            return
        kind = e.kind
        leg = e.ingest if e.leg else None  # backup = "both": one ingest's event
        if kind == "connecting":
            self._feed(lifecycle.Connecting(name, leg))
        elif kind == "live":
            self._feed(lifecycle.Live(name, leg))
        elif kind == "stalled":
            self._feed(lifecycle.Stalled(name, e.since or time.time(), leg))
        elif kind == "resumed":
            self._feed(lifecycle.Resumed(name, leg))
        elif kind == "ended":
            self._feed(lifecycle.Unpublished(name, leg))
        elif kind == "forced":
            self._feed(lifecycle.Forced(name, self.redact(e.error or "held up the end"), leg))
            who = f"{name} ({leg} ingest)" if leg else name
            self.emit(ev.Log(time.time(), "warning", f"{who}: {self.redact(e.error or 'held up the end')}"))
        elif kind in ("disconnected", "refused"):
            self._feed(lifecycle.Down(name, self.redact(e.error) if e.error else None, leg))
        elif kind == "switched" and e.ingest:
            # which ingest is not a lifecycle state (connecting/live/... and the verdicts do not depend on it): the
            # views learn it from this event
            why = self.redact(e.error or "")
            self.emit(ev.IngestSwitch(time.time(), name, e.ingest, why))

    # -- slots ------------------------------------------------------------------------------------------------

    def _slaves(self) -> tuple[plan.Slave, ...]:
        targets = list(self.targets.values())
        self.groups = encode_groups(targets, self.enc)
        self.slot_group = slot_groups(targets, self.groups)
        url = (lambda i: "") if self.native else self.relay.slave_url  # native: no ffmpeg, no slave
        slaves, self.slot_of, self.relay_slots = layout(targets, url, self.record, self.groups)
        self.record_index = len(slaves) - 1 if self.record else None
        return slaves

    def free_slots(self, enc: plan.Encoding | None = None) -> list[int]:
        """Free relay slots (``enc``: those carrying that encoding's group)."""
        used = set(self.slot_of.values())
        free = [s for s in range(self.relay_slots) if s not in used]
        if enc is None or not self.groups:
            return free
        return [s for s in free if self.groups[self.slot_group.get(s, 0)].enc == enc]

    def _group_problem(self, t: Target) -> str | None:
        """A destination whose encoding no running encode has cannot join while live."""
        enc = t.enc or self.enc
        if any(g.enc == enc for g in self.groups):
            return None
        return (f"{t.name}: its encoding ({enc.describe()}) needs an encoder this broadcast does not run; it applies "
                "at the next 'restream go'")

    def apply(self, targets: list[Target]) -> list[str]:
        """Change the running broadcast to ``targets`` (live add/remove/edit); returns problems, if any."""
        problems: list[str] = []
        if self.life.stopping:
            return problems
        wanted = {t.name: t for t in targets}
        self.redact = Redactor([*(t.key for t in targets), *(t.key for t in self.targets.values()), *self.secrets])
        for name in list(self.targets):
            old = self.targets[name]
            new = wanted.get(name)
            if new == old:
                continue
            if new is not None and (problem := self._group_problem(new)) is not None:
                problems.append(problem)  # the destination stays on air as it was
                continue
            if new is not None and (new.enc or self.enc) != (old.enc or self.enc) \
                    and not self.free_slots(new.enc or self.enc):
                problems.append(f"{name}: no free slot carries its new encoding ({(new.enc or self.enc).describe()});"
                                " it applies at the next 'restream go'")
                continue
            if not old.via_relay:
                problems.append(f"{name}: SRT destinations cannot be changed while live")
                continue
            slot = self.slot_of.pop(name)
            self.relay.assign(slot, None)  # a live session is unpublished, flushed and closed in order
            del self.targets[name]
            self._feed(lifecycle.Removed(name))
            self.emit(ev.DestState(time.time(), name, ev.REMOVED))
        for name, t in wanted.items():
            if name in self.targets:
                continue
            if not t.via_relay:
                problems.append(f"{name}: SRT destinations cannot be added while live")
                continue
            if (problem := self._group_problem(t)) is not None:
                problems.append(problem)
                continue
            free = self.free_slots(t.enc or self.enc)
            if not free:
                problems.append(f"{name}: all {SLOTS} slots are in use" if not self.free_slots() else
                                f"{name}: no free slot carries its encoding ({(t.enc or self.enc).describe()}); "
                                "it applies at the next 'restream go'")
                continue
            self.targets[name] = t
            self.slot_of[name] = free[0]
            self._feed(lifecycle.Added(name))
            self.emit(ev.DestState(time.time(), name, ev.ADDED, url=t.server_url))
            d = self.life.dest(name)
            self.emit(ev.DestState(time.time(), name, d.state if d else ev.CONNECTING))
            self.relay.assign(free[0], t.upstream())
        return problems

    # -- stopping ---------------------------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Stop now (a signal, or --once's publisher gone): ffmpeg is asked to end at once."""
        self._begin_stop(reason, hard=True)

    def _begin_stop(self, reason: str, hard: bool) -> None:
        """The stop began: verdicts are taken now; what follows is part of stopping. ``hard``: ffmpeg is asked
        to end now; otherwise (its input or ``-t`` ends it) it gets ``END_GRACE_S`` to end by itself."""
        if hard and not self._hard and self._stop.is_set():
            self._hard = True  # a signal during a soft stop: ask ffmpeg now (the clock keeps its start)
            self.stop_reason = reason
            self._poke.set()
            return
        if self._stop.is_set():
            return
        self.stop_reason = reason
        self._hard = hard
        self._stop_at = time.monotonic()
        if hard or not self.per_session:
            self._judge()
        # relay mode, soft (--once's publisher left): ffmpeg still sends what it buffered; the verdict is taken
        # when it has ended (``_finish``), the clock runs from now
        self._stop.set()

    def _judge(self) -> None:
        """The verdicts are taken now; whatever happens to a connection after this is part of stopping."""
        if not self._judged:
            self._judged = True
            self._feed(lifecycle.StopBegan(self.stop_reason or "input ended"))
            self.relay.begin_stop()

    async def _duration_clock(self) -> None:
        """--duration is wall time: at its end the stop begins, whatever the stream time says (-t ends ffmpeg
        at the same stream time when the encode keeps up)."""
        assert self.duration is not None
        await asyncio.sleep(self.duration)
        self._begin_stop("duration reached", hard=False)

    # -- process ----------------------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._poke = asyncio.Event()
        # the gate is set by now; with --slate the destinations wait for the first source, then stay published
        self.life = lifecycle.initial(list(self.targets), relay=self.gate is not None or self.slate is not None)
        self.native = relay_native(self.gate is not None, self.enc, list(self.targets.values()), self.record,
                                   self.slate is not None)
        await self.relay.start(listen=not self.native)
        self.relay.on_intruder = self._intruder
        self.relay.allow_only(None)  # only the ffmpeg about to start may publish to the slots (PID given below)
        background: list[asyncio.Task] = []
        signals = False
        try:
            slaves = self._slaves()
            self._quiet_ports = {str(p) for p in self.relay.ports}
            p = None if self.native else plan.build(self.ffmpeg, self.inp, self.enc, slaves, self.duration,
                                                    self.queue_size, self.font, groups=self.groups)
            if self.slate is not None:
                self.desk = self._make_desk()
            if self.gate is not None:
                self.gate.sink = self._native_sink if self.native else \
                    self.ingest_input if self.desk is None else self._feed_sink
                try:
                    await self.gate.start()
                except OSError as exc:
                    raise BroadcastError(f"cannot listen on {self.gate.host}:{self.gate.port}: "
                                         f"{exc.strerror or exc}") from None
            for sig, reason in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")):
                loop.add_signal_handler(sig, self.request_stop, reason)
            signals = True
            for t in self.targets.values():
                if t.via_relay:
                    self.relay.assign(self.slot_of[t.name], t.upstream())
            background = [asyncio.create_task(self._traffic())]
            if self.watch:
                background.append(asyncio.create_task(self._watch()))
            if self.slate is not None:
                return self._finish(await self._slate_broadcast(background))
            if self.native:
                await self._native_session(first=True)
                while not self._stop.is_set():
                    await self._native_session(first=False)
                return self._finish(0)
            assert p is not None
            rc = await self._session(p.argv, first=True)
            while self.per_session and not self._stop.is_set():
                self._codec_checked = False
                rc = await self._session(p.argv, first=False)
            return self._finish(rc)
        finally:
            for task in background:
                task.cancel()
            if signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            if self.gate is not None:
                await self.gate.close()
            if self.desk is not None:
                await self.desk.close()
            await self.relay.close()

    # -- --slate ----------------------------------------------------------------------------------------------------

    def _make_desk(self):
        from restream import sources

        assert self.slate is not None
        rate = plan.number(self.enc.fps) if self.enc.fps else None
        return sources.SourceDesk(self.ffmpeg, slate=self.slate.file, size=self.enc.size, rate=rate, font=self.font,
                                  redact=self.redact, on_state=self._source_state,
                                  pull=None if self.gate is not None else self.inp)

    async def _feed_sink(self):
        """Relay mode with --slate: the next verified publisher's FLV goes to a new source ffmpeg."""
        assert self.desk is not None
        if self._stop.is_set():
            return None
        return await self.desk.feed()

    def _source_state(self, state: str, detail: str) -> None:
        self.emit(ev.SourceState(time.time(), state, self.redact(detail)))
        self._poke_slate.set()

    async def _slate_broadcast(self, background: list[asyncio.Task]) -> int:
        """--slate: the destinations are published once, when the first source delivers, and stay published until
        the stop; the sources come and go behind the switcher. Returns ffmpeg's exit status (0 if it never ran)."""
        assert self.desk is not None and self.slate is not None
        desk = self.desk
        self._started_at = time.time()
        self.emit(ev.Started(time.time(), self.profile, self.input_label, self.ffmpeg_label, None,
                             tuple((t.name, t.server_url) for t in self.targets.values())))
        for d in self.life.dests:
            self.emit(ev.DestState(time.time(), d.name, d.state))
        self._source_state(desk.state, "waiting for a publisher" if self.gate is not None else
                           "opening the source")
        if self.on_ready is not None:
            self.on_ready()
        if desk.pull is not None:
            background.append(asyncio.create_task(desk.pull_loop()))
        background.append(asyncio.create_task(self._slate_clock()))
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([stop, desk.first], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not desk.first.done():
            return 0  # stopped before any source came: nothing went out
        raw = desk.first.result()
        self.inp = replace(self.inp, kind="switch", raw=raw, fps=None)
        self.emit(ev.Log(time.time(), NOTICE, f"encoding at {raw.label} (the slate and every source are fitted to it)"))
        p = plan.build(self.ffmpeg, self.inp, self.enc, self._slaves(), self.duration, self.queue_size, self.font,
                       groups=self.groups)
        self._pass_fds = (raw.video_fd, raw.audio_fd)
        self._feed(lifecycle.SessionStart())
        return await self._session(p.argv, first=True)

    async def _slate_clock(self) -> None:
        """--slate-timeout: that long on the slate (no source) ends the broadcast in order. go: a source that never
        delivered within it is an input failure."""
        assert self.desk is not None and self.slate is not None
        limit = self.slate.timeout
        if not limit:
            return
        from restream import switcher

        while not self._stop.is_set():
            self._poke_slate.clear()
            desk = self.desk
            if desk.first.done():
                off = desk.state in (switcher.SLATE, switcher.LOST)
            else:
                off = self.gate is None  # relay mode waits for its first publisher as long as it takes
            left = limit - (time.monotonic() - desk.state_since) if off else None
            if left is not None and left <= 0:
                if not desk.first.done():
                    self.input_error = f"the source delivered nothing in {plan.number(limit)} s (--slate-timeout)"
                self._begin_stop("no source (--slate-timeout)", hard=True)
                return
            try:
                await asyncio.wait_for(self._poke_slate.wait(), timeout=left if left is not None else None)
            except TimeoutError:
                pass

    async def _session(self, argv: tuple[str, ...], first: bool) -> int:
        """One ffmpeg process from start to exit (relay mode runs one per publisher)."""
        stdin = None if self.inp.kind == "stdin" else asyncio.subprocess.PIPE
        self.relay.end_stop()
        self.proc = await asyncio.create_subprocess_exec(
            *argv, stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, limit=1 << 20, preexec_fn=die_with_parent, pass_fds=self._pass_fds)
        clock = None
        self.relay.allow_only(self.proc.pid)  # connections that came meanwhile were held, unread, until now
        if self.per_session:
            self._fed = False
            self._input_ready.set()
        if not first:
            self.emit(ev.NewSession(time.time(), self.proc.pid))
        if self.desk is not None:
            self.desk.on_air()
            if self.duration is not None:
                clock = asyncio.create_task(self._duration_clock())
        if first and self.desk is None:
            self._announce(self.proc.pid)
            if self.gate is None and self.duration is not None:
                clock = asyncio.create_task(self._duration_clock())
        if first and self.record:
            self.emit(ev.Recording(time.time(), self.record, "recording"))
        tasks = [asyncio.create_task(c) for c in (self._read_progress(), self._read_log(), self._stopper())]
        rc = await self.proc.wait()
        self._input_ready.clear()
        self.relay.allow_only(None)
        # the last bytes reach the destinations (and who would not take them is named) before any verdict
        await self.relay.settle()
        await asyncio.wait(tasks[:2], timeout=2)
        for task in tasks:
            task.cancel()
        if clock is not None:
            clock.cancel()
        if self.per_session and self.life.phase == "running" and not self._stop.is_set():
            # relay mode: the publisher's session is over (ffmpeg sent everything it had and ended)
            self._feed(lifecycle.SessionEnd())
            self.emit(ev.Log(time.time(), NOTICE, "publisher gone: waiting for the next one (Ctrl-C to stop)"))
        return rc

    # -- relay mode's native fan-out ----------------------------------------------------------------------------

    async def _native_session(self, first: bool) -> None:
        """One publisher session without ffmpeg: the next verified publisher's messages go to every destination
        (``fanout.Feed``); it ends when the publisher leaves or the stop begins, then the destinations drain."""
        self.relay.end_stop()
        self._feed_over = asyncio.Event()
        if first:
            self._announce(None)
        else:
            self.emit(ev.NewSession(time.time(), None))
            self._last_progress = None
        self._input_ready.set()
        progress = asyncio.create_task(self._native_progress())
        stop = asyncio.ensure_future(self._stop.wait())
        over = asyncio.ensure_future(self._feed_over.wait())
        try:
            await asyncio.wait([stop, over], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            over.cancel()
            progress.cancel()
        self._input_ready.clear()
        if self._fan is not None:
            self._fan.close()  # the stop began while a publisher was live: each destination ends its stream
        if self._fan_done is not None:
            self._progress(self._fan_done)  # the session's whole stream time (what ffmpeg's last report said)
            self._fan_done = None
        # the last bytes reach the destinations (and who would not take them is named) before any verdict
        await self.relay.settle()
        if self.life.phase == "running" and not self._stop.is_set():
            self._feed(lifecycle.SessionEnd())
            self.emit(ev.Log(time.time(), NOTICE, "publisher gone: waiting for the next one (Ctrl-C to stop)"))

    async def _native_progress(self) -> None:
        """What ffmpeg's -progress said on the ffmpeg path: frames, rate and stream time sent (every second: each
        report costs a status fold and the views' update)."""
        while True:
            await asyncio.sleep(1.0)
            if self._fan is not None:
                self._progress(self._fan)

    def _progress(self, fan) -> None:
        if not fan.frames and not fan.last_ts:
            return
        now, t = time.monotonic(), fan.last_ts / 1000.0
        fps = speed = None
        last = self._last_progress  # (monotonic, frames, stream time) at the previous report
        if last is not None and now > last[0] and fan.frames >= last[1]:
            fps = round((fan.frames - last[1]) / (now - last[0]), 2)
            speed = round(max(0.0, t - last[2]) / (now - last[0]), 3)
        self._last_progress = (now, fan.frames, t)
        self.emit(ev.Progress(time.time(), frame=fan.frames, fps=fps, out_time_s=t, speed=speed))

    async def _native_sink(self):
        """The gate's sink for the next verified publisher: a new fan-out of its messages (None: stopping)."""
        await self._input_ready.wait()
        self._input_ready.clear()
        if self._stop.is_set():
            return None
        over = self._feed_over

        def closed() -> None:
            self._fan_done, self._fan = self._fan, None
            if over is not None:
                over.set()

        self._fan = fanout.Feed(self.relay, on_close=closed, warn=self._warn_codec)
        return self._fan

    def _warn_codec(self, text: str) -> None:
        self.emit(ev.Log(time.time(), "warning", text))

    def _announce(self, pid: int | None) -> None:
        """The broadcast started (``pid``: its ffmpeg's; None: the native fan-out runs none)."""
        self._started_at = time.time()
        self.emit(ev.Started(time.time(), self.profile, self.input_label, self.ffmpeg_label, pid,
                             tuple((t.name, t.server_url) for t in self.targets.values())))
        for d in self.life.dests:
            self.emit(ev.DestState(time.time(), d.name, d.state))
        if self.on_ready is not None:
            self.on_ready()

    async def ingest_input(self) -> asyncio.StreamWriter:
        """Relay mode: the waiting ffmpeg's stdin (it reads FLV there), for the next verified publisher; waits while
        ffmpeg restarts. The gate closes it when the publisher leaves, which ends that ffmpeg."""
        await self._input_ready.wait()
        self._input_ready.clear()
        self._fed = True
        assert self.proc is not None and self.proc.stdin is not None
        return self.proc.stdin

    def _intruder(self, slot: int, who: str) -> None:
        """The slot relay refused a connection that was not restream's ffmpeg: someone else on this machine."""
        now = time.monotonic()
        last, quiet = self._intruders
        if now - last < 1.0:
            self._intruders = (last, quiet + 1)
            return
        self._intruders = (now, 0)
        more = f" (and {quiet} more since the last such warning)" if quiet else ""
        self.emit(ev.Log(time.time(), "warning", f"refused a connection to relay slot {slot} from {who}: "
                                                 f"not restream's ffmpeg{more}"))

    def on_ingest(self, e) -> None:
        """Events of relay mode's ingest gate (an ingest.IngestEvent)."""
        if e.kind == "publishing":
            self.publishers += 1
            self._publishing.add(e.peer)
            self.emit(ev.Log(time.time(), NOTICE, f"publisher connected from {e.peer}"))
            if not self._stop.is_set() and self.per_session:
                self._feed(lifecycle.SessionStart())
        elif e.kind == "rejected":
            self.emit(ev.Log(time.time(), "warning", f"publisher from {e.peer} rejected: {e.detail}"))
        elif e.kind == "ended" and e.peer in self._publishing:
            self._publishing.discard(e.peer)
            why = f" ({e.detail})" if e.detail and "took over" in e.detail else ""
            self.emit(ev.Log(time.time(), NOTICE, f"publisher from {e.peer} disconnected{why}"))
            if self.once:
                self._begin_stop("publisher gone", hard=False)

    def _finish(self, rc: int) -> int:
        if not self._stop.is_set():
            self._begin_stop("input ended", hard=False)  # ffmpeg ended by itself: its input ended
        self._judge()
        for name, ingest, verdict, why in lifecycle.legs_final(self.life):  # before the destination's own verdict
            self.emit(ev.IngestState(time.time(), name, ingest, verdict, self.redact(why) if why else None))
        for name, verdict, why in lifecycle.final(self.life):
            self.emit(ev.DestState(time.time(), name, verdict, self.redact(why) if why else None))
        if self.stop_reason == "interrupted":
            code, reason = 130, "interrupted"
        elif self.stop_reason == "terminated":
            code, reason = 143, "terminated"
        elif rc != 0 and not self._signalled:
            code, reason = 5, f"ffmpeg failed (exit status {rc if rc >= 0 else 'signal ' + str(-rc)})"
        elif self.input_error and self.inp.live and self.gate is None:
            code, reason = 5, f"input failed: {self.input_error}"  # a live source that stalled or broke
        else:
            code = lifecycle.exit_code(self.life)
            reason = self.stop_reason or "input ended"
        if code == 0 and self.record_error:
            code = 1  # the destinations were fine; the recording was not
        sw = self.desk.switcher if self.desk is not None else None
        slate = (round(sw.slate_frames / float(sw.fps), 3), sw.handovers) if sw is not None else (None, None)
        sessions = self.life.sessions if self.per_session else self.publishers if self.gate is not None else None
        self.emit(ev.Ended(time.time(), code, reason, rc, sessions=sessions, slate_s=slate[0], handovers=slate[1]))
        return code

    async def _stopper(self) -> None:
        """From the moment the stop began, ffmpeg ends within END_BOUND_S whatever the destinations do: a grace
        to end by itself (a soft stop: its input or -t ended), "q", then signals, SIGKILL last. The late steps
        name the destinations still connected (those holding it up)."""
        await self._stop.wait()
        proc = self.proc
        assert proc is not None
        if self.desk is not None:
            self.desk.stop_output()  # --slate: the end of its raw input now; ffmpeg finishes the stream in order
        if not self._hard and await self._until(END_GRACE_S, wake_on_hard=True):
            return
        if self.desk is not None:
            pass  # (its input already ended above: nothing more to ask before the signals)
        elif self.per_session and proc.stdin is not None:
            # relay mode: ffmpeg reads the publisher's FLV on stdin (and reads no "q"); the end of it ends ffmpeg.
            # Between publishers nothing is on air: ffmpeg then fails to open its input, as asked.
            if self.life.phase in ("waiting", "stopping") and self.publishers_now() == 0:
                self._signalled = True
            proc.stdin.close()
        elif proc.stdin is not None:
            try:
                proc.stdin.write(b"q")
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
        for at, sig in ((Q_GRACE_S, signal.SIGINT), (Q_GRACE_S + SIGNAL_GRACE_S, signal.SIGINT),
                        (Q_GRACE_S + 2 * SIGNAL_GRACE_S, signal.SIGKILL)):
            if await self._until(at):
                return
            held = self._holding()
            self.emit(ev.Log(time.time(), "warning",
                             f"ffmpeg has not ended {time.monotonic() - self._stop_at:.1f} s after the stop began"
                             + (f" (still connected: {', '.join(held)})" if held else "") + f"; sending {sig.name}"))
            self._signalled = True
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                return

    async def _until(self, t: float, wake_on_hard: bool = False) -> bool:
        """True once ffmpeg exited; False at ``t`` s after the stop began, or (``wake_on_hard``) when a hard stop
        arrives during a soft one."""
        while True:
            left = self._stop_at + t - time.monotonic()
            if left <= 0:
                return False
            self._poke.clear()
            poke = asyncio.ensure_future(self._poke.wait())
            try:
                if await self._exited(left, also=poke):
                    return True
            finally:
                poke.cancel()
            if wake_on_hard and self._hard:
                return False

    def publishers_now(self) -> int:
        return len(self._publishing)

    def _holding(self) -> list[str]:
        names = {slot: name for name, slot in self.slot_of.items()}
        return [names[s.slot] for s in self.relay.stats() if s.connected and s.slot in names]

    async def _exited(self, timeout: float, also: asyncio.Future | None = None) -> bool:
        """Wait up to ``timeout`` s for ffmpeg's exit (or ``also``); True if it exited."""
        assert self.proc is not None
        waiter = asyncio.ensure_future(self.proc.wait())
        try:
            await asyncio.wait([waiter, *([also] if also is not None else [])], timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiter.done():
                waiter.cancel()
        return self.proc.returncode is not None

    async def _read_progress(self) -> None:
        parser = ev.ProgressParser()
        assert self.proc and self.proc.stdout
        async for raw in self.proc.stdout:
            progress = parser.feed(raw.decode("utf-8", "replace"), time.time())
            if progress is not None:
                self.emit(progress)
                self._srt_tick(progress.ts)
                self._end_in_sight(progress)

    def _end_in_sight(self, progress: ev.Progress) -> None:
        """The stream reached its end (-t, or a file's known length): the stop began, ffmpeg is ending."""
        if self._stop.is_set() or self.per_session:
            return
        if progress.end:
            self._begin_stop("duration reached" if self.duration else "input ended", hard=False)
            return
        t = progress.out_time_s
        if t is None:
            return
        if self.duration is not None and t >= self.duration - END_SLACK_S:
            self._begin_stop("duration reached", hard=False)
        elif self.input_duration is not None and not self.inp.loop and t >= self.input_duration - END_SLACK_S:
            self._begin_stop("input ended", hard=False)

    def _noise(self, text: str) -> bool:
        """fifo recovery chatter about relay slots: the relay reports those slots' true state instead."""
        if any(s in text for s in ("Recovery attempt", "Recovery failed", "Recovery successful",
                                   "Cannot read RTMP handshake response")):
            return True
        m = re.search(r"127\.0\.0\.1:(\d+)/slot/", text)
        return bool(m and m.group(1) in self._quiet_ports)

    async def _read_log(self) -> None:
        assert self.proc and self.proc.stderr
        async for raw in self.proc.stderr:
            line = self.redact(raw.decode("utf-8", "replace"))
            if not line.strip():
                continue
            log = ev.parse_log_line(line, time.time())
            if "Error during demuxing" in log.text or "Error retrieving a packet from demuxer" in log.text:
                self.input_error = log.text.split("] ", 1)[-1]
            if self.per_session and (any(r in log.text for r in RELAY_ROUTINE) or not self._fed):
                # (an ffmpeg no publisher reached can only say that its empty input ended: restream ended it)
                log = ev.Log(log.ts, "info", log.text)
            self._srt_log(log.text)
            self._record_log(log.text)
            if self.per_session and self.enc.copy:
                self._check_codecs(log.text)
            if not self._noise(log.text):
                self.emit(log)

    def _check_codecs(self, text: str) -> None:
        """Relay mode, copying: say so when the publisher sends what platforms will not take."""
        if self._codec_checked:
            return
        if text.startswith("Output #0"):
            self._codec_checked = True
            return
        m = re.match(r"\s*Stream #0:\d+.*?: (Video|Audio): (\w+)", text)
        if not m:
            return
        kind, codec = m.groups()
        problem = fanout.codec_warning(kind.lower(), codec)
        if problem:
            self.emit(ev.Log(time.time(), "warning", problem))

    def _record_log(self, text: str) -> None:
        """The recording is the tee's last slave, written without fifo: ffmpeg names its failure by index."""
        failed = ev.slave_failure(text) if self.record_index is not None and self.record_error is None else None
        if failed and failed[0] == self.record_index:
            self.record_error = failed[1]
            self.emit(ev.Recording(time.time(), self.record or "", "failed", failed[1]))

    # SRT slaves bypass the relay: their state comes from the log ("Error opening srt://…" names the URL).
    def _srt_log(self, text: str) -> None:
        for t in self.targets.values():
            if not t.via_relay and t.server_url in text and ("Error" in text or "failed" in text):
                self._srt_errors[t.name] = time.monotonic()
                self._feed(lifecycle.Down(t.name, text.split(": ", 1)[-1]))

    def _srt_tick(self, now_wall: float) -> None:
        """An SRT slave counts as live once ffmpeg has been writing for a while with no error naming it."""
        now = time.monotonic()
        if not self._srt_since:
            self._srt_since = now
        for t in self.targets.values():
            if not t.via_relay and now - self._srt_errors.get(t.name, self._srt_since) >= SRT_SETTLE_S:
                if (d := self.life.dest(t.name)) is not None and d.state != ev.LIVE:
                    self._feed(lifecycle.Live(t.name))

    async def _watch(self) -> None:
        """Apply edits of the profile file to the running broadcast (restream add/remove/enable/... elsewhere)."""
        assert self.watch is not None
        path, reload = self.watch

        def stamp():
            try:
                st = path.stat()
                return st.st_mtime_ns, st.st_size, st.st_ino
            except OSError:
                return None

        last = stamp()
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = stamp()
            if now == last:
                continue
            last = now
            try:  # in a thread: a key command may take seconds, and the relay runs on this loop
                targets = await asyncio.to_thread(reload)
            except Exception as exc:  # a RestreamError, normally: keep the broadcast as it is
                self.emit(ev.Log(time.time(), "warning", f"profile change not applied: {self.redact(str(exc))}"))
                continue
            for problem in self.apply(targets):
                self.emit(ev.Log(time.time(), "warning", f"profile change not applied: {problem}"))

    async def _traffic(self) -> None:
        trimmed = time.monotonic()
        while True:
            await asyncio.sleep(TRAFFIC_INTERVAL_S)
            if _MALLOC_TRIM is not None and time.monotonic() - trimmed >= TRIM_INTERVAL_S:
                # what Python and the threads freed stays in the allocator's heaps otherwise: the process's memory
                # crept up by megabytes an hour with every Python object flat (tracemalloc)
                trimmed = time.monotonic()
                _MALLOC_TRIM(0)
            names = {slot: name for name, slot in self.slot_of.items()}
            stats = [s for s in self.relay.stats() if s.slot in names]
            sent = tuple((names[s.slot], s.bytes_up) for s in stats)
            per_ingest = tuple((names[s.slot], ingest, n) for s in stats for ingest, n in s.ingest_bytes)
            self.emit(ev.Traffic(time.time(), sent, per_ingest))
