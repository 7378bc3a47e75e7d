"""`restream go --json`, `--plain`, `--quiet` and `--log-file` end to end: the real CLI as a child process (for
--json, in a real shell pipeline into a `python -c` consumer), real ffmpeg receivers on loopback.

The schema checked here is the one documented in docs/json-events.md. Cheap on two cores: 320x180 at 15 fps.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import CANARY_KEY, assert_no_canary
from support import Receiver, bound, descendants, event_ts, free_port, near, probe, receivers_done, timing, wait_for

pytestmark = pytest.mark.e2e

CHEAP = ["--test-pattern", "--size", "320x180", "--fps", "15", "--video-bitrate", "300k", "--audio-bitrate", "64k"]
PROGRESS_KEYS = {"event", "ts", "time_s", "fps", "bitrate_kbps", "speed", "frames", "dropped", "duplicated",
                 "bytes_out", "elapsed_s", "duration_s", "live", "destinations"}
PLAIN_TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


_ts = event_ts


class Procs:
    """Receivers and restream children, killed by PID at teardown (with whatever they started)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.receivers: list[Receiver] = []
        self.children: list[subprocess.Popen] = []
        self.pids: set[int] = set()

    def receiver(self, name: str, key: str, port: int | None = None) -> Receiver:
        r = Receiver(port or free_port(), self.tmp / f"{name}.flv", key=key)
        self.receivers.append(r)
        return r.start()

    def spawn(self, argv: list[str], **kw) -> subprocess.Popen:
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        self.children.append(p)
        return p

    def watch(self, p: subprocess.Popen) -> None:
        self.pids.update(descendants(p.pid))

    def close(self) -> None:
        for p in self.children:
            self.pids.update(descendants(p.pid))
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.children:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.wait(10)
        for r in self.receivers:
            r.kill()


@pytest.fixture
def procs(tmp_path: Path):
    p = Procs(tmp_path)
    yield p
    p.close()


