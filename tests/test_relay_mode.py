"""`restream relay` end to end: the real CLI as a child process, a real ffmpeg publisher standing in for OBS,
ffmpeg ``-listen`` receivers (or nginx-rtmp) as the destinations, all on loopback. The relay issue's "Must show":
five receivers decode a copied (not re-encoded) stream, a wrong ingest key or app is cut off before the
destinations see anything, a second publisher session reaches the destinations without restarting restream, and
the options around it (``--once``, ``--public``, ``--transcode``, the generated ingest key).

Cheap on two cores: the publisher sends 320x180 at 15 fps for a few seconds. Every process is reaped by PID in the
``procs`` fixture's teardown (restream, the ffmpeg it started, publishers, receivers).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

import support
from support import (FFMPEG, Receiver, Restream, _listening_ports, bound, free_port, near, probe, receivers_done,
                     timing, wait_for, wait_listening)

pytestmark = pytest.mark.e2e

INGEST_KEY = "ingest-K3y_relay7"
WRONG_KEY = "WrongKey-zq81xv"
H264 = ("-c:v", "libx264", "-preset", "ultrafast")
READY_TIMEOUT = 20.0  # python start, ffmpeg -version checks, the gate listening
GONE = "publisher gone: waiting for the next one"


# -- harness -------------------------------------------------------------------------------------------------------

class Relay(Restream):
    """One ``python -m restream relay --listen rtmp://127.0.0.1:PORT/live[/KEY] --json …`` child (support.Restream:
    stdout parsed as JSON lines, descendants' command lines sampled every 50 ms)."""

    def __init__(self, port: int, key: str | None, args: tuple[str, ...] = (), env: dict[str, str] | None = None,
                 app: str = "live") -> None:
        self.port = port
        listen = f"rtmp://127.0.0.1:{port}/{app}" + (f"/{key}" if key is not None else "")
        super().__init__("relay", ["--listen", listen, "--json", *args], env)

    def ready(self) -> "Relay":
        """The gate listens (read from /proc), ffmpeg has started (the ``start`` event) and the banner with the
        ingest URL and key is on stderr (printed once the port is bound: it may come after the start event)."""
        wait_listening(self.port, READY_TIMEOUT, proc=self.proc)
        self.wait_event(lambda e: e.get("event") == "start", "the start event")
        wait_for(lambda: "restream relay: publish to" in self.stderr, READY_TIMEOUT, what="the relay's banner")
        return self

    def ffmpegs(self) -> list[int]:
        """PIDs of the broadcasting ffmpeg processes seen (argv with ``-f tee``), in the order they were seen."""
        return self.tee_ffmpegs()

    def argv_of(self, pid: int) -> list[str]:
        argv = next(a for a in reversed(self.children[pid]) if b"\0tee\0" in a)
        return argv.decode("utf-8", "replace").rstrip("\0").split("\0")

    def wait_event(self, match, what: str, timeout: float = READY_TIMEOUT, count: int = 1) -> list[dict]:
        return super().wait_event(match, what, timeout, count)

    def wait_log(self, text: str, count: int = 1, timeout: float = READY_TIMEOUT, level: str | None = None):
        return self.wait_event(lambda e: e.get("event") == "log" and text in e["message"]
                               and (level is None or e["level"] == level), f"log {text!r} x{count}", timeout, count)

    def wait_live(self, names, count: int = 1, timeout: float = READY_TIMEOUT) -> None:
        for n in names:
            self.wait_event(lambda e, n=n: e.get("event") == "state" and e["destination"] == n
                            and e["state"] == "live", f"{n} live x{count}", timeout, count)

    @property
    def native(self) -> bool:
        """Relay mode's native fan-out (no ffmpeg on the copy path): the start event names no ffmpeg PID."""
        start = next((e for e in self.events if e.get("event") == "start"), None)
        return start is not None and start.get("pid") is None

    def wait_session_over(self, count: int, timeout: float = READY_TIMEOUT) -> None:
        """The ``count``-th publisher has disconnected and its ffmpeg has ended (a new listener has started); native
        fan-out: every destination is back to ``waiting`` (its session judged).
        (The "publisher gone" notice is not waited for: like any identical message, it is shown once a minute.)"""
        self.wait_log("disconnected", count, timeout)
        if self.native:
            names = {e["destination"] for e in list(self.events) if e.get("event") == "state"}
            wait_for(lambda: all(len(self.states(n, "waiting")) > count for n in names), timeout,
                     what=f"every destination waiting after session {count}")
            return
        # ffmpegs() lists every broadcasting ffmpeg ever seen, one per session: session ``count`` is over once the
        # (count+1)-th has started (a snapshot taken now could already hold it: that raced)
        wait_for(lambda: len(self.ffmpegs()) > count, timeout, what=f"a new ffmpeg after session {count}")

    def interrupt(self, timeout: float = 20.0) -> int:
        os.kill(self.proc.pid, signal.SIGINT)
        return self.wait(timeout)

    def end(self) -> dict:
        assert self.events and self.events[-1]["event"] == "end", self.summary()
        return self.events[-1]


