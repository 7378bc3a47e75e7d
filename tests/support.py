"""Real peers for tests: ffmpeg RTMP receivers on loopback, port picking, readiness, media probing, the
``restream go``/``relay`` child processes the e2e tests drive, and the rerun policy's marker.

Readiness is read from /proc/net/tcp (a bare connect would consume a one-shot ``-listen`` receiver).
Ports are picked below the kernel's ephemeral range (see FFMPEG_NOTES: self-connect on retry).

Reruns: a real-process test whose only variable is time may carry ``@timing``: one rerun, and only when it failed
on a missed deadline (``TimeoutError`` from a wait, ``subprocess.TimeoutExpired``) or a bound on seconds
(``TimingError``, raised by ``bound``/``near``). Any other failure (an exit code, a state, a key leak: every plain
``assert``) is final. conftest.py enforces the shape of the marker.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import imageio_ffmpeg
import pytest

FFMPEG = os.environ.get("RESTREAM_FFMPEG") or imageio_ffmpeg.get_ffmpeg_exe()


# -- timing: the only failures that may be rerun -----------------------------------------------------------------

class TimingError(Exception):
    """A bound on seconds was missed. Not an AssertionError on purpose: the rerun policy tells them apart."""


RERUN_ON = (TimingError, TimeoutError, subprocess.TimeoutExpired)

timing = pytest.mark.flaky(reruns=1, reruns_delay=1, only_rerun=list(RERUN_ON), rerun_except=[AssertionError])
"""Per test, on real-process tests with wall-clock bounds: one rerun, on a timing failure only."""


def bound(seconds: float, limit: float, what: str) -> float:
    """``seconds <= limit`` or TimingError naming ``what``; returns ``seconds``."""
    if not seconds <= limit:
        raise TimingError(f"{what}: {seconds:.2f} s, the bound is {limit:.2f} s")
    return seconds


def near(seconds: float, expected: float, within: float, what: str) -> float:
    """``|seconds - expected| <= within`` or TimingError naming ``what``; returns ``seconds``."""
    if not abs(seconds - expected) <= within:
        raise TimingError(f"{what}: {seconds:.2f} s, expected {expected:.2f} ± {within:.2f} s")
    return seconds

_used_ports: set[int] = set()


def _tcp_sockets() -> list[tuple[int, str, str]]:
    """(local port, state in hex: 0A listen, 01 established, ..., inode) of every TCP socket on the host."""
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9:
                rows.append((int(parts[1].rsplit(":", 1)[1], 16), parts[3], parts[9]))
    return rows


def _listening_ports() -> set[int]:
    return {port for port, state, _ in _tcp_sockets() if state == "0A"}


def _all_tcp_ports() -> set[int]:
    return {port for port, _, _ in _tcp_sockets()}


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


def _serving(port: int, pid: int) -> bool:
    """Process ``pid`` holds a socket bound to ``port`` that listens or has accepted a connection. An ``ffmpeg
    -listen 1`` closes its listening socket as soon as it accepts one client, so a publisher that retries every
    second (restream reconnecting to a restarted receiver) can take it between two polls: the port then never shows
    LISTEN, yet the receiver is serving."""
    try:
        links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return False
    return any(p == port and state in ("0A", "01") and f"socket:[{inode}]" in links
               for p, state, inode in _tcp_sockets())


def wait_listening(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    """Block until something LISTENs on ``port`` (read from /proc/net/tcp, without connecting); with ``proc``,
    until that process listens on it or has already accepted a connection on it (see ``_serving``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port in _listening_ports() or (proc is not None and _serving(port, proc.pid)):
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


# -- restream as a child process (go, relay) -----------------------------------------------------------------------

def cmdline(pid: int) -> bytes | None:
    """``/proc/PID/cmdline`` (NUL-separated argv), or None when the process is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def event_ts(event: dict) -> float:
    """A JSON event's ``ts`` as wall-clock seconds."""
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


class Restream:
    """One ``python -m restream COMMAND ARGS`` child. Reads stdout/stderr in threads (JSON lines parsed as they come
    when ``--json`` is given) and samples its descendants' command lines every 50 ms (which ffmpeg processes ran,
    with what argv). ``wait`` fails the test on a non-JSON line or, unless ``--show-keys``, on the canary key."""

    def __init__(self, command: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "restream", command, *self.args], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env={**os.environ, **(env or {})})
        self.out_lines: list[str] = []
        self.err_lines: list[str] = []
        self.events: list[dict] = []
        self.not_json: list[str] = []
        self.children: dict[int, list[bytes]] = {}  # every descendant seen: pid -> argvs (NUL-separated, /proc)
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out_lines, True),
                                          daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err_lines, False),
                                          daemon=True),
                         threading.Thread(target=self._sample, daemon=True)]
        for t in self._threads:
            t.start()

    def argv(self) -> bytes:
        """restream's own command line as /proc shows it (NUL-terminated arguments)."""
        return b"".join(a.encode() + b"\0" for a in self.proc.args)

    def _read(self, stream, lines: list[str], parse: bool) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            if parse and "--json" in self.args:
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    self.not_json.append(line)  # fails the test in wait()

    def _sample(self) -> None:
        while self.proc.poll() is None:
            for pid in descendants(self.proc.pid):
                argv = cmdline(pid)  # re-read each time: between fork and exec a child shows python's argv
                if argv and argv not in self.children.setdefault(pid, []):
                    self.children[pid].append(argv)
            time.sleep(0.05)

    # -- what happened ---------------------------------------------------------------------------------------------
    @property
    def stdout(self) -> str:
        return "".join(self.out_lines)

    @property
    def stderr(self) -> str:
        return "".join(self.err_lines)

    def tee_ffmpegs(self) -> list[int]:
        """PIDs of the broadcasting ffmpeg processes seen (argv with ``-f tee``), in the order they were seen."""
        return [pid for pid, argvs in list(self.children.items()) if any(b"\0tee\0" in a for a in argvs)]

    def states(self, name: str, state: str | None = None) -> list[dict]:
        return [e for e in list(self.events) if e.get("event") == "state" and e["destination"] == name
                and (state is None or e["state"] == state)]

    def state_now(self, name: str) -> str | None:
        s = self.states(name)
        return s[-1]["state"] if s else None

    def event(self, kind: str) -> dict | None:
        return next((e for e in list(self.events) if e.get("event") == kind), None)

    def logs(self, level: str | None = None) -> list[dict]:
        return [e for e in list(self.events) if e.get("event") == "log" and (level is None or e["level"] == level)]

    def last_progress(self) -> dict | None:
        return next((e for e in reversed(list(self.events)) if e.get("event") == "progress"), None)

    def summary(self) -> list:
        return [(e["event"], e.get("destination") or e.get("message") or e.get("reason")) for e in self.events
                if e.get("event") != "progress"][-30:]

    def _exited_before(self, what: str) -> None:
        if self.proc.poll() is not None and not self._threads[0].is_alive():
            raise AssertionError(f"restream exited ({self.proc.returncode}) before {what}:\n"
                                 f"{self.stdout[-4000:]}\n{self.stderr[-2000:]}")

    def wait_event(self, match, what: str, timeout: float, count: int = 1) -> list[dict]:
        """The first ``count`` events ``match`` accepts (TimeoutError after ``timeout``; AssertionError if restream
        exits first)."""
        def find():
            found = [e for e in list(self.events) if match(e)]
            if len(found) >= count:
                return found
            self._exited_before(what)
            return None

        return wait_for(find, timeout, what=f"{what} (events so far: {self.summary()})")

    def wait_state(self, name: str, state: str, timeout: float, after: float = 0.0) -> dict:
        """The first ``state`` event of ``name`` stamped after ``after`` (wall clock)."""

        def find():
            found = next((e for e in self.states(name, state) if event_ts(e) > after), None)
            if found is None:
                self._exited_before(f"{name} was {state}")
            return found

        return wait_for(find, timeout, what=f"{name} {state} (states so far: "
                                            f"{[(e['state'], e['error']) for e in self.states(name)]})")

    def wait_live(self, names, timeout: float = 15.0) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        return {n: self.wait_state(n, "live", max(0.1, deadline - time.monotonic())) for n in names}

    def wait_stream_time(self, seconds: float, timeout: float = 15.0) -> dict:
        """The first progress event at ``seconds`` of stream time or more (needs ``--json``)."""
        def find():
            p = self.last_progress()
            if p and (p.get("time_s") or 0) >= seconds:
                return p
            self._exited_before(f"{seconds} s of stream")
            return None

        return wait_for(find, timeout, what=f"{seconds} s of stream")

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        assert not self.not_json, f"--json printed lines that are not JSON: {self.not_json}"
        if "--show-keys" not in self.args:
            from conftest import assert_no_canary

            assert_no_canary(self.stdout + self.stderr, f"the output of restream {' '.join(self.args[:3])}")
        return rc

    def kill(self) -> None:
        """Teardown: SIGKILL the ffmpeg processes it started (own sessions) and restream's process group, by PID."""
        for pid in [*descendants(self.proc.pid), *self.tee_ffmpegs()]:
            if cmdline(pid) is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)


