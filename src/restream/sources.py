"""``--slate``: the source sessions and the slate, feeding the frame switcher (``switcher.py``).

Each source session is a **source ffmpeg** that decodes the live source to the broadcast's raw format on two pipes:
in relay mode one per publisher (the ingest gate writes the verified publisher's FLV to its stdin, ``FeedSink``); in
``go URL --slate`` one per attempt to open the input, reopened every second (with backoff after a minute) while the
source is down. The broadcast's size and rate are ``--size``/``--fps``, else the first source's own (its ffmpeg
prints them). The **desk** (``SourceDesk``) owns the sessions, makes the slate, starts the switcher once the
broadcast ffmpeg runs, and reports the source's state (waiting, live, lost, slate) through ``on_state``.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from restream import plan, switcher
from restream.errors import BroadcastError

PIPE_SIZE = 1 << 20  # the most a pipe may hold without root (a 720p frame is more: writes block until read)
RETRY_S = 1.0  # go: reopen the source this soon after it broke
BACKOFF_AFTER_S = 60.0  # ... and after this long down, back off (doubling) up to RETRY_MAX_S
RETRY_MAX_S = 10.0
STALL_KILL_S = 3.0  # go: a session whose frames stopped this long is ended, and the source reopened
RATE_RANGE = (5.0, 120.0)  # a source rate outside it (a variable-rate stream's time base) becomes 30 fps
FALLBACK_RATE = "30"
SLATE_SIZE = (1280, 720)  # the slate before any source told its size (go: a source that never came)
IMAGE_CODECS = ("png", "mjpeg", "bmp", "webp", "tiff", "jpegls", "qoi", "ppm", "pgm", "pam")

_OUTPUT = re.compile(r"Output #0")
_RAW = re.compile(r"Stream #0:0.*?: Video: rawvideo\b.*?, (\d+)x(\d+)\b.*?, ([\d.]+k?) fps")
_LEVEL = re.compile(r"^(?:\[[^\]]*\] )*?\[(error|fatal|panic|warning)\] ")


@dataclass(frozen=True)
class SlateFile:
    """``--slate FILE``, checked before going live: an image (shown still) or a video (looped, with its sound)."""

    path: str
    image: bool
    has_audio: bool


def raw_pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, 1031, PIPE_SIZE)  # F_SETPIPE_SZ
    except OSError:
        pass
    return r, w


def rate_text(rate: Fraction) -> str:
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def parse_format(line: str) -> tuple[tuple[int, int], Fraction] | None:
    """A source ffmpeg's raw output stream line -> (size, rate); None if the line is not it."""
    m = _RAW.search(line)
    if not m:
        return None
    w, h, r = int(m.group(1)), int(m.group(2)), m.group(3)
    rate = Fraction(1000) * Fraction(r[:-1]) if r.endswith("k") else switcher.parse_rate(r)
    return (w, h), rate


async def _spawn(argv: list[str], stdin, pass_fds: tuple[int, ...], stderr=asyncio.subprocess.PIPE,
                 stdout=asyncio.subprocess.DEVNULL) -> asyncio.subprocess.Process:
    from restream.run import die_with_parent  # (run imports this module)

    try:
        return await asyncio.create_subprocess_exec(*argv, stdin=stdin, stdout=stdout, stderr=stderr,
                                                    pass_fds=pass_fds, start_new_session=True,
                                                    preexec_fn=die_with_parent, limit=1 << 20)
    except OSError as exc:
        raise BroadcastError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None