class Publisher:
    """The bundled ffmpeg standing in for OBS: a test pattern and a sine, ``-re``, to rtmp://127.0.0.1:PORT/APP/KEY."""

    def __init__(self, port: int, key: str, seconds: float, log: Path, app: str = "live",
                 video: tuple[str, ...] = H264) -> None:
        self.log = log
        self.started = time.monotonic()
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(
                [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "warning", "-re",
                 "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=15", "-f", "lavfi", "-i", "sine=f=440:r=48000",
                 "-t", str(seconds), *video, "-g", "30", "-c:a", "aac", "-b:a", "64k",
                 "-f", "flv", f"rtmp://127.0.0.1:{port}/{app}/{key}"],
                stdin=subprocess.DEVNULL, stdout=f, stderr=f, start_new_session=True)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Procs(support.Procs):
    def relay(self, key: str | None = INGEST_KEY, *args: str, port: int | None = None, **kw) -> Relay:
        return self.track(Relay(port or free_port(), key, args, **kw)).ready()

    def publish(self, port: int, key: str, seconds: float = 3, **kw) -> Publisher:
        n = sum(1 for t in self.things if isinstance(t, Publisher))
        return self.track(Publisher(port, key, seconds, self.tmp / f"publisher-{n}.log", **kw))


@pytest.fixture
def procs(tmp_path: Path):
    p = Procs(tmp_path)
    yield p
    p.close()


def receivers(procs: Procs, add, n: int) -> list[Receiver]:
    recs = []
    for i in range(n):
        r = procs.receiver(f"d{i}", f"dest-key-{i}")
        add(f"d{i}", r.url, f"dest-key-{i}")
        recs.append(r)
    return recs


def assert_delivered(path: Path, seconds: float | None, within: float = 1.0, video: str = "h264", what: str = ""):
    assert path.exists(), f"{path.name}: nothing recorded {what}"
    m = probe(path)
    assert m.decodes, f"{path.name} does not decode: {m.errors}"
    assert (m.video_codec, m.audio_codec) == (video, "aac"), m
    if seconds is not None:
        near(m.duration, seconds, within, f"{path.name}: media received {what}")
    return m


def published_ok(pub: Publisher, timeout: float = 30.0) -> None:
    rc = pub.wait(timeout)
    assert rc == 0, f"the publisher failed ({rc}):\n{pub.log_text()[-1500:]}"


def assert_no_key_in_cmdlines(relay: Relay, *keys: str) -> int:
    """No key (nor its URL-encoded or tee-escaped spelling) in the command line of any process the relay started;
    returns how many argvs were checked."""
    from urllib.parse import quote

    from restream.redact import backslash_escape

    checked = 0
    own = relay.argv()  # a child between fork and exec still shows restream's own argv (the user's --listen)
    for pid, argvs in list(relay.children.items()):
        for argv in argvs:
            if argv == own:
                continue
            text = argv.decode("utf-8", "replace")
            checked += 1
            for key in keys:
                for form in {key, quote(key, safe=""), backslash_escape(key)}:
                    assert form not in text, f"a key ({len(key)} chars) is in the command line of PID {pid}"
    return checked


# -- 1. five receivers, copied -----------------------------------------------------------------------------------

