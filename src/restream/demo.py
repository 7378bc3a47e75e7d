"""The built-in demo's stand-in platforms: local ffmpeg RTMP receivers, and the check of what they received."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from restream.ports import free_port, listening

PLATFORMS = ("youtube", "twitch", "kick")


@dataclass
class Receiver:
    name: str
    port: int
    key: str
    path: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live"


@dataclass(frozen=True)
class Verdict:
    name: str
    ok: bool
    bytes: int
    duration_s: float
    detail: str


def start_receivers(ffmpeg: str, folder: Path, names=PLATFORMS, timeout: float = 10.0) -> list[Receiver]:
    taken: set[int] = set()
    receivers = []
    for name in names:
        r = Receiver(name, free_port(taken), f"demo-{name}-{random.randrange(16**6):06x}", folder / f"{name}.flv")
        r.proc = subprocess.Popen(
            [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-listen", "1", "-rw_timeout", "30000000",
             "-i", f"{r.url}/{r.key}", "-c", "copy", "-f", "flv", "-y", str(r.path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        receivers.append(r)
    deadline = time.monotonic() + timeout
    for r in receivers:  # readiness from /proc/net/tcp: a probing connect would use up the one-shot listener
        while not listening(r.port):
            if r.proc.poll() is not None or time.monotonic() > deadline:
                stop_receivers(receivers)
                raise OSError(f"demo receiver {r.name} did not start listening on 127.0.0.1:{r.port}")
            time.sleep(0.01)
    return receivers


def stop_receivers(receivers: list[Receiver], timeout: float = 5.0) -> None:
    """Let each receiver finish its file (its publisher is gone), then make sure it is gone."""
    deadline = time.monotonic() + timeout
    for r in receivers:
        if r.proc is None:
            continue
        try:
            r.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            r.proc.send_signal(signal.SIGINT)
            try:
                r.proc.wait(2)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait()


def verify(ffmpeg: str, r: Receiver, expected_s: float) -> Verdict:
    """Decode the whole received file; it passes if it decodes cleanly and lasts at least half the broadcast."""
    size = r.path.stat().st_size if r.path.exists() else 0
    if size == 0:
        return Verdict(r.name, False, 0, 0.0, "received nothing")
    res = subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-v", "error", "-i", str(r.path), "-f", "null",
                          "-progress", "pipe:1", "-"], capture_output=True, text=True, timeout=120)
    times = re.findall(r"out_time_us=(\d+)", res.stdout)
    duration = int(times[-1]) / 1e6 if times else 0.0
    if res.returncode != 0:
        return Verdict(r.name, False, size, duration, "does not decode: " + (res.stderr.strip().splitlines()
                                                                            or ["?"])[-1][:120])
    if duration < expected_s * 0.5:
        return Verdict(r.name, False, size, duration, f"only {duration:.1f} s of {expected_s:.0f} s arrived")
    return Verdict(r.name, True, size, duration, "decodes cleanly")


def make_sample(ffmpeg: str, path: Path, seconds: int = 30) -> None:
    """A short H.264/AAC sample video (test card and tone) to try ``restream go FILE`` with. Never overwrites."""
    fd_path = Path(path)
    with open(fd_path, "xb"):  # claims the name; ffmpeg then writes it (-y only replaces this empty file)
        pass
    try:
        subprocess.run([ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error",
                        "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=30:duration={seconds}",
                        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
                        "-c:v", "libx264", "-preset", "ultrafast", "-g", "60", "-pix_fmt", "yuv420p",
                        "-c:a", "aac", "-ac", "2", "-shortest", "-y", str(fd_path)],
                       check=True, capture_output=True, timeout=300)
    except subprocess.CalledProcessError as exc:
        fd_path.unlink(missing_ok=True)
        last = exc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {exc.returncode}"]
        raise RuntimeError(f"ffmpeg failed: {last[0]}") from None
    except subprocess.TimeoutExpired:
        fd_path.unlink(missing_ok=True)
        raise RuntimeError("ffmpeg took too long") from None
    except BaseException:
        fd_path.unlink(missing_ok=True)
        raise
