"""Changing destinations while live, through the real CLI (issue 8's "Must show").

A ``python -m restream go --json`` child broadcasts a tiny test pattern; other ``python -m restream`` children
(``add``, ``disable``, ``edit``, ``enable``, ``status``) change its profile or read its status meanwhile, as a user in
another terminal would. Receivers are ``ffmpeg -listen`` processes (support.Receiver) or, where the exact bytes on the
wire matter (keys over ffmpeg's 127-byte stream name limit), a minimal RTMP server in this file that records every
command the relay sent it, decoded with ``restream.rtmp``.

Cheap on two cores: 320x180 at 15 fps, 300k video, 64k audio. Every process is killed by PID in teardown.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

import support
from conftest import CANARY_KEY, assert_no_canary
from restream import rtmp
from restream.plan import tee_escape
from support import (FFMPEG, Receiver, bound, cmdline, descendants, event_ts, free_port, near, probe,
                     timing, wait_for)

pytestmark = pytest.mark.e2e

CHEAP = ["--test-pattern", "--size", "320x180", "--fps", "15", "--video-bitrate", "300k", "--audio-bitrate", "64k",
         "--status-interval", "0.5"]  # frequent progress events: they map stream time to wall time
LIVE_TIMEOUT = 15.0   # from `go` starting to every receiver live
APPLY_LIMIT = 1.5     # the README: a live change shows within about a second of its command returning
GAP_LIMIT = 0.15      # the README: no gap over a frame (67 ms at 15 fps; audio packets are 21 ms) + noise
GOP_S = 2.0           # a destination's media starts on a keyframe: at most one GOP after it went live
SPECIAL_KEY = "sp ace?a=1&b=2:c|d[e]f\\g'h end"


# -- harness -------------------------------------------------------------------------------------------------------

_ts = event_ts


def restream(*args: str, input: str | None = None, timeout: float = 30) -> tuple[int, str, str, float]:
    """Run ``python -m restream ARGS`` to completion; (exit code, stdout, stderr, wall time when it returned)."""
    proc = subprocess.run([sys.executable, "-m", "restream", *args], input=input, capture_output=True, text=True,
                          encoding="utf-8", timeout=timeout)
    returned = time.time()
    if "--show-keys" not in args:
        assert_no_canary(proc.stdout + proc.stderr, f"the output of restream {' '.join(args[:2])}")
    return proc.returncode, proc.stdout, proc.stderr, returned


def add(name: str, url: str, key: str, *extra: str) -> float:
    code, _, err, returned = restream("add", name, "--url", url, "--key-stdin", *extra, input=key + "\n")
    assert code == 0, err
    return returned


class Go(support.Go):
    """``python -m restream go … --json`` (support.Go), and the end event."""

    def __init__(self, *args: str) -> None:
        super().__init__([*args, "--json"])

    @property
    def end(self) -> dict:
        assert self.events and self.events[-1]["event"] == "end", self.events[-3:]
        return self.events[-1]


class FakeRtmpServer:
    """A minimal RTMP server on loopback in its own thread: handshake, answers connect/createStream/publish,
    records every client->server command (decoded with restream.rtmp's ChunkParser and AMF0 decoder)."""

    def __init__(self, app: str = "live") -> None:
        self.app = app
        self.port = free_port()
        self.commands: list[list] = []
        self.media_bytes = 0
        self.published = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    @property
    def url(self) -> str:
        return f"rtmp://127.0.0.1:{self.port}/{self.app}"

    def start(self) -> "FakeRtmpServer":
        self._thread.start()
        assert self._ready.wait(10), "fake RTMP server did not start"
        return self

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            c0c1 = await r.readexactly(1 + rtmp.HANDSHAKE_SIZE)
            w.write(b"\x03" + bytes(rtmp.HANDSHAKE_SIZE) + c0c1[1:])  # S0, S1 (version 0: no digest), S2
            await r.readexactly(rtmp.HANDSHAKE_SIZE)
            parser, out = rtmp.ChunkParser(), rtmp.ChunkWriter()
            while data := await r.read(65536):
                for m in parser.feed(data):
                    if m.type_id in (rtmp.AUDIO, rtmp.VIDEO):
                        self.media_bytes += len(m.payload)
                    name = rtmp.command_name(m)
                    if name is None:
                        continue
                    values = rtmp.command_values(m)
                    self.commands.append(values)
                    if name == "connect":
                        w.write(out.write(rtmp.set_chunk_size_message(4096)))
                        w.write(out.write(rtmp.command_message(
                            ["_result", values[1], {"fmsVer": "FMS/3,0,1,123"},
                             {"level": "status", "code": "NetConnection.Connect.Success"}])))
                    elif name == "createStream":
                        w.write(out.write(rtmp.command_message(["_result", values[1], None, 1.0])))
                    elif name == "publish":
                        w.write(out.write(rtmp.command_message(
                            ["onStatus", 0.0, None, {"level": "status", "code": "NetStream.Publish.Start",
                                                     "description": "publishing"}], csid=5, stream_id=1)))
                        self.published.set()
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError, rtmp.RtmpError):
            pass
        finally:
            w.close()

    def named(self, command: str) -> list[list]:
        return [v for v in self.commands if v and v[0] == command]

    def stop(self) -> None:
        def shut():
            self._server.close()
            self._loop.stop()

        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(shut)
            self._thread.join(5)


