"""`restream go` end to end: the real CLI as a child process, one real ffmpeg, ffmpeg ``-listen`` receivers on
loopback, faults injected by killing receivers or pausing a FaultProxy. The engine issue's "Must show" list.

Cheap on two cores: 320x180 at 15 fps, 300k video, 64k audio, short runs. Every process is reaped by PID in the
``procs`` fixture's teardown (restream, the ffmpeg it started, receivers, proxies).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import CANARY_KEY, assert_no_canary
from faultproxy import FaultProxy
from support import Receiver, descendants, free_port, make_clip, probe, wait_for

pytestmark = pytest.mark.e2e

CHEAP = ["--test-pattern", "--size", "320x180", "--fps", "15", "--video-bitrate", "300k", "--audio-bitrate", "64k"]
LIVE_TIMEOUT = 15.0  # from `go` starting to every receiver live (python start, ffmpeg -version checks, connect)


# -- harness -------------------------------------------------------------------------------------------------------

def _cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _ts(event: dict) -> float:
    return datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


class Go:
    """One ``python -m restream go …`` child. Reads stdout/stderr in threads (JSON lines parsed as they come) and
    samples its descendants' command lines every 50 ms (to see which ffmpeg processes ran, and with what argv)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "restream", "go", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, env={**os.environ, **(env or {})})
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
                argv = _cmdline(pid)  # re-read each time: between fork and exec a child shows python's argv
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
        """PIDs of the broadcasting ffmpeg processes seen (the one whose argv has ``-f tee``)."""
        return [pid for pid, argvs in self.children.items() if any(b"\0tee\0" in a for a in argvs)]

    def states(self, name: str) -> list[dict]:
        return [e for e in self.events if e.get("event") == "state" and e["destination"] == name]

    def state_now(self, name: str) -> str | None:
        s = self.states(name)
        return s[-1]["state"] if s else None

    def event(self, kind: str) -> dict | None:
        return next((e for e in self.events if e.get("event") == kind), None)

    def wait_state(self, name: str, state: str, timeout: float, after: float = 0.0) -> dict:
        """The first ``state`` event of ``name`` stamped after ``after`` (wall clock)."""

        def find():
            if self.proc.poll() is not None and not self._threads[0].is_alive():
                raise AssertionError(f"restream exited ({self.proc.returncode}) before {name} was {state}:\n"
                                     f"{self.stdout}\n{self.stderr}")
            return next((e for e in self.states(name) if e["state"] == state and _ts(e) > after), None)

        return wait_for(find, timeout, what=f"{name} {state} (states so far: "
                                            f"{[(e['state'], e['error']) for e in self.states(name)]})")

    def wait_live(self, names, timeout: float = LIVE_TIMEOUT) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        return {n: self.wait_state(n, "live", max(0.1, deadline - time.monotonic())) for n in names}

    def last_progress(self) -> dict | None:
        return next((e for e in reversed(self.events) if e.get("event") == "progress"), None)

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        assert not self.not_json, f"--json printed lines that are not JSON: {self.not_json}"
        return rc

    def kill(self) -> None:
        """Teardown: SIGKILL the ffmpeg it started (own session) and restream's process group, by PID."""
        for pid in [*descendants(self.proc.pid), *self.tee_ffmpegs()]:
            if _cmdline(pid) is not None:
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


class Procs:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.things: list = []

    def receiver(self, name: str, key: str, port: int | None = None) -> Receiver:
        port = port or free_port()
        n = sum(1 for t in self.things if isinstance(t, Receiver) and t.out.stem.startswith(name))
        r = Receiver(port, self.tmp / f"{name}{'-' + str(n) if n else ''}.flv", key=key)
        self.things.append(r)
        return r.start()

    def proxy(self, target_port: int) -> FaultProxy:
        p = FaultProxy(target_port)
        self.things.append(p)
        return p.start()

    def go(self, *args: str, env: dict[str, str] | None = None) -> Go:
        g = Go(list(args), env)
        self.things.append(g)
        return g

    def close(self) -> None:
        for t in reversed(self.things):
            if isinstance(t, Go):
                t.kill()
            elif isinstance(t, Receiver):
                t.kill()
            else:
                t.stop()


