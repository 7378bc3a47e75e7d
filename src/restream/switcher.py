"""The frame switcher behind ``--slate``: the source's frames while it delivers, the slate while it does not.

The broadcast ffmpeg reads raw frames (yuv420p) and raw sound (s16le, 48 kHz stereo) from two pipes and encodes
them once, as always; it never sees a source come or go. Raw input is timestamped by byte count, so what the
destinations get is one continuous stream with monotonic timestamps for the whole run, whatever the sources do.

* A ``RawSource`` is one source session's pair of pipes (a source ffmpeg decodes the publisher or the input URL to
  exactly the broadcast's size and rate), read by two threads into a small jitter buffer.
* The ``Switcher`` writes one frame and its sound per tick of the wall clock (``fps``): the live source's next frame
  when it has one; the last one again for a short gap (``HOLD_S``); then the slate, until a source delivers again.
  Video and sound are always taken and dropped together, so they stay in step across every hand-over.
* The slate is ``Card`` (restream's card with the time since the source was lost, and silence) or a ``RawSource``
  of a looping file, read only as fast as it is shown (a blocked pipe costs nothing).

Threads, not asyncio: a 720p frame is 1.4 MB, more than a pipe holds, and each write blocks until ffmpeg reads.
Nothing here starts a process or prints; the state changes go to a callback (``on_change``) from the switcher's
thread.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction

SLATE_BACKGROUND = (16, 32, 64)  # RGB of the generated card's background: a dark blue no test source uses
SAMPLE_RATE = 48000
CHANNELS = 2
SAMPLE_BYTES = 2 * CHANNELS  # s16le stereo
HOLD_S = 0.5  # no new frame this long: the source is lost, the slate goes on
LOST_S = 0.25  # no new frame this long: say "lost" (the last picture is held)
JITTER_CAP = 8  # frames a live source may have waiting; older ones are dropped (with their sound)
SWITCH_DEPTH = 2  # frames a new source must have waiting before it goes on air
RESUME_S = 0.3  # a source back from a stall must deliver this long before it replaces the slate again (the
# frames a decoder lets go when its input breaks off come in one burst: they must not flash up)
TRIM_WINDOW_S = 1.0  # a source that never had fewer than TRIM_DEPTH frames waiting for this long drops one
TRIM_DEPTH = 3
LATE_RESET_S = 1.0  # the writes fell this far behind the clock (ffmpeg read slowly): the clock starts again
AUDIO_CAP_S = 2.0  # sound waiting beyond its picture, at most
READ_CHUNK = 64 * 1024

# states (of the source, as the switcher shows it)
WAITING, LIVE, LOST, SLATE = "waiting", "live", "lost", "slate"


def parse_rate(text: str) -> Fraction:
    """``30``, ``29.97``, ``30000/1001`` -> an exact rate (the NTSC rates ffmpeg prints rounded are made exact)."""
    if "/" in text:
        num, den = text.split("/", 1)
        rate = Fraction(int(num), int(den))
    else:
        rate = Fraction(text).limit_denominator(1001)
        for ntsc in (24, 30, 60, 120):
            exact = Fraction(ntsc * 1000, 1001)
            if abs(float(rate) - float(exact)) < 0.006:
                rate = exact
    if rate <= 0:
        raise ValueError(f"not a frame rate: {text!r}")
    return rate


def frame_bytes(size: tuple[int, int]) -> int:
    w, h = size
    return w * h + 2 * ((w + 1) // 2) * ((h + 1) // 2)


def samples_before(n: int, fps: Fraction) -> int:
    """Sound samples that belong to frames 0..n-1 (an integer count, so 30000/1001 never drifts)."""
    return n * SAMPLE_RATE * fps.denominator // fps.numerator


def rgb_to_yuv(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """BT.601 limited range, as ffmpeg's default RGB -> yuv420p conversion does."""
    r, g, b = rgb
    y = round(16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255)
    u = round(128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255)
    v = round(128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255)
    return y, u, v


