"""What a receiver's file holds, frame by frame: the proof tooling of the slate (issue 13).

Publishers made by ``marker_publisher`` send a solid colour (one per publisher: red, green, ...) with a white flash
frame at every whole second of their own clock and a 1 kHz beep starting at the same instant (silence otherwise).
At the receiver, ``analyze(path)`` reads, with the bundled ffmpeg only (there is no ffprobe):

* every packet's timestamps per stream (``-c copy -f framecrc``): the largest step between consecutive packets of
  the video and of the audio stream, whether each stream's DTS only moves forward, the file's duration;
* the decode check: ``ffmpeg -v error -i FILE -f null -`` must print nothing;
* each decoded frame's pts and the mean colour of two 16x16 blocks (``showinfo``): the top-left corner (the slate's
  background, ``restream.switcher.SLATE_BACKGROUND``, is there) and the centre (the publisher's colour, which a
  pillar- or letterbox cannot hide); ``classify`` names each frame;
* the beep onsets (``silencedetect``: the end of each silence), paired with the flash onsets: the A/V offsets (ms).

Everything here is a pure function of ffmpeg's text output except the ``_run`` calls, so the parsers are tested on
strings as well as on small files (tests/test_avcheck.py).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from support import FFMPEG

try:  # the slate's look is the implementation's constant (on main since the switcher stub)
    from restream.switcher import SLATE_BACKGROUND
except ImportError:  # pragma: no cover - only before the stub existed
    SLATE_BACKGROUND = (16, 32, 64)

RGB = tuple[float, float, float]

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 192, 0),
    "blue": (0, 0, 255),
    "magenta": (255, 0, 255),  # the wrong-key publisher's: must never reach a receiver
    "yellow": (255, 255, 0),
    "black": (0, 0, 0),  # padding (a pillarbox) or a black frame: a colour no marker publisher sends
}
WHITE = (255, 255, 255)
TOLERANCE = 40.0  # RGB distance to call a block a colour (x264 at its defaults stays within ~10 on flat colour)

FLASH = "flash"
SLATE = "slate"
OTHER = "other"

BEEP_HZ = 1000
BEEP_S = 0.1  # each beep lasts 100 ms; a flash and a beep start each whole second of the publisher's clock
SILENCE_DB = -40  # silencedetect's threshold: the beep is at -6 dBFS, the slate and the gaps are digital silence
MIN_SILENCE_S = 0.05  # a beep onset is the end of a silence at least this long
PAIR_WINDOW_S = 0.45  # a beep belongs to the flash within this distance (the markers are 1 s apart)


# -- colours -------------------------------------------------------------------------------------------------------

def yuv_to_rgb(y: float, u: float, v: float) -> RGB:
    """BT.601 limited range (what swscale gives for yuv420p without colour tags) to RGB 0..255."""
    c, d, e = y - 16, u - 128, v - 128
    r = 1.164383 * c + 1.596027 * e
    g = 1.164383 * c - 0.391762 * d - 0.812968 * e
    b = 1.164383 * c + 2.017232 * d
    return tuple(max(0.0, min(255.0, x)) for x in (r, g, b))  # type: ignore[return-value]


def distance(a, b) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b)) ** 0.5


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its pts (s) and the mean RGB of the top-left and the centre 16x16 blocks."""

    pts: float
    corner: RGB
    centre: RGB


def nearest(rgb: RGB, palette: dict[str, tuple[int, int, int]] = PALETTE,
            tolerance: float = TOLERANCE) -> str:
    name, d = min(((n, distance(rgb, c)) for n, c in palette.items()), key=lambda x: x[1])
    return name if d <= tolerance else OTHER


def classify(frame: Frame, palette: dict[str, tuple[int, int, int]] = PALETTE,
             slate: tuple[int, int, int] = SLATE_BACKGROUND, tolerance: float = TOLERANCE) -> str:
    """``"slate"`` when the top-left block is the slate's background; else ``"flash"`` for a white centre (a marker
    frame); else the palette colour of the centre block (``"other"`` when none is within ``tolerance``)."""
    if distance(frame.corner, slate) <= tolerance:
        return SLATE
    if distance(frame.centre, WHITE) <= tolerance:
        return FLASH
    return nearest(frame.centre, palette, tolerance)


@dataclass(frozen=True)
class Run:
    label: str
    frames: int
    start: float  # pts of its first frame (s)
    end: float  # pts of its last frame (s)


