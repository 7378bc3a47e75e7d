"""The end of a broadcast through the real CLI: bounded whatever the destinations do, with verdicts that mean something.

* A paused destination plus a black hole (and, separately, a server that answers ``connect`` but never ``publish``)
  with ``--duration 20s``: restream exits within 30 s of its start with exit 1, the paused destination is reported
  ``stalled`` within 10 s of the pause, the healthy destinations decode whole with no gap over 0.5 s, and each
  failed destination's message names what the destination did not do.
* A destination removed while live gets a clean end of stream: its file decodes to within 0.1 s of the removal.

Cheap on two cores: 320x180 at 15 fps, 300k video, 64k audio.
"""

from __future__ import annotations

import time

import pytest

from mute_rtmp import MuteServer
from support import Go, event_ts as _ts, free_port, probe, receivers_done, wait_for
from test_go_e2e import CHEAP, assert_delivered

pytestmark = pytest.mark.e2e

DURATION = 20.0
BOUND = 30.0  # the bound: exit within 30 s of the start for a 20 s broadcast
STALL_REPORTED = 10.0  # a paused destination is reported stalled within this long of the pause


def _healthy(procs, add, names="ab"):
    recs = {}
    for n in names:
        recs[n] = procs.receiver(n, f"key-{n}")
        add(n, recs[n].url, f"key-{n}")
    return recs


def _assert_whole(recs, go: Go):
    """Each healthy receiver decodes, lasts the duration (within 1 s), has no hole over 0.5 s."""
    receivers_done(*recs.values())
    for n, r in recs.items():
        m = assert_delivered(r, DURATION, within=1.0)
        assert m.max_gap <= 0.5, f"{n}: a {m.max_gap:.2f} s hole in what it received"
        assert go.state_now(n) == "stopped", go.states(n)


def _mute(procs, upto: str) -> MuteServer:
    server = MuteServer(free_port(), upto).start()
    procs.things.append(server)
    return server


@pytest.mark.timeout(90)
def test_paused_destination_and_black_hole_end_within_bound(procs, add):
    recs = _healthy(procs, add)
    paused_rx = procs.receiver("p", "key-p")
    proxy = procs.proxy(paused_rx.port)
    add("p", f"rtmp://127.0.0.1:{proxy.port}/live", "key-p")
    hole = _mute(procs, "tcp")
    add("hole", f"rtmp://127.0.0.1:{hole.port}/live", "key-hole")

    t0 = time.monotonic()
    go = procs.go(*CHEAP, "--duration", f"{DURATION:g}s", "--json")
    go.wait_live(["a", "b", "p"])
    wait_for(lambda: (go.last_progress() or {}).get("time_s", 0) >= 4, 20, what="4 s of stream")
    proxy.pause()
    paused_at = time.time()
    stalled = go.wait_state("p", "stalled", STALL_REPORTED + 5)
    rc = go.wait(BOUND + 5)
    took = time.monotonic() - t0
    proxy.resume()

    assert took <= BOUND, f"restream took {took:.1f} s for a {DURATION:g} s broadcast"
    assert rc == 1, go.stderr
    assert _ts(stalled) - paused_at <= STALL_REPORTED, f"stalled reported {_ts(stalled) - paused_at:.1f} s late"
    assert stalled.get("stalled_s") is not None
    end = go.event("end")
    assert end["exit_code"] == 1
    assert end["destinations"]["p"]["state"] == "failed", end["destinations"]["p"]
    hole_end = end["destinations"]["hole"]
    assert hole_end["state"] == "failed" and "did not answer the RTMP handshake" in hole_end["last_error"], hole_end
    _assert_whole(recs, go)


@pytest.mark.timeout(90)
def test_server_that_never_answers_publish_is_named_and_bounded(procs, add):
    recs = _healthy(procs, add)
    mute = _mute(procs, "connect")
    add("mute", f"rtmp://127.0.0.1:{mute.port}/live", "key-mute")

    t0 = time.monotonic()
    go = procs.go(*CHEAP, "--duration", f"{DURATION:g}s", "--json")
    rc = go.wait(BOUND + 5)
    took = time.monotonic() - t0
    assert took <= BOUND, f"restream took {took:.1f} s for a {DURATION:g} s broadcast"
    assert rc == 1, go.stderr
    assert mute.publishes >= 1, "the server never saw a publish: the test proves nothing"
    end = go.event("end")
    err = end["destinations"]["mute"]["last_error"] or ""
    assert "accepted `connect` but never answered `publish`" in err, end["destinations"]["mute"]
    assert "publisher" not in err  # the destination did not answer: never blame restream's side
    _assert_whole(recs, go)


def _stream_time_at(go: Go, wall: float) -> float:
    """The stream time at wall time ``wall``, interpolated between the progress events around it."""
    points = [(_ts(e), e["time_s"]) for e in go.events if e.get("event") == "progress" and e.get("time_s") is not None]
    before = max((p for p in points if p[0] <= wall), default=None)
    after = min((p for p in points if p[0] >= wall), default=None)
    assert before and after, "no progress around the removal"
    if after[0] == before[0]:
        return before[1]
    return before[1] + (after[1] - before[1]) * (wall - before[0]) / (after[0] - before[0])


@pytest.mark.timeout(90)
def test_removed_destination_gets_a_clean_end_of_stream(procs, add, cli):
    recs = _healthy(procs, add, "ab")
    go = procs.go(*CHEAP, "--duration", "14s", "--json", "--status-interval", "0.2")
    go.wait_live(["a", "b"])
    wait_for(lambda: (go.last_progress() or {}).get("time_s", 0) >= 5, 20, what="5 s of stream")
    code, _, err = cli("remove", "b")
    assert code == 0, err
    removed = go.wait_state("b", "removed", 5)
    wait_for(lambda: (go.last_progress() or {}).get("time_s", 0) >= 8, 20, what="the stream to go on")
    at = _stream_time_at(go, _ts(removed))
    assert recs["b"].proc.wait(10) == 0, recs["b"].log_text()[-1500:]  # the receiver saw a clean end of stream
    m = probe(recs["b"].out)
    assert m.decodes, m.errors
    last = m.keyframe_times[0] + m.duration if m.keyframe_times else m.duration
    # Nothing that was on its way at the removal is lost (mutation caught: aborting the slot's session drops
    # what the relay and the kernel held, ~0.2 s here), and the stream does stop there. The bound after it is
    # looser: ffmpeg's progress reports the muxer's time every 0.5 s, so "at" is known to about that.
    assert last >= at - 0.1, f"the file ends at {last:.2f} s, before the removal at stream time {at:.2f} s"
    assert last <= at + 1.0, f"the file ends at {last:.2f} s, long after the removal at stream time {at:.2f} s"
    assert go.wait(30) == 0, go.stderr
    receivers_done(recs["a"])
    assert_delivered(recs["a"], 14.0, within=1.0)
