"""Clean ends hold under load: ten 8 s broadcasts to five receivers while two CPU-bound processes compete for the
machine's cores. Every run must exit 0 with 5/5 delivered.

This module is never rerun on failure (its point is that a loaded machine does not produce false failures; a rerun
would hide exactly that). Mutation caught: judging a destination by a reset that ffmpeg's own close causes after it
unpublished (the "publisher connection failed: Connection reset by peer" false failure).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from test_go_e2e import CHEAP, Procs, assert_delivered, receivers_done

pytestmark = [pytest.mark.e2e, pytest.mark.no_rerun]

RUNS = 10
SECONDS = 8.0


@pytest.fixture
def hogs():
    """Two busy loops, one per core, started and stopped by the test."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
             for _ in range(2)]
    yield procs
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(10)


@pytest.mark.timeout(420)
def test_ten_clean_broadcasts_under_load_all_deliver(tmp_path, cli, hogs):
    assert all(h.poll() is None for h in hogs)
    failures = []
    for run in range(RUNS):
        procs = Procs(tmp_path / f"run{run}")
        try:
            recs = []
            for i in range(5):
                r = procs.receiver(f"d{i}", f"key-{i}")
                code, _, err = cli("add" if run == 0 else "edit", f"d{i}", "--url", r.url, "--key-stdin",
                                   input=f"key-{i}\n")
                assert code == 0, err
                recs.append(r)
            go = procs.go(*CHEAP, "--duration", f"{SECONDS:g}s", "--json")
            rc = go.wait(SECONDS + 25)
            end = go.event("end") or {}
            verdicts = {n: d["state"] for n, d in end.get("destinations", {}).items()}
            if rc != 0 or sorted(verdicts.values()) != ["stopped"] * 5:
                failures.append(f"run {run}: exit {rc}, {end.get('destinations')}")
                continue
            receivers_done(*recs)
            for r in recs:
                assert_delivered(r, SECONDS, within=1.0)
        finally:
            procs.close()
    assert all(h.poll() is None for h in hogs), "the load stopped during the test"
    assert not failures, "\n".join(failures)