def fold_flashes(labels: list[str]) -> list[str]:
    """Each flash takes its publisher's colour: the colour before it, else (a publisher's first frame is a flash)
    the colour after it; a flash between two non-colours stays a flash."""
    colours = [x if x not in (SLATE, FLASH, OTHER) else None for x in labels]
    out = list(labels)
    for i, x in enumerate(labels):
        if x != FLASH:
            continue
        j = i - 1
        while j >= 0 and labels[j] == FLASH:
            j -= 1
        k = i + 1
        while k < len(labels) and labels[k] == FLASH:
            k += 1
        before = colours[j] if j >= 0 else None
        after = colours[k] if k < len(labels) else None
        out[i] = before or after or FLASH
    return out


def runs(labels: list[str], pts: list[float]) -> list[Run]:
    """Consecutive equal labels (flashes folded into their colour) as runs."""
    out: list[Run] = []
    for label, t in zip(fold_flashes(labels), pts):
        if out and out[-1].label == label:
            r = out[-1]
            out[-1] = Run(label, r.frames + 1, r.start, t)
        else:
            out.append(Run(label, 1, t, t))
    return out


# -- ffmpeg output parsers (pure) ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Packet:
    stream: int
    dts: float
    pts: float
    duration: float


def parse_framecrc(text: str) -> tuple[dict[int, str], list[Packet]]:
    """``-f framecrc`` output: ({stream index: media type}, packets in file order, times in seconds)."""
    tbs: dict[int, float] = {}
    kinds: dict[int, str] = {}
    packets: list[Packet] = []
    for line in text.splitlines():
        if m := re.match(r"#tb (\d+): (\d+)/(\d+)", line):
            tbs[int(m[1])] = int(m[2]) / int(m[3])
        elif m := re.match(r"#media_type (\d+): (\w+)", line):
            kinds[int(m[1])] = m[2]
        elif line and not line.startswith("#"):
            cols = [c.strip() for c in line.split(",")]
            s = int(cols[0])
            tb = tbs.get(s, 1 / 1000)
            packets.append(Packet(s, int(cols[1]) * tb, int(cols[2]) * tb, int(cols[3]) * tb))
    return kinds, packets


_SHOWINFO = re.compile(r"\[Parsed_showinfo_(\d+) @ [^\]]+\] n:\s*(\d+) pts:\s*-?\d+ pts_time:(-?[\d.e+-]+) .*?"
                       r"mean:\[([\d.]+) ([\d.]+) ([\d.]+)\]")


def parse_frames(text: str) -> list[Frame]:
    """Two ``showinfo`` filters' lines (the corner's has the lower instance number) paired by frame number."""
    seen: dict[int, dict[int, tuple[float, RGB]]] = {}
    for m in _SHOWINFO.finditer(text):
        seen.setdefault(int(m[1]), {})[int(m[2])] = (float(m[3]), yuv_to_rgb(*(float(m[i]) for i in (4, 5, 6))))
    if len(seen) != 2:
        return []
    corner_id, centre_id = sorted(seen)
    corners, centres = seen[corner_id], seen[centre_id]
    return [Frame(corners[n][0], corners[n][1], centres[n][1]) for n in sorted(corners) if n in centres]


def parse_onsets(text: str) -> list[float]:
    """``silencedetect``'s ``silence_end`` times: where sound starts after a silence (s)."""
    return [float(x) for x in re.findall(r"silence_end: (-?[\d.]+)", text)]


def flash_onsets(frames: list[Frame], labels: list[str] | None = None) -> list[float]:
    """pts of each flash frame that follows a frame that is not a flash."""
    labels = labels if labels is not None else [classify(f) for f in frames]
    return [f.pts for i, f in enumerate(frames) if labels[i] == FLASH and (i == 0 or labels[i - 1] != FLASH)]


def pair_offsets(flashes: list[float], beeps: list[float], window: float = PAIR_WINDOW_S) -> list[tuple[float, float]]:
    """(flash pts, beep - flash in ms) for each flash and beep onset that are each other's nearest and within
    ``window`` s. Mutual: a flash whose own beep went unseen (a cut right after another source's beep leaves too
    little silence before it) is not paired with that other source's beep, which has its own flash nearer."""
    out = []
    for t in flashes:
        if not beeps:
            break
        b = min(beeps, key=lambda x: abs(x - t))
        if abs(b - t) <= window and min(flashes, key=lambda x: abs(x - b)) == t:
            out.append((t, round((b - t) * 1000, 1)))
    return out


def largest_step(times: list[float]) -> float:
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def monotonic(times: list[float]) -> bool:
    return all(b >= a for a, b in zip(times, times[1:]))