class Go(Restream):
    """``python -m restream go ARGS``."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        super().__init__("go", args, env)


class Procs:
    """Everything a test starts (receivers, proxies, restream children), reaped by PID in teardown, last first."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.things: list = []

    def track(self, thing):
        """Reap ``thing`` (with a ``kill()`` or a ``stop()``) in teardown; returns it."""
        self.things.append(thing)
        return thing

    def receiver(self, name: str, key: str, port: int | None = None) -> Receiver:
        port = port or free_port()
        n = sum(1 for t in self.things if isinstance(t, Receiver) and t.out.stem.startswith(name))
        r = Receiver(port, self.tmp / f"{name}{'-' + str(n) if n else ''}.flv", key=key)
        self.things.append(r)
        return r.start()

    def proxy(self, target_port: int):
        from faultproxy import FaultProxy

        return self.track(FaultProxy(target_port)).start()

    def go(self, *args: str, env: dict[str, str] | None = None) -> Go:
        return self.track(Go(list(args), env))

    def close(self) -> None:
        for t in reversed(self.things):
            if hasattr(t, "kill"):
                t.kill()
            else:
                t.stop()


def receivers_done(*receivers: Receiver, timeout: float = 10.0) -> None:
    """A receiver's ffmpeg exits when its publisher goes away (the file is then complete)."""
    for r in receivers:
        try:
            r.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            r.stop()


DATA = Path(__file__).parent / "data"
CERT, CERT_KEY = DATA / "cert.pem", DATA / "key.pem"  # self-signed, valid for localhost and 127.0.0.1 only


class TlsFront:
    """A TLS terminator on a loopback address (the test certificate) in front of a plain TCP port, in threads.
    On 127.0.0.2 it shows a certificate valid for another name: the client must refuse it."""

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        import ssl

        self.target_port = target_port
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(CERT, CERT_KEY)
        self.sock = socket.create_server((host, free_port()))
        self.sock.settimeout(0.2)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.handshakes = 0  # completed TLS handshakes
        self.tls_errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> "TlsFront":
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        import ssl

        conn.settimeout(10)
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.tls_errors.append(str(exc))
            conn.close()
            return
        self.handshakes += 1
        tls.settimeout(None)
        try:
            up = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            tls.close()
            return
        up.settimeout(None)

        def pipe(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        t = threading.Thread(target=pipe, args=(up, tls), daemon=True)
        t.start()
        pipe(tls, up)
        t.join(10)
        tls.close()
        up.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
