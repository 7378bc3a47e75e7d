"""Relay mode's end and accounting through the real CLI: publisher sessions judged one by one, a ``waiting`` state
between them, Ctrl-C while waiting, ``--once``, and a start that fails before anything is live."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from test_relay_mode import GONE, INGEST_KEY, procs, published_ok, receivers, receivers_done  # noqa: F401

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(120)
def test_two_sessions_then_ctrl_c_while_waiting_delivered_both(procs, add):
    recs = receivers(procs, add, 2)
    relay = procs.relay()
    published_ok(procs.publish(relay.port, INGEST_KEY, seconds=3))
    relay.wait_session_over(1)
    relay.wait_log(GONE, 1)
    receivers_done(*recs)
    again = [procs.receiver(f"d{i}", f"dest-key-{i}", port=r.port) for i, r in enumerate(recs)]
    published_ok(procs.publish(relay.port, INGEST_KEY, seconds=3))
    relay.wait_session_over(2)
    # mutation caught: the repeat filter swallowing the second notice (it came within 60 s of the first)
    relay.wait_log(GONE, 2)
    assert relay.interrupt() == 130
    end = relay.end()
    assert end["reason"] == "interrupted" and end["sessions"] == 2, end
    for name, d in end["destinations"].items():
        # mutation caught: judging the waiting state at Ctrl-C instead of the sessions each destination carried
        assert d["state"] == "stopped", (name, d)
        assert d["reconnects"] == 0, (name, d)  # a new publisher session is not a reconnect
    assert 4.5 <= end["time_s"] <= 7.5, f"stream time over both sessions: {end['time_s']}"
    for name in ("d0", "d1"):
        states = [e["state"] for e in relay.states(name)]
        assert states[:3] == ["waiting", "connecting", "live"], states
        assert states.count("waiting") >= 2 and states[-1] == "stopped", states
    receivers_done(*again)


@pytest.mark.timeout(90)
def test_once_after_a_clean_publisher_stop_exits_0_delivered(procs, add):
    recs = receivers(procs, add, 2)
    relay = procs.relay(INGEST_KEY, "--once")
    published_ok(procs.publish(relay.port, INGEST_KEY, seconds=3))
    assert relay.wait(20) == 0, relay.stderr
    end = relay.end()
    assert end["exit_code"] == 0 and end["reason"] == "publisher gone" and end["sessions"] == 1, end
    assert {n: d["state"] for n, d in end["destinations"].items()} == {"d0": "stopped", "d1": "stopped"}
    receivers_done(*recs)


@pytest.mark.timeout(30)
def test_busy_port_is_one_error_and_no_end_event(tmp_path, add):
    add("d0", "rtmp://127.0.0.1:1/live", "k")
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        listen = f"rtmp://127.0.0.1:{port}/live/{INGEST_KEY}"
        proc = subprocess.run([sys.executable, "-m", "restream", "relay", "--listen", listen, "--json"],
                              capture_output=True, text=True, timeout=20)
        plain = subprocess.run([sys.executable, "-m", "restream", "relay", "--listen", listen, "--plain"],
                               capture_output=True, text=True, timeout=20)
    assert proc.returncode == 5, proc.stderr
    err_lines = proc.stderr.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("restream: error: cannot listen on"), proc.stderr
    assert "publish to" not in proc.stderr  # no banner before the port is bound
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    # mutation caught: an end event (with a 1970 timestamp and a null exit code) without a start
    assert [e["event"] for e in events] == ["error"], events
    assert events[0]["exit_code"] == 5 and events[0]["ts"].startswith("20")
    assert plain.returncode == 5 and plain.stdout == "", plain.stdout  # plain: no "end: no end event" line
    assert plain.stderr.strip().splitlines() == err_lines