@timing
@pytest.mark.timeout(120)
def test_publisher_to_five_receivers_copied_not_reencoded(procs, add):
    recs = receivers(procs, add, 5)
    relay = procs.relay()
    # copy mode, RTMP destinations only: the native fan-out, no ffmpeg at all (issue 16). Mutation caught: RTMP
    # destinations sent direct from ffmpeg (run.Target.via_relay False): not native, keys in its argv
    assert relay.native, relay.summary()
    keys = (INGEST_KEY, *(f"dest-key-{i}" for i in range(5)))
    assert_no_key_in_cmdlines(relay, *keys)
    pub = procs.publish(relay.port, INGEST_KEY, seconds=5)
    relay.wait_live([f"d{i}" for i in range(5)], timeout=30)
    published_ok(pub)
    relay.wait_log(GONE)
    assert relay.proc.poll() is None, "relay mode keeps waiting for the next publisher"
    receivers_done(*recs)
    assert relay.interrupt() == 130

    for r in recs:
        assert_delivered(r.out, 5.0, within=1.0)
        assert r.stream_names() == [], "a receiver saw an unexpected stream name"

    assert relay.ffmpegs() == [], "an ffmpeg on the native copy path"
    assert relay.events[0]["event"] == "start" and relay.events[0]["pid"] is None

    # JSON: all five live, then the publisher's departure and the wait for the next one, in that order
    kinds = [(e["event"], e.get("state"), e.get("message")) for e in relay.events]
    last_live = max(i for i, k in enumerate(kinds) if k[1] == "live")
    left = next(i for i, k in enumerate(kinds) if k[0] == "log" and "disconnected" in (k[2] or ""))
    gone = next(i for i, k in enumerate(kinds) if k[0] == "log" and GONE in (k[2] or ""))
    assert last_live < left < gone, relay.summary()
    assert relay.logs("warning") == [] and relay.logs("error") == [], relay.logs()
    end = relay.end()
    assert end["exit_code"] == 130 and end["reason"] == "interrupted"
    assert INGEST_KEY not in relay.stdout + relay.stderr
    assert_no_key_in_cmdlines(relay, *keys)  # (restream's own probes of ffmpeg: -version)
    assert relay.ffmpegs() == []


# -- 2. the ingest key and app are enforced ------------------------------------------------------------------------

@timing
@pytest.mark.timeout(120)
def test_wrong_key_or_app_is_rejected_and_never_reaches_destinations(procs, add):
    recs = receivers(procs, add, 2)
    relay = procs.relay()

    wrong = procs.publish(relay.port, WRONG_KEY)
    assert wrong.wait(15) != 0, "a publisher with the wrong key must fail"
    relay.wait_log("rejected: wrong stream key", level="warning")
    wrong_app = procs.publish(relay.port, INGEST_KEY, app="other")
    assert wrong_app.wait(15) != 0, "a publisher to the wrong app must fail"
    relay.wait_log("rejected: wrong application name", level="warning")

    time.sleep(1.0)  # anything that had slipped through would have reached the receivers by now
    assert relay.proc.poll() is None
    for r in recs:
        assert r.proc.poll() is None and not r.connected() and not r.out.exists(), \
            f"{r.out.name} saw a rejected publisher:\n{r.log_text()[-1500:]}"
    assert not any(e.get("event") == "state" and e["state"] == "live" for e in relay.events), relay.summary()
    assert not any(GONE in e["message"] for e in relay.logs()), "a rejected publisher is not a publisher gone"

    good = procs.publish(relay.port, INGEST_KEY, seconds=3)
    relay.wait_live(["d0", "d1"], timeout=30)
    published_ok(good)
    relay.wait_log(GONE)
    receivers_done(*recs)
    assert relay.interrupt() == 130
    for r in recs:
        assert_delivered(r.out, 3.0)
        assert r.stream_names() == []
    # rejected publishers never reach the destinations: the first live state came with the good one
    assert [e["state"] for e in relay.states("d0")][:3] == ["waiting", "connecting", "live"], relay.states("d0")
    assert WRONG_KEY not in relay.stdout + relay.stderr, "the wrong key was printed"
    assert INGEST_KEY not in relay.stdout + relay.stderr, "the ingest key given in --listen was printed"


# -- 3. a second publisher session -----------------------------------------------------------------------------------

@timing
@pytest.mark.timeout(120)
def test_second_session_reaches_restarted_receivers_without_restarting_restream(procs, add):
    first = receivers(procs, add, 2)
    relay = procs.relay()
    pid = relay.proc.pid

    published_ok(procs.publish(relay.port, INGEST_KEY, seconds=3))
    relay.wait_log(GONE)
    relay.wait_session_over(1)
    receivers_done(*first)
    # the same ports, new files: each session is a new publish at the destinations
    second = [procs.receiver(f"d{i}", f"dest-key-{i}", port=r.port) for i, r in enumerate(first)]
    assert relay.proc.poll() is None

    published_ok(procs.publish(relay.port, INGEST_KEY, seconds=5))
    relay.wait_session_over(2)
    receivers_done(*second)
    assert relay.proc.poll() is None and relay.proc.pid == pid
    assert relay.interrupt() == 130

    for r in first:
        assert_delivered(r.out, 3.0, what="in session 1")
    for r in second:
        assert_delivered(r.out, 5.0, what="in session 2")
    for name in ("d0", "d1"):
        assert len(relay.states(name, "live")) == 2, relay.states(name)
    assert relay.native and relay.ffmpegs() == [], "the native fan-out carries every session, without ffmpeg"
    assert len([e for e in relay.events if e["event"] == "start"]) == 1