class Procs(support.Procs):
    """Everything a test starts, reaped by PID in teardown."""

    def fake(self, app: str = "live") -> FakeRtmpServer:
        return self.track(FakeRtmpServer(app)).start()

    def go(self, *args: str) -> Go:
        return self.track(Go(*args))


@pytest.fixture
def procs(tmp_path: Path):
    p = Procs(tmp_path)
    yield p
    p.close()


def receiver_done(r: Receiver, timeout: float = 10.0) -> int | None:
    """A ``-listen`` receiver exits when its publisher goes away (its file is then complete)."""
    try:
        return r.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        r.stop()
        return None


def packet_times(path: Path) -> dict[int, list[float]]:
    """Every packet's timestamp (seconds), per stream index, read with ffmpeg's framecrc muxer."""
    crc = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-map", "0",
                          "-c", "copy", "-f", "framecrc", "-"], capture_output=True, text=True, timeout=60).stdout
    tbs: dict[int, float] = {}
    times: dict[int, list[float]] = {}
    for line in crc.splitlines():
        if line.startswith("#tb "):
            idx, frac = line[4:].split(":", 1)
            num, den = frac.strip().split("/")
            tbs[int(idx)] = int(num) / int(den)
            continue
        if line.startswith("#") or not line.strip():
            continue
        cols = [c.strip() for c in line.split(",")]
        idx = int(cols[0])
        times.setdefault(idx, []).append(int(cols[1]) * tbs.get(idx, 1 / 1000))  # dts
    return {i: sorted(t) for i, t in times.items()}


def largest_gap(path: Path) -> float:
    """The longest hole between consecutive packets of any stream."""
    per_stream = packet_times(path)
    assert len(per_stream) == 2, f"{path.name}: expected video and audio packets, got streams {list(per_stream)}"
    return max(max((b - a for a, b in zip(t, t[1:])), default=99.0) for t in per_stream.values())


def assert_received(r: Receiver, seconds: float | None, within: float = 1.0, gapless: bool = True):
    m = probe(r.out)
    assert m.decodes, f"{r.out.name} does not decode: {m.errors}\n{r.log_text()[-1500:]}"
    assert m.first_packet_key, f"{r.out.name} does not start on a keyframe"
    assert (m.video_codec, m.audio_codec) == ("h264", "aac"), m
    if seconds is not None:
        near(m.duration, seconds, within, f"{r.out.name}: media received")
    gap = largest_gap(r.out)
    if gapless:
        bound(gap, GAP_LIMIT, f"{r.out.name}: the largest hole in its packet timestamps")
    return m, gap


