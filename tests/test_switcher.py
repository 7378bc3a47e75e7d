"""The frame switcher of --slate, on real pipes with tiny frames: pacing, hand-overs, and picture and sound in step."""

from __future__ import annotations

import os
import struct
import threading
import time
from fractions import Fraction

import pytest

from restream import sources, switcher
from restream.switcher import RawSource, Switcher, frame_bytes, samples_before

SIZE = (8, 4)
FB = frame_bytes(SIZE)
RATE = Fraction(50)


def frame(tag: int) -> bytes:
    return bytes((tag % 256,)) * FB


def sound(first: int, count: int) -> bytes:
    """Stereo s16le samples whose left channel counts the samples (mod 32768): their place can be read back."""
    return b"".join(struct.pack("<hh", (first + i) % 32768, 0) for i in range(count))


def counter(data: bytes) -> list[int]:
    return [struct.unpack_from("<h", data, i)[0] for i in range(0, len(data), 4)]


def test_samples_never_drift_at_ntsc_rates():
    fps = Fraction(30000, 1001)
    hour = 107892  # frames in one hour at 29.97
    per_frame = [samples_before(i + 1, fps) - samples_before(i, fps) for i in range(hour)]
    assert set(per_frame) == {1601, 1602}
    assert sum(per_frame) == samples_before(hour, fps) == hour * 48000 * 1001 // 30000


@pytest.mark.parametrize("text, rate", [("30", Fraction(30)), ("29.97", Fraction(30000, 1001)),
                                        ("59.94", Fraction(60000, 1001)), ("23.98", Fraction(24000, 1001)),
                                        ("25", Fraction(25)), ("30000/1001", Fraction(30000, 1001))])
def test_rates_are_exact(text, rate):
    assert switcher.parse_rate(text) == rate


def test_the_source_format_is_read_from_ffmpeg_s_output_line():
    line = ("[info]   Stream #0:0(und): Video: rawvideo (I420 / 0x30323449), yuv420p(progressive), 320x240 "
            "[SAR 1:1 DAR 4:3], q=2-31, 27648 kb/s, 29.97 fps, 29.97 tbn (default)")
    assert sources.parse_format(line) == ((320, 240), Fraction(30000, 1001))
    assert sources.parse_format("[info]   Stream #0:0: Video: h264 (High), yuv420p, 320x240, 30 fps") is None


def test_the_clock_is_drawn_inside_the_card():
    assert switcher.clock_text(0) == "00:00"
    assert switcher.clock_text(83.9) == "01:23"
    assert switcher.clock_text(3 * 3600 + 62) == "3:01:02"
    card = switcher.Card((320, 180))
    a, b = card.frame(1), card.frame(2)
    assert len(a) == len(b) == frame_bytes((320, 180))
    assert a != b and a != card.base  # the digits changed, and they are drawn
    assert card.frame(2) is b  # drawn once a second, not per frame
    y, _, _ = switcher.rgb_to_yuv(switcher.SLATE_BACKGROUND)
    assert a[0] == y  # the corner keeps the slate's colour (what the tests and benches detect)


class Feeder:
    """A fake source ffmpeg: writes frames and sound into a RawSource's pipes."""

    def __init__(self, size=SIZE, rate=RATE, live=True, cap=switcher.JITTER_CAP, audio=True):
        self.vr, self.vw = os.pipe()
        self.ar, self.aw = os.pipe() if audio else (None, None)
        self.src = RawSource("test", self.vr, self.ar, size, rate, live=live, cap=cap).start()
        self.sent = 0

    def send(self, n: int, with_sound: bool = True) -> None:
        for _ in range(n):
            if with_sound and self.aw is not None:
                a, b = samples_before(self.sent, RATE), samples_before(self.sent + 1, RATE)
                os.write(self.aw, sound(a, b - a))
            os.write(self.vw, frame(self.sent))
            self.sent += 1

    def wait_arrived(self, n: int, timeout: float = 5.0, sound: bool = True) -> None:
        """Until the reader threads have ``n`` frames (and, with ``sound``, their sound)."""
        end = time.monotonic() + timeout
        want = samples_before(n, RATE) if sound and self.aw is not None else 0
        while self.src.arrived < n or self.src.sound_through < want:
            assert time.monotonic() < end, f"only {self.src.arrived}/{n} frames arrived"
            time.sleep(0.005)

    def end(self) -> None:
        for fd in (self.vw, self.aw):
            if fd is not None:
                os.close(fd)


def test_a_dropped_frame_takes_its_sound_with_it():
    f = Feeder(cap=4)
    f.send(10)  # 6 frames are dropped as they come (oldest first)
    f.wait_arrived(10)
    n = samples_before(1, RATE)
    got = f.src.take(n)
    assert got is not None
    picture, snd = got
    assert picture[0] == 6  # the oldest kept frame
    assert counter(snd)[:3] == [samples_before(6, RATE), samples_before(6, RATE) + 1, samples_before(6, RATE) + 2]
    f.src.drop()  # frame 7 dropped on purpose (the jitter buffer trims)
    picture, snd = f.src.take(n)
    assert picture[0] == 8 and counter(snd)[0] == samples_before(8, RATE)
    f.end()


def test_sound_that_comes_late_is_replaced_by_silence_and_then_skipped():
    f = Feeder()
    f.send(1, with_sound=False)  # frame 0 arrives without its sound
    f.wait_arrived(1, sound=False)
    n = samples_before(1, RATE)
    picture, snd = f.src.take(n)
    assert picture[0] == 0 and snd == bytes(4 * n)
    os.write(f.aw, sound(0, n))  # frame 0's sound, late
    f.send(1)
    f.wait_arrived(2)
    picture, snd = f.src.take(n)
    assert picture[0] == 1 and counter(snd)[0] == samples_before(1, RATE)  # the late sound was not played
    f.end()


