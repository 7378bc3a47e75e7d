"""Pure: from an input, encoding settings and slaves to the exact ffmpeg argv (tee spec escaping lives here).

Nothing here touches the disk, the network or a process; everything is tested on strings.
The argv is built by hand, in order (ffmpeg's meaning depends on option order; ffmpeg-python's builder sorts
options alphabetically and puts global options last, so it is not used to compile it). The filter graphs are built
with ffmpeg-python: encode groups' (one decode, a ``split``, per group scale / centre crop / fps, the still's
fit-and-pad: ``group_graph``) and one encode's ``-vf`` chain (``video_chain``). The lavfi sources given as inputs
(the test card and its drawtext, the black still, the silence) stay strings: ffmpeg-python cannot make a node
without an input (shown in tests/test_groups.py).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path

from restream.errors import UsageError
from restream.redact import backslash_escape

FIFO_OPTIONS = {
    "attempt_recovery": "1",
    "recover_any_error": "1",
    "recovery_wait_time": "1",
    "drop_pkts_on_overflow": "1",
    "restart_with_keyframe": "1",
}
SLAVE_RW_TIMEOUT_US = 5_000_000
STILL_SIZE = (1280, 720)  # the picture under an audio-only input, unless --size
STILL_FPS = 30
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
)


@dataclass(frozen=True)
class Raw:
    """The frame switcher's output (``--slate``): raw yuv420p frames and s16le 48 kHz stereo on two pipes."""

    size: tuple[int, int]
    rate: str  # exact: "30", "30000/1001"
    video_fd: int = 0
    audio_fd: int = 0

    @property
    def label(self) -> str:
        from fractions import Fraction

        r = Fraction(self.rate)
        return f"{self.size[0]}x{self.size[1]}@{number(round(float(r), 2))}"


@dataclass(frozen=True)
class Input:
    """What to broadcast. ``kind``: file, url, device, stdin, test, listen (relay mode's ingest), or switch (the
    frame switcher of ``--slate``: the source and the slate arrive as raw frames, ``raw``)."""

    kind: str
    target: str | None = None
    loop: bool = False
    audio: str | None = None  # capture audio, "alsa:default" or "pulse:default"
    has_audio: bool = True  # files: known from probing; others: assumed, mapped optionally
    fps: float | None = None  # files: known from probing
    video_codec: str | None = None  # files: known from probing
    audio_codec: str | None = None
    has_video: bool = True  # files: known from probing; an audio-only file goes out over a still picture
    image: str | None = None  # audio-only input: the still picture (--image), else black
    raw: Raw | None = None  # kind "switch": the frame switcher's pipes (--slate)
    length: float | None = None  # files: the probed duration in seconds (None: unknown)

    @property
    def still(self) -> bool:
        """An audio-only file: restream adds the picture."""
        return self.kind == "file" and not self.has_video

    @property
    def silence(self) -> bool:
        """A video-only file: restream adds silent AAC (most platforms warn about or refuse a stream without audio)."""
        return self.kind == "file" and not self.has_audio

    @property
    def live(self) -> bool:
        return self.kind in ("url", "device", "stdin", "listen")


@dataclass(frozen=True)
class Encoding:
    copy: bool = False
    video_bitrate_k: int = 4500
    audio_bitrate_k: int = 160
    size: tuple[int, int] | None = None
    fps: float | None = None
    preset: str = "veryfast"
    crop: str | None = None  # "9:16" or "1:1": a centre crop to that shape (at ``size``, else CROP_SIZES)

    @property
    def out_size(self) -> tuple[int, int] | None:
        """The picture size this encode sends (None: the input's)."""
        if self.crop and not self.size:
            return CROP_SIZES[self.crop]
        return self.size

    def describe(self) -> str:
        """One line for people: ``6000k video, 160k audio, 720x1280 (9:16 crop), 30 fps``, or ``copy``."""
        if self.copy:
            return "copy (no encode)"
        parts = [f"{self.video_bitrate_k}k video", f"{self.audio_bitrate_k}k audio"]
        size = self.out_size
        if size:
            parts.append(f"{size[0]}x{size[1]}" + (f" ({self.crop} crop)" if self.crop else ""))
        if self.fps:
            parts.append(f"{number(self.fps)} fps")
        return ", ".join(parts)