@pytest.mark.interop
@timing
@pytest.mark.timeout(120)
def test_second_session_reaches_nginx_without_restarting_restream(procs, add, tmp_path):
    from nginx import NginxRtmp, require_nginx

    require_nginx(tls=False)
    with NginxRtmp(tmp_path, apps=["a1", "a2"], tls=False) as ngx:
        for app in ("a1", "a2"):
            add(app, ngx.rtmp_url(app), f"name-{app}")
        relay = procs.relay()
        kept: dict[int, list[Path]] = {}
        for session, seconds in ((1, 3), (2, 5)):
            published_ok(procs.publish(relay.port, INGEST_KEY, seconds=seconds))
            relay.wait_session_over(session)
            wait_for(lambda: not ngx.publishing("a1") and not ngx.publishing("a2"), 10, what="nginx: sessions ended")
            kept[session] = []
            for app in ("a1", "a2"):  # nginx-rtmp truncates the recording on the next publish: keep a copy
                copy = tmp_path / f"{app}-session{session}.flv"
                shutil.copy(ngx.recording(app, f"name-{app}"), copy)
                kept[session].append(copy)
            assert relay.proc.poll() is None
        assert relay.interrupt() == 130

        for app in ("a1", "a2"):
            attempts = ngx.attempts(app)
            assert [(a.key, a.accepted) for a in attempts] == [(f"name-{app}", True)] * 2, attempts
    for session, seconds in ((1, 3.0), (2, 5.0)):
        for path in kept[session]:
            assert_delivered(path, seconds, what=f"in session {session}")


# -- 4. --once and Ctrl-C ------------------------------------------------------------------------------------------

@timing
@pytest.mark.timeout(90)
def test_once_ends_after_the_first_publisher_with_exit_0(procs, add):
    recs = receivers(procs, add, 2)
    relay = procs.relay(INGEST_KEY, "--once")
    # a rejected publisher is no publisher: --once keeps waiting for one with the right key
    assert procs.publish(relay.port, WRONG_KEY).wait(15) != 0
    relay.wait_log("rejected: wrong stream key")
    published_ok(procs.publish(relay.port, INGEST_KEY, seconds=3))
    assert relay.wait(30) == 0, relay.stderr
    end = relay.end()
    assert end["exit_code"] == 0, end
    assert {n: d["state"] for n, d in end["destinations"].items()} == {"d0": "stopped", "d1": "stopped"}
    assert not any(GONE in e["message"] for e in relay.logs()), "--once does not wait for another publisher"
    receivers_done(*recs)
    for r in recs:
        assert_delivered(r.out, 3.0)


@timing
@pytest.mark.timeout(60)
def test_sigint_while_waiting_for_a_publisher_exits_130(procs, add):
    add("d0", f"rtmp://127.0.0.1:{free_port()}/live", "dest-key-0")
    relay = procs.relay()
    time.sleep(0.5)  # the state under test: idle, waiting (no condition marks "still nothing happened")
    started = time.monotonic()
    assert relay.interrupt(30) == 130
    bound(time.monotonic() - started, 5.0, "from Ctrl-C to relay's exit")  # the README: Ctrl-C ends within 5 s
    end = relay.end()
    assert end["exit_code"] == 130 and end["reason"] == "interrupted"
    assert relay.port not in _listening_ports(), "the gate still listens after restream ended"


# -- 5. binding beyond loopback needs --public ------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "192.0.2.10"])
def test_non_loopback_listen_needs_public(cli, host):
    port = free_port()
    code, out, err = cli("relay", "--listen", f"rtmp://{host}:{port}/live", "--json", subprocess=True)
    assert code == 2, (code, out, err)
    assert "--public" in err, err
    assert out == ""
    assert port not in _listening_ports()


# -- 5b. one broadcast per profile ---------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_relay_on_a_profile_another_broadcast_holds_exits_6(cli):
    # mutation caught: exit_code_for(BusyError) != 6, or relay not taking the profile's broadcast lock
    from restream import runtime

    assert cli("add", "d0", "--url", f"rtmp://127.0.0.1:{free_port()}/live", "--key", "dest-key-0")[0] == 0
    port = free_port()
    with runtime.broadcast_lock("default", "go"):  # held by this process, as a running `go` would
        code, out, err = cli("relay", "--listen", f"rtmp://127.0.0.1:{port}/live/{INGEST_KEY}", "--json",
                             subprocess=True, timeout=30)
    assert code == 6, (code, out, err)
    last = err.strip().splitlines()[-1]  # (the banner before it is issue 11's: printed before the lock is taken)
    assert last.startswith("restream: error: ") and f"PID {os.getpid()}" in last, err
    assert port not in _listening_ports()