def solid_frame(size: tuple[int, int], rgb: tuple[int, int, int]) -> bytearray:
    w, h = size
    y, u, v = rgb_to_yuv(rgb)
    c = ((w + 1) // 2) * ((h + 1) // 2)
    return bytearray(bytes((y,)) * (w * h) + bytes((u,)) * c + bytes((v,)) * c)


# -- the card's clock: seven-segment digits drawn into the frame (no font needed) -----------------------------------

_SEGMENTS = {  # a, b, c, d, e, f, g (top, top right, bottom right, bottom, bottom left, top left, middle)
    "0": "abcdef", "1": "bc", "2": "abdeg", "3": "abcdg", "4": "bcfg", "5": "acdfg", "6": "acdefg", "7": "abc",
    "8": "abcdefg", "9": "abcdfg",
}


def clock_text(seconds: float) -> str:
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def clock_rects(text: str, x0: int, y0: int, digit_h: int) -> list[tuple[int, int, int, int]]:
    """Pure: the rectangles (x, y, w, h) that draw ``text`` (digits and ':') in seven segments."""
    t = max(2, digit_h // 10)  # stroke
    dw = digit_h // 2
    half = digit_h // 2
    rects: list[tuple[int, int, int, int]] = []
    x = x0
    for ch in text:
        if ch == ":":
            rects += [(x + t, y0 + half - 2 * t, t, t), (x + t, y0 + half + t, t, t)]
            x += 3 * t
            continue
        seg = {
            "a": (x, y0, dw, t), "b": (x + dw - t, y0, t, half), "c": (x + dw - t, y0 + half, t, half),
            "d": (x, y0 + digit_h - t, dw, t), "e": (x, y0 + half, t, half), "f": (x, y0, t, half),
            "g": (x, y0 + half - t // 2, dw, t),
        }
        rects += [seg[s] for s in _SEGMENTS.get(ch, "")]
        x += dw + 2 * t
    return rects


def clock_width(text: str, digit_h: int) -> int:
    t = max(2, digit_h // 10)
    return sum(3 * t if ch == ":" else digit_h // 2 + 2 * t for ch in text)


def fill_rect(frame: bytearray, size: tuple[int, int], rect: tuple[int, int, int, int],
              yuv: tuple[int, int, int]) -> None:
    """Paint a rectangle into a yuv420p frame (clipped to it)."""
    w, h = size
    x, y, rw, rh = rect
    x1, y1 = max(0, x), max(0, y)
    x2, y2 = min(w, x + rw), min(h, y + rh)
    if x2 <= x1 or y2 <= y1:
        return
    yv, uv, vv = yuv
    row = bytes((yv,)) * (x2 - x1)
    for r in range(y1, y2):
        frame[r * w + x1:r * w + x2] = row
    cw, ch = (w + 1) // 2, (h + 1) // 2
    cx1, cy1, cx2, cy2 = x1 // 2, y1 // 2, (x2 + 1) // 2, (y2 + 1) // 2
    for base, val in ((w * h, uv), (w * h + cw * ch, vv)):
        crow = bytes((val,)) * (cx2 - cx1)
        for r in range(cy1, cy2):
            frame[base + r * cw + cx1:base + r * cw + cx2] = crow


class Card:
    """The generated slate: a picture (made once, by ffmpeg or plain) with the time since the source was lost."""

    def __init__(self, size: tuple[int, int], picture: bytes | None = None, clock: bool = True) -> None:
        self.size = size
        self.base = bytearray(picture) if picture is not None else solid_frame(size, SLATE_BACKGROUND)
        if len(self.base) != frame_bytes(size):
            raise ValueError("the slate picture does not have the broadcast's size")
        self.clock = clock
        self._shown: tuple[str, bytearray] | None = None

    def frame(self, lost_for: float) -> bytearray:
        if not self.clock:
            return self.base
        text = clock_text(lost_for)
        if self._shown is not None and self._shown[0] == text:
            return self._shown[1]
        w, h = self.size
        digit_h = max(16, h // 12)
        frame = bytearray(self.base)
        x0 = (w - clock_width(text, digit_h)) // 2
        y0 = h - 2 * digit_h
        white = rgb_to_yuv((235, 235, 235))
        for rect in clock_rects(text, x0, y0, digit_h):
            fill_rect(frame, self.size, rect, white)
        self._shown = (text, frame)
        return frame

    def take(self, n_samples: int, lost_for: float) -> tuple[bytearray, bytes | None]:
        return self.frame(lost_for), None


class Loop:
    """A slate from a file: a RawSource read only as fast as it is shown (its ffmpeg loops the file). While it has
    no frame (starting, or between loops), its last one is shown again, or ``fallback``'s."""

    def __init__(self, source: RawSource, fallback: Card) -> None:
        self.source, self.fallback = source, fallback
        self._last: bytearray | None = None

    def take(self, n_samples: int, lost_for: float) -> tuple[bytearray, bytes | None]:
        got = self.source.take(n_samples) if self.source.ready() else None
        if got is None:
            return (self._last if self._last is not None else self.fallback.frame(lost_for)), None
        if self._last is not None:
            self.source.recycle(self._last)
        self._last = got[0]
        return got

    def close(self) -> None:
        self.source.close()


def _load_prctl():
    try:
        import ctypes

        return ctypes.CDLL(None).prctl  # resolved at import, in the main thread (never dlopen in a thread)
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def name_thread(name: str) -> None:
    """Name the calling thread for ps/top and /proc/PID/task/*/comm (Linux; 15 characters at most)."""
    if _PRCTL is not None:
        _PRCTL(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


class FramePool:
    """Frame buffers kept for reuse across source sessions (a session every hand-over, for hours): the same few
    buffers go round, instead of new large allocations that the allocator may not give back."""

    def __init__(self, most: int = 2 * JITTER_CAP + 6) -> None:
        self.most = most
        self._free: dict[int, list[bytearray]] = {}
        self._lock = threading.Lock()

    def get(self, size: int) -> bytearray:
        with self._lock:
            free = self._free.get(size)
            if free:
                return free.pop()
            if self._free and size not in self._free:
                self._free.clear()  # the broadcast's size is fixed: other sizes are a slate made before it
        return bytearray(size)

    def put(self, frame: bytearray) -> None:
        with self._lock:
            free = self._free.setdefault(len(frame), [])
            if len(free) < self.most:
                free.append(frame)


POOL = FramePool()


def _read_full(fd: int, buf: bytearray) -> bool:
    """Fill ``buf`` from ``fd``; False at the end of the pipe (a short tail is dropped: a torn frame is no frame)."""
    view = memoryview(buf)
    got = 0
    n = len(buf)
    while got < n:
        try:
            k = os.readv(fd, [view[got:]])
        except OSError:
            return False
        if k == 0:
            return False
        got += k
    return True


class RawSource:
    """One source session: its raw video pipe and (if it has sound) its raw audio pipe, read by two threads.

    ``live``: a live source is read as fast as it comes (a source ffmpeg must never block on us), keeping at most
    ``JITTER_CAP`` frames; otherwise (a looping slate file) it is read only as fast as its frames are taken.
    Frame ``i`` of the session owns sound samples ``[S(i), S(i+1))``: taking or dropping a frame takes or drops
    its sound too, so the two never drift apart.
    """

    def __init__(self, name: str, vfd: int, afd: int | None, size: tuple[int, int], fps: Fraction,
                 live: bool = True, cap: int = JITTER_CAP, clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.size, self.fps, self.live, self.cap = name, size, fps, live, cap
        self.clock = clock
        self._fb = frame_bytes(size)
        self._cond = threading.Condition()
        self._frames: deque[bytearray] = deque()
        self._index = 0  # the session's frame number of _frames[0]
        self._audio = bytearray()
        self._audio_at = 0  # the session's sample number of _audio[0]
        self.has_audio = afd is not None
        self.video_eof = False
        self.audio_eof = afd is None
        self.arrived = 0
        self.dropped = 0
        self.last_arrival: float | None = None
        self.first_arrival: float | None = None
        self._closed = False
        self._threads = [threading.Thread(target=self._read_video, args=(vfd,), name="restream-src-v", daemon=True)]
        if afd is not None:
            self._threads.append(threading.Thread(target=self._read_audio, args=(afd,), name="restream-src-a",
                                                  daemon=True))

    def start(self) -> RawSource:
        for t in self._threads:
            t.start()
        return self

    # -- readers (their own threads) ----------------------------------------------------------------------------

    def _buffer(self) -> bytearray:
        return POOL.get(self._fb)

    def _read_video(self, fd: int) -> None:
        name_thread("restream-src-v")
        try:
            while True:
                buf = self._buffer()
                if not _read_full(fd, buf):
                    break
                with self._cond:
                    if not self.live:
                        while len(self._frames) >= self.cap and not self._closed:
                            self._cond.wait()
                    if self._closed:
                        break
                    self._frames.append(buf)
                    self.arrived += 1
                    now = self.clock()
                    self.last_arrival = now
                    if self.first_arrival is None:
                        self.first_arrival = now
                    while len(self._frames) > self.cap:
                        self._drop_one()
                    self._cond.notify_all()
        finally:
            os.close(fd)  # each reader closes its own pipe: nothing else does (no double close, no leak)
            with self._cond:
                self.video_eof = True
                self._cond.notify_all()

    def _read_audio(self, fd: int) -> None:
        name_thread("restream-src-a")
        per_s = SAMPLE_RATE * SAMPLE_BYTES
        try:
            while True:
                try:
                    data = os.read(fd, READ_CHUNK)
                except OSError:
                    break
                if not data:
                    break
                with self._cond:
                    if not self.live:
                        while len(self._audio) >= AUDIO_CAP_S * per_s and not self._closed:
                            self._cond.wait()
                    if self._closed:
                        break
                    self._audio += data
                    excess = len(self._audio) - int((AUDIO_CAP_S + self.cap / float(self.fps)) * per_s)
                    if excess > 0:  # sound far ahead of its pictures (the video stopped): the oldest goes
                        excess -= excess % SAMPLE_BYTES
                        del self._audio[:excess]
                        self._audio_at += excess // SAMPLE_BYTES
                    self._cond.notify_all()
        finally:
            os.close(fd)
            with self._cond:
                self.audio_eof = True
                self._cond.notify_all()

    # -- the switcher's side --------------------------------------------------------------------------------------

    def _drop_one(self) -> None:
        """Drop the oldest frame (its sound goes with it at the next take). Holding the lock."""
        POOL.put(self._frames.popleft())
        self._index += 1
        self.dropped += 1

    @property
    def sound_through(self) -> int:
        """The session's sound samples received so far (taken, dropped or waiting)."""
        with self._cond:
            return self._audio_at + len(self._audio) // SAMPLE_BYTES

    @property
    def depth(self) -> int:
        return len(self._frames)

    @property
    def ended(self) -> bool:
        """The source ffmpeg is gone (its video pipe closed) and every frame it sent was taken."""
        return self.video_eof and not self._frames

    def ready(self, depth: int = 1) -> bool:
        """A frame can be taken now: ``depth`` frames wait (or the end came), and the first one's sound is there
        (or the sound is late by two more frames: then the frame goes with silence where its sound is missing)."""
        with self._cond:
            n = len(self._frames)
            if n == 0 or (n < depth and not self.video_eof):
                return False
            if self.audio_eof or n >= TRIM_DEPTH:
                return True
            want = samples_before(self._index + 1, self.fps)
            return self._audio_at + len(self._audio) // SAMPLE_BYTES >= want

    def drop(self) -> None:
        with self._cond:
            if len(self._frames) > 1:
                self._drop_one()
                self._cond.notify_all()

    def take(self, n_samples: int, lost_for: float = 0.0) -> tuple[bytearray, bytes | None] | None:
        """The next frame and ``n_samples`` of its sound (silence where the sound is missing; None for a source
        without sound), or None when no frame waits."""
        with self._cond:
            if not self._frames:
                return None
            frame = self._frames.popleft()
            i = self._index
            self._index += 1
            sound = None
            if self.has_audio:
                start = samples_before(i, self.fps)
                skip = start - self._audio_at
                if skip > 0:  # sound of frames already gone (dropped, or taken before their sound came)
                    cut = min(skip * SAMPLE_BYTES, len(self._audio))
                    del self._audio[:cut]
                    self._audio_at += cut // SAMPLE_BYTES
                lead = max(0, self._audio_at - start)  # samples missing before what is buffered
                have = min(len(self._audio) // SAMPLE_BYTES, max(0, n_samples - lead))
                if lead >= n_samples:
                    sound = bytes(n_samples * SAMPLE_BYTES)
                else:
                    body = bytes(self._audio[:have * SAMPLE_BYTES])
                    del self._audio[:have * SAMPLE_BYTES]
                    self._audio_at += have
                    sound = bytes(lead * SAMPLE_BYTES) + body + bytes((n_samples - lead - have) * SAMPLE_BYTES)
            self._cond.notify_all()
            return frame, sound

    def recycle(self, frame: bytearray) -> None:
        """A frame the switcher is done with goes back for reuse."""
        POOL.put(frame)

    def close(self) -> None:
        """Stop taking frames: the readers leave (closing their pipes) at the next read, or when the source
        process ends (the owner kills a source that is still running)."""
        with self._cond:
            self._closed = True
            while self._frames:
                POOL.put(self._frames.popleft())
            self._audio.clear()
            self._cond.notify_all()


class Switcher:
    """Paces the output at the wall clock: per tick one frame and its sound, from the source or the slate.

    ``on_change(state, detail)`` is called (from the switcher's thread) when the source's state changes:
    ``live`` (a source is on air), ``lost`` (its frames stopped; the last one is held), ``slate``.
    """

    def __init__(self, vfd: int, afd: int, size: tuple[int, int], fps: Fraction, slate,
                 on_change: Callable[[str, str], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.vfd, self.afd, self.size, self.fps, self.slate = vfd, afd, size, fps, slate
        self.on_change = on_change
        self.clock = clock
        self.state = WAITING
        self.frames_out = 0
        self.slate_frames = 0
        self.handovers = 0  # switches from the slate back to a live source
        self.error: str | None = None
        self._current: RawSource | None = None
        self._offered: RawSource | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="restream-switch", daemon=True)
        self._last: bytearray | None = None  # the last live frame (held through short gaps)
        self._last_owner: RawSource | None = None
        self._lost_at: float | None = None  # when the current source's frames stopped
        self._min_depth = (0.0, 99)  # (window start, the smallest depth seen in it)
        self._silence = b""
        # on the slate: (when, frames arrived then) the stalled source's frames started coming again
        self._resume_from: tuple[float, int] | None = None

    # -- from other threads ---------------------------------------------------------------------------------------

    def offer(self, source: RawSource) -> None:
        """A new source session: it goes on air at a frame boundary once it has frames (replacing the current
        one, which is closed then)."""
        with self._lock:
            old, self._offered = self._offered, source
        if old is not None and old is not self._current:
            old.close()

    @property
    def current(self) -> RawSource | None:
        return self._current

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop writing and close the pipes: the broadcast ffmpeg reads their end and finishes."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- the thread -----------------------------------------------------------------------------------------------

    def _set(self, state: str, detail: str) -> None:
        if state != self.state:
            if state == LIVE and self.state == SLATE:
                self.handovers += 1
            self.state = state
            try:
                self.on_change(state, detail)
            except Exception:
                pass

    def _silent(self, n: int) -> bytes:
        if len(self._silence) != n * SAMPLE_BYTES:
            self._silence = bytes(n * SAMPLE_BYTES)
        return self._silence

    def _run(self) -> None:
        name_thread("restream-switch")
        for fd in (self.vfd, self.afd):
            os.set_blocking(fd, False)
        try:
            self._loop()
        except (BrokenPipeError, OSError) as exc:
            if not self._stop.is_set():
                self.error = f"the broadcast's ffmpeg stopped reading ({exc.strerror or exc})"
        finally:
            for fd in (self.vfd, self.afd):
                try:
                    os.close(fd)
                except OSError:
                    pass
            for src in (self._current, self._offered):
                if src is not None:
                    src.close()

    def _loop(self) -> None:
        tick = 1.0 / float(self.fps)
        while self.state == WAITING and not self._stop.is_set():  # the broadcast opens with the first source
            with self._lock:
                offered = self._offered
            if offered is not None and offered.ready(SWITCH_DEPTH):
                break
            self._stop.wait(0.005)
        start = self.clock()
        n = 0  # frames written since ``start``
        while not self._stop.is_set():
            due = start + n * tick
            now = self.clock()
            if due - now > 0.0005:
                if self._stop.wait(due - now):
                    break
                now = self.clock()
            elif now - due > LATE_RESET_S:  # ffmpeg read slowly: do not burst to catch up
                start, n = now, 0
            samples = (samples_before(self.frames_out + 1, self.fps) - samples_before(self.frames_out, self.fps))
            frame, sound = self._pick(now, samples)
            if sound is None:
                sound = self._silent(samples)
            # the sound first: a frame is more than a pipe holds
            if not (self._write(self.afd, sound) and self._write(self.vfd, frame)):
                break
            self.frames_out += 1
            n += 1

    def _write(self, fd: int, data) -> bool:
        """Write all of ``data``, waiting while the pipe is full; False if the stop came meanwhile. (Never stuck
        in a write: an ffmpeg that stopped reading one pipe while it waits on the other would never end.)"""
        view = memoryview(data)
        while view:
            try:
                k = os.write(fd, view)
            except BlockingIOError:
                k = 0
            if k:
                view = view[k:]
                continue
            if self._stop.is_set():
                return False
            select.select([], [fd], [], 0.05)
        return True

    def _pick(self, now: float, samples: int) -> tuple[bytearray, bytes | None]:
        """This tick's frame and sound (None: silence)."""
        with self._lock:
            offered = self._offered
        if offered is not None and offered.ready(SWITCH_DEPTH):
            with self._lock:
                self._offered = None
            old = self._current
            self._current = offered
            if old is not None and old is not offered:
                old.close()
            self._lost_at = None
            self._resume_from = None
            self._min_depth = (now, 99)
            self._set(LIVE, offered.name)
        src = self._current
        if src is not None and self.state == SLATE and not self._resumed(src, now):
            src = None  # (its frames wait, and the oldest are dropped, until it has proved it is back)
        if src is not None and src.ready():
            self._trim(src, now)
            got = src.take(samples)
            if got is not None:
                if self._last is not None and self._last_owner is not None:
                    self._last_owner.recycle(self._last)
                self._last, self._last_owner = got[0], src
                if self._lost_at is not None or self.state != LIVE:
                    self._lost_at = None
                    self._resume_from = None
                    self._set(LIVE, src.name)  # (the same session back after a stall, too)
                return got
        # no frame from the source this tick
        src = self._current
        if src is not None and self._lost_at is None:
            self._lost_at = now
        lost_for = now - self._lost_at if self._lost_at is not None else 0.0
        holding = src is not None and self._last is not None and lost_for < HOLD_S and not src.ended
        if holding:
            if lost_for >= LOST_S:
                self._set(LOST, "no new frame for " + f"{lost_for:.1f} s")
            assert self._last is not None
            return self._last, None
        if self.state != SLATE:
            self._set(SLATE, "the source ended" if src is not None and src.video_eof else
                      ("no new frame for " + f"{HOLD_S:g} s" if src is not None else "no source yet"))
        self.slate_frames += 1
        return self.slate.take(samples, lost_for if self._lost_at is not None else 0.0)

    def _resumed(self, src: RawSource, now: float) -> bool:
        """The source that stalled delivers again, steadily: frames arriving for RESUME_S with no pause of more
        than a few frame periods (a burst is not enough: a decoder lets its last frames go in one when its input
        dies, however long after the stall)."""
        if src.depth == 0 or src.video_eof:
            self._resume_from = None
            return False
        last = src.last_arrival if src.last_arrival is not None else now
        if self._resume_from is None or now - last > 3.0 / float(self.fps):
            self._resume_from = (last, src.arrived)  # the window starts (again) at the latest frame
            return False
        since, count = self._resume_from
        steady = (src.arrived - count) >= 0.7 * RESUME_S * float(self.fps)
        return last - since >= RESUME_S and steady and src.ready()

    def _trim(self, src: RawSource, now: float) -> None:
        """A source that keeps frames waiting adds delay: after a second with never fewer than TRIM_DEPTH
        waiting, one is dropped (with its sound)."""
        since, lowest = self._min_depth
        lowest = min(lowest, src.depth)
        if now - since >= TRIM_WINDOW_S:
            if lowest >= TRIM_DEPTH:
                src.drop()
            self._min_depth = (now, 99)
        else:
            self._min_depth = (since, lowest)