CROPS = ("9:16", "1:1")
CROP_SIZES = {"9:16": (720, 1280), "1:1": (720, 720)}  # Shorts/TikTok/Instagram's vertical size; a square


@dataclass(frozen=True)
class Override:
    """A destination's own encoding settings (profile); ``None`` everywhere: the broadcast's."""

    video_bitrate_k: int | None = None
    audio_bitrate_k: int | None = None
    size: tuple[int, int] | None = None
    fps: float | None = None
    crop: str | None = None
    copy: bool | None = None

    @property
    def encodes(self) -> bool:
        """Settings that only an encode can give."""
        return any(v is not None for v in (self.video_bitrate_k, self.audio_bitrate_k, self.size, self.fps,
                                            self.crop))


def effective(base: Encoding, own: Override, cap_video_k: int | None = None,
              cap_audio_k: int | None = None) -> tuple[Encoding, str | None]:
    """A destination's encoding: the broadcast's, with its own settings on top, and its platform's caps applied
    to what it did not set itself. Returns (encoding, a note when a cap lowered it)."""
    copy = own.copy if own.copy is not None else (base.copy and not own.encodes)
    if copy:
        return Encoding(copy=True, video_bitrate_k=base.video_bitrate_k, audio_bitrate_k=base.audio_bitrate_k,
                        preset=base.preset), None
    enc = Encoding(
        copy=False,
        video_bitrate_k=own.video_bitrate_k or base.video_bitrate_k,
        audio_bitrate_k=own.audio_bitrate_k or base.audio_bitrate_k,
        size=own.size if own.size is not None else (None if own.crop else base.size),
        fps=own.fps if own.fps is not None else base.fps,
        preset=base.preset,
        crop=own.crop)
    notes = []
    if cap_video_k and own.video_bitrate_k is None and enc.video_bitrate_k > cap_video_k:
        notes.append(f"video {enc.video_bitrate_k}k -> {cap_video_k}k")
        enc = replace(enc, video_bitrate_k=cap_video_k)
    if cap_audio_k and own.audio_bitrate_k is None and enc.audio_bitrate_k > cap_audio_k:
        notes.append(f"audio {enc.audio_bitrate_k}k -> {cap_audio_k}k")
        enc = replace(enc, audio_bitrate_k=cap_audio_k)
    return enc, ("capped: " + ", ".join(notes)) if notes else None


@dataclass(frozen=True)
class Group:
    """Destinations with identical encoding settings: one encode (one video and one audio stream in the output,
    ``v:index`` and ``a:index``) for all of them."""

    index: int
    enc: Encoding
    members: tuple[str, ...]

    @property
    def select(self) -> str:
        """The tee slave option that picks this group's streams."""
        return f"v:{self.index},a:{self.index}"


def groups(encodings: list[tuple[str, Encoding]], default: Encoding) -> tuple[Group, ...]:
    """Group destinations by encoding, in order of first appearance; the broadcast's own encoding (``default``)
    first when someone uses it. Destinations that only differ in nothing share one encode."""
    order: list[Encoding] = []
    if any(e == default for _, e in encodings):
        order.append(default)
    for _, e in encodings:
        if e not in order:
            order.append(e)
    if not order:
        order.append(default)
    return tuple(Group(i, e, tuple(n for n, x in encodings if x == e)) for i, e in enumerate(order))


@dataclass(frozen=True)
class Slave:
    """One tee output: a destination (through restream's relay, or direct for SRT) or a local recording."""

    name: str
    url: str
    format: str
    options: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Plan:
    argv: tuple[str, ...]
    slaves: tuple[Slave, ...]
    secrets: tuple[str, ...] = field(default=())

    def shell(self) -> str:
        return shlex.join(self.argv)


# -- parsing of user values ---------------------------------------------------------------------------------------

