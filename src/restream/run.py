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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from restream import events as ev
from restream import plan
from restream.errors import BroadcastError
from restream.redact import Redactor
from restream.slotrelay import SlotEvent, SlotRelay, Upstream

SLOTS = 5
STOP_GRACE_S = 4.0  # after "q", before the first signal
SIGNAL_GRACE_S = 3.0  # after each signal, before the next (a stalled ffmpeg needs a second one)
TRAFFIC_INTERVAL_S = 1.0
SRT_SETTLE_S = 3.0
WATCH_INTERVAL_S = 0.5
NOTICE = "restream"  # level of restream's own notices in Log events
STREAMABLE_VIDEO = ("h264", "hevc", "av1")
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
        return Upstream(self.name, url, key, self.ca_file)

    def __repr__(self) -> str:
        return f"Target(name={self.name!r}, server_url={self.server_url!r}, key='••••')"


def layout(targets: list[Target], slot_url: Callable[[int], str], record: str | None = None
           ) -> tuple[tuple[plan.Slave, ...], dict[str, int], int]:
    """The tee's slaves: one relay slot per RTMP(S) destination plus free slots up to five (for destinations
    added while live), a direct slave per SRT destination, and the recording. Returns (slaves, slot_of, slots)."""
    srt = [t for t in targets if not t.via_relay]
    relay_slots = SLOTS - len(srt)
    slaves = [plan.relay_slave(f"slot-{i}", slot_url(i)) for i in range(relay_slots)]
    slaves += [plan.srt_slave(t.name, t.server_url, t.key) for t in srt]
    if record:
        slaves.append(plan.record_slave(record))
    slot_of = {t.name: i for i, t in enumerate(t for t in targets if t.via_relay)}
    return tuple(slaves), slot_of, relay_slots


