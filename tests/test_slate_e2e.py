"""The slate (issue 13) end to end, through the real CLI: the issue's proof list, checked at the receivers.

Publishers are real ffmpeg processes sending marker frames (tests/avcheck.py: one solid colour per publisher, a
white flash and a 1 kHz beep at each whole second of its clock); receivers are ``ffmpeg -listen 1`` (one publish
each: a second connection would find no listener). Every receiver file is read back with ``avcheck.analyze``: one
publish (one file, its ffmpeg exited 0 on its own), no timestamp step over 100 ms in either stream, timestamps only
forward (and the receiver never had to repair them), a decode without error, the A/V offset constant within
±40 ms across hand-overs, and the sequence of colours seen (publisher 1 -> slate -> publisher 2 ...).

To stay within ~4 min of CI on two cores, one long relay broadcast carries most rows of the list (SIGKILL, SIGSTOP
then SIGCONT, a clean stop, a resolution and frame-rate change, a publisher without audio, a wrong-key publisher and
a destination killed and restored, both while on slate, Ctrl-C on slate: the default card); a short one the
``--slate-timeout`` end, ``--size``/``--fps``, the plain lines and a picture as the slate (``--slate=PNG``); then
``go rtmp://`` (restream pulls from an ffmpeg ``-listen`` server) with a looped clip with sound as the slate
(``--slate=MP4``: its own markers keep the A/V check going through four loops) and ``go srt://…?mode=listener``.
``--slate`` comes last on each command line: it takes an optional FILE. Sizes are small (640x360@30 then 320x240@25 stands for the issue's 1280x720@30
then 640x480@25: the same change of resolution, aspect and rate).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import avcheck
from avcheck import SLATE, Marker
from support import FFMPEG, Receiver, Restream, event_ts, free_port, timing, wait_for, wait_listening
from test_relay_mode import INGEST_KEY, READY_TIMEOUT, WRONG_KEY, Relay, receivers
from test_relay_mode import Procs as RelayProcs

pytestmark = pytest.mark.e2e

ENCODE = ["--video-bitrate", "800k", "--audio-bitrate", "96k"]
SOURCE_TIMEOUT = 15.0  # a source state change (the targets are 1.5-2 s at the receiver: this is a hang, not a miss)
FIRST_LIVE = 30.0  # python start, probes, the first publisher verified, the broadcast ffmpeg up, receivers live
RECEIVER_EXIT = 15.0  # receivers end on their own once restream unpublished


# -- harness -------------------------------------------------------------------------------------------------------

class Sources:
    """The ``source`` events of a restream child (``--json``)."""

    def __init__(self, child) -> None:
        self.child = child

    def events(self) -> list[dict]:
        return [e for e in list(self.child.events) if e.get("event") == "source"]

    def states(self) -> list[str]:
        return [e["state"] for e in self.events()]

    def wait(self, state: str, count: int = 1, timeout: float = SOURCE_TIMEOUT) -> dict:
        """The ``count``-th ``source`` event with ``state``."""
        return self.child.wait_event(lambda e: e.get("event") == "source" and e.get("state") == state,
                                     f"source {state} x{count} (source states so far: {self.states()})",
                                     timeout, count)[count - 1]


class SlateRelay(Relay):
    """``restream relay --slate …`` (``--json``, or ``--plain``): ready once the gate listens and the banner is out
    (no ``start`` event is waited for: the broadcast may start only with the first publisher)."""

    def __init__(self, args: tuple[str, ...], json: bool = True) -> None:
        self.port = free_port()
        listen = f"rtmp://127.0.0.1:{self.port}/live/{INGEST_KEY}"
        slate = [] if any(a.startswith("--slate=") for a in args) else ["--slate"]
        Restream.__init__(self, "relay", ["--listen", listen, "--json" if json else "--plain", *args, *slate])

    def ready(self) -> "SlateRelay":
        wait_listening(self.port, READY_TIMEOUT, proc=self.proc)
        wait_for(lambda: "restream relay: publish to" in self.stderr, READY_TIMEOUT, what="the relay's banner")
        return self


class Procs(RelayProcs):
    def slate_relay(self, *args: str, json: bool = True) -> SlateRelay:
        return self.track(SlateRelay(args, json)).ready()

    def marker(self, url: str, **kw) -> Marker:
        n = sum(1 for t in self.things if isinstance(t, Marker))
        return self.track(Marker(url, self.tmp / f"marker-{n}-{kw.get('colour', 'red')}.log", **kw))


def interrupt(child: Restream, timeout: float = 30.0) -> int:
    """Ctrl-C (SIGINT to restream's PID) and its exit code."""
    if child.proc.poll() is None:
        os.kill(child.proc.pid, signal.SIGINT)
    return child.wait(timeout)


@pytest.fixture
def procs(tmp_path: Path):
    p = Procs(tmp_path)
    yield p
    p.close()


def ingest(relay: Relay, key: str = INGEST_KEY) -> str:
    return f"rtmp://127.0.0.1:{relay.port}/live/{key}"


def one_publish(r: Receiver, timeout: float = RECEIVER_EXIT) -> None:
    """The receiver's ffmpeg got one publish and exited 0 by itself when restream unpublished."""
    try:
        rc = r.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{r.out.name}: the receiver still runs {timeout} s after restream ended "
                             f"(never unpublished?):\n{r.log_text()[-1500:]}") from None
    assert rc == 0, f"{r.out.name}: the receiver exited {rc}:\n{r.log_text()[-1500:]}"
    assert r.log_text().count("Input #0") == 1, r.log_text()[-3000:]
    assert r.stream_names() == [], "a receiver saw an unexpected stream name"