async def render(argv: list[str], size: tuple[int, int], what: str) -> bytes:
    """One raw frame from an ffmpeg run (the card, an image)."""
    proc = await _spawn(argv, asyncio.subprocess.DEVNULL, (), stdout=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    except TimeoutError:
        proc.kill()
        raise BroadcastError(f"{what}: ffmpeg took more than 20 s to make it") from None
    if len(out) < switcher.frame_bytes(size):
        lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
        raise BroadcastError(f"{what}: ffmpeg could not make it ({lines[-1] if lines else 'no picture'})")
    return out[:switcher.frame_bytes(size)]


def _kill(proc: asyncio.subprocess.Process | None) -> None:
    if proc is not None and proc.returncode is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Session:
    """One source ffmpeg and what it decodes (a ``switcher.RawSource`` once its format is known)."""

    def __init__(self, desk: SourceDesk, name: str) -> None:
        self.desk, self.name = desk, name
        self.proc: asyncio.subprocess.Process | None = None
        self.raw: switcher.RawSource | None = None
        self.format: asyncio.Future = asyncio.get_running_loop().create_future()
        self.last_error: str | None = None
        self._vr: int | None = None
        self._ar: int | None = None
        self._log: asyncio.Task | None = None

    async def start(self, inp: plan.Input, stdin: bool) -> None:
        d = self.desk
        vr, vw = raw_pipe()
        ar, aw = raw_pipe()
        argv = plan.source_argv(d.ffmpeg, inp, d.size, rate_text(d.rate) if d.rate else None, vw, aw)
        try:
            self.proc = await _spawn(argv, asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                                     (vw, aw))
        except BaseException:
            os.close(vr)
            os.close(ar)
            raise
        finally:
            os.close(vw)
            os.close(aw)
        self._vr, self._ar = vr, ar
        self._log = asyncio.create_task(self._read_log())

    async def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        output = False
        async for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if _OUTPUT.search(line):
                output = True
            fmt = parse_format(line) if output and not self.format.done() else None
            if fmt is not None:
                self._opened(*fmt)
                continue
            m = _LEVEL.match(line)
            if m and m.group(1) != "warning" and "Slave muxer #1 failed" not in line and "[s16le @" not in line:
                # (a source without sound: its sound slave fails, as it should)
                self.last_error = self.desk.redact(line[m.end():].strip())
        if not self.format.done():
            self.format.set_result(None)
            for fd in (self._vr, self._ar):
                if fd is not None:
                    os.close(fd)
            self._vr = self._ar = None

    def _opened(self, size: tuple[int, int], rate: Fraction) -> None:
        assert self._vr is not None
        self.raw = switcher.RawSource(self.name, self._vr, self._ar, size, rate).start()
        self._vr = self._ar = None  # the RawSource owns them now
        self.format.set_result((size, rate))

    @property
    def delivered(self) -> bool:
        return self.raw is not None and self.raw.arrived > 0

    def stalled_for(self, now: float) -> float:
        raw = self.raw
        if raw is None or raw.last_arrival is None:
            return 0.0
        return now - raw.last_arrival

    def kill(self) -> None:
        _kill(self.proc)

    async def wait(self) -> int:
        assert self.proc is not None
        rc = await self.proc.wait()
        if self._log is not None:
            await asyncio.wait([self._log], timeout=2)
        return rc


class SourceDesk:
    """The sources of a ``--slate`` broadcast and the switcher that picks between them and the slate."""

    def __init__(self, ffmpeg: str, *, slate: SlateFile | None, size: tuple[int, int] | None, rate: str | None,
                 font: str | None, redact: Callable[[str], str], on_state: Callable[[str, str], None],
                 pull: plan.Input | None = None) -> None:
        self.ffmpeg, self.slate_file, self.font, self.redact = ffmpeg, slate, font, redact
        self.size = size
        self.rate = switcher.parse_rate(rate) if rate else None
        self.on_state = on_state
        self.pull = pull  # go: the input URL/device to (re)open; relay mode: None (the gate opens sessions)
        self.state = switcher.WAITING
        self.state_since = time.monotonic()
        self.switcher: switcher.Switcher | None = None
        self.first: asyncio.Future = asyncio.get_running_loop().create_future()  # -> plan.Raw
        self.sessions: list[Session] = []
        self._count = 0
        self._ends: list[int] = []  # the broadcast ffmpeg's ends of the switcher's pipes
        self._writers: tuple[int, int] | None = None
        self._slate = None
        self._slate_proc: asyncio.subprocess.Process | None = None
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._tasks: list[asyncio.Task] = []

    # -- states ---------------------------------------------------------------------------------------------------

    def _state(self, state: str, detail: str) -> None:
        if state == self.state and state != switcher.WAITING:
            return
        self.state, self.state_since = state, time.monotonic()
        self.on_state(state, detail)

    def _from_switcher(self, state: str, detail: str) -> None:
        self._loop.call_soon_threadsafe(self._state, state, detail)

    # -- sessions -------------------------------------------------------------------------------------------------

    async def open_session(self, name: str, inp: plan.Input, stdin: bool) -> Session:
        """Start a source ffmpeg; its frames go on air (at a frame boundary) once it has some."""
        self._count += 1
        s = Session(self, f"{name} #{self._count}")
        await s.start(inp, stdin)
        # the sessions that ended are forgotten (go reopens a source that is down every second, for hours)
        self.sessions = [x for x in self.sessions if x.proc is not None and x.proc.returncode is None] + [s]
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.create_task(self._hand_over(s)))
        return s

    async def feed(self) -> asyncio.StreamWriter:
        """Relay mode: a source ffmpeg for the next verified publisher; the gate writes its FLV to the stdin."""
        s = await self.open_session("publisher", plan.Input("listen"), stdin=True)
        assert s.proc is not None and s.proc.stdin is not None
        return s.proc.stdin

    async def _hand_over(self, s: Session) -> None:
        fmt = await s.format
        if fmt is None or self._stopping:
            return
        size, rate = fmt
        if not self.first.done():
            if self.size is None:
                self.size = size
            if self.rate is None:
                self.rate = rate
                if not RATE_RANGE[0] <= float(rate) <= RATE_RANGE[1]:
                    self.rate = Fraction(FALLBACK_RATE)
                    s.kill()  # its frames come at a rate no platform takes: the next session makes them at 30
                    return
            await self._ready()
        if (size, rate) != (self.size, self.rate):
            s.kill()  # cannot happen (the size and rate were asked for); never feed the switcher a wrong frame
            return
        assert self.switcher is not None and s.raw is not None
        self.switcher.offer(s.raw)

    async def _ready(self) -> None:
        """The broadcast's format is known: make the slate and the switcher's pipes (the first source is here)."""
        assert self.size is not None and self.rate is not None
        self._slate = await self._make_slate()
        vr, vw = raw_pipe()
        ar, aw = raw_pipe()
        self._ends = [vr, ar]
        self._writers = (vw, aw)
        self.switcher = switcher.Switcher(vw, aw, self.size, self.rate, self._slate, self._from_switcher)
        self.first.set_result(plan.Raw(self.size, rate_text(self.rate), vr, ar))

    async def _make_slate(self):
        assert self.size is not None and self.rate is not None
        f = self.slate_file
        if f is None:
            picture = await render(plan.card_argv(self.ffmpeg, self.size, self.font, switcher.SLATE_BACKGROUND),
                                   self.size, "the slate card")
            return switcher.Card(self.size, picture)
        if f.image:
            picture = await render(plan.picture_argv(self.ffmpeg, f.path, self.size), self.size,
                                   f"--slate {f.path}")
            return switcher.Card(self.size, picture, clock=False)
        vr, vw = raw_pipe()
        ar, aw = raw_pipe()
        argv = plan.loop_argv(self.ffmpeg, f.path, self.size, rate_text(self.rate), vw, aw)
        try:
            self._slate_proc = await _spawn(argv, asyncio.subprocess.DEVNULL, (vw, aw),
                                            stderr=asyncio.subprocess.DEVNULL)
        finally:
            os.close(vw)
            os.close(aw)
        raw = switcher.RawSource("slate", vr, ar if f.has_audio else None, self.size, self.rate,
                                 live=False).start()
        if not f.has_audio:
            os.close(ar)
        return switcher.Loop(raw, switcher.Card(self.size, switcher.solid_frame(self.size, (0, 0, 0)), clock=False))

    def on_air(self) -> None:
        """The broadcast ffmpeg runs (it has the pipes' read ends): the switcher starts."""
        for fd in self._ends:
            os.close(fd)
        self._ends = []
        assert self.switcher is not None
        self.switcher.start()

    # -- go: the input, (re)opened ----------------------------------------------------------------------------------

    async def pull_loop(self) -> None:
        """Open the input; when it breaks or stalls, reopen it every second (backing off after a minute down)."""
        assert self.pull is not None
        down_since = time.monotonic()
        delay = RETRY_S
        while not self._stopping:
            s = await self.open_session("source", self.pull, stdin=False)
            ended = asyncio.ensure_future(s.wait())
            while not ended.done():
                await asyncio.wait([ended], timeout=0.25)
                if s.delivered and s.stalled_for(time.monotonic()) >= STALL_KILL_S:
                    s.kill()  # stalled: reopen it (its own timeouts take longer)
            if self._stopping:
                return
            if s.delivered:
                down_since, delay = time.monotonic(), RETRY_S
            await asyncio.sleep(delay)
            if time.monotonic() - down_since >= BACKOFF_AFTER_S:
                delay = min(RETRY_MAX_S, delay * 2)

    # -- the end --------------------------------------------------------------------------------------------------

    def stop_output(self) -> None:
        """Stop the switcher: it closes its pipes, the broadcast ffmpeg reads their end and finishes."""
        self._stopping = True
        if self.switcher is not None:
            self.switcher.stop()

    async def close(self) -> None:
        self._stopping = True
        if self.switcher is not None:
            self.switcher.stop()
            if self.switcher.started:
                await asyncio.to_thread(self.switcher.join, 2.0)
        for s in self.sessions:
            s.kill()
            if s.raw is not None:
                s.raw.close()
        _kill(self._slate_proc)
        if isinstance(self._slate, switcher.Loop):
            self._slate.close()
        for t in self._tasks:
            t.cancel()
        for fd in self._ends:
            os.close(fd)
        self._ends = []
        if (self.switcher is None or not self.switcher.started) and self._writers is not None:
            for fd in self._writers:  # (a started switcher closes its own)
                os.close(fd)
            self._writers = None