@pytest.fixture
def procs(tmp_path: Path):
    p = Procs(tmp_path)
    yield p
    p.close()


@pytest.fixture
def add(cli):
    """``add(name, url, key)``: ``restream add NAME --url URL --key-stdin`` with the key on stdin."""

    def do(name: str, url: str, key: str) -> None:
        code, out, err = cli("add", name, "--url", url, "--key-stdin", input=key + "\n")
        assert code == 0, err

    return do


def receivers_done(*receivers: Receiver, timeout: float = 10.0) -> None:
    """A receiver's ffmpeg exits when its publisher goes away (the file is then complete)."""
    for r in receivers:
        try:
            r.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            r.stop()


def assert_delivered(r: Receiver, duration: float | None = None, within: float = 1.0):
    m = probe(r.out)
    assert m.decodes, f"{r.out.name} does not decode: {m.errors}\n{r.log_text()[-1500:]}"
    assert m.first_packet_key, f"{r.out.name} does not start on a keyframe"
    assert (m.video_codec, m.audio_codec) == ("h264", "aac"), m
    if duration is not None:
        assert abs(m.duration - duration) <= within, f"{r.out.name}: {m.duration:.2f} s received, {duration:.2f} s expected"
    return m


# -- 1. five destinations ------------------------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_five_destinations_receive_a_compliant_stream(procs, add):
    recs = []
    for i in range(5):
        key = f"key-{i}-{'k' * 3 * i}"
        r = procs.receiver(f"d{i}", key)
        add(f"d{i}", r.url, key)
        recs.append(r)
    go = procs.go(*CHEAP, "--duration", "10s", "--json")
    assert go.wait(60) == 0, go.stderr
    receivers_done(*recs)

    assert [e["event"] for e in go.events][0] == "start" and go.events[-1]["event"] == "end"
    end = go.events[-1]
    assert end["exit_code"] == 0 and end["reason"] == "duration reached"
    assert {n: d["state"] for n, d in end["destinations"].items()} == {f"d{i}": "stopped" for i in range(5)}
    assert len(go.tee_ffmpegs()) == 1, "one ffmpeg for all five"
    for r in recs:
        m = assert_delivered(r, 10.0, within=1.0)
        assert m.pix_fmt == "yuv420p" and (m.audio_rate, m.audio_channels) == (48000, "stereo"), m
        gaps = [b - a for a, b in zip(m.keyframe_times, m.keyframe_times[1:])]
        assert len(gaps) >= 4 and all(abs(g - 2.0) <= 0.07 for g in gaps), f"{r.out.name} keyframe gaps {gaps}"
        assert r.stream_names() == [], "a receiver saw an unexpected stream name"


# -- 2. keys arrive byte-exact -------------------------------------------------------------------------------------

KEYS = {
    "fb": "FB-123?s_bl=1&s_psm=1&a=AbC",
    "special": "a|b[c]d:e=f\\g'h i?j&k",
    "short": "k",  # shorter than the placeholder "slot-N"
    "long": "L" * 90 + "?&=:|[]\\' with spaces",  # longer than the placeholder, under -listen's 127 bytes
}


@pytest.mark.timeout(60)
def test_keys_with_special_characters_arrive_exactly(procs, add):
    recs = {}
    for name, key in KEYS.items():
        recs[name] = procs.receiver(name, key)
        add(name, recs[name].url, key)
    # Control: a receiver expecting another name reports the exact name it got (so "no warning" above means
    # "exact match", not "the listener does not look"). The canary key: non-ASCII too.
    control = procs.receiver("control", "x")
    add("control", control.url, CANARY_KEY)
    go = procs.go(*CHEAP, "--duration", "3s", "--json")
    assert go.wait(45) == 0, go.stderr
    receivers_done(*recs.values(), control)
    for name, r in recs.items():
        assert r.stream_names() == [], f"{name}: the receiver saw a different stream name"
        assert_delivered(r)
    assert control.stream_names() == [CANARY_KEY]
    assert_delivered(control)


# -- 3. a receiver dies, comes back; one down at start comes up ----------------------------------------------------