def parse_bitrate(text: str, what: str) -> int:
    """'4500k', '4.5M', '4500' -> kbit/s."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)(?:bps|b/s|bit/s)?\s*", text or "")
    if not m:
        raise UsageError(f"invalid {what} {text!r}: use e.g. 4500k or 6M")
    value = float(m.group(1)) * (1000 if m.group(2).lower() == "m" else 1)
    if not 16 <= value <= 100_000:
        raise UsageError(f"{what} {text!r} is out of range (16k to 100M)")
    return int(value)


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{2,5})[xX](\d{2,5})", text or "")
    if not m:
        raise UsageError(f"invalid size {text!r}: use WIDTHxHEIGHT, e.g. 1280x720")
    w, h = int(m.group(1)), int(m.group(2))
    if w % 2 or h % 2:
        raise UsageError(f"invalid size {text!r}: width and height must be even for H.264 4:2:0")
    return w, h


def parse_fps(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"invalid frame rate {text!r}: use e.g. 30 or 29.97") from None
    if not 1 <= value <= 240:
        raise UsageError(f"frame rate {text!r} is out of range (1 to 240)")
    return value


MAX_DURATION_S = 366 * 86400  # a year: longer than any broadcast, short enough to stay exact in every format


def parse_duration(text: str) -> float:
    """'90s', '30m', '2h', '1h30m', '7d', '45' (seconds) -> seconds (to the millisecond, at most a year)."""
    if not text or not re.fullmatch(r"(\d{1,9}(\.\d{1,3})?[dhms])*(\d{1,9}(\.\d{1,3})?)?", text.strip()) \
            or not text.strip():
        raise UsageError(f"invalid duration {text!r}: use e.g. 90s, 30m, 2h, 1h30m or 7d")
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)([dhms]?)", text.strip()):
        total += float(number) * {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}[unit]
    if total <= 0:
        raise UsageError(f"duration {text!r} must be more than zero")
    if total > MAX_DURATION_S:
        raise UsageError(f"duration {text!r} is more than a year (366d)")
    return round(total, 3)


def number(value: float) -> str:
    """A number for ffmpeg's argv: plain decimal, never exponent form (ffmpeg misreads ``1.0008e+06`` as -t)."""
    if value == int(value):
        return str(int(value))
    return f"{value:.6f}".rstrip("0").rstrip(".")


def parse_input(text: str | None, test_pattern: bool, loop: bool, audio: str | None) -> Input:
    """Classify the INPUT argument (pure: no probing here)."""
    if test_pattern:
        if text:
            raise UsageError("give either INPUT or --test-pattern, not both")
        return Input("test")
    if not text:
        raise UsageError("no input: give a file, a URL, v4l2:/dev/videoN, '-' for stdin, or --test-pattern")
    if audio is not None and not re.fullmatch(r"(alsa|pulse):\S+", audio):
        raise UsageError(f"invalid --audio {audio!r}: use alsa:DEVICE or pulse:DEVICE")
    if text == "-":
        kind = "stdin"
    elif text.startswith("v4l2:"):
        kind = "device"
    elif re.match(r"(rtmps?|srt|https?|rtsp|udp|tcp)://", text, re.I):
        kind = "url"
    elif re.match(r"[a-z][a-z0-9+.-]*://", text, re.I):
        raise UsageError(f"unsupported input URL scheme in {text.split('://')[0]!r}://")
    else:
        kind = "file"
    if loop and kind != "file":
        raise UsageError("--loop works with media files only")
    if audio and kind != "device":
        raise UsageError("--audio goes with a capture device input (v4l2:/dev/videoN)")
    return Input(kind, text, loop, audio)


# -- tee spec -----------------------------------------------------------------------------------------------------

def tee_escape(text: str) -> str:
    """Escape a string for ffmpeg's tee-spec tokenizer (one level: it removes one level of backslashes)."""
    return backslash_escape(text)


def slave_spec(slave: Slave) -> str:
    """``[f=flv:onfail=ignore:k=v]url`` with both escaping levels applied to values and one to the URL."""
    opts = [("f", slave.format), ("onfail", "ignore"), *slave.options]
    inner = ":".join(f"{k}={backslash_escape(backslash_escape(v))}" for k, v in opts)
    return f"[{inner}]{tee_escape(slave.url)}"


def tee_target(slaves: tuple[Slave, ...]) -> str:
    return "|".join(slave_spec(s) for s in slaves)


def fifo_options(queue_size: int) -> str:
    return ":".join(f"{k}={v}" for k, v in {**FIFO_OPTIONS, "queue_size": str(queue_size)}.items())


# -- slaves -------------------------------------------------------------------------------------------------------