def checked(r: Receiver, expected: list[str], min_offsets: int) -> avcheck.Report:
    """``r``'s file against the issue's continuity targets, and the colours it showed, in order."""
    assert r.out.exists(), f"{r.out.name}: nothing recorded:\n{r.log_text()[-1500:]}"
    rep = avcheck.analyze(r.out)
    print(rep.describe())
    assert rep.problems(max_gap=0.1, av_within=40.0, min_offsets=min_offsets) == [], rep.describe()
    assert avcheck.fixups(r.log_text()) == [], f"{r.out.name}: the receiver repaired timestamps"
    assert rep.sequence() == expected, rep.describe()
    assert rep.frames_of("magenta") == 0, f"{r.out.name}: the wrong-key publisher reached it: {rep.describe()}"
    assert rep.frames_of(avcheck.OTHER) == 0, rep.describe()
    return rep


def frames_between(rep: avcheck.Report, label: str) -> list[avcheck.Run]:
    return [r for r in rep.runs if r.label == label]


# -- 1. relay --slate: one broadcast through every kind of loss ----------------------------------------------------

@timing
@pytest.mark.timeout(180)
def test_relay_slate_through_kill_stall_stop_and_new_publishers_one_publish_per_destination(procs, add):
    recs = receivers(procs, add, 3)  # d0, d1 untouched; d2 is killed and restored while on slate
    relay = procs.slate_relay("--slate-timeout", "5m", *ENCODE)
    src = Sources(relay)
    marks: dict[str, float] = {}

    # publisher 1: 640x360@30, red, with audio; SIGKILL (OBS crashing)
    p1 = procs.marker(ingest(relay), size="640x360", fps=30, colour="red")
    src.wait("live", 1, FIRST_LIVE)
    relay.wait_live(["d0", "d1", "d2"], timeout=FIRST_LIVE)
    time.sleep(3.5)  # three markers
    p1.signal(signal.SIGKILL)
    marks["kill"] = time.time()
    slate1 = src.wait("slate", 1)

    # on slate: a wrong-key publisher (magenta) is turned away and never reaches a receiver
    wrong = procs.marker(ingest(relay, WRONG_KEY), size="640x360", fps=30, colour="magenta", seconds=3)
    assert wrong.wait(20) != 0, f"the wrong-key publisher was taken:\n{wrong.log_text()[-1000:]}"
    relay.wait_log("rejected: wrong stream key", level="warning")

    # on slate: d2's receiver dies and comes back on the same port; restream reconnects it, d0/d1 untouched
    recs[2].kill()
    relay.wait_event(lambda e: e.get("event") == "state" and e["destination"] == "d2" and e["state"] != "live",
                     "d2 noticed its receiver gone", timeout=20)
    d2b = procs.receiver("d2", "dest-key-2", port=recs[2].port)
    relay.wait_live(["d2"], count=2, timeout=30)
    # the restored receiver gets the slate from the broadcast's next keyframe on (it has read the stream once its
    # log shows the input): wait for that, so its file starts on the slate
    wait_for(d2b.connected, 15, what="the restored d2 receiving the slate")
    assert src.states()[-1] == SLATE, src.states()

    # publisher 2: 320x240@25 (another size, aspect and rate), green, with audio; SIGSTOP (a stall), SIGCONT
    p2 = procs.marker(ingest(relay), size="320x240", fps=25, colour="green")
    src.wait("live", 2)
    time.sleep(3.5)
    p2.signal(signal.SIGSTOP)
    marks["stop"] = time.time()
    lost = src.wait("lost", 1)
    slate2 = src.wait("slate", 2)
    time.sleep(1.0)
    p2.signal(signal.SIGCONT)
    src.wait("live", 3)  # the same publisher delivers again: back from the slate
    time.sleep(2.5)
    p2.signal(signal.SIGINT)  # a clean stop (OBS: Stop Streaming): ffmpeg unpublishes and closes
    marks["sigint"] = time.time()
    p2.wait(10)
    slate3 = src.wait("slate", 3)

    # publisher 3: 640x360@30, blue, no audio; ends by itself (-t)
    p3 = procs.marker(ingest(relay), size="640x360", fps=30, colour="blue", audio=False, seconds=4)
    src.wait("live", 4)
    assert p3.wait(20) == 0, p3.log_text()[-1500:]
    slate4 = src.wait("slate", 4)
    time.sleep(1.5)

    # Ctrl-C on slate
    assert relay.interrupt(30) == 130, relay.stderr[-3000:]
    end = relay.end()
    print("source events:", [(e["state"], e.get("detail")) for e in src.events()])
    print(f"slate event after kill {event_ts(slate1) - marks['kill']:.2f} s, lost after SIGSTOP "
          f"{event_ts(lost) - marks['stop']:.2f} s, slate after SIGSTOP {event_ts(slate2) - marks['stop']:.2f} s, "
          f"slate after SIGINT {event_ts(slate3) - marks['sigint']:.2f} s; end: {end}")
    assert end["exit_code"] == 130 and end["reason"] == "interrupted", end
    assert end["handovers"] == 3, end  # slate -> p2, slate -> p2 again after the stall, slate -> p3
    assert {n: d["state"] for n, d in end["destinations"].items()} == {"d0": "stopped", "d1": "stopped",
                                                                       "d2": "stopped"}, end
    assert end["destinations"]["d0"]["reconnects"] == end["destinations"]["d1"]["reconnects"] == 0, end
    assert end["destinations"]["d2"]["reconnects"] == 1, end
    kinds = [s for s in src.states() if s not in ("waiting", "lost")]
    assert kinds == ["live", SLATE] * 4, src.states()
    assert "lost" in src.states()[src.states().index(SLATE) + 1:], "the stall was never reported as lost"
    assert len([e for e in relay.events if e["event"] == "start"]) == 1, "the broadcast ffmpeg was restarted"
    encoders = [p for p in relay.ffmpegs() if any(b"\0libx264\0" in a for a in relay.children[p])]
    assert len(encoders) == 1, f"one broadcasting ffmpeg for the whole run: {encoders}"

    for r in (recs[0], recs[1], d2b):
        one_publish(r)
    story = ["red", SLATE, "green", SLATE, "green", SLATE, "blue", SLATE]
    reps = [checked(r, story, min_offsets=4) for r in recs[:2]]
    # the restored receiver: ffmpeg's tee fifo resumes from the last keyframe it holds (the encoder's GOP is 2 s), so
    # its file may begin with the last frames of publisher 1 before the slate (observed: 2 frames), never more
    # than a GOP of them
    first = avcheck.analyze(d2b.out).runs[0]
    lead = ["red"] if first.label == "red" and first.frames <= 60 else []
    restored = checked(d2b, lead + story[1:], min_offsets=2)
    killed = avcheck.analyze(recs[2].out)  # SIGKILLed: what it had flushed (a solid colour is small: maybe nothing)
    assert killed.sequence() in ([], ["red"], ["red", SLATE]), killed.describe()

    for rep in (*reps, restored):
        blue = frames_between(rep, "blue")[0]
        assert not [b for b in rep.beeps if blue.start <= b <= blue.end], "beeps while the silent publisher was on"
        # slate_s: the time on slate the receiver shows, within a second (JSON says it, the file proves it)
    slate_frames = reps[0].frames_of(SLATE)
    assert abs(end["slate_s"] - slate_frames / 30) <= 1.0, (end["slate_s"], slate_frames / 30)
    # two untouched destinations got the same broadcast: the same number of frames, within a few at the end
    assert abs(len(reps[0].frames) - len(reps[1].frames)) <= 5