@pytest.mark.timeout(90)
def test_receiver_killed_mid_stream_recovers_in_the_same_process(procs, add):
    a, b, c = (procs.receiver(n, f"key-{n}") for n in "abc")
    for n, r in zip("abc", (a, b, c)):
        add(n, r.url, f"key-{n}")
    d_port = free_port()
    add("d", f"rtmp://127.0.0.1:{d_port}/live", "key-d")  # no receiver yet: down at start
    go = procs.go(*CHEAP, "--duration", "18s", "--json", "--status-interval", "0.5")
    lives = go.wait_live("abc")
    start = go.event("start")
    assert go.state_now("d") in ("connecting", "retrying")

    d = procs.receiver("d", "key-d", port=d_port)
    d_listening = time.time()
    d_live = go.wait_state("d", "live", 6)
    assert _ts(d_live) - d_listening <= 3.0, f"d live {_ts(d_live) - d_listening:.2f} s after its receiver appeared"

    b.kill()
    killed = time.time()
    retrying = go.wait_state("b", "retrying", 8, after=killed)
    assert retrying["error"], "retrying carries the last error"
    assert _ts(retrying) - killed <= 6.0
    assert {n: go.state_now(n) for n in "acd"} == dict.fromkeys("acd", "live")

    b2 = procs.receiver("b", "key-b", port=b.port)
    b_listening = time.time()
    b_live = go.wait_state("b", "live", 6, after=killed)
    assert _ts(b_live) - b_listening <= 3.0, f"b live {_ts(b_live) - b_listening:.2f} s after its receiver returned"

    print(f"d live after {_ts(d_live) - d_listening:.2f} s; b retrying after {_ts(retrying) - killed:.2f} s "
          f"({retrying['error']}); b live again after {_ts(b_live) - b_listening:.2f} s")
    assert go.wait(30) == 0, go.stderr
    receivers_done(a, c, d, b2)
    end = go.events[-1]
    assert end["event"] == "end" and end["exit_code"] == 0
    assert end["destinations"]["b"]["reconnects"] == 1
    assert {n: end["destinations"][n]["reconnects"] for n in "acd"} == dict.fromkeys("acd", 0)
    # the others never left "live" while b was down (d, down at start, was retrying until its receiver came)
    for n in "ac":
        assert [e["state"] for e in go.states(n)] == ["connecting", "live", "stopped"], go.states(n)
    d_states = [e["state"] for e in go.states("d")]
    assert d_states[d_states.index("live"):] == ["live", "stopped"], d_states
    # one ffmpeg, the whole time: the one the start event names
    assert go.tee_ffmpegs() == [start["pid"]]
    # a and c received in real time: media received ≈ wall time they were live
    t_end = _ts(end)
    for n, r in (("a", a), ("c", c)):
        assert_delivered(r, t_end - _ts(lives[n]), within=1.5)
    assert_delivered(d)
    assert_delivered(b2)  # starts on a keyframe (restart_with_keyframe)


# -- 4. a receiver that stops reading ------------------------------------------------------------------------------