# -- the report ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Report:
    path: str
    kinds: dict[int, str]
    video_dts: list[float]
    audio_dts: list[float]
    duration: float  # first packet to the end of the last one (s), over all streams
    decode_errors: str  # what ``ffmpeg -v error -i FILE -f null -`` printed
    frames: list[Frame] = field(repr=False)
    labels: list[str] = field(repr=False)
    beeps: list[float]
    offsets: list[tuple[float, float]]  # (flash pts, A/V offset ms: beep - flash; > 0 is audio late)

    @property
    def video_gap(self) -> float:
        return largest_step(self.video_dts)

    @property
    def audio_gap(self) -> float:
        return largest_step(self.audio_dts)

    @property
    def monotonic(self) -> bool:
        return monotonic(self.video_dts) and monotonic(self.audio_dts)

    @property
    def runs(self) -> list[Run]:
        return runs(self.labels, [f.pts for f in self.frames])

    def sequence(self, min_frames: int = 1) -> list[str]:
        """The colours seen in order (flashes folded into their colour), runs shorter than ``min_frames`` left out
        and equal neighbours then merged."""
        out: list[str] = []
        for r in self.runs:
            if r.frames >= min_frames and (not out or out[-1] != r.label):
                out.append(r.label)
        return out

    def frames_of(self, label: str) -> int:
        return sum(1 for x in self.labels if x == label)

    @property
    def offset_spread(self) -> float:
        """Half the range of the A/V offsets (ms): 'constant within ±N ms' (all in one band 2N wide) is spread <= N."""
        ms = [o for _, o in self.offsets]
        return (max(ms) - min(ms)) / 2 if ms else 0.0

    def problems(self, max_gap: float = 0.1, av_within: float = 40.0, min_offsets: int = 1) -> list[str]:
        """What breaks the issue's continuity targets; [] when none."""
        out = []
        if not self.video_dts:
            out.append("no video packets")
        if self.video_gap > max_gap:
            out.append(f"video timestamp gap {self.video_gap * 1000:.0f} ms > {max_gap * 1000:.0f} ms "
                       f"(at {self.gap_at(self.video_dts):.3f} s)")
        if self.audio_dts and self.audio_gap > max_gap:
            out.append(f"audio timestamp gap {self.audio_gap * 1000:.0f} ms > {max_gap * 1000:.0f} ms "
                       f"(at {self.gap_at(self.audio_dts):.3f} s)")
        if not self.monotonic:
            out.append("timestamps go backwards")
        if self.decode_errors.strip():
            out.append(f"decode errors: {self.decode_errors.strip()[:300]}")
        if len(self.offsets) < min_offsets:
            out.append(f"{len(self.offsets)} A/V markers paired (flash+beep), expected >= {min_offsets}")
        if self.offset_spread > av_within:
            out.append(f"A/V offset not constant within ±{av_within:.0f} ms: {[o for _, o in self.offsets]}")
        return out

    @staticmethod
    def gap_at(times: list[float]) -> float:
        steps = [(b - a, a) for a, b in zip(times, times[1:])]
        return max(steps)[1] if steps else 0.0

    def describe(self) -> str:
        """One paragraph for an assertion message."""
        rs = ", ".join(f"{r.label}x{r.frames}@{r.start:.2f}" for r in self.runs)
        offs = [o for _, o in self.offsets]
        return (f"{Path(self.path).name}: {self.duration:.2f} s, {len(self.video_dts)} video / {len(self.audio_dts)} "
                f"audio packets, gaps {self.video_gap * 1000:.0f}/{self.audio_gap * 1000:.0f} ms, monotonic "
                f"{self.monotonic}, decode errors {self.decode_errors.strip()[:200]!r}; runs: {rs}; "
                f"A/V offsets (ms): {offs}")