# -- 2. relay --slate: --slate-timeout ends it (exit 0); --size/--fps; plain lines --------------------------------

@timing
@pytest.mark.timeout(120)
def test_relay_slate_image_timeout_ends_cleanly_at_the_given_size_and_rate(procs, add, tmp_path):
    recs = receivers(procs, add, 1)
    card = avcheck.still_image(tmp_path / "card.png", "yellow")  # --slate=FILE: a picture
    relay = procs.slate_relay("--slate-timeout", "3s", "--size", "320x180", "--fps", "15", *ENCODE,
                              f"--slate={card}", json=False)
    pub = procs.marker(ingest(relay), size="640x360", fps=30, colour="red", seconds=4, flash_frames=2)  # 30 -> 15
    assert pub.wait(30) == 0, pub.log_text()[-1500:]
    gone = time.monotonic()
    rc = relay.wait(30)
    took = time.monotonic() - gone
    assert rc == 0, relay.stdout[-3000:] + relay.stderr[-3000:]
    lines = relay.stdout.splitlines()
    assert any(re.match(r".*source: live\b", x) for x in lines), relay.stdout
    assert any(re.match(r".*source: slate\b", x) for x in lines), relay.stdout
    assert 2.5 <= took <= 8.0, f"--slate-timeout 3s ended {took:.1f} s after the publisher left"

    one_publish(recs[0])
    rep = checked(recs[0], ["red", "yellow"], min_offsets=2)
    info = subprocess.run([FFMPEG, "-hide_banner", "-i", str(recs[0].out)], capture_output=True, text=True).stderr
    assert re.search(r"Video: h264.*, 320x180\b", info), info
    steps = {round(b.pts - a.pts, 3) for a, b in zip(rep.frames, rep.frames[1:])}
    assert steps <= {0.066, 0.067, 0.0667}, f"not 15 fps: frame steps {sorted(steps)}"
    slate = frames_between(rep, "yellow")[-1]
    assert 2.0 <= (slate.end - slate.start) <= 5.0, rep.describe()