@pytest.mark.timeout(90)
def test_paused_receiver_does_not_slow_the_others(procs, add):
    a, b = procs.receiver("a", "key-a"), procs.receiver("b", "key-b")
    p_rec = procs.receiver("p", "key-p")
    proxy = procs.proxy(p_rec.port)
    add("a", a.url, "key-a")
    add("b", b.url, "key-b")
    add("p", f"rtmp://127.0.0.1:{proxy.port}/live", "key-p")
    go = procs.go(*CHEAP, "--duration", "20s", "--json", "--status-interval", "0.5")
    lives = go.wait_live("abp")
    wait_for(lambda: (go.last_progress() or {}).get("time_s", 0) and go.last_progress()["time_s"] >= 2, 10,
             what="2 s of stream")

    before = go.last_progress()
    proxy.pause()
    paused, frozen = time.monotonic(), proxy.bytes_forwarded
    time.sleep(6)  # the wall time of the fault is what is measured
    during = go.last_progress()
    pause_s = time.monotonic() - paused
    assert proxy.bytes_forwarded == frozen, "the proxy forwarded while paused"
    proxy.resume()
    resumed = time.time()

    # the encode went on in real time and a, b were sent their share meanwhile
    assert during["time_s"] - before["time_s"] >= pause_s - 1.0, (before, during)
    for n in "ab":
        sent = during["destinations"][n]["bytes_sent"] - before["destinations"][n]["bytes_sent"]
        assert sent >= 0.5 * pause_s * (300 + 64) * 1000 / 8, f"{n} sent only {sent} bytes during the pause"
    assert go.state_now("a") == go.state_now("b") == "live"

    # p: at this bitrate (~45 kB/s) 6 s of stall fit in the loopback socket buffers between relay and proxy, so p
    # stays live and loses nothing (seen here: up to 14 s absorbed). Were the stall to reach ffmpeg, its fifo would
    # drop for p and the slave would time out and reconnect: retrying, then live again. Either is accepted.
    p_states = [e["state"] for e in go.states("p")]
    print(f"pause {pause_s:.2f} s: stream advanced {during['time_s'] - before['time_s']:.2f} s; p states "
          f"{[(e['state'], e['error']) for e in go.states('p')]}; bytes during pause "
          f"{ {n: during['destinations'][n]['bytes_sent'] - before['destinations'][n]['bytes_sent'] for n in 'abp'} }")
    assert set(p_states) <= {"connecting", "live", "retrying"}, p_states
    if go.state_now("p") != "live":
        go.wait_state("p", "live", 8, after=resumed)

    assert go.wait(40) == 0, go.stderr
    receivers_done(a, b, p_rec)
    end = go.events[-1]
    assert end["exit_code"] == 0 and end["destinations"]["p"]["state"] == "stopped", end
    for n, r in (("a", a), ("b", b)):
        assert_delivered(r, _ts(end) - _ts(lives[n]), within=1.5)
    m = probe(p_rec.out)
    print(f"p received {m.duration:.2f} s; a/b wall {_ts(end) - _ts(lives['a']):.2f} s; p states "
          f"{[(e['state'], e['error']) for e in go.states('p')]}")
    assert m.decodes and m.duration >= 8, m  # what came before and after the pause


# -- 5. errors -----------------------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_six_selected_is_a_usage_error(procs, add):
    for i in range(6):
        add(f"d{i}", f"rtmp://127.0.0.1:{free_port()}/live", f"key-{i}")
    go = procs.go(*CHEAP, "--plain")
    assert go.wait(30) == 2
    assert "6 destinations" in go.stderr and "--only" in go.stderr and "--skip" in go.stderr, go.stderr
    assert go.tee_ffmpegs() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["missing", "unreadable"])
def test_bad_input_file_fails_before_connecting(procs, add, tmp_path, what):
    r = procs.receiver("r", "key-r")
    proxy = procs.proxy(r.port)  # counts every connection attempt
    add("r", f"rtmp://127.0.0.1:{proxy.port}/live", "key-r")
    path = tmp_path / "no-such.mp4"
    if what == "unreadable":
        path = tmp_path / "garbage.mp4"
        path.write_bytes(b"this is not a media file\n" * 100)
    go = procs.go(str(path), "--json")
    assert go.wait(30) == 2, go.stderr
    assert str(path) in go.stderr, go.stderr
    assert go.events == [] and go.tee_ffmpegs() == []
    assert (proxy.accepted, proxy.refused) == (0, 0) and not r.connected()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["option", "env"])
def test_missing_ffmpeg_exits_4(procs, add, how):
    add("r", f"rtmp://127.0.0.1:{free_port()}/live", "key-r")
    if how == "option":
        go = procs.go(*CHEAP, "--plain", "--ffmpeg", "/nonexistent/ffmpeg")
    else:
        go = procs.go(*CHEAP, "--plain", env={"RESTREAM_FFMPEG": "/nonexistent/ffmpeg"})
    assert go.wait(30) == 4
    assert "/nonexistent/ffmpeg" in go.stderr, go.stderr