def _run(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([FFMPEG, "-hide_banner", "-nostdin", *argv], capture_output=True, text=True,
                          errors="replace", timeout=timeout)


def parse_flv(data: bytes) -> tuple[dict[int, str], list[Packet]]:
    """An FLV file's audio and video tags as packets (stream 0 video, 1 audio), read as stored: ffmpeg itself would
    fix non-monotonic DTS on the way to any output (``-c copy -f framecrc`` included) and hide them. Sequence
    headers and end-of-sequence tags are not packets. A torn last tag ends the list."""
    if data[:3] != b"FLV":
        raise ValueError("not an FLV file")
    pos = int.from_bytes(data[5:9], "big") + 4
    raw: list[tuple[int, int, int]] = []  # (stream, dts ms, pts ms)
    while pos + 11 <= len(data):
        kind = data[pos] & 0x1F
        size = int.from_bytes(data[pos + 1:pos + 4], "big")
        ts = int.from_bytes(data[pos + 4:pos + 7], "big") | data[pos + 7] << 24
        body = data[pos + 11:pos + 11 + size]
        if len(body) < size:
            break
        if kind == 9 and len(body) >= 5 and body[0] & 0x0F == 7 and body[1] == 1:  # AVC NALUs
            cts = int.from_bytes(body[2:5], "big", signed=False)
            cts = cts - (1 << 24) if cts & 0x800000 else cts
            raw.append((0, ts, ts + cts))
        elif kind == 9 and len(body) >= 2 and body[0] & 0x0F != 7:  # another codec: no composition time
            raw.append((0, ts, ts))
        elif kind == 8 and len(body) >= 2 and not (body[0] >> 4 == 10 and body[1] == 0):  # not the AAC header
            raw.append((1, ts, ts))
        pos += 11 + size + 4
    kinds = {s: k for s, k in ((0, "video"), (1, "audio")) if any(r[0] == s for r in raw)}
    step = {}  # a packet's duration: FLV has none; the stream's median step stands for it
    for s in kinds:
        mine = [r[1] for r in raw if r[0] == s]
        steps = sorted(b - a for a, b in zip(mine, mine[1:]))
        step[s] = steps[len(steps) // 2] if steps else 0
    return kinds, [Packet(s, d / 1000, p / 1000, step[s] / 1000) for s, d, p in raw]


def packets(path: Path | str) -> tuple[dict[int, str], list[Packet]]:
    """Packets as stored (``parse_flv``) for FLV; other containers through ``-c copy -f framecrc``."""
    with open(path, "rb") as f:
        head = f.read(3)
    if head == b"FLV":
        return parse_flv(Path(path).read_bytes())
    out = _run(["-v", "error", "-i", str(path), "-map", "0", "-c", "copy", "-f", "framecrc", "-"], 120)
    return parse_framecrc(out.stdout)


FIXUPS = re.compile(r"Non-monotonic DTS|non monotonically increasing dts|Queue input is backward in time|"
                    r"DTS \d+ < \d+ out of order|changing to \d+", re.I)


def fixups(log_text: str) -> list[str]:
    """The lines of an ffmpeg log (a receiver's) where it repaired timestamps that went backwards on the way in: its
    file is then monotonic, but the stream it received was not."""
    return [line for line in log_text.splitlines() if FIXUPS.search(line)]


def decode_errors(path: Path | str) -> str:
    r = _run(["-v", "error", "-i", str(path), "-f", "null", "-"], 300)
    return r.stderr + ("" if r.returncode == 0 else f"(exit {r.returncode})")


BLOCK = 16


def frame_filter(audio: bool) -> str:
    graph = (f"[0:v:0]split[a][b];[a]crop={BLOCK}:{BLOCK}:0:0,showinfo[corner];"
             f"[b]crop={BLOCK}:{BLOCK}:(iw-{BLOCK})/2:(ih-{BLOCK})/2,showinfo[centre]")
    if audio:
        graph += f";[0:a:0]silencedetect=n={SILENCE_DB}dB:d={MIN_SILENCE_S}[sil]"
    return graph


def frames_and_beeps(path: Path | str, audio: bool = True) -> tuple[list[Frame], list[float]]:
    maps = ["-map", "[corner]", "-map", "[centre]"] + (["-map", "[sil]"] if audio else [])
    r = _run(["-v", "info", "-i", str(path), "-filter_complex", frame_filter(audio), *maps, "-f", "null", "-"], 300)
    return parse_frames(r.stderr), parse_onsets(r.stderr) if audio else []


def analyze(path: Path | str) -> Report:
    kinds, pkts = packets(path)
    video = [p.dts for p in pkts if kinds.get(p.stream) == "video"]
    audio = [p.dts for p in pkts if kinds.get(p.stream) == "audio"]
    duration = (max(p.pts + p.duration for p in pkts) - min(p.pts for p in pkts)) if pkts else 0.0
    frames, beeps = frames_and_beeps(path, audio=bool(audio))
    if audio:  # silencedetect closes a trailing silence at the end of the stream: that is no beep
        end = max(p.pts + p.duration for p in pkts if kinds.get(p.stream) == "audio")
        beeps = [b for b in beeps if b < end - 0.05]
    labels = [classify(f) for f in frames]
    offsets = pair_offsets(flash_onsets(frames, labels), beeps)
    return Report(str(path), kinds, video, audio, duration, decode_errors(path), frames, labels, beeps, offsets)


def av_offsets(path: Path | str) -> list[float]:
    """The A/V offsets (ms, beep onset minus flash onset) of each marker found in ``path``."""
    return [o for _, o in analyze(path).offsets]


# -- the marker publisher -----------------------------------------------------------------------------------------------

def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "0x" + "".join(f"{c:02X}" for c in rgb)


def marker_video(size: str, fps: int, colour: str, flash_frames: int = 1) -> str:
    """A lavfi graph: ``colour`` with a white frame at every whole second (``flash_frames`` long)."""
    return (f"color=c={hex_colour(PALETTE[colour])}:s={size}:r={fps},"
            f"drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:enable='lt(mod(n\\,{fps})\\,{flash_frames})'")


def marker_audio(shift_s: float = 0.0, shift_after_s: float | None = None) -> str:
    """A lavfi graph: a 1 kHz beep of 100 ms at every whole second, silence between (-6 dBFS, stereo, 48 kHz).
    ``shift_s`` delays the beeps (from ``shift_after_s`` on, when given): a deliberate A/V error for tests."""
    def gate(s: float) -> str:
        return f"lt(mod(t-{s}\\,1)\\,{BEEP_S})*gte(t\\,{s})"

    if shift_after_s is None:
        on = gate(shift_s)
    else:
        on = f"if(lt(t\\,{shift_after_s})\\,{gate(0)}\\,{gate(shift_s)})"
    return f"aevalsrc='0.5*{on}*sin(2*PI*{BEEP_HZ}*t)':s=48000:c=stereo"


def marker_publisher(url: str, size: str = "320x240", fps: int = 25, colour: str = "red", audio: bool = True,
                     seconds: float | None = None, fmt: str = "flv", flash_frames: int = 1, realtime: bool = True,
                     loglevel: str = "warning", extra: tuple[str, ...] = ()) -> list[str]:
    """The argv of an ffmpeg publishing marker frames (and beeps, unless ``audio`` is False) to ``url``:
    libx264 ultrafast with a keyframe every 2 s, AAC 96k; ``fmt`` "flv" (rtmp://) or "mpegts" (srt://, udp://).
    ``realtime`` paces the inputs (``-re``) as a live encoder would. A receiver at a lower frame rate than the
    publisher's can lose a one-frame flash to the rate conversion: give it ``flash_frames`` >= the ratio."""
    re_ = ["-re"] if realtime else []
    argv = [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", loglevel,
            *re_, "-f", "lavfi", "-i", marker_video(size, fps, colour, flash_frames)]
    if audio:
        argv += [*re_, "-f", "lavfi", "-i", marker_audio()]
    if seconds is not None:
        argv += ["-t", str(seconds)]
    argv += ["-map", "0:v"] + (["-map", "1:a"] if audio else [])
    argv += ["-c:v", "libx264", "-preset", "ultrafast", "-g", str(2 * fps), "-pix_fmt", "yuv420p"]
    if audio:
        argv += ["-c:a", "aac", "-b:a", "96k", "-ar", "48000", "-ac", "2"]
    if fmt == "mpegts":
        argv += ["-flush_packets", "1"]
    argv += [*extra, "-f", fmt, url]
    return argv


def marker_file(path: Path, seconds: float, audio_graph: str | None = None, **kw) -> Path:
    """A marker clip written to ``path`` as fast as it encodes (the container from its name); ``audio_graph``
    replaces the beeps (e.g. ``marker_audio(shift_s=0.1)``: a deliberate A/V error)."""
    fmt = {".flv": "flv", ".mp4": "mp4", ".ts": "mpegts", ".mkv": "matroska"}[Path(path).suffix]
    argv = marker_publisher(str(path), realtime=False, seconds=seconds, fmt=fmt, **kw)
    if audio_graph is not None:
        argv[argv.index(marker_audio())] = audio_graph
    subprocess.run([*argv[:-1], "-y", argv[-1]], check=True, timeout=60, capture_output=True)
    return Path(path)


def still_image(path: Path, colour: str, size: str = "640x360") -> Path:
    """A one-frame picture of a palette colour (PNG, JPEG: from the name)."""
    subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    f"color=c={hex_colour(PALETTE[colour])}:s={size}", "-frames:v", "1", "-y", str(path)],
                   check=True, timeout=30)
    return Path(path)


class Marker:
    """A running marker publisher (``marker_publisher``'s argv) in its own session, reaped by PID."""

    def __init__(self, url: str, log: Path, **kw) -> None:
        self.url, self.log, self.kw = url, log, kw
        self.started = time.monotonic()
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(marker_publisher(url, **kw), stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                         start_new_session=True)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # a stopped one too
            self.proc.wait(10)