def first_media_wall(go: Go, r: Receiver, timeout: float = 10.0) -> float:
    """Wall-clock time the broadcast encoded the first packet ``r`` received: the receiver logs the stream time of
    its first packet (``start: X``) once it has probed the stream; progress events map stream time to wall time."""
    text = wait_for(lambda: re.search(r"Duration: [^\n]*?, start: ([\d.]+)", r.log_text()), timeout,
                    what=f"{r.out.name} to receive media")
    x = float(text.group(1))
    marks = [(e["time_s"], _ts(e)) for e in go.events if e.get("event") == "progress" and e.get("time_s")]
    assert marks, "no progress events to map stream time to wall time"
    t, wall = min(marks, key=lambda m: abs(m[0] - x))
    return wall + (x - t)


def report(text: str) -> None:
    """Measured figures, shown with ``pytest -s`` (or in the summary of a failing test)."""
    print(f"[live-changes] {text}")


# -- 1. add a fourth while three are live --------------------------------------------------------------------------

@timing
@pytest.mark.timeout(120)
def test_add_while_live_reaches_new_receiver_and_others_lose_nothing(procs):
    keys = {f"d{i}": f"key-{i}-{'x' * 7 * i}" for i in range(1, 5)}
    recs = {n: procs.receiver(n, k) for n, k in keys.items()}
    for n in ("d1", "d2", "d3"):
        add(n, recs[n].url, keys[n])
    go = procs.go(*CHEAP, "--duration", "14s")
    go.wait_live(["d1", "d2", "d3"])
    go.wait_stream_time(3)

    added_at = add("d4", recs["d4"].url, keys["d4"])
    added = go.wait_state("d4", "added", APPLY_LIMIT + 5, after=added_at - 5)
    live = go.wait_state("d4", "live", APPLY_LIMIT + 5, after=added_at - 5)
    to_live = _ts(live) - added_at
    report(f"add -> d4 live: {to_live:.2f} s after `restream add` returned "
           f"(added event {_ts(added) - added_at:+.2f} s)")
    bound(to_live, APPLY_LIMIT, "d4 live after the add command returned")
    assert (added["url"], added["host"], added["error"]) == (recs["d4"].url, f"127.0.0.1:{recs['d4'].port}", None)
    first = first_media_wall(go, recs["d4"])
    report(f"add -> d4 first media encoded {first - added_at:.2f} s after `restream add` returned")
    bound(first - _ts(live), GOP_S + 0.25, "d4's first media (a keyframe) after it went live")

    assert go.wait(60) == 0, go.stderr
    end = go.end
    assert end["exit_code"] == 0 and end["reason"] == "duration reached", end
    assert {n: d["state"] for n, d in end["destinations"].items()} == {n: "stopped" for n in keys}
    for r in recs.values():
        assert receiver_done(r) == 0, f"{r.out.name}: receiver did not end cleanly\n{r.log_text()[-800:]}"
    sent = end["time_s"]
    gaps = {}
    for n in ("d1", "d2", "d3"):  # no gap: the whole broadcast arrived, with no hole anywhere
        m, gaps[n] = assert_received(recs[n], sent, within=1.0)
        near(m.duration, 14.0, 1.0, f"{n}: media received of a 14 s broadcast")
        assert recs[n].stream_names() == []
    m4, gaps["d4"] = assert_received(recs["d4"], None)  # decodes and starts on a keyframe
    since_live = _ts(end) - _ts(live)
    near(m4.duration, since_live - GOP_S / 2, GOP_S / 2 + 0.5, "d4: media received vs its time live")
    assert recs["d4"].stream_names() == []
    report(f"add: largest packet gaps {', '.join(f'{n} {g:.3f} s' for n, g in gaps.items())}; "
           f"d4 received {m4.duration:.2f} s of {since_live:.2f} s live")