@pytest.mark.timeout(60)
def test_unset_key_variable_is_named(procs, cli, monkeypatch):
    var = "RESTREAM_TEST_UNSET_KEY"
    monkeypatch.delenv(var, raising=False)
    code, _, err = cli("add", "envy", "--url", f"rtmp://127.0.0.1:{free_port()}/live", "--key-env", var)
    assert code == 0, err
    go = procs.go(*CHEAP, "--plain")
    assert go.wait(30) == 2
    assert var in go.stderr and "envy" in go.stderr, go.stderr
    assert go.tee_ffmpegs() == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_cleanly(procs, add, sig, code):
    recs = [procs.receiver(n, f"key-{n}") for n in "ab"]
    for n, r in zip("ab", recs):
        add(n, r.url, f"key-{n}")
    go = procs.go(*CHEAP, "--json", "--status-interval", "0.5")
    go.wait_live("ab")
    wait_for(lambda: (go.last_progress() or {}).get("time_s") and go.last_progress()["time_s"] >= 3, 10,
             what="3 s of stream")
    go.proc.send_signal(sig)
    assert go.wait(20) == code, go.stderr
    receivers_done(*recs)
    end = go.events[-1]
    assert end["event"] == "end" and end["exit_code"] == code
    assert end["reason"] == {130: "interrupted", 143: "terminated"}[code]
    for r in recs:  # complete: decodes to the end, and holds what was sent
        assert_delivered(r, end["time_s"], within=1.0)


# -- 6. the canary key ---------------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_canary_key_never_printed(procs, add, tmp_path):
    canary = procs.receiver("canary", CANARY_KEY)
    other = procs.receiver("other", "other-key-1234567890")
    add("canary", canary.url, CANARY_KEY)
    add("other", other.url, "other-key-1234567890")

    dry = procs.go(*CHEAP, "--dry-run")
    assert dry.wait(30) == 0, dry.stderr
    assert "-f tee" in dry.stdout
    assert_no_canary(dry.stdout + dry.stderr, "the dry run's output")
    shown = procs.go(*CHEAP, "--dry-run", "--show-keys")
    assert shown.wait(30) == 0
    assert CANARY_KEY in shown.stdout and "other-key-1234567890" in shown.stdout

    log = tmp_path / "go.log"
    go = procs.go(*CHEAP, "--duration", "4s", "--plain", "--log-file", str(log))
    assert go.wait(45) == 0, go.stderr
    receivers_done(canary, other)
    assert_no_canary(go.stdout + go.stderr, "restream's output")
    assert_no_canary(log.read_text(encoding="utf-8"), "the log file")
    assert "canary: live" in go.stdout
    # no key in any child's command line (ffmpeg publishes placeholders to the relay)
    assert go.tee_ffmpegs(), "the broadcasting ffmpeg was not seen"
    for pid, argvs in go.children.items():
        for argv in argvs:
            text = argv.decode("utf-8", "replace")
            assert "CANARY-k3y" not in text and "other-key" not in text, f"a key in the argv of child {pid}"
    assert canary.stream_names() == [] and probe(canary.out).decodes  # and yet it arrived exactly


# -- 7. recording --------------------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_record_alongside_destinations(procs, add, tmp_path):
    recs = [procs.receiver(n, f"key-{n}") for n in "ab"]
    for n, r in zip("ab", recs):
        add(n, r.url, f"key-{n}")
    rec = tmp_path / "my 'show' rec.mkv"
    go = procs.go(*CHEAP, "--duration", "5s", "--json", "--record", str(rec))
    assert go.wait(45) == 0, go.stderr
    receivers_done(*recs)
    assert go.events[-1]["exit_code"] == 0
    m = probe(rec)
    assert m.decodes and abs(m.duration - 5) <= 1.0, m
    assert (m.video_codec, m.audio_codec, m.first_packet_key) == ("h264", "aac", True), m
    for r in recs:
        assert_delivered(r, 5, within=1.0)


# -- 8. --copy from a file -----------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ext", [
    ".flv", ".mp4", ".ts",
])
def test_copy_from_a_file(procs, add, tmp_path, ext):
    clip = make_clip(tmp_path / f"clip{ext}", seconds=3)
    r = procs.receiver("r", "key-r")
    add("r", r.url, "key-r")
    go = procs.go(str(clip), "--copy", "--json")
    rc = go.wait(45)
    receivers_done(r)
    assert rc == 0, [e for e in go.events if e["event"] == "log"]
    assert_delivered(r, 3.0, within=1.0)