# -- 3. go rtmp:// --slate: the source server dies, comes back, then stalls --------------------------------------

@timing
@pytest.mark.timeout(150)
def test_go_rtmp_pull_looped_video_slate_while_the_server_is_gone_and_back_on_its_return(procs, add, tmp_path):
    recs = receivers(procs, add, 2)
    # --slate=FILE: a 2 s clip, looped with its sound: yellow with its own flash+beep markers (A/V checked on it too)
    loop = avcheck.marker_file(tmp_path / "loop.mp4", seconds=2, size="320x240", fps=25, colour="yellow")
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/src"
    server = procs.marker(url, size="320x240", fps=25, colour="red", extra=("-listen", "1"))
    wait_listening(port, 10, proc=server.proc)
    go = procs.go(url, "--size", "320x180", "--fps", "30", *ENCODE, "--json", f"--slate={loop}")
    src = Sources(go)
    src.wait("live", 1, FIRST_LIVE)
    go.wait_live(["d0", "d1"], timeout=FIRST_LIVE)
    time.sleep(3.5)
    server.signal(signal.SIGKILL)
    src.wait("slate", 1)
    # 8 s on the looped slate (4 times round its 2 s clip: its A/V offset must hold through the loops); restream
    # reopens the source every second meanwhile: nothing listens
    time.sleep(8.0)
    assert src.states()[-1] == SLATE, src.states()

    again = procs.marker(url, size="640x360", fps=30, colour="green", extra=("-listen", "1"))
    wait_listening(port, 10, proc=again.proc)
    src.wait("live", 2, timeout=SOURCE_TIMEOUT)
    time.sleep(3.5)
    again.signal(signal.SIGSTOP)  # the server stalls: the connection stays open, nothing comes
    src.wait("slate", 2)
    time.sleep(1.0)
    again.kill()  # ... and dies: the source ffmpeg's decoder lets its last frames go; they must stay off air
    time.sleep(2.0)
    assert go.proc.poll() is None, "go ended with the source"
    assert interrupt(go) == 130, go.stderr[-3000:]
    end = go.events[-1]
    assert end["event"] == "end" and end["exit_code"] == 130 and end["handovers"] == 1, end
    assert [s for s in src.states() if s not in ("waiting", "lost")] == ["live", SLATE, "live", SLATE], src.states()
    for r in recs:
        one_publish(r)
        rep = checked(r, ["red", "yellow", "green", "yellow"], min_offsets=10)
        first_loop = frames_between(rep, "yellow")[0]
        inside = [t for t, _ in rep.offsets if first_loop.start <= t <= first_loop.end]
        assert len(inside) >= 6, f"the looped slate's own markers (sound and picture): {rep.describe()}"


