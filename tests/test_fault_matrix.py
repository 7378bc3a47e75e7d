"""The fault matrix: one test per row, each through the real CLI (``restream go --json`` as a child process).

Per row it asserts (a) what the healthy destinations received lasts as long as they were live (wall time, from
restream's own ``state`` event to its ``end`` event), (b) the state and exit code restream reports, (c) every file
a receiver recorded decodes. Faults are injected with tests/faultproxy.py between restream's relay and an ffmpeg
``-listen`` receiver, by killing processes, or by restarting a private nginx (tests/nginx.py).

Cheap on two cores: 320x180 at 15 fps, 300k video, 64k audio; the whole file takes about 3-4 minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from nginx import NginxRtmp, require_nginx
from support import (FFMPEG, Go, Procs, Receiver, bound, descendants, event_ts, free_port, make_clip, near, probe,
                     receivers_done, timing, wait_for, wait_listening)
from test_go_e2e import CHEAP, assert_delivered

_ts = event_ts

pytestmark = pytest.mark.e2e

BYTE_RATE = (300 + 64) * 1000 / 8  # the stream's byte rate (video + audio bitrates of CHEAP), ~45.5 kB/s
WITHIN = 1.5  # seconds: received duration vs wall time live (start-up and end of a session on 2 busy cores)


def healthy(procs: Procs, add, names: str = "ab") -> dict[str, Receiver]:
    recs = {}
    for n in names:
        recs[n] = procs.receiver(n, f"key-{n}")
        add(n, recs[n].url, f"key-{n}")
    return recs


def behind_proxy(procs: Procs, add, name: str = "f"):
    rec = procs.receiver(name, f"key-{name}")
    proxy = procs.proxy(rec.port)
    add(name, f"rtmp://127.0.0.1:{proxy.port}/live", f"key-{name}")
    return rec, proxy


def stream_time(go: Go, seconds: float, timeout: float = 15) -> dict:
    return go.wait_stream_time(seconds, timeout)


def assert_others_real_time(go: Go, recs: dict[str, Receiver], lives: dict[str, dict], until: float | None = None):
    """(a): each healthy receiver got as much media as it was live, in wall time; (c): it decodes."""
    end = go.events[-1]
    until = until if until is not None else _ts(end)
    for n, r in recs.items():
        wall = until - _ts(lives[n])
        m = assert_delivered(r)
        near(m.duration, wall, WITHIN, f"{n}: media received vs wall time live; {timeline(go)}")
        assert [e["state"] for e in go.states(n)][-2:] == ["live", end["destinations"][n]["state"]], go.states(n)
        assert end["destinations"][n]["reconnects"] == 0, (n, end["destinations"][n])


def timeline(go: Go) -> str:
    """Stream time against wall time (from the start event), every 0.5 s progress: where the time went."""
    t0 = _ts(go.event("start"))
    marks = [f"{_ts(e) - t0:.1f}:{e['time_s']}@{e['speed']}x" for e in go.events if e["event"] == "progress"]
    return f"wall:stream@speed {' '.join(marks)}; end at {_ts(go.events[-1]) - t0:.1f}"


def assert_decodes(*paths: Path) -> None:
    for p in paths:
        m = probe(p)
        assert m.decodes, f"{p.name} does not decode: {m.errors}"


def states(go: Go, name: str) -> list[tuple[str, str | None]]:
    return [(e["state"], e["error"]) for e in go.states(name)]


# -- destination faults ---------------------------------------------------------------------------------------------

@timing
@pytest.mark.timeout(90)
def test_cut_mid_stream(procs, add):
    recs = healthy(procs, add)
    f, proxy = behind_proxy(procs, add)
    go = procs.go(*CHEAP, "--duration", "16s", "--json", "--status-interval", "0.5")
    lives = go.wait_live("abf")
    stream_time(go, 4)
    proxy.cut()
    cut = time.time()
    retrying = go.wait_state("f", "retrying", 8, after=cut)
    assert retrying["error"], retrying
    receivers_done(f, timeout=5)  # the receiver ends with its publisher: its file is complete
    f2 = procs.receiver("f", "key-f", port=f.port)
    back = time.time()
    relive = go.wait_state("f", "live", 8, after=cut)
    assert go.state_now("a") == go.state_now("b") == "live"
    assert go.wait(40) == 0, go.stderr
    receivers_done(*recs.values(), f2)
    end = go.events[-1]
    assert end["exit_code"] == 0 and end["destinations"]["f"] == {**end["destinations"]["f"], "state": "stopped",
                                                                   "reconnects": 1}, end
    assert_others_real_time(go, recs, lives)
    assert_decodes(f.out, f2.out)
    near(probe(f2.out).duration, _ts(end) - _ts(relive), WITHIN, "f's second receiver: media vs wall time live")
    print(f"cut: retrying after {_ts(retrying) - cut:.2f} s ({retrying['error']}); live again "
          f"{_ts(relive) - back:.2f} s after the receiver returned")


@timing
@pytest.mark.timeout(90)
def test_down_at_start(procs, add):
    recs = healthy(procs, add)
    f, proxy = behind_proxy(procs, add)
    proxy.down()
    go = procs.go(*CHEAP, "--duration", "14s", "--json", "--status-interval", "0.5")
    lives = go.wait_live("ab")
    retrying = go.wait_state("f", "retrying", 8)
    assert retrying["error"], retrying
    stream_time(go, 4)
    assert "live" not in [s for s, _ in states(go, "f")] and not f.connected()
    proxy.up()
    up = time.time()
    f_live = go.wait_state("f", "live", 6, after=up)
    bound(_ts(f_live) - up, 3.0, "f live after the destination came up")
    assert go.wait(40) == 0, go.stderr
    receivers_done(*recs.values(), f)
    end = go.events[-1]
    assert end["exit_code"] == 0 and end["destinations"]["f"]["state"] == "stopped", end
    assert_others_real_time(go, recs, lives)
    m = assert_delivered(f)
    near(m.duration, _ts(end) - _ts(f_live), WITHIN, "f: media received vs wall time live")
    print(f"down at start: {proxy.refused} refused connections; live {_ts(f_live) - up:.2f} s after up")


@timing
@pytest.mark.timeout(90)
def test_paused(procs, add):
    recs = healthy(procs, add)
    f, proxy = behind_proxy(procs, add)
    go = procs.go(*CHEAP, "--duration", "18s", "--json", "--status-interval", "0.5")
    lives = go.wait_live("abf")
    before = stream_time(go, 3)
    proxy.pause()
    paused, frozen = time.monotonic(), proxy.bytes_forwarded
    time.sleep(6)
    during = go.last_progress()
    pause_s = time.monotonic() - paused
    assert proxy.bytes_forwarded == frozen, "the proxy forwarded while paused"
    proxy.resume()
    resumed = time.time()
    # a stalled tee would advance ~0 s; progress arrives in ~1 s steps and a loaded 2-core machine runs the
    # encode a little below real time, so the bound is 60 % of the pause, not the whole of it
    bound(0.6 * pause_s - (during["time_s"] - before["time_s"]), 0,
          f"the encode fell behind during the {pause_s:.1f} s pause: {timeline(go)}; f {states(go, 'f')}")
    assert go.state_now("a") == go.state_now("b") == "live"
    # a stall this short and this small (~270 kB) fits in loopback socket buffers: f may stay live throughout;
    # had it reached ffmpeg, f would be retrying and then live again. Either way it is live at the end.
    assert {s for s, _ in states(go, "f")} <= {"connecting", "live", "retrying"}, states(go, "f")
    if go.state_now("f") != "live":
        go.wait_state("f", "live", 8, after=resumed)
    assert go.wait(40) == 0, go.stderr
    receivers_done(*recs.values(), f)
    end = go.events[-1]
    assert end["exit_code"] == 0 and end["destinations"]["f"]["state"] == "stopped", end
    assert_others_real_time(go, recs, lives)
    m = assert_delivered(f)
    print(f"paused {pause_s:.1f} s: f states {states(go, 'f')}, received {m.duration:.2f} s "
          f"of {_ts(end) - _ts(lives['f']):.2f} s")
    bound(_ts(end) - _ts(lives["f"]) - pause_s - m.duration, WITHIN, "f: media missing beyond the pause")


@timing
@pytest.mark.timeout(90)
def test_throttled_below_the_bitrate(procs, add):
    recs = healthy(procs, add)
    f, proxy = behind_proxy(procs, add)
    go = procs.go(*CHEAP, "--duration", "20s", "--json", "--status-interval", "0.5")
    lives = go.wait_live("abf")
    before = stream_time(go, 3)
    rate = BYTE_RATE / 3
    proxy.throttle(rate)
    t0, b0 = time.monotonic(), proxy.bytes_forwarded
    time.sleep(8)
    during = go.last_progress()
    throttled_s, got = time.monotonic() - t0, proxy.bytes_forwarded - b0
    proxy.throttle(None)
    lifted = time.time()
    assert got <= rate * throttled_s * 1.2 + 64 * 1024, f"{got} bytes in {throttled_s:.1f} s: not throttled"
    bound(0.6 * throttled_s - (during["time_s"] - before["time_s"]), 0,
          f"the encode fell behind with f throttled for {throttled_s:.1f} s: {timeline(go)}; f {states(go, 'f')}")
    assert go.state_now("a") == go.state_now("b") == "live"
    assert {s for s, _ in states(go, "f")} <= {"connecting", "live", "retrying"}, states(go, "f")
    if go.state_now("f") != "live":
        go.wait_state("f", "live", 8, after=lifted)
    assert go.wait(40) == 0, go.stderr
    receivers_done(*recs.values(), f)
    end = go.events[-1]
    assert end["exit_code"] == 0 and end["destinations"]["f"]["state"] == "stopped", end
    assert_others_real_time(go, recs, lives)
    m = assert_delivered(f)
    print(f"throttled to {rate / 1000:.1f} kB/s for {throttled_s:.1f} s ({got / throttled_s / 1000:.1f} kB/s went "
          f"through): f states {states(go, 'f')}, received {m.duration:.2f} s of {_ts(end) - _ts(lives['f']):.2f} s")
    # f lost at most what did not fit through while throttled (its queue drops on overflow), never more
    f_wall = _ts(end) - _ts(lives["f"])
    bound(f_wall - throttled_s - m.duration, WITHIN, "f: media missing beyond the throttled time")
    bound(m.duration - f_wall, WITHIN, "f: more media than its time live")


@timing
@pytest.mark.timeout(120)
def test_nginx_restarted(procs, add, tmp_path):
    require_nginx(tls=False)  # skips loudly (or fails in CI) when nginx-rtmp is missing
    key = "ngx key?a=1&b=[2]:c|d\\e'f"
    ngx = NginxRtmp(tmp_path, apps=["n"], expected_keys={"n": key}, tls=False).start()
    try:
        recs = healthy(procs, add)
        add("n", ngx.rtmp_url("n"), key)
        go = procs.go(*CHEAP, "--duration", "18s", "--json", "--status-interval", "0.5",
                      "--log-file", str(tmp_path / "go.log"))  # kept with tmp_path, for a failure
        lives = go.wait_live("abn")
        stream_time(go, 4)
        old_pid = ngx.pid
        t_restart = time.time()
        ngx.restart()
        restarted = time.time()
        assert ngx.pid != old_pid
        retrying = go.wait_state("n", "retrying", 10, after=t_restart)
        assert retrying["error"], retrying
        relive = go.wait_state("n", "live", 8, after=t_restart)
        assert go.state_now("a") == go.state_now("b") == "live"
        assert go.wait(40) == 0, go.stderr
        receivers_done(*recs.values())
        end = go.events[-1]
        assert end["exit_code"] == 0, end
        assert end["destinations"]["n"]["state"] == "stopped" and end["destinations"]["n"]["reconnects"] == 1, end
        assert_others_real_time(go, recs, lives)
        assert [(a.key, a.accepted) for a in ngx.attempts("n")] == [(key, True)] * 2
        wait_for(lambda: not ngx.publishing("n"), 10, what="stream closed")
        # record_unique off: the file holds the session after the restart
        m = probe(ngx.recording("n", key))
        assert m.decodes and m.first_packet_key, m.errors
        near(m.duration, _ts(end) - _ts(relive), WITHIN, "n: media received after the restart vs wall time live")
        print(f"nginx restart took {restarted - t_restart:.2f} s; n retrying ({retrying['error']}), live again "
              f"{_ts(relive) - restarted:.2f} s after nginx was back")
    finally:
        ngx.stop()


@timing
@pytest.mark.timeout(60)
def test_all_destinations_down(procs, add):
    for n in "xy":
        add(n, f"rtmp://127.0.0.1:{free_port()}/live", f"key-{n}")  # nothing listens there
    t0 = time.monotonic()
    go = procs.go(*CHEAP, "--duration", "8s", "--json")
    for n in "xy":  # each reported retrying, with the error, while the broadcast runs
        assert go.wait_state(n, "retrying", 10)["error"]
    rc = go.wait(40)
    took = time.monotonic() - t0
    end = go.events[-1]
    assert rc == 5 and end["event"] == "end" and end["exit_code"] == 5, (rc, end, go.stderr)
    assert end["reason"] == "duration reached", end
    near(end["time_s"], 8.0, 1.0, "stream time at the end of an 8 s broadcast")
    for n in "xy":
        assert end["destinations"][n]["state"] == "failed" and end["destinations"][n]["last_error"], end
        assert "live" not in [s for s, _ in states(go, n)], states(go, n)
    # 8 s asked; the rest is start-up (python, ffmpeg's -version checks, the encoder's first second)
    bound(took, 8.0 + 3.0, "an 8 s broadcast with every destination down, from start to exit")
    print(f"all down: exit 5 after {took:.1f} s; {end['destinations']['x']['last_error']}")


# -- input faults ---------------------------------------------------------------------------------------------------

@timing
@pytest.mark.timeout(60)
def test_input_ends(procs, add, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", seconds=4)
    recs = healthy(procs, add)
    go = procs.go(str(clip), "--json", "--status-interval", "0.5")
    lives = go.wait_live("ab")
    assert go.wait(40) == 0, go.stderr
    receivers_done(*recs.values())
    end = go.events[-1]
    assert end["exit_code"] == 0 and end["reason"] == "input ended", end
    assert {n: d["state"] for n, d in end["destinations"].items()} == {"a": "stopped", "b": "stopped"}
    assert_others_real_time(go, recs, lives)
    for n, r in recs.items():
        near(probe(r.out).duration, 4.0, 0.5, f"{n}: media received of a 4 s input")


@timing
@pytest.mark.timeout(90)
def test_input_stalls(procs, add, tmp_path):
    """A live RTMP input whose sender stops sending while the connection stays open.

    What happens (bundled ffmpeg 9.0.2): the destinations stay ``live`` (connected, 0 kbit/s, speed falling) while
    ffmpeg waits; its input read times out after about twice the plan's ``-rw_timeout 10000000`` (~20 s seen);
    it logs ``Error during demuxing: Input/output error`` (a ``log`` event, level error) and ends as at the end of
    an input; restream tells a stalled live input from an ended one: exit 5, reason ``input failed: …``. Bounded,
    never a hang; what was sent is complete.
    """
    src_port = free_port()
    log = open(tmp_path / "source.log", "wb")
    source = subprocess.Popen(  # an RTMP server that plays a live test pattern to whoever connects
        [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "info", "-re", "-f", "lavfi",
         "-i", "testsrc2=size=320x180:rate=15", "-f", "lavfi", "-i", "sine=r=48000", "-map", "0:v", "-map", "1:a",
         "-c:v", "libx264", "-preset", "ultrafast", "-g", "15", "-pix_fmt", "yuv420p", "-c:a", "aac", "-t", "120",
         "-f", "flv", "-listen", "1", f"rtmp://127.0.0.1:{src_port}/live/in"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    try:
        wait_listening(src_port, proc=source)
        proxy = procs.proxy(src_port)
        recs = healthy(procs, add)
        go = procs.go(f"rtmp://127.0.0.1:{proxy.port}/live/in", *CHEAP[1:], "--json", "--status-interval", "0.5")
        lives = go.wait_live("ab", timeout=20)
        stream_time(go, 3)
        proxy.pause()
        stalled = time.time()
        rc = go.wait(60)  # bounded: never hangs
        took = time.time() - stalled
        receivers_done(*recs.values())
        end = go.events[-1]
        errors = [e["message"] for e in go.events if e["event"] == "log" and e["level"] == "error"]
        print(f"input stalled: restream exited {rc} ({end['reason']}) {took:.1f} s after the stall; "
              f"ffmpeg {end['ffmpeg_returncode']}; errors {errors}")
        # a live input that stalls is a failed broadcast, not a normal end: scripts must be able to tell
        assert end["event"] == "end" and (rc, end["exit_code"]) == (5, 5), end
        assert end["reason"].startswith("input failed:") and "demuxing" in end["reason"], end
        assert took >= 8, f"ended {took:.1f} s after the stall: sooner than rw_timeout (10 s) allows"
        bound(took, 35, "from the stall to restream's exit (rw_timeout 10 s, ~20 s seen)")
        assert any("Error during demuxing" in m for m in errors), errors
        stall_states = [(n, e["state"]) for n in recs for e in go.states(n) if stalled < _ts(e) < _ts(end) - 0.5]
        assert stall_states == [], f"state changes during the stall: {stall_states}"
        # what was sent before the stall arrived complete (a live input: the stream time, not the wall time)
        for n, r in recs.items():
            m = assert_delivered(r)
            near(m.duration, end["time_s"], 1.0, f"{n}: media received vs stream time sent")
            bound(stalled - _ts(lives[n]) - m.duration, WITHIN, f"{n}: media missing from before the stall")
    finally:
        if source.poll() is None:
            os.killpg(source.pid, signal.SIGKILL)
        source.wait()


# -- stopping restream, or its ffmpeg ------------------------------------------------------------------------------

@timing
@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig, code, reason", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "terminated")])
def test_signal(procs, add, sig, code, reason):
    recs = healthy(procs, add)
    go = procs.go(*CHEAP, "--json", "--status-interval", "0.5")
    lives = go.wait_live("ab")
    stream_time(go, 4)
    go.proc.send_signal(sig)
    sent = time.monotonic()
    assert go.wait(20) == code, go.stderr
    bound(time.monotonic() - sent, 3.0, "from the signal to restream's exit")
    receivers_done(*recs.values())
    end = go.events[-1]
    assert end["event"] == "end" and (end["exit_code"], end["reason"]) == (code, reason), end
    assert {n: d["state"] for n, d in end["destinations"].items()} == {"a": "stopped", "b": "stopped"}
    assert_others_real_time(go, recs, lives)
    for n, r in recs.items():  # complete: everything encoded arrived
        near(probe(r.out).duration, end["time_s"], 1.0, f"{n}: media received vs stream time sent")


@timing
@pytest.mark.timeout(60)
def test_ffmpeg_killed_from_outside(procs, add):
    recs = healthy(procs, add)
    go = procs.go(*CHEAP, "--json", "--status-interval", "0.5")
    lives = go.wait_live("ab")
    stream_time(go, 4)
    pid = go.event("start")["pid"]
    assert pid in descendants(go.proc.pid), "the start event names restream's ffmpeg child"
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    rc = go.wait(15)
    took = time.time() - killed
    assert rc == 5, (rc, go.stderr)
    bound(took, 5.0, "restream noticing its ffmpeg was killed")
    receivers_done(*recs.values())
    end = go.events[-1]
    assert end["event"] == "end" and end["exit_code"] == 5 and end["ffmpeg_returncode"] == -9, end
    assert end["reason"].startswith("ffmpeg failed"), end
    assert_others_real_time(go, recs, lives, until=killed)


# -- backup = "both": one ingest's fault never touches the other (issue 15) ------------------------------------------

def ingest_states(go: Go, name: str, ingest: str) -> list[tuple[str, str | None]]:
    return [(e["state"], e["error"]) for e in go.events
            if e.get("event") == "ingest_state" and e["destination"] == name and e["ingest"] == ingest]


@timing
@pytest.mark.timeout(90)
def test_both_one_ingest_paused_stalls_alone_and_is_dropped(procs, add):
    """The backup ingest stops reading: it alone is stalled, then dropped after --stall-timeout and retried; the
    primary ingest (and the destination) stays live and its receiver gets the whole broadcast without a hole."""
    primary = procs.receiver("yp", "key-y")
    backup = procs.receiver("yb", "key-y")
    proxy = procs.proxy(backup.port)
    add("y", primary.url, "key-y", "--backup-url", f"rtmp://127.0.0.1:{proxy.port}/live", "--backup-mode", "both")
    go = procs.go(*CHEAP, "--duration", "22s", "--json", "--status-interval", "0.5", "--stall-timeout", "5")
    lives = go.wait_live("y")
    go.wait_event(lambda e: e.get("event") == "ingest_state" and e["ingest"] == "backup" and e["state"] == "live",
                  "the backup ingest live", 10)
    stream_time(go, 4)
    proxy.pause()
    paused = time.time()
    stalled = go.wait_event(lambda e: e.get("event") == "ingest_state" and e["ingest"] == "backup"
                            and e["state"] == "stalled", "the backup ingest stalled", 15)[0]
    dropped = go.wait_event(lambda e: e.get("event") == "ingest_state" and e["ingest"] == "backup"
                            and e["state"] == "retrying", "the backup ingest dropped", 15)[0]
    assert "stalled: took no data" in dropped["error"], dropped
    assert [s for s, _ in states(go, "y")] == ["connecting", "live"], states(go, "y")  # never stalled itself
    proxy.resume()
    assert go.wait(40) == 0, go.stderr
    receivers_done(primary)
    end = go.events[-1]
    y = end["destinations"]["y"]
    assert y["state"] == "stopped" and y["ingests"]["primary"]["state"] == "stopped", y
    assert_others_real_time(go, {"y": primary}, lives)
    m = probe(primary.out)
    assert m.max_gap <= 0.5, f"a {m.max_gap:.2f} s hole at the primary"
    print(f"backup paused: stalled after {_ts(stalled) - paused:.1f} s, dropped after {_ts(dropped) - paused:.1f} s; "
          f"backup states {ingest_states(go, 'y', 'backup')}; primary received {m.duration:.2f} s")
    bound(_ts(stalled) - paused, 10.0, "the paused ingest reported stalled")