# -- 2. disable one, re-point another ------------------------------------------------------------------------------

@timing
@pytest.mark.timeout(120)
def test_disable_ends_its_receiver_and_edit_moves_a_destination(procs):
    keys = {"d1": "key-one", "d2": "key-two", "d3": "key-three"}
    recs = {n: procs.receiver(n, k) for n, k in keys.items()}
    moved = procs.receiver("d3-new", keys["d3"])
    for n, k in keys.items():
        add(n, recs[n].url, k)
    go = procs.go(*CHEAP, "--duration", "14s")
    go.wait_live(keys)
    go.wait_stream_time(2)

    code, out, err, disabled_at = restream("disable", "d2")
    assert code == 0, err
    removed = go.wait_state("d2", "removed", APPLY_LIMIT + 5, after=disabled_at - 5)
    bound(_ts(removed) - disabled_at, APPLY_LIMIT, "d2 removed after the disable command returned")
    rc = receiver_done(recs["d2"], timeout=APPLY_LIMIT + 5)
    ended_after = time.time() - disabled_at
    report(f"disable -> removed event {_ts(removed) - disabled_at:+.2f} s, d2's receiver exited {rc} within "
           f"{ended_after:.2f} s")
    assert rc == 0, f"d2's receiver did not end cleanly (exit {rc}):\n{recs['d2'].log_text()[-1000:]}"
    bound(ended_after, APPLY_LIMIT, "d2's receiver ended after the disable command returned")
    m2, _ = assert_received(recs["d2"], None)
    d2_live = _ts(go.wait_state("d2", "live", 0.1))
    report(f"disable: d2 recorded {m2.duration:.2f} s of {_ts(removed) - d2_live:.2f} s live before removal")

    code, out, err, edited_at = restream("edit", "d3", "--url", moved.url)
    assert code == 0, err
    go.wait_state("d3", "removed", APPLY_LIMIT + 5, after=edited_at - 5)
    again = go.wait_state("d3", "added", APPLY_LIMIT + 5, after=edited_at - 5)
    assert again["url"] == moved.url
    live = go.wait_state("d3", "live", APPLY_LIMIT + 5, after=_ts(again) - 0.001)
    first = first_media_wall(go, moved)
    report(f"edit --url -> d3 live at its new receiver {_ts(live) - edited_at:.2f} s, media from "
           f"{first - edited_at:.2f} s after `restream edit` returned")
    bound(_ts(live) - edited_at, APPLY_LIMIT, "d3 live at its new receiver after the edit command returned")
    bound(first - _ts(live), GOP_S + 0.25, "d3's first media (a keyframe) at its new receiver after it went live")
    assert receiver_done(recs["d3"], timeout=APPLY_LIMIT + 5) is not None, "d3's old receiver still runs"

    assert go.wait(60) == 0, go.stderr
    end = go.end
    assert end["exit_code"] == 0, end
    assert end["destinations"]["d2"]["state"] == "removed", end
    assert end["destinations"]["d1"]["state"] == end["destinations"]["d3"]["state"] == "stopped", end
    assert receiver_done(recs["d1"]) == 0 and receiver_done(moved) == 0
    _, gap1 = assert_received(recs["d1"], end["time_s"], within=1.0)  # unaffected
    assert_received(recs["d3"], None)  # the old one: a complete file up to the move
    m_new, _ = assert_received(moved, None)
    assert m_new.duration >= _ts(end) - _ts(live) - 2.5, m_new
    assert moved.stream_names() == [] and recs["d1"].stream_names() == []
    report(f"disable/edit: d1 largest packet gap {gap1:.3f} s")


# -- 3, 5, 6. five live: a sixth refused, no key in any command line, status from another process ------------------