# -- 4. go srt://…?mode=listener --slate: the caller dies; another one comes ------------------------------------

def udp_bound(port: int) -> bool:
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            rows = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        if any(int(r.split()[1].rsplit(":", 1)[1], 16) == port for r in rows):
            return True
    return False


def srt_caller(procs: Procs, port: int, budget: float = 20.0, **kw) -> Marker:
    """A marker publisher calling restream's SRT listener, called again while the call fails (as OBS retries):
    between two sessions the listener may not be back yet."""
    deadline = time.monotonic() + budget
    while True:
        caller = procs.marker(f"srt://127.0.0.1:{port}?mode=caller&latency=120000", fmt="mpegts", **kw)
        try:
            rc = caller.wait(2.0)
        except subprocess.TimeoutExpired:
            return caller  # connected and sending
        if kw.get("seconds") is not None and rc == 0:
            return caller
        if time.monotonic() > deadline:
            raise TimeoutError(f"no SRT call got through in {budget} s: {caller.log_text()[-800:]}")
        time.sleep(0.5)


@timing
@pytest.mark.timeout(150)
def test_go_srt_listener_slate_after_the_caller_dies_and_hand_over_to_the_next(procs, add):
    recs = receivers(procs, add, 1)
    port = free_port()
    go = procs.go(f"srt://127.0.0.1:{port}?mode=listener", "--size", "320x180", "--fps", "30", *ENCODE, "--json",
                  "--slate")
    src = Sources(go)
    wait_for(lambda: udp_bound(port), READY_TIMEOUT, what="restream's SRT listener")
    first = srt_caller(procs, port, size="320x240", fps=25, colour="red")
    src.wait("live", 1, FIRST_LIVE)
    go.wait_live(["d0"], timeout=FIRST_LIVE)
    time.sleep(3.5)
    first.signal(signal.SIGKILL)
    src.wait("slate", 1)
    time.sleep(1.0)
    second = srt_caller(procs, port, size="640x360", fps=30, colour="green", seconds=5)
    src.wait("live", 2, timeout=SOURCE_TIMEOUT)
    assert second.wait(20) == 0, second.log_text()[-1500:]
    src.wait("slate", 2)
    time.sleep(1.0)
    assert interrupt(go) == 130, go.stderr[-3000:]
    end = go.events[-1]
    print("source events:", [(e["state"], e.get("detail")) for e in src.events()])
    assert end["event"] == "end" and end["exit_code"] == 130, end
    assert [s for s in src.states() if s not in ("waiting", "lost")] == ["live", SLATE, "live", SLATE], src.events()
    assert end["handovers"] == 1, (end, src.events())
    one_publish(recs[0])
    checked(recs[0], ["red", SLATE, "green", SLATE], min_offsets=4)


# -- 5. what --slate refuses ------------------------------------------------------------------------------------------

def test_go_refuses_slate_for_a_file_and_the_test_pattern(cli, add, tmp_path):
    from support import make_clip

    add("d0", f"rtmp://127.0.0.1:{free_port()}/live", "dest-key-0")
    clip = make_clip(tmp_path / "clip.mp4", seconds=1)
    for args in ((str(clip),), ("--test-pattern",)):
        code, out, err = cli("go", *args, "--plain", "--slate")
        assert code == 2, (args, code, out, err)
        assert "slate" in err.lower() and "no such option" not in err.lower(), err
