"""Real peers for tests: ffmpeg RTMP receivers on loopback, port picking, readiness, media probing.

Readiness is read from /proc/net/tcp (a bare connect would consume a one-shot ``-listen`` receiver).
Ports are picked below the kernel's ephemeral range (see FFMPEG_NOTES: self-connect on retry).
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import imageio_ffmpeg

FFMPEG = os.environ.get("RESTREAM_FFMPEG") or imageio_ffmpeg.get_ffmpeg_exe()

_used_ports: set[int] = set()


def _listening_ports() -> set[int]:
    ports: set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A":
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def _all_tcp_ports() -> set[int]:
    ports: set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 2:
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, below the ephemeral range, never handed out twice."""
    busy = _all_tcp_ports() | _used_ports
    for _ in range(1000):
        port = random.randint(20000, 30000)
        if port in busy:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _used_ports.add(port)
        return port
    raise RuntimeError("no free port")


def wait_listening(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """Block until something LISTENs on ``port`` (read from /proc/net/tcp, without connecting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port in _listening_ports():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before listening on {port}")
        time.sleep(0.01)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


def wait_for(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Receiver:
    """One ``ffmpeg -listen 1`` RTMP receiver recording what it gets to an FLV file."""

    port: int
    out: Path
    app: str = "live"
    key: str = "probe"
    proc: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.out.with_suffix(".log")

    @property
    def url(self) -> str:
        return f"rtmp://127.0.0.1:{self.port}/{self.app}"

    def start(self) -> "Receiver":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "info", "-listen", "1",
                 "-rw_timeout", "20000000",
                 "-i", f"rtmp://127.0.0.1:{self.port}/{self.app}/{self.key}",
                 "-c", "copy", "-f", "flv", "-y", str(self.out)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )
        wait_listening(self.port, proc=self.proc)
        return self

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def stream_names(self) -> list[str]:
        """Stream names a publisher asked for that differed from ``key`` (ffmpeg warns on each)."""
        return re.findall(r"Unexpected stream (.*), expecting", self.log_text())

    def connected(self) -> bool:
        return "Input #0" in self.log_text()

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@dataclass(frozen=True)
class Media:
    """What a recorded file holds, read with the bundled ffmpeg (there is no ffprobe)."""

    decodes: bool
    duration: float
    video_codec: str | None
    audio_codec: str | None
    pix_fmt: str | None
    audio_rate: int | None
    audio_channels: str | None
    keyframe_times: tuple[float, ...]
    first_packet_key: bool
    errors: str
    max_gap: float = 0.0  # the longest step between consecutive video packets (s): a hole in the stream


def probe(path: Path | str) -> Media:
    path = str(path)
    info = subprocess.run([FFMPEG, "-hide_banner", "-i", path], capture_output=True, text=True, timeout=60).stderr
    vcodec = acodec = pix = chans = None
    rate = None
    m = re.search(r"Stream #\d+:\d+.*?: Video: (\w+)[^,]*, (\w+)", info)
    if m:
        vcodec, pix = m.group(1), m.group(2).split("(")[0]
    m = re.search(r"Stream #\d+:\d+.*?: Audio: (\w+)[^,]*, (\d+) Hz, ([\w.]+)", info)
    if m:
        acodec, rate, chans = m.group(1), int(m.group(2)), m.group(3)
    dec = subprocess.run(
        [FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-xerror", "-i", path, "-f", "null", "-"],
        capture_output=True, text=True, timeout=120)
    crc = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-i", path, "-map", "0:v:0?",
                          "-c", "copy", "-f", "framecrc", "-"], capture_output=True, text=True, timeout=60).stdout
    keys: list[float] = []
    times: list[float] = []
    first_key = None
    tb = 1 / 1000
    for line in crc.splitlines():
        if line.startswith("#tb 0:"):
            num, den = line.split(":", 1)[1].strip().split("/")
            tb = int(num) / int(den)
            continue
        if line.startswith("#") or not line.strip():
            continue
        cols = [c.strip() for c in line.split(",")]
        pts = int(cols[2]) * tb
        times.append(pts)
        flags = cols[6] if len(cols) > 6 else "F=0x1"
        is_key = bool(int(flags.split("=")[1], 16) & 1)
        if first_key is None:
            first_key = is_key
        if is_key:
            keys.append(pts)
    duration = (max(times) - min(times)) if times else 0.0
    ordered = sorted(times)
    max_gap = max((b - a for a, b in zip(ordered, ordered[1:])), default=0.0)
    return Media(
        decodes=dec.returncode == 0 and bool(times),
        duration=duration,
        video_codec=vcodec,
        audio_codec=acodec,
        pix_fmt=pix,
        audio_rate=rate,
        audio_channels=chans,
        keyframe_times=tuple(keys),
        first_packet_key=bool(first_key),
        errors=dec.stderr[-2000:],
        max_gap=max_gap,
    )


def make_clip(path: Path, seconds: float = 4, size: str = "320x180", fps: int = 15) -> Path:
    """A short H.264/AAC test clip (tests must not depend on files a fresh machine lacks)."""
    subprocess.run(
        [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-f", "lavfi",
         "-i", f"testsrc2=size={size}:rate={fps}", "-f", "lavfi", "-i", "sine=f=440:r=48000",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", str(fps),
         "-pix_fmt", "yuv420p", "-c:a", "aac", "-ac", "2", "-y", str(path)],
        check=True, timeout=60)
    return path


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid`` (read from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
