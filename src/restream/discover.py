"""Find ffmpeg (override, else the one bundled by imageio-ffmpeg) and read what it can do, once."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from restream.errors import FFmpegError, InputError

NEEDED_MUXERS = ("tee", "fifo", "flv")
NEEDED_PROTOCOLS = ("rtmp",)


@dataclass(frozen=True)
class FFmpeg:
    path: str
    version: str
    muxers: frozenset[str]
    protocols: frozenset[str]
    encoders: frozenset[str]
    filters: frozenset[str]

    def missing(self, muxers=(), protocols=(), encoders=()) -> list[str]:
        out = [f"muxer {m}" for m in muxers if m not in self.muxers]
        out += [f"protocol {p}" for p in protocols if p not in self.protocols]
        out += [f"encoder {e}" for e in encoders if e not in self.encoders]
        return out


def parse_version(text: str) -> str:
    m = re.search(r"ffmpeg version (\S+)", text)
    return m.group(1) if m else "unknown"


def parse_table(text: str) -> frozenset[str]:
    """Names from `-muxers`/`-encoders`/`-filters` listings (flags column, then the name)."""
    names: set[str] = set()
    body = text.split("--", 1)[-1] if " --" in text or "\n --" in text else text
    for line in body.splitlines():
        m = re.match(r"\s*[A-Z. |>]{2,8}\s+([\w,.-]+)\s", line + " ")
        if m:
            names.update(m.group(1).split(","))
    return frozenset(names)


def parse_protocols(text: str) -> frozenset[str]:
    out_part = text.split("Output:", 1)[-1]
    return frozenset(w.strip() for w in out_part.split() if re.fullmatch(r"[a-z0-9_]+", w.strip()))


def locate(override: str | None = None) -> str:
    """The ffmpeg to use: ``--ffmpeg``, else ``RESTREAM_FFMPEG``, else the bundled one."""
    chosen = override or os.environ.get("RESTREAM_FFMPEG")
    if chosen:
        found = shutil.which(chosen) if os.sep not in chosen else chosen
        if not found or not Path(found).is_file():
            raise FFmpegError(f"ffmpeg not found at {chosen!r} (from --ffmpeg or RESTREAM_FFMPEG)")
        if not os.access(found, os.X_OK):
            raise FFmpegError(f"{found} is not executable")
        return found
    bundled = _bundled()
    if bundled:
        return bundled
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # imageio raises RuntimeError when the bundled binary is absent
        system = shutil.which("ffmpeg")
        if system:
            return system
        raise FFmpegError(f"no ffmpeg: the bundled one is unavailable ({exc}) and none is on PATH") from None


def _bundled() -> str | None:
    """The binary in the imageio-ffmpeg wheel, found without importing the package (its import and its own trial
    run of the binary cost ~80 ms of every start). None where its own rules may choose another (its
    ``IMAGEIO_FFMPEG_EXE``, a wheel without a binary): ``imageio_ffmpeg.get_ffmpeg_exe()`` decides then."""
    if os.environ.get("IMAGEIO_FFMPEG_EXE"):
        return None
    import importlib.util

    try:
        spec = importlib.util.find_spec("imageio_ffmpeg")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        found = [f for f in sorted(Path(folder, "binaries").glob("ffmpeg-*"))
                 if f.is_file() and os.access(f, os.X_OK)]
        if len(found) == 1:
            return str(found[0])
    return None


def _run(path: str, *args: str) -> str:
    try:
        res = subprocess.run([path, "-hide_banner", *args], capture_output=True, text=True, timeout=20,
                             errors="replace", stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FFmpegError(f"cannot run {path}: {exc}") from None
    return res.stdout + res.stderr


CACHE_FORMAT = 1
_remember = True  # False: the cache is read, never written (``leave_no_trace``)


def leave_no_trace() -> None:
    """From now on this process writes no cache file (the demo touches nothing of the user's)."""
    global _remember
    _remember = False


@functools.cache
def inspect(path: str) -> FFmpeg:
    """The binary's version and capabilities: five runs of it the first time, then read from the cache (keyed by
    the binary's real path, size, mtime and inode, so a replaced binary is inspected again)."""
    cached, found = _from_cache(path)
    if found is not None:
        return found
    ff = FFmpeg(path, _version(path), parse_table(_run(path, "-muxers")), parse_protocols(_run(path, "-protocols")),
                parse_table(_run(path, "-encoders")), parse_table(_run(path, "-filters")))
    if cached is not None and _remember:
        _write_cache(cached, ff)
    return ff


def _version(path: str) -> str:
    version = parse_version(_run(path, "-version"))
    if version == "unknown":
        raise FFmpegError(f"{path} does not look like ffmpeg (no version line)")
    return version


def _from_cache(path: str) -> tuple[Path | None, FFmpeg | None]:
    """(the binary's cache file or None, what it holds or None)."""
    cached = _cache_file(path)
    return cached, _read_cache(cached, path) if cached is not None else None


def _cache_file(path: str) -> Path | None:
    import hashlib

    from restream import paths

    try:
        st = os.stat(path)
    except OSError:
        return None
    key = f"{CACHE_FORMAT}\0{os.path.realpath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"
    return paths.cache_dir() / f"ffmpeg-{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _read_cache(file: Path, path: str) -> FFmpeg | None:
    """What an earlier run learnt of this binary, or None (missing, unreadable, or not what this restream writes)."""
    import json

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if data.get("format") != CACHE_FORMAT or not isinstance(data.get("version"), str):
            return None
        sets = [frozenset(str(x) for x in data[k]) for k in ("muxers", "protocols", "encoders", "filters")]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return FFmpeg(path, data["version"], *sets)


def _write_cache(file: Path, ff: FFmpeg) -> None:
    """Best effort: a cache that cannot be written costs the next run five runs of ffmpeg, nothing else."""
    import json

    from restream.profile import atomic_write

    data = {"format": CACHE_FORMAT, "version": ff.version, "muxers": sorted(ff.muxers),
            "protocols": sorted(ff.protocols), "encoders": sorted(ff.encoders), "filters": sorted(ff.filters)}
    try:
        atomic_write(file, json.dumps(data), durable=False)
    except OSError:
        pass


def identify(override: str | None = None) -> FFmpeg:
    """The ffmpeg to use and its version, without asking it for its capabilities (relay mode's native fan-out runs
    no ffmpeg: four fewer processes at start)."""
    path = locate(override)
    _, found = _from_cache(path)
    if found is not None:  # what an earlier run learnt of it: no run at all
        return found
    return FFmpeg(path, _version(path), frozenset(), frozenset(), frozenset(), frozenset())


def require(override: str | None = None, protocols: tuple[str, ...] = (), encoders: tuple[str, ...] = (),
            muxers: tuple[str, ...] = ()) -> FFmpeg:
    ff = inspect(locate(override))
    missing = ff.missing(NEEDED_MUXERS + tuple(muxers), NEEDED_PROTOCOLS + tuple(protocols), encoders)
    if missing:
        raise FFmpegError(f"{ff.path} (ffmpeg {ff.version}) lacks {', '.join(missing)}")
    return ff


@dataclass(frozen=True)
class MediaInfo:
    has_video: bool
    has_audio: bool
    video_codec: str | None
    audio_codec: str | None
    width: int | None
    height: int | None
    fps: float | None
    duration: float | None


def parse_media_info(text: str) -> MediaInfo:
    """Read the stream lines of ``ffmpeg -i`` (there is no ffprobe in the bundled build)."""
    video = re.search(r"Stream #0:\d+[^:]*: Video: (\w+).*", text)
    audio = re.search(r"Stream #0:\d+[^:]*: Audio: (\w+)", text)
    width = height = None
    fps = None
    if video:
        size = re.search(r", (\d{2,5})x(\d{2,5})", video.group(0))
        if size:
            width, height = int(size.group(1)), int(size.group(2))
        rate = re.search(r", ([\d.]+) (?:fps|tbr)", video.group(0))
        if rate:
            fps = float(rate.group(1))
    dur = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", text)
    duration = int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3)) if dur else None
    return MediaInfo(bool(video), bool(audio), video.group(1) if video else None, audio.group(1) if audio else None,
                     width, height, fps, duration)


def probe_input(ffmpeg: str, path: str) -> MediaInfo:
    """Open a media file the way the broadcast will; InputError if ffmpeg cannot."""
    if not Path(path).exists():
        raise InputError(f"input file not found: {path}")
    if Path(path).is_dir():
        raise InputError(f"input is a directory, not a media file: {path}")
    text = _run(ffmpeg, "-nostdin", "-i", path)
    info = parse_media_info(text)
    if not (info.has_video or info.has_audio):
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or ["no streams"]
        reason = last[0].split(": ", 1)[-1] if path in last[0] else last[0]
        raise InputError(f"ffmpeg cannot read {path}: {reason}")
    return info


def first_picture_error(ffmpeg: str, path: str) -> str | None:
    """Decode the first picture of ``path`` (a slate must show); ffmpeg's complaint, or None if it decodes."""
    try:
        res = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-v", "error", "-i", path, "-map", "0:v:0",
                              "-frames:v", "1", "-f", "null", "-"], capture_output=True, text=True, timeout=20,
                             errors="replace", stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
    if res.returncode != 0 or lines:
        return (lines[-1] if lines else f"exit status {res.returncode}").split("] ")[-1]
    return None