def go(procs: Procs, *args: str) -> subprocess.CompletedProcess:
    """``restream go ARGS`` to completion (stdout and stderr captured as text)."""
    p = procs.spawn([sys.executable, "-m", "restream", "go", *args], stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    out, err = p.communicate(timeout=60)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


# -- --json ---------------------------------------------------------------------------------------------------------

@timing
@pytest.mark.timeout(90)
def test_json_lines_through_a_pipe_match_what_the_receivers_saw(procs, add, tmp_path):
    a = procs.receiver("a", CANARY_KEY)  # the canary key is a real destination's key: it must never be printed
    add("a", a.url, CANARY_KEY)
    b_port = free_port()
    add("b", f"rtmp://127.0.0.1:{b_port}/live", "key-b")  # its receiver comes later

    tee, err, rcs = tmp_path / "events.jsonl", tmp_path / "stderr.txt", tmp_path / "rcs.txt"
    go_cmd = shlex.join([sys.executable, "-m", "restream", "go", *CHEAP, "--json", "--status-interval", "1",
                         "--duration", "6s"])
    consumer = shlex.join([sys.executable, "-c", "import sys,json; [json.loads(l) for l in sys.stdin]"])
    script = (f"{go_cmd} 2>{shlex.quote(str(err))} | tee {shlex.quote(str(tee))} | {consumer}; "
              f"echo \"${{PIPESTATUS[*]}}\" > {shlex.quote(str(rcs))}")
    shell = procs.spawn(["bash", "-c", script], stdin=subprocess.DEVNULL)

    def events() -> list[dict]:
        text = tee.read_text(encoding="utf-8") if tee.exists() else ""
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def state_of(name: str, state: str):
        return next((e for e in events() if e["event"] == "state" and e["destination"] == name
                     and e["state"] == state), None)

    a_live = wait_for(lambda: (procs.watch(shell), state_of("a", "live"))[1], 20, what="a live")
    b = procs.receiver("b", "key-b", port=b_port)
    b_listening = time.time()
    shell.wait(60)
    receivers_done(a, b)

    assert rcs.read_text().split() == ["0", "0", "0"], (rcs.read_text(), err.read_text())
    stdout = tee.read_text(encoding="utf-8")
    assert stdout.endswith("\n")
    lines = stdout.splitlines()
    evs = [json.loads(line) for line in lines]  # every line is one JSON object, nothing else
    assert all(isinstance(e, dict) and isinstance(e.get("event"), str) for e in evs)
    assert_no_canary(stdout, "--json stdout")
    assert_no_canary(err.read_text(encoding="utf-8"), "--json stderr")
    assert "CANARY" not in stdout and "key-b" not in stdout

    # start: first line, destinations by name and URL (no key)
    start = evs[0]
    assert start["event"] == "start"
    assert {"ts", "profile", "input", "ffmpeg", "destinations"} <= set(start)
    assert start["profile"] == "default"
    assert start["destinations"] == [{"name": "a", "url": a.url, "host": f"127.0.0.1:{a.port}"},
                                     {"name": "b", "url": f"rtmp://127.0.0.1:{b_port}/live",
                                      "host": f"127.0.0.1:{b_port}"}]
    assert all(set(d) >= {"name", "url"} and "key" not in d for d in start["destinations"])

    # state: what each receiver saw
    states = {n: [e for e in evs if e["event"] == "state" and e["destination"] == n] for n in "ab"}
    for e in states["a"] + states["b"]:
        assert {"ts", "destination", "state", "error"} <= set(e)
    assert [e["state"] for e in states["a"]] == ["connecting", "live", "stopped"], states["a"]
    b_seq = [e["state"] for e in states["b"]]
    assert b_seq[0] == "connecting" and b_seq[-2:] == ["live", "stopped"], b_seq
    assert set(b_seq[:-2]) <= {"connecting", "retrying"} and "retrying" in b_seq, b_seq
    assert all(e["error"] for e in states["b"] if e["state"] == "retrying"), "retrying carries its error"
    b_live = state_of("b", "live")
    assert _ts(a_live) < b_listening <= _ts(b_live), "b went live only once its receiver was there"
    assert a.connected() and b.connected()

    # progress: one per interval, the documented keys, moving forward
    progress = [e for e in evs if e["event"] == "progress"]
    assert 3 <= len(progress) <= 8, len(progress)
    for e in progress:
        assert PROGRESS_KEYS <= set(e), set(e) ^ PROGRESS_KEYS
        assert set(e["destinations"]) == {"a", "b"}
    assert [e["time_s"] for e in progress if e["time_s"] is not None] == sorted(
        e["time_s"] for e in progress if e["time_s"] is not None)
    assert progress[-1]["frames"] > 0 and progress[-1]["fps"] > 0 and progress[-1]["live"] == 2

    # end: last line; per destination state, reconnects, uptime matching the media each receiver got
    end = evs[-1]
    assert end["event"] == "end" and [e["event"] for e in evs].count("end") == 1
    assert end["exit_code"] == 0 and end["reason"] == "duration reached"
    near(end["time_s"], 6.0, 0.5, "stream time at the end of a 6 s broadcast")
    # wall time from ffmpeg's start: the 6 s asked plus the encoder's start-up (~1.3 s seen on 2 busy cores)
    bound(abs(end["duration_s"] - 6.0 - 1.0), 1.0, "the end event's duration_s vs 6 s asked + 1 s start-up")
    assert {n: (d["state"], d["reconnects"]) for n, d in end["destinations"].items()} == {
        "a": ("stopped", 0), "b": ("stopped", 0)}
    up = {n: d["uptime_s"] for n, d in end["destinations"].items()}
    assert up["a"] > up["b"] > 0, up
    # what the receivers got: a, live from the start, the whole stream; b, no more than its time live and no less
    # than the stream time after it went live, minus one GOP (2 s: a late joiner starts on the next keyframe).
    # (uptime is wall time: it can exceed the stream time while the encoder runs slower than real time at start.)
    got = {n: probe(r.out) for n, r in (("a", a), ("b", b))}
    for n, m in got.items():
        assert m.decodes and m.first_packet_key, m.errors
        assert m.duration <= up[n] + 0.5, f"{n}: received {m.duration:.2f} s, live only {up[n]:.2f} s"
    near(got["a"].duration, end["time_s"], 0.7, "a: media received vs stream time")
    b_late = _ts(b_live) - _ts(a_live)
    assert end["time_s"] - b_late - 2.5 <= got["b"].duration < got["a"].duration, (got["b"].duration, b_late)


# -- --plain and --log-file -----------------------------------------------------------------------------------------

@timing
@pytest.mark.timeout(60)
def test_plain_lines_and_log_file(procs, add, tmp_path):
    a = procs.receiver("a", CANARY_KEY)
    b = procs.receiver("b", "key-b")
    add("a", a.url, CANARY_KEY)
    add("b", b.url, "key-b")
    log = tmp_path / "logs" / "go.log"
    log.parent.mkdir()
    res = go(procs, *CHEAP, "--plain", "--status-interval", "1", "--duration", "5s", "--log-file", str(log))
    receivers_done(a, b)
    assert res.returncode == 0, res.stderr
    assert_no_canary(res.stdout + res.stderr, "--plain output")

    lines = res.stdout.splitlines()
    assert lines and all(re.match(PLAIN_TS + " ", line) for line in lines), res.stdout
    texts = [line.split(" ", 1)[1] for line in lines]
    assert texts[0].startswith("start: profile default, input test pattern")
    for n in "ab":  # one line per state change, no repeats
        assert [t for t in texts if t.startswith(f"{n}: ")] == [f"{n}: connecting", f"{n}: live", f"{n}: stopped"]
    progress = [t for t in texts if t.startswith("progress: ")]
    assert 3 <= len(progress) <= 7, progress
    assert all(re.fullmatch(r"progress: \d\d:\d\d:\d\d stream, [\d.-]+ fps, [\d-]+ kbit/s, [\d.-]+x, \d/2 live"
                            r"(, \d+ dropped)?", t) for t in progress), progress
    assert [t.split(":")[0] for t in texts[-3:]] == ["summary a", "summary b", "end"], texts[-3:]
    assert texts[-1].startswith("end: duration reached, exit 0")

    # the log file: created 0600, state changes and ffmpeg's own lines, millisecond timestamps, no key
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text(encoding="utf-8")
    assert_no_canary(text, "the log file")
    log_lines = text.splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", line) for line in log_lines), text
    for n in "ab":
        for state in ("connecting", "live", "stopped"):
            assert re.search(rf"Z {n}: {state}$", text, re.M), f"{n}: {state} missing from the log"
    assert re.search(r"Z info: .*Stream mapping", text) or re.search(r"Z info: .*Output #0, tee", text), text
    assert "progress: " in text and "end: duration reached, exit 0" in text


@timing
@pytest.mark.timeout(60)
def test_quiet_prints_only_problems_and_the_summary(procs, add, tmp_path):
    a = procs.receiver("a", CANARY_KEY)
    add("a", a.url, CANARY_KEY)
    add("down", f"rtmp://127.0.0.1:{free_port()}/live", "key-down")  # nobody listens: retrying, then failed
    res = go(procs, *CHEAP, "--quiet", "--status-interval", "1", "--duration", "4s")
    receivers_done(a)
    assert res.returncode == 1, res.stderr  # one destination did not deliver
    assert_no_canary(res.stdout + res.stderr, "--quiet output")
    texts = [line.split(" ", 1)[1] for line in res.stdout.splitlines()]
    assert all(re.match(PLAIN_TS + " ", line) for line in res.stdout.splitlines()), res.stdout
    summary_at = next(i for i, t in enumerate(texts) if t.startswith("summary "))
    before, after = texts[:summary_at], texts[summary_at:]
    assert before, "the failing destination was reported"
    for t in before:
        assert re.match(r"(down: (retrying|failed) \(.+\)|(warning|error|fatal): )", t), t
    assert any(t.startswith("down: retrying (") for t in before), before
    assert [t.split(":")[0] for t in after] == ["summary a", "summary down", "end"], after
    assert after[1].startswith("summary down: failed") and after[-1].startswith("end: duration reached, exit 1")
    assert not any(t.startswith(("start:", "progress:", "a: ")) for t in texts), texts