@timing
@pytest.mark.timeout(120)
def test_five_live_sixth_refused_no_key_in_cmdlines_and_status(procs, profile_path):
    keys = {"canary": CANARY_KEY, "short": "Q7z", "long": "L0ng-" + "k" * 295, "special": SPECIAL_KEY,
            "plain": "plain-key-0123456789"}
    recs = {}
    for n, k in keys.items():
        # ffmpeg -listen cannot take names over 127 bytes: the long key goes to a fake server
        recs[n] = procs.fake() if len(k) > 120 else procs.receiver(n, k)
        add(n, recs[n].url, k)
    spare = procs.receiver("spare", "spare-key")
    add("spare", spare.url, "spare-key", "--disabled")

    code, out, err, _ = restream("status")
    assert code == 1 and "no broadcast" in out, (code, out, err)
    code, out, err, _ = restream("status", "--json")
    assert code == 1 and json.loads(out) == {"profile": "default", "running": False}

    go = procs.go(*CHEAP, "--duration", "12s")
    go.wait_live(keys)

    # 5. no key in any command line of restream or anything it started, in any spelling: raw, URL-encoded, and
    # escaped for ffmpeg's tee spec (backslashes: compared with every backslash removed from both sides)
    def bare(text: str) -> str:
        return text.replace("\\", "")

    spellings = {bare(s) for k in keys.values() for s in (k, quote(k, safe=""), quote(k), quote_plus(k), k[:12])}
    assert bare(CANARY_KEY) in bare(tee_escape(tee_escape(CANARY_KEY))), "control: an escaped key would be seen"
    pids = [go.proc.pid, *descendants(go.proc.pid)]
    seen = {pid: cmdline(pid) for pid in pids}
    seen = {pid: argv for pid, argv in seen.items() if argv}
    tee = [bare(argv.decode("utf-8", "replace")) for argv in seen.values() if b"\0tee\0" in argv]
    assert len(tee) == 1 and go.event("start")["pid"] in seen, f"the broadcasting ffmpeg was not seen: {seen}"
    assert all(f"/slot/slot-{i}" in tee[0] for i in range(5)), "ffmpeg does not publish the placeholders"
    for pid, argv in seen.items():
        text = bare(argv.replace(b"\0", b" ").decode("utf-8", "replace"))
        for s in spellings:
            assert s not in text, f"a key ({len(s)} chars) is in the command line of PID {pid}"
    report(f"cmdlines: {len(seen)} processes checked, {len(spellings)} spellings of {len(keys)} keys, none found")

    # 6. status from another process
    code, out, err, _ = restream("status", "--json")
    assert code == 0, err
    st = json.loads(out)
    assert st["running"] is True and st["profile"] == "default" and st["command"] == "go"
    assert {d["name"]: d["state"] for d in st["destinations"]} == {n: "live" for n in keys}, st
    code, out, err, _ = restream("status")
    assert code == 0, err
    for n in keys:
        assert any(line.split()[:1] == [n] and "live" in line for line in out.splitlines()), out

    # 3. a sixth, by enable or by add, is refused while live; the profile is untouched
    before = profile_path().read_bytes()
    code, out, err, _ = restream("enable", "spare")
    assert code == 2, (code, out, err)
    report(f"enable of a sixth while live: exit 2, {err.strip()!r}")
    assert "is live" in err and "more than 5" in err and "disable one first" in err, err
    assert profile_path().read_bytes() == before
    code, out, err, _ = restream("add", "sixth", "--url", spare.url, "--key-stdin", input="sixth-key\n")
    assert code == 2 and "more than 5" in err, (code, out, err)
    assert profile_path().read_bytes() == before
    # a disabled one may still be added (it selects nothing more)
    add("seventh", spare.url, "seventh-key", "--disabled")
    stored = {d["name"]: d["enabled"] for d in tomllib.loads(profile_path().read_text())["destinations"]}
    assert stored["seventh"] is False and stored["spare"] is False and len(stored) == 7, stored

    assert go.wait(60) == 0, go.stderr
    assert go.end["exit_code"] == 0
    assert not [e for e in go.logs() if "not applied" in e["message"]], go.logs()
    assert {d: e["state"] for d, e in go.end["destinations"].items()} == {n: "stopped" for n in keys}
    code, _, _, _ = restream("status")
    assert code == 1, "status still sees a broadcast after it ended"
    assert spare.proc.poll() is None and not spare.connected(), "the refused sixth destination got the stream"