# -- 6. one publisher at a time ------------------------------------------------------------------------------------

@timing
@pytest.mark.timeout(90)
def test_second_publisher_while_one_is_live_is_rejected(procs, add):
    recs = receivers(procs, add, 2)
    relay = procs.relay()
    first = procs.publish(relay.port, INGEST_KEY, seconds=6)
    relay.wait_live(["d0", "d1"], timeout=30)
    intruder = procs.publish(relay.port, INGEST_KEY, seconds=3)
    assert intruder.wait(15) != 0, "a second publisher must fail while one is live"
    relay.wait_log("rejected: another publisher is live", level="warning")
    assert first.proc.poll() is None, "the first publisher was cut off"
    published_ok(first)
    relay.wait_log(GONE)
    receivers_done(*recs)
    assert relay.interrupt() == 130
    for r in recs:
        assert_delivered(r.out, 6.0)
    for name in ("d0", "d1"):
        assert [e["state"] for e in relay.states(name)][:3] == ["waiting", "connecting", "live"]
        assert len(relay.states(name, "live")) == 1, "the first session was interrupted"


# -- 7. codec sanity -----------------------------------------------------------------------------------------------

FLV1 = ("-c:v", "flv", "-q:v", "5")  # Sorenson Spark (FLV's own H.263): FLV carries it, no platform takes it


@timing
@pytest.mark.timeout(90)
def test_non_h264_publisher_is_named_and_transcode_fixes_it(procs, add):
    recs = receivers(procs, add, 1)
    relay = procs.relay(INGEST_KEY, "--once")
    published_ok(procs.publish(relay.port, INGEST_KEY, seconds=3, video=FLV1))
    assert relay.wait(30) == 0, relay.stderr
    warnings = [e["message"] for e in relay.logs("warning")]
    assert any("flv1" in w and "--transcode" in w for w in warnings), warnings
    receivers_done(*recs)
    assert_delivered(recs[0].out, 3.0, video="flv1")  # copied as is, as told

    again = procs.receiver("d0", "dest-key-0", port=recs[0].port)
    relay = procs.relay(INGEST_KEY, "--once", "--transcode", "--video-bitrate", "300k", "--audio-bitrate", "64k")
    published_ok(procs.publish(relay.port, INGEST_KEY, seconds=3, video=FLV1))
    assert relay.wait(30) == 0, relay.stderr
    assert not any("flv1" in e["message"] for e in relay.logs("warning")), "no codec warning when transcoding"
    argv = " ".join(relay.argv_of(relay.ffmpegs()[0]))
    assert "libx264" in argv and " -c copy " not in argv, argv
    receivers_done(again)
    m = assert_delivered(again.out, 3.0, video="h264")
    assert m.first_packet_key


# -- 8. the generated ingest key -----------------------------------------------------------------------------------

@timing
@pytest.mark.timeout(90)
def test_generated_ingest_key_shown_once_kept_0600_and_reused(procs, add, config_dir, monkeypatch):
    monkeypatch.delenv("RESTREAM_INGEST_KEY", raising=False)
    recs = receivers(procs, add, 1)
    relay = procs.relay(None, "--once")
    m = re.search(r"stream key (\S+)\s+\(new; shown once", relay.stderr)
    assert m, relay.stderr
    key = m.group(1)
    stored = config_dir / "ingest" / "default.key"
    assert stored.read_text().strip() == key
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    published_ok(procs.publish(relay.port, key, seconds=2))
    assert relay.wait(30) == 0, relay.stderr
    assert relay.stderr.count(key) == 1 and key not in relay.stdout
    receivers_done(*recs)
    assert_delivered(recs[0].out, 2.0)

    again = procs.receiver("d0", "dest-key-0", port=recs[0].port)
    relay = procs.relay(None, "--once")
    assert key not in relay.stdout + relay.stderr, "a kept key is shown masked"
    assert "kept in" in relay.stderr and "new; shown once" not in relay.stderr, relay.stderr
    published_ok(procs.publish(relay.port, key, seconds=2))
    assert relay.wait(30) == 0, relay.stderr
    assert key not in relay.stdout + relay.stderr
    assert stored.read_text().strip() == key, "the kept key was replaced"
    receivers_done(again)
    assert_delivered(again.out, 2.0)