def relay_slave(name: str, slot_url: str) -> Slave:
    """An RTMP(S) destination, published to restream's local relay slot (no key in the argv)."""
    return Slave(name, slot_url, "flv", (("rw_timeout", str(SLAVE_RW_TIMEOUT_US)),))


def srt_slave(name: str, server_url: str, key: str | None) -> Slave:
    """SRT cannot pass the TCP relay: a direct slave; a separate key travels as the streamid."""
    url = server_url
    if key is not None:
        from urllib.parse import quote

        url += ("&" if "?" in url else "?") + "streamid=" + quote(key, safe="")
    return Slave(name, url, "mpegts")


RECORD_FORMATS = {".mkv": "matroska", ".mp4": "mp4", ".mov": "mov", ".flv": "flv", ".ts": "mpegts"}


def record_slave(path: str) -> Slave:
    """The local recording: written without fifo, so that ffmpeg never retries it (a retry would reopen, and so
    truncate, the file) and a failure is logged as ``Slave muxer #N failed`` with its index."""
    ext = Path(path).suffix.lower()
    fmt = RECORD_FORMATS.get(ext)
    if fmt is None:
        raise UsageError(f"--record: unsupported file type {ext or '(none)'!r}: use {', '.join(RECORD_FORMATS)}")
    options: tuple[tuple[str, str], ...] = (("use_fifo", "0"),)
    if fmt in ("mp4", "mov"):  # fragmented, so a recording cut short still plays
        options += (("movflags", "+frag_keyframe+empty_moov+default_base_moof"),)
    return Slave("record", path, fmt, options)


# -- argv ---------------------------------------------------------------------------------------------------------