# -- 4. exact keys on the wire -------------------------------------------------------------------------------------

WIRE_KEYS = {"k3": "k3y", "k300": "K" * 150 + "-" + "k" * 149, "special": SPECIAL_KEY}


@timing
@pytest.mark.timeout(90)
def test_exact_keys_on_the_wire(procs):
    servers = {"k3": procs.fake("live"), "k300": procs.fake("app2/inst"), "special": procs.fake("live")}
    add("k3", servers["k3"].url, WIRE_KEYS["k3"])
    add("k300", servers["k300"].url, WIRE_KEYS["k300"])
    go = procs.go(*CHEAP, "--duration", "8s")
    go.wait_live(["k3", "k300"])
    added_at = add("special", servers["special"].url, WIRE_KEYS["special"])  # this one through a live add
    special = go.wait_state("special", "live", APPLY_LIMIT + 5, after=added_at - 5)
    bound(_ts(special) - added_at, APPLY_LIMIT, "special live after the add command returned")
    assert go.wait(45) == 0, go.stderr
    assert go.end["exit_code"] == 0

    for name, server in servers.items():
        key = WIRE_KEYS[name]
        assert len(key) == {"k3": 3, "k300": 300}.get(name, len(key))
        connect = server.named("connect")
        assert len(connect) == 1, server.commands
        obj = connect[0][2]
        assert obj["app"] == server.app, (name, obj)
        assert obj["tcUrl"] == server.url, (name, obj)
        publish = server.named("publish")
        assert len(publish) == 1 and publish[0][3] == key, (name, [p[3][:40] for p in publish])
        assert publish[0][4] == "live", publish[0]
        for cmd in ("releaseStream", "FCPublish"):
            assert [v[3] for v in server.named(cmd)] == [key], (name, cmd)
        names = [v[3] for v in server.commands if len(v) > 3 and isinstance(v[3], str)]
        assert not any("slot-" in n for n in names), f"{name}: a placeholder reached the destination: {names}"
        assert server.media_bytes > 20_000, f"{name}: only {server.media_bytes} media bytes arrived"


# -- 7. SRT destinations cannot be added while live ----------------------------------------------------------------

@timing
@pytest.mark.timeout(90)
def test_srt_destination_cannot_be_added_while_live(procs, profile_path):
    server = procs.fake()
    add("rtmp1", server.url, "rtmp-key")
    go = procs.go(*CHEAP, "--duration", "6s")
    go.wait_live(["rtmp1"])
    port = free_port()
    added_at = add("srt1", f"srt://127.0.0.1:{port}?mode=caller", "srt-key-123")
    warning = wait_for(lambda: next((e for e in go.logs() if "srt1" in e["message"]), None), APPLY_LIMIT + 5,
                       what="a warning about the SRT destination")
    bound(_ts(warning) - added_at, APPLY_LIMIT, "the SRT warning after the add command returned")
    report(f"srt add -> warning {_ts(warning) - added_at:+.2f} s: {warning['message']!r}")
    assert warning["level"] == "warning"
    assert "SRT destinations cannot be added while live" in warning["message"], warning
    assert "srt-key-123" not in json.dumps(go.events)
    assert not go.states("srt1"), "the SRT destination was treated as added"
    assert go.wait(45) == 0, go.stderr
    assert list(go.end["destinations"]) == ["rtmp1"] and go.end["destinations"]["rtmp1"]["state"] == "stopped"