def die_with_parent() -> None:
    """In the child before exec: kill it if restream dies (even by SIGKILL), so no ffmpeg is left behind.

    SIGKILL, not SIGTERM: the relay died with restream, so there is nothing left to close cleanly, and an ffmpeg
    whose outputs are all gone may ignore a first SIGTERM.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def exit_code(delivered: dict[str, bool]) -> int:
    """Input ended: 0 if every destination delivered, 1 if some did not, 5 if none did."""
    if not delivered or not any(delivered.values()):
        return 5
    return 0 if all(delivered.values()) else 1


class Broadcast:
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
        watch: tuple[Path, Callable[[], list[Target]]] | None = None,
        gate=None,
        once: bool = False,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.ffmpeg, self.inp, self.enc = ffmpeg, inp, enc
        self.emit = on_event
        self.profile, self.ffmpeg_label, self.input_label = profile, ffmpeg_label, input_label
        self.record, self.duration, self.font, self.queue_size = record, duration, font, queue_size
        self.targets: dict[str, Target] = {t.name: t for t in targets}
        self.secrets = tuple(secrets)  # besides the destinations' keys, e.g. relay mode's ingest key
        self.redact = Redactor([*(t.key for t in targets), *self.secrets])
        self.relay = SlotRelay(SLOTS, on_event=self._on_slot)
        self.slot_of: dict[str, int] = {}
        self.state: dict[str, str] = {}
        self.ever_live: dict[str, bool] = {}
        self.last_error: dict[str, str | None] = {}
        self.proc: asyncio.subprocess.Process | None = None
        self.stop_reason: str | None = None
        self._stop = asyncio.Event()
        self.relay_slots = SLOTS
        self.watch = watch
        self.gate, self.once = gate, once  # relay mode: an ingest.IngestGate in front of ffmpeg's listener
        self._codec_checked = False
        self.input_error: str | None = None  # ffmpeg said reading the input failed (ffmpeg still exits 0)
        self.publishers = 0  # relay mode: publishers whose key was verified so far
        self._srt_errors: dict[str, float] = {}
        self._srt_since = 0.0
        self._quiet_ports: set[str] = set()

    # -- state ------------------------------------------------------------------------------------------------

    def _set(self, name: str, state: str, error: str | None = None, url: str | None = None) -> None:
        transition = state in (ev.ADDED, ev.REMOVED)
        if not transition and self.state.get(name) == state and self.last_error.get(name) == error:
            return
        if not transition:
            self.state[name] = state
            self.last_error[name] = error
        if state == ev.LIVE:
            self.ever_live[name] = True
        self.emit(ev.DestState(time.time(), name, state, self.redact(error) if error else None, url))

    def _on_slot(self, e: SlotEvent) -> None:
        name = e.name
        if name is None or self.slot_of.get(name) != e.slot:
            return
        current = self.state.get(name)
        if e.kind == "connecting":
            # a new session after a live one is a reconnection
            if current == ev.RETRYING:
                return  # another attempt: still retrying, with the same last error
            self._set(name, ev.RETRYING if current == ev.LIVE else ev.CONNECTING)
        elif e.kind == "live":
            self._set(name, ev.LIVE)
        elif e.kind == "disconnected" and e.error and not self._stop.is_set():
            self._set(name, ev.RETRYING, e.error)
        # a session that ffmpeg itself closed without error is the end of the stream, or ffmpeg about to
        # reconnect (then "connecting" follows): the state stays as it is until we know which

    # -- slots ------------------------------------------------------------------------------------------------

    def _slaves(self) -> tuple[plan.Slave, ...]:
        slaves, self.slot_of, self.relay_slots = layout(list(self.targets.values()), self.relay.slave_url,
                                                        self.record)
        return slaves

    def free_slots(self) -> list[int]:
        used = set(self.slot_of.values())
        return [s for s in range(self.relay_slots) if s not in used]

    def apply(self, targets: list[Target]) -> list[str]:
        """Change the running broadcast to ``targets`` (live add/remove/edit); returns problems, if any."""
        problems: list[str] = []
        wanted = {t.name: t for t in targets}
        self.redact = Redactor([*(t.key for t in targets), *(t.key for t in self.targets.values()), *self.secrets])
        for name in list(self.targets):
            old = self.targets[name]
            new = wanted.get(name)
            if new == old:
                continue
            if not old.via_relay:
                problems.append(f"{name}: SRT destinations cannot be changed while live")
                continue
            slot = self.slot_of.pop(name)
            self.relay.assign(slot, None)
            del self.targets[name]
            self.state.pop(name, None)
            self._set(name, ev.REMOVED)
        for name, t in wanted.items():
            if name in self.targets:
                continue
            if not t.via_relay:
                problems.append(f"{name}: SRT destinations cannot be added while live")
                continue
            free = self.free_slots()
            if not free:
                problems.append(f"{name}: all {SLOTS} slots are in use")
                continue
            self.targets[name] = t
            self.slot_of[name] = free[0]
            self._set(name, ev.ADDED, url=t.server_url)
            self._set(name, ev.CONNECTING)
            self.relay.assign(free[0], t.upstream())
        return problems

    # -- process ----------------------------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        await self.relay.start()
        background: list[asyncio.Task] = []
        try:
            slaves = self._slaves()
            self._quiet_ports = {str(p) for p in self.relay.ports}
            p = plan.build(self.ffmpeg, self.inp, self.enc, slaves, self.duration, self.queue_size, self.font)
            for sig, reason in ((signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated")):
                loop.add_signal_handler(sig, self.request_stop, reason)
            for t in self.targets.values():
                self.state[t.name] = ev.CONNECTING
                self.ever_live[t.name] = False
                if t.via_relay:
                    self.relay.assign(self.slot_of[t.name], t.upstream())
            if self.gate is not None:
                try:
                    await self.gate.start()
                except OSError as exc:
                    raise BroadcastError(f"cannot listen on {self.gate.host}:{self.gate.port}: "
                                         f"{exc.strerror or exc}") from None
            background = [asyncio.create_task(self._traffic())]
            if self.watch:
                background.append(asyncio.create_task(self._watch()))
            seen = self.publishers
            rc = await self._session(p.argv, first=True)
            # a rejected publisher also ends a session (ffmpeg's listener fails): that is no publisher for --once
            while self.gate is not None and not (self.once and self.publishers) and not self._stop.is_set():
                if self.publishers != seen:
                    self._publisher_gone()
                seen = self.publishers
                self._codec_checked = False
                rc = await self._session(p.argv, first=False)
            return self._finish(rc)
        finally:
            for task in background:
                task.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            if self.gate is not None:
                await self.gate.close()
            await self.relay.close()

    async def _session(self, argv: tuple[str, ...], first: bool) -> int:
        """One ffmpeg process from start to exit (relay mode runs one per publisher)."""
        stdin = None if self.inp.kind == "stdin" else asyncio.subprocess.PIPE
        self.proc = await asyncio.create_subprocess_exec(
            *argv, stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            start_new_session=True, limit=1 << 20, preexec_fn=die_with_parent)
        if first:
            self.emit(ev.Started(time.time(), self.profile, self.input_label, self.ffmpeg_label, self.proc.pid,
                                 tuple((t.name, t.server_url) for t in self.targets.values())))
            for t in self.targets.values():
                self.emit(ev.DestState(time.time(), t.name, ev.CONNECTING))
        tasks = [asyncio.create_task(c) for c in (self._read_progress(), self._read_log(), self._stopper())]
        rc = await self.proc.wait()
        await asyncio.wait(tasks[:2], timeout=2)
        for task in tasks:
            task.cancel()
        return rc

    def _publisher_gone(self) -> None:
        """Relay mode: the publisher left and its ffmpeg ended; the destinations wait for the next one."""
        self._codec_checked = False
        for name in self.targets:
            self._set(name, ev.CONNECTING)
        self.emit(ev.Log(time.time(), NOTICE, "publisher gone: waiting for the next one (Ctrl-C to stop)"))

    def on_ingest(self, e) -> None:
        """Events of relay mode's ingest gate (an ingest.IngestEvent)."""
        if e.kind == "publishing":
            self.publishers += 1
            self.emit(ev.Log(time.time(), NOTICE, f"publisher connected from {e.peer}"))
        elif e.kind == "rejected":
            self.emit(ev.Log(time.time(), "warning", f"publisher from {e.peer} rejected: {e.detail}"))
        elif e.kind == "ended":
            self.emit(ev.Log(time.time(), NOTICE, f"publisher from {e.peer} disconnected"))

    def _finish(self, rc: int) -> int:
        delivered = {n: self.state.get(n) == ev.LIVE for n in self.targets}
        for name in self.targets:
            last = self.last_error.get(name)
            why = "never went live" if not self.ever_live.get(name) else "not live when the broadcast ended"
            self._set(name, ev.STOPPED if delivered[name] else ev.FAILED,
                      None if delivered[name] else (f"{why} ({last})" if last else why))
        if self.stop_reason == "interrupted":
            code, reason = 130, "interrupted"
        elif self.stop_reason == "terminated":
            code, reason = 143, "terminated"
        elif rc != 0:
            code, reason = 5, f"ffmpeg failed (exit status {rc if rc >= 0 else 'signal ' + str(-rc)})"
        elif self.input_error and self.inp.live and self.gate is None:
            code, reason = 5, f"input failed: {self.input_error}"  # a live source that stalled or broke
        else:
            code = exit_code(delivered)
            reason = "duration reached" if self.duration else "input ended"
        self.emit(ev.Ended(time.time(), code, reason, rc))
        return code

    async def _stopper(self) -> None:
        await self._stop.wait()
        proc = self.proc
        assert proc is not None
        if proc.stdin is not None:
            try:
                proc.stdin.write(b"q")
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
            if await self._exited(STOP_GRACE_S):
                return
        for sig in (signal.SIGINT, signal.SIGINT, signal.SIGKILL):
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                return
            if await self._exited(SIGNAL_GRACE_S):
                return

    async def _exited(self, timeout: float) -> bool:
        assert self.proc is not None
        try:
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def _read_progress(self) -> None:
        parser = ev.ProgressParser()
        assert self.proc and self.proc.stdout
        async for raw in self.proc.stdout:
            progress = parser.feed(raw.decode("utf-8", "replace"), time.time())
            if progress is not None:
                self.emit(progress)
                self._srt_tick(progress.ts)

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
            if self.gate is not None and any(r in log.text for r in RELAY_ROUTINE):
                log = ev.Log(log.ts, "info", log.text)
            self._srt_log(log.text)
            if self.gate is not None and self.enc.copy:
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
        if (kind == "Video" and codec not in STREAMABLE_VIDEO) or (kind == "Audio" and codec != "aac"):
            self.emit(ev.Log(time.time(), "warning",
                             f"the publisher sends {kind.lower()} as {codec}; platforms expect H.264 (or HEVC/AV1 "
                             f"where accepted) with AAC: set your encoder to those, or restart with --transcode"))

    # SRT slaves bypass the relay: their state comes from the log ("Error opening srt://…" names the URL).
    def _srt_log(self, text: str) -> None:
        for t in self.targets.values():
            if not t.via_relay and t.server_url in text and ("Error" in text or "failed" in text):
                self._srt_errors[t.name] = time.monotonic()
                self._set(t.name, ev.RETRYING, text.split(": ", 1)[-1])

    def _srt_tick(self, now_wall: float) -> None:
        """An SRT slave counts as live once ffmpeg has been writing for a while with no error naming it."""
        now = time.monotonic()
        if not self._srt_since:
            self._srt_since = now
        for t in self.targets.values():
            if not t.via_relay and now - self._srt_errors.get(t.name, self._srt_since) >= SRT_SETTLE_S:
                self._set(t.name, ev.LIVE)

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
            try:
                targets = reload()
            except Exception as exc:  # a RestreamError, normally: keep the broadcast as it is
                self.emit(ev.Log(time.time(), "warning", f"profile change not applied: {self.redact(str(exc))}"))
                continue
            for problem in self.apply(targets):
                self.emit(ev.Log(time.time(), "warning", f"profile change not applied: {problem}"))

    async def _traffic(self) -> None:
        while True:
            await asyncio.sleep(TRAFFIC_INTERVAL_S)
            names = {slot: name for name, slot in self.slot_of.items()}
            sent = tuple((names[s.slot], s.bytes_up) for s in self.relay.stats() if s.slot in names)
            self.emit(ev.Traffic(time.time(), sent))