def test_pattern_filter(size: tuple[int, int], fps: float, font: str | None) -> str:
    w, h = size
    graph = f"testsrc2=size={w}x{h}:rate={number(fps)}"
    if font:
        fs = max(12, h // 18)
        graph += (f",drawtext=fontfile={font}:text='restream test  %{{localtime}}':x=(w-tw)/2:y=h-th-{fs}"
                  f":fontsize={fs}:fontcolor=white:box=1:boxcolor=black@0.6:boxborderw={fs // 3}")
    return graph


def input_args(inp: Input, enc: Encoding, font: str | None = None) -> list[str]:
    if inp.kind == "test":
        size = enc.size or (1280, 720)
        fps = enc.fps or 30
        return ["-re", "-f", "lavfi", "-i", test_pattern_filter(size, fps, font),
                "-re", "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000:beep_factor=4"]
    if inp.kind == "file":
        loop = ["-stream_loop", "-1"] if inp.loop else []
        args = ["-re", *loop, "-i", inp.target or ""]
        # generated tracks without -re: the file's -re paces the whole output (with -re on both, the output
        # fell behind: 13 s of wall time for a 3 s file). Unpaced, they run ahead, and -shortest alone let a 3 s
        # file's picture run 0.7-1.3 s past its sound on a loaded machine; so they end with the file, when its
        # length is known (-shortest still ends the broadcast with the file's own track)
        made = ["-t", number(inp.length)] if inp.length and not inp.loop and (inp.still or inp.silence) else []
        if inp.still:
            fps = number(enc.fps or STILL_FPS)
            if inp.image:
                args += ["-loop", "1", "-framerate", fps, *made, "-i", inp.image]
            else:
                w, h = enc.size or STILL_SIZE
                args += ["-f", "lavfi", *made, "-i", f"color=c=black:size={w}x{h}:rate={fps}"]
        elif inp.silence:
            args += ["-f", "lavfi", *made, "-i", "anullsrc=channel_layout=stereo:sample_rate=48000"]
        return args
    if inp.kind == "stdin":
        return ["-i", "pipe:0"]
    if inp.kind == "switch":  # timestamps by byte count: monotonic and gap-free whatever the sources do
        assert inp.raw is not None
        w, h = inp.raw.size
        return ["-f", "rawvideo", "-pix_fmt", "yuv420p", "-video_size", f"{w}x{h}", "-framerate", inp.raw.rate,
                "-thread_queue_size", "16", "-i", f"pipe:{inp.raw.video_fd}",
                "-f", "s16le", "-sample_rate", "48000", "-ch_layout", "stereo", "-thread_queue_size", "256",
                "-i", f"pipe:{inp.raw.audio_fd}"]
    if inp.kind == "listen":  # relay mode: the ingest gate writes the verified publisher's stream as FLV to stdin
        return ["-fpsprobesize", "0", "-f", "flv", "-i", "pipe:0"]
    if inp.kind == "url":
        network = ["-rw_timeout", "10000000"] if re.match(r"(rtmps?|https?|tcp)://", inp.target or "") else []
        return [*network, "-i", inp.target or ""]
    if inp.kind == "device":
        args = ["-f", "v4l2", "-i", (inp.target or "")[len("v4l2:"):]]
        if inp.audio:
            fmt, dev = inp.audio.split(":", 1)
            args += ["-f", fmt, "-i", dev]
        return args
    raise ValueError(inp.kind)


def stream_maps(inp: Input) -> list[str]:
    if inp.still:  # the picture is input 1, the sound input 0; the broadcast ends with the sound
        return ["-map", "1:v:0", "-map", "0:a:0", "-shortest"]
    if inp.silence:
        return ["-map", "0:v:0", "-map", "1:a:0", "-shortest"]
    if inp.kind in ("test", "switch") or (inp.kind == "device" and inp.audio):
        return ["-map", "0:v:0", "-map", "1:a:0"]
    return ["-map", "0:v:0", "-map", "0:a:0?"]


def flv_tags_needed(inp: Input) -> bool:
    """--copy from a non-FLV input keeps the input's codec tags (avc1, 0x1b), which FLV slaves refuse."""
    if inp.kind == "listen" or (inp.kind == "url" and re.match(r"rtmps?://", inp.target or "", re.I)):
        return False
    return not (inp.kind == "file" and (inp.target or "").lower().endswith(".flv"))


def copy_args(inp: Input, enc: Encoding) -> list[str]:
    args = ["-c", "copy"]
    if flv_tags_needed(inp):
        if inp.video_codec in (None, "h264"):
            args += ["-tag:v", "7"]  # FLV's H.264 codec id
        if inp.audio_codec in (None, "aac") and not inp.silence:
            args += ["-tag:a", "10"]  # FLV's AAC sound format
    if inp.silence:  # the video is copied, the added silence is encoded
        args += ["-c:a", "aac", "-b:a", f"{enc.audio_bitrate_k}k", "-ar", "48000", "-ac", "2"]
    return args


def encode_args(inp: Input, enc: Encoding) -> list[str]:
    if enc.copy:
        return copy_args(inp, enc)
    fps = enc.fps or (30 if inp.kind == "test" else STILL_FPS if inp.still else inp.fps)
    if inp.kind == "switch" and inp.raw is not None:
        fps = _made(inp, enc)[1]
    args: list[str] = []
    chain = video_chain(inp, enc)
    if chain:
        args += ["-vf", chain]
    v = enc.video_bitrate_k
    args += ["-c:v", "libx264", "-preset", enc.preset, "-profile:v", "high", "-pix_fmt", "yuv420p",
             "-b:v", f"{v}k", "-maxrate", f"{v}k", "-bufsize", f"{2 * v}k", "-sc_threshold", "0"]
    if fps:
        gop = round(2 * fps)
        args += ["-g", str(gop), "-keyint_min", str(gop)]
    args += ["-force_key_frames", "expr:gte(t,n_forced*2)"]
    args += ["-c:a", "aac", "-b:a", f"{enc.audio_bitrate_k}k", "-ar", "48000", "-ac", "2"]
    return args


def build(ffmpeg: str, inp: Input, enc: Encoding, slaves: tuple[Slave, ...], duration: float | None = None,
          queue_size: int = 600, font: str | None = None, secrets: tuple[str, ...] = (),
          groups: tuple[Group, ...] | None = None) -> Plan:
    """The whole argv: one input, one encode per group (``groups``; default: one, ``enc``), one tee with an
    isolated, self-healing slave per output (each selecting its group's streams when there are several)."""
    if not slaves:
        raise UsageError("nothing to send to: no destination selected")
    several = groups is not None and (len(groups) > 1 or groups[0].enc.crop is not None)
    if groups is not None and not several:
        enc = groups[0].enc
    copying = enc.copy if not several else any(g.enc.copy for g in groups or ())
    if copying and inp.still:
        raise UsageError("--copy cannot add a picture to an audio-only input: leave out --copy (the picture is "
                         "encoded once)" if not several else "a destination set to copy cannot get a picture for "
                         "an audio-only input: restream edit NAME --encode")
    if copying and flv_tags_needed(inp) and any(s.name == "record" and s.format not in ("flv", "mpegts")
                                                for s in slaves):
        raise UsageError("--copy from this input can only be recorded as .flv or .ts (the stream keeps FLV codec "
                         "tags that MP4 and Matroska refuse)")
    argv = [ffmpeg, "-hide_banner", "-loglevel", "level+info", "-progress", "pipe:1", "-stats_period", "0.5",
            "-nostats"]
    argv += input_args(inp, enc, font)
    if several:
        assert groups is not None
        argv += group_args(inp, enc, groups)
    else:
        argv += stream_maps(inp)
        argv += encode_args(inp, enc)
    if duration is not None:
        argv += ["-t", number(duration)]
    argv += ["-flags", "+global_header", "-f", "tee", "-use_fifo", "1", "-fifo_options", fifo_options(queue_size),
             tee_target(slaves)]
    return Plan(tuple(argv), slaves, secrets)


# -- encode groups --------------------------------------------------------------------------------------------------

def _sources(inp: Input) -> tuple[str, str]:
    """(video, audio) input stream specifiers, as ``stream_maps`` maps them."""
    if inp.still:
        return "1:v:0", "0:a:0"
    if inp.silence or inp.kind in ("test", "switch") or (inp.kind == "device" and inp.audio):
        return "0:v:0", "1:a:0"
    return "0:v:0", "0:a:0?"


def _made(inp: Input, base: Encoding) -> tuple[tuple[int, int] | None, float | None]:
    """The size and rate of a picture restream makes itself (the test card, a still), else (None, None)."""
    if inp.kind == "test":
        return base.size or (1280, 720), base.fps or 30
    if inp.still:
        return base.size or STILL_SIZE, base.fps or STILL_FPS
    if inp.kind == "switch" and inp.raw is not None:
        from fractions import Fraction

        return inp.raw.size, float(Fraction(inp.raw.rate))
    return None, None


def _fit(v, inp: Input, made_size: tuple[int, int] | None):
    """The still's cover, of any size, fitted into the frame on black (an ffmpeg-python node)."""
    if inp.still and inp.image:
        w, h = made_size or STILL_SIZE
        v = (v.filter("scale", w, h, force_original_aspect_ratio="decrease")
             .filter("pad", w, h, "(ow-iw)/2", "(oh-ih)/2").filter("setsar", 1))
    return v


def _shape(v, enc: Encoding, made: tuple[tuple[int, int] | None, float | None]):
    """One encode's picture (an ffmpeg-python node): scaled, or centre-cropped to its shape, and converted to its
    rate (what restream makes itself, the test card or a still, is made at the broadcast's size and rate)."""
    made_size, made_fps = made
    if enc.crop:
        w, h = enc.out_size or CROP_SIZES[enc.crop]
        v = v.filter("scale", w, h, force_original_aspect_ratio="increase").filter("crop", w, h).filter("setsar", 1)
    elif enc.size and enc.size != made_size:
        v = v.filter("scale", enc.size[0], enc.size[1])
    if enc.fps and enc.fps != made_fps:
        v = v.filter("fps", number(enc.fps))
    return v


def _compile(*streams) -> tuple[str | None, list[str]]:
    """ffmpeg-python compiles the graph: (``-filter_complex`` text or None, the ``-map`` of each stream)."""
    import ffmpeg

    args = ffmpeg.output(*streams, "-").get_args()
    graph = args[args.index("-filter_complex") + 1] if "-filter_complex" in args else None
    return graph, [args[i + 1] for i, a in enumerate(args) if a == "-map"]


def video_chain(inp: Input, enc: Encoding) -> str | None:
    """One encode's filters as a ``-vf`` chain (built with ffmpeg-python, its labels taken out), or None."""
    import ffmpeg

    src = ffmpeg.input("picture").video
    made = _made(inp, enc)
    v = _shape(_fit(src, inp, made[0]), enc, made)
    if v is src:
        return None
    graph, _ = _compile(v)
    assert graph is not None
    return ",".join(re.sub(r"^(\[[^\]]*\])+|(\[[^\]]*\])+$", "", part) for part in graph.split(";"))


def group_graph(inp: Input, base: Encoding, groups: tuple[Group, ...]) -> tuple[str | None, list[str]]:
    """The filter graph, built with ffmpeg-python: the picture decoded once, ``split`` into one branch per
    encoded group, each scaled / centre-cropped / converted to its rate. Returns (graph or None, the video map
    of each encoded group)."""
    import ffmpeg

    video, _ = _sources(inp)
    made = _made(inp, base)
    # ffmpeg-python numbers the inputs it sees, and this graph sees one: its label is set to the real input's below
    src = ffmpeg.input("picture").video
    fitted = _fit(src, inp, made[0])
    encoded = [g for g in groups if not g.enc.copy]
    branches = fitted.split() if len(encoded) > 1 else None
    outs = []
    for k, g in enumerate(encoded):
        v = _shape(branches[k] if branches is not None else fitted, g.enc, made)
        outs.append(None if v is src else v)  # None: no filter at all, the input's picture is mapped as it is
    named = [v for v in outs if v is not None]
    if not named:
        return None, [video] * len(outs)
    graph, labels = _compile(*named)
    if graph is not None:
        graph = graph.replace("[0:v]", f"[{video}]", 1)
    found = iter(labels)
    maps = []
    for v in outs:
        label = video if v is None else next(found)
        maps.append(video if label in ("0:v", "0") else label)
    return graph, maps


def group_args(inp: Input, base: Encoding, groups: tuple[Group, ...]) -> list[str]:
    """Several encodes in one process: the graph, then per group a video and an audio stream (``v:i``, ``a:i``),
    each with its own encoder settings (options with a stream specifier, so nothing depends on their order)."""
    video, audio = _sources(inp)
    graph, vmaps = group_graph(inp, base, groups)
    maps = iter(vmaps)
    args: list[str] = ["-filter_complex", graph] if graph else []
    for g in groups:
        args += ["-map", video if g.enc.copy else next(maps), "-map", audio]
    if inp.still or inp.silence:
        args.append("-shortest")
    _, made_fps = _made(inp, base)
    for g in groups:
        i, e = g.index, g.enc
        if e.copy:
            args += [f"-c:v:{i}", "copy"]
            if flv_tags_needed(inp) and inp.video_codec in (None, "h264"):
                args += [f"-tag:v:{i}", "7"]
        else:
            v = e.video_bitrate_k
            args += [f"-c:v:{i}", "libx264", f"-preset:v:{i}", e.preset, f"-profile:v:{i}", "high",
                     f"-pix_fmt:v:{i}", "yuv420p", f"-b:v:{i}", f"{v}k", f"-maxrate:v:{i}", f"{v}k",
                     f"-bufsize:v:{i}", f"{2 * v}k", f"-sc_threshold:v:{i}", "0"]
            fps = e.fps or made_fps or inp.fps
            if fps:
                gop = round(2 * fps)
                args += [f"-g:v:{i}", str(gop), f"-keyint_min:v:{i}", str(gop)]
            args += [f"-force_key_frames:v:{i}", "expr:gte(t,n_forced*2)"]
        if e.copy and not inp.silence:
            args += [f"-c:a:{i}", "copy"]
            if flv_tags_needed(inp) and inp.audio_codec in (None, "aac"):
                args += [f"-tag:a:{i}", "10"]
        else:
            args += [f"-c:a:{i}", "aac", f"-b:a:{i}", f"{e.audio_bitrate_k}k", f"-ar:a:{i}", "48000",
                     f"-ac:a:{i}", "2"]
    return args


def find_font(exists=lambda p: Path(p).is_file()) -> str | None:
    return next((f for f in FONT_CANDIDATES if exists(f)), None)


# -- the slate's sources (--slate) ----------------------------------------------------------------------------------

PROBE_FAST = ["-fpsprobesize", "0", "-analyzeduration", "500000"]  # a publisher's picture in ~0.3 s, not ~1.8 s


def fit_chain(size: tuple[int, int] | None, rate: str | None) -> str:
    """Any picture to the broadcast's raw format: its rate (from 0, so picture and sound start together), fitted
    into its size on black. Unknown size or rate (the first source decides them): the source's own."""
    chain = [f"fps=fps={rate or 'source_fps'}:start_time=0"]
    if size is not None:
        w, h = size
        chain += [f"scale={w}:{h}:force_original_aspect_ratio=decrease",
                  f"pad={w}:{h}:(ow-iw)/2:(oh-ih)/2"]
    else:
        chain.append("scale=trunc(iw/2)*2:trunc(ih/2)*2")  # x264 takes even sizes only
    return ",".join(chain + ["setsar=1", "format=yuv420p"])


def raw_outputs(size: tuple[int, int] | None, rate: str | None, video_fd: int, audio_fd: int,
                tight: bool = False) -> list[str]:
    """A source ffmpeg's output: raw frames and raw sound on two pipes, each flushed per packet. A tee, so that a
    source without sound still runs: its sound slave fails (the pipe closes at once) and the picture goes on.
    ``tight``: the sound follows its timestamps within 10 ms, not 100 (a looped file: each loop's seam would let
    it drift a frame's worth)."""
    resample = "aresample=48000:async=1:" + ("min_hard_comp=0.01:" if tight else "") + "first_pts=0"
    return ["-map", "0:v:0", "-map", "0:a:0?", "-vf", fit_chain(size, rate), "-c:v", "rawvideo",
            "-af", resample, "-ac", "2", "-c:a", "pcm_s16le",
            "-f", "tee", "-use_fifo", "0",
            f"[f=rawvideo:select=v:flush_packets=1]pipe\\:{video_fd}"
            f"|[f=s16le:select=a:flush_packets=1:onfail=ignore]pipe\\:{audio_fd}"]


def source_argv(ffmpeg: str, inp: Input, size: tuple[int, int] | None, rate: str | None, video_fd: int,
                audio_fd: int) -> list[str]:
    """One source session's ffmpeg: the live input (relay mode: the publisher's FLV on stdin) decoded to the
    broadcast's raw format. One decoder thread: fewer frames held back when the source breaks off."""
    head = [ffmpeg, "-hide_banner", "-loglevel", "level+info", "-nostats", *PROBE_FAST, "-threads", "1"]
    if inp.kind == "listen":
        head += ["-f", "flv", "-i", "pipe:0"]
    else:
        head += ["-nostdin", *input_args(inp, Encoding())]
    return head + raw_outputs(size, rate, video_fd, audio_fd)


def card_argv(ffmpeg: str, size: tuple[int, int], font: str | None, background: tuple[int, int, int]) -> list[str]:
    """One raw frame: restream's slate card (the background colour, and the words when a font is at hand)."""
    w, h = size
    colour = "0x%02x%02x%02x" % background
    graph = f"color=c={colour}:size={w}x{h}:rate=1"
    if font:
        big, small = max(14, h // 12), max(10, h // 30)
        graph += (f",drawtext=fontfile={font}:text=We\u2019ll be right back:x=(w-tw)/2:y=h*0.38:fontsize={big}"
                  f":fontcolor=white,drawtext=fontfile={font}:text=restream \u00b7 waiting for the source:x=(w-tw)/2:y=h*0.38+{big * 2}:fontsize={small}:fontcolor=0xb0b8c8")
    return [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-f", "lavfi", "-i", graph,
            "-frames:v", "1", "-pix_fmt", "yuv420p", "-f", "rawvideo", "pipe:1"]


def picture_argv(ffmpeg: str, path: str, size: tuple[int, int]) -> list[str]:
    """One raw frame of an image (or a video's first picture), fitted into the broadcast's size on black."""
    w, h = size
    return [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-i", path, "-frames:v", "1",
            "-vf", f"scale={w}:{h}:force_original_aspect_ratio=decrease,pad={w}:{h}:(ow-iw)/2:(oh-ih)/2,setsar=1,"
            "format=yuv420p", "-f", "rawvideo", "pipe:1"]


def loop_argv(ffmpeg: str, path: str, size: tuple[int, int], rate: str, video_fd: int,
              audio_fd: int) -> list[str]:
    """A video slate: the file looped for ever, decoded as fast as it is read (the switcher paces it)."""
    return [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-stream_loop", "-1", "-i", path,
            *raw_outputs(size, rate, video_fd, audio_fd, tight=True)]