def test_a_source_without_sound_gives_frames_and_none():
    f = Feeder(audio=False)
    f.send(2)
    f.wait_arrived(2)
    assert f.src.ready()
    picture, snd = f.src.take(960)
    assert picture[0] == 0 and snd is None
    f.end()


class Out:
    """The broadcast ffmpeg's side: reads the switcher's pipes, counts frames and sound per frame."""

    def __init__(self):
        self.vr, self.vw = os.pipe()
        self.ar, self.aw = os.pipe()
        self.frames: list[tuple[float, int]] = []  # (arrival, first byte)
        self.audio = bytearray()
        self._t = [threading.Thread(target=self._video, daemon=True), threading.Thread(target=self._audio, daemon=True)]
        for t in self._t:
            t.start()

    def _video(self):
        buf = b""
        while True:
            data = os.read(self.vr, 65536)
            if not data:
                return
            buf += data
            while len(buf) >= FB:
                self.frames.append((time.monotonic(), buf[0]))
                buf = buf[FB:]

    def _audio(self):
        while True:
            data = os.read(self.ar, 65536)
            if not data:
                return
            self.audio += data

    def join(self):
        for t in self._t:
            t.join(5)


def run_switcher(script, slate_tag=200, seconds=2.0):
    out = Out()
    states: list[tuple[str, str]] = []
    card = switcher.Card(SIZE, frame(slate_tag), clock=False)
    sw = Switcher(out.vw, out.aw, SIZE, RATE, card, lambda st, d: states.append((st, d)))
    sw.start()
    t0 = time.monotonic()
    script(sw, t0)
    remaining = seconds - (time.monotonic() - t0)
    if remaining > 0:
        time.sleep(remaining)
    sw.stop()
    sw.join(5)
    out.join()
    return out, states, sw


def test_the_switcher_goes_to_the_slate_when_the_source_ends_and_back_for_a_new_one():
    first, second = Feeder(), Feeder()

    def script(sw, t0):
        first.send(4)
        sw.offer(first.src)
        for _ in range(16):
            first.send(1)
            time.sleep(1 / 50)
        first.end()  # the source is gone after 20 frames
        time.sleep(0.8)
        second.send(5)
        sw.offer(second.src)

        def more():
            for _ in range(30):
                second.send(1)
                time.sleep(1 / 50)
            second.end()

        threading.Thread(target=more, daemon=True).start()

    out, states, sw = run_switcher(script, seconds=2.0)
    tags = [t for _, t in out.frames]
    # paced by the wall clock: 2 s at 50 fps (the first frame waits for nothing)
    assert 50 <= len(tags) <= 102, len(tags)  # never ahead of the clock (the floor: a loaded machine)
    # every frame has exactly its sound: no gap, no surplus
    assert len(out.audio) == 4 * samples_before(len(tags), RATE)
    # the order on air: the first source's frames, the slate, the second source's frames, the slate
    runs = [tags[0]]
    for a, b in zip(tags, tags[1:]):
        if (a == 200) != (b == 200):
            runs.append(b)
    assert runs[0] == 0 and runs[1] == 200 and runs[2] != 200 and runs[-1] == 200
    first_run = tags[:tags.index(200)]
    assert first_run[:20] == list(range(20))  # nothing of the first source lost or repeated before it ended
    assert [s for s, _ in states][:3] == ["live", "slate", "live"]
    assert sw.handovers >= 1


@pytest.mark.parametrize("after_stall", [[8], [2, 1.0, 4]], ids=["one burst", "a pair, then a late burst"])
def test_frames_after_a_stall_that_are_no_return_never_go_on_air(after_stall):
    """On the slate, frames that do not come steadily are not a source back: the burst a decoder lets go when its
    input dies, or a stray pair then that burst a second later (the bench saw such a source flash up)."""
    f = Feeder()

    def script(sw, t0):
        f.send(10)
        sw.offer(f.src)
        time.sleep(1.0)  # stalled: the slate is on
        for step in after_stall:  # frames (int), or a pause (float, seconds)
            if isinstance(step, float):
                time.sleep(step)
            else:
                f.send(step)

    out, states, sw = run_switcher(script, seconds=1.8 + sum(x for x in after_stall if isinstance(x, float)))
    tags = [t for _, t in out.frames]
    assert set(tags[tags.index(200):]) == {200}, "frames that were no return went on air"
    assert [s for s, _ in states] == ["live", "lost", "slate"] and sw.handovers == 0
    f.end()


def test_a_source_back_from_a_stall_returns_once_it_delivers_steadily():
    f = Feeder()

    def script(sw, t0):
        f.send(10)
        sw.offer(f.src)
        time.sleep(1.0)  # stalled: the slate is on

        def steady():
            for _ in range(40):
                f.send(1)
                time.sleep(1 / 50)

        threading.Thread(target=steady, daemon=True).start()

    out, states, sw = run_switcher(script, seconds=2.4)
    assert [s for s, _ in states][:4] == ["live", "lost", "slate", "live"] and sw.handovers == 1
    tags = [t for _, t in out.frames]
    first_slate = tags.index(200)
    back = first_slate + next(i for i, t in enumerate(tags[first_slate:]) if t != 200)
    run = tags[back:back + 10]
    assert 200 not in run and run == sorted(run)  # back, in order (the frames that waited were trimmed, not shuffled)
    f.end()
