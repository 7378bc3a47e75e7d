"""The lifecycle state machine (pure): tables of event sequences, the races of a broadcast's end included.

Each row: the events in order, then the verdict per destination and the exit code they give. A comment on each race
row names the bug it catches (the mutation that would make it fail).
"""

from __future__ import annotations

import pytest

from restream import lifecycle as L
from restream.events import CONNECTING, FAILED, LIVE, RETRYING, STALLED, STOPPED, WAITING

A, B = "a", "b"


def run(events, names=(A, B), relay=False) -> L.Life:
    life = L.initial(list(names), relay=relay)
    for e in events:
        life = L.step(life, e)
    return life


def verdicts(life: L.Life) -> dict[str, str]:
    return {name: verdict for name, verdict, _ in L.final(life)}


GO_ROWS = [
    # id, events, verdicts, exit code
    ("clean end", [L.Live(A), L.Live(B), L.Unpublished(A), L.Unpublished(B), L.StopBegan("input ended")],
     {A: STOPPED, B: STOPPED}, 0),
    # race: ffmpeg's reset of a connection after it unpublished it (unread acks) arrives before the stop is known;
    # mutation caught: treating an error after a clean unpublish as a failure
    ("reset after unpublish", [L.Live(A), L.Live(B), L.Unpublished(A), L.Down(A, None),
                               L.StopBegan("input ended")], {A: STOPPED, B: STOPPED}, 0),
    # race: a reset after the stop began is part of stopping
    ("reset after the stop began", [L.Live(A), L.Live(B), L.StopBegan("duration reached"),
                                    L.Down(A, "Connection reset by peer"), L.Connecting(B)],
     {A: STOPPED, B: STOPPED}, 0),
    ("never live", [L.Live(A), L.Down(B, "did not answer the RTMP handshake within 5 s"),
                    L.StopBegan("duration reached")], {A: STOPPED, B: FAILED}, 1),
    ("retrying at the stop", [L.Live(A), L.Live(B), L.Down(B, "Broken pipe"), L.StopBegan("input ended")],
     {A: STOPPED, B: FAILED}, 1),
    ("recovered before the stop", [L.Live(A), L.Live(B), L.Down(B, "Broken pipe"), L.Connecting(B), L.Live(B),
                                   L.StopBegan("input ended")], {A: STOPPED, B: STOPPED}, 0),
    # mutation caught: a stalled destination counted as delivered
    ("stalled at the stop", [L.Live(A), L.Live(B), L.Stalled(B, 10.0), L.StopBegan("duration reached")],
     {A: STOPPED, B: FAILED}, 1),
    ("stall that drained", [L.Live(A), L.Live(B), L.Stalled(B, 10.0), L.Resumed(B), L.StopBegan("input ended")],
     {A: STOPPED, B: STOPPED}, 0),
    # mutation caught: a destination cut while stopping (it would not take the end) counted as delivered
    ("forced while stopping", [L.Live(A), L.Live(B), L.StopBegan("interrupted"), L.Forced(B, "held up the end")],
     {A: STOPPED, B: FAILED}, 1),
    ("none delivered", [L.Down(A, "refused"), L.StopBegan("input ended")], {A: FAILED, B: FAILED}, 5),
    ("removed is not judged", [L.Live(A), L.Live(B), L.Removed(B), L.StopBegan("input ended")], {A: STOPPED}, 0),
    ("added while live", [L.Live(A), L.Live(B), L.Added("c"), L.Connecting("c"), L.Live("c"),
                          L.StopBegan("input ended")], {A: STOPPED, B: STOPPED, "c": STOPPED}, 0),
]


@pytest.mark.parametrize("events,expected,code", [r[1:] for r in GO_ROWS], ids=[r[0] for r in GO_ROWS])
def test_go_verdicts(events, expected, code):
    life = run(events)
    assert verdicts(life) == expected
    assert L.exit_code(life) == code


RELAY_ROWS = [
    # two publisher sessions, then Ctrl-C while waiting: both sessions delivered (mutation caught: judging the
    # waiting state at the stop instead of the sessions)
    ("two sessions then stop while waiting",
     [L.SessionStart(), L.Live(A), L.Live(B), L.Unpublished(A), L.Unpublished(B), L.Down(B, None), L.SessionEnd(),
      L.SessionStart(), L.Live(A), L.Live(B), L.SessionEnd(), L.StopBegan("interrupted")],
     {A: STOPPED, B: STOPPED}, 0),
    ("one session missed", [L.SessionStart(), L.Live(A), L.SessionEnd(), L.SessionStart(), L.Live(A), L.Live(B),
                            L.SessionEnd(), L.StopBegan("interrupted")], {A: STOPPED, B: FAILED}, 1),
    ("stop during a session", [L.SessionStart(), L.Live(A), L.Live(B), L.StopBegan("interrupted")],
     {A: STOPPED, B: STOPPED}, 0),
    ("no publisher ever", [L.StopBegan("interrupted")], {A: STOPPED, B: STOPPED}, 0),
    # events of the closing ffmpeg between sessions change nothing
    ("noise while waiting", [L.SessionStart(), L.Live(A), L.Live(B), L.SessionEnd(), L.Down(A, "reset"),
                             L.StopBegan("interrupted")], {A: STOPPED, B: STOPPED}, 0),
]


@pytest.mark.parametrize("events,expected,code", [r[1:] for r in RELAY_ROWS], ids=[r[0] for r in RELAY_ROWS])
def test_relay_verdicts(events, expected, code):
    life = run(events, relay=True)
    assert verdicts(life) == expected
    assert L.exit_code(life) == code


def test_relay_states_wait_between_sessions_and_sessions_are_counted():
    life = run([], relay=True)
    assert [d.state for d in life.dests] == [WAITING, WAITING]
    life = run([L.SessionStart(), L.Live(A)], relay=True)
    assert life.dest(A).state == LIVE and life.dest(B).state == CONNECTING
    life = run([L.SessionStart(), L.Live(A), L.SessionEnd(), L.SessionStart(), L.SessionEnd()], relay=True)
    assert life.sessions == 2 and life.dest(A).sessions == 2 and life.dest(A).delivered == 1
    assert [d.state for d in life.dests] == [WAITING, WAITING]
    why = dict((n, w) for n, _, w in L.final(L.step(life, L.StopBegan("interrupted"))))
    assert "delivered 1 of 2 publisher sessions" in why[A]


def test_states_and_what_is_announced():
    life = run([L.Live(A)])
    old, life = life, L.step(life, L.Stalled(A, 5.0))
    assert L.changes(old, life) == [(A, STALLED, None)] and life.dest(A).stalled_since == 5.0
    old, life = life, L.step(life, L.Resumed(A))
    assert L.changes(old, life) == [(A, LIVE, None)]
    old, life = life, L.step(life, L.Down(A, "Broken pipe"))
    assert L.changes(old, life) == [(A, RETRYING, "Broken pipe")]
    old, life = life, L.step(life, L.Connecting(A))
    assert L.changes(old, life) == []  # another attempt: still retrying, the error kept
    old, life = life, L.step(life, L.StopBegan("input ended"))
    old, life = life, L.step(life, L.Down(A, "late"))
    assert life is old  # after the stop began nothing but a forced cut changes a verdict


def test_failed_reason_keeps_the_last_error():
    life = run([L.Down(B, "did not answer the RTMP handshake within 5 s"), L.StopBegan("duration reached")])
    why = {n: w for n, _, w in L.final(life)}
    assert why[B] == "never went live (did not answer the RTMP handshake within 5 s)"
    life = run([L.Live(B), L.Stalled(B, 1.0), L.StopBegan("duration reached")])
    assert {n: w for n, _, w in L.final(life)}[B] == "stalled when the broadcast ended"


# -- backup = "both": each ingest has its own lifecycle; the destination delivered if either did ----------------------

P, K = "primary", "backup"

BOTH_ROWS = [
    # id, events, destination verdict, per-ingest verdicts, exit code
    ("both delivered", [L.Live(A, P), L.Live(A, K), L.Unpublished(A, P), L.Unpublished(A, K),
                        L.StopBegan("input ended")], STOPPED, {P: STOPPED, K: STOPPED}, 0),
    # mutation caught: requiring every ingest to deliver
    ("backup down all along", [L.Live(A, P), L.Down(A, "Connection refused", K), L.StopBegan("input ended")],
     STOPPED, {P: STOPPED, K: FAILED}, 0),
    ("primary died, backup carried it", [L.Live(A, P), L.Live(A, K), L.Down(A, "Broken pipe", P),
                                         L.StopBegan("duration reached")], STOPPED, {P: FAILED, K: STOPPED}, 0),
    # mutation caught: judging only the last ingest that spoke
    ("neither delivered", [L.Live(A, P), L.Down(A, "Broken pipe", P), L.Down(A, "refused", K),
                           L.StopBegan("input ended")], FAILED, {P: FAILED, K: FAILED}, 1),
    # one ingest stalled at the stop, the other live: delivered through the live one
    ("one stalled at the stop", [L.Live(A, P), L.Live(A, K), L.Stalled(A, 10.0, K), L.StopBegan("input ended")],
     STOPPED, {P: STOPPED, K: FAILED}, 0),
    # race: one ingest cut while stopping (would not take the end); the other took it
    ("one forced while stopping", [L.Live(A, P), L.Live(A, K), L.StopBegan("interrupted"),
                                   L.Forced(A, "held up the end", K)], STOPPED, {P: STOPPED, K: FAILED}, 0),
    ("both forced while stopping", [L.Live(A, P), L.Live(A, K), L.StopBegan("interrupted"),
                                    L.Forced(A, "held up the end", K), L.Forced(A, "held up the end", P)],
     FAILED, {P: FAILED, K: FAILED}, 1),
    # a reset after the stop began is part of stopping, for an ingest as for a destination
    ("reset of an ingest after the stop began", [L.Live(A, P), L.Live(A, K), L.StopBegan("duration reached"),
                                                 L.Down(A, "Connection reset by peer", P)],
     STOPPED, {P: STOPPED, K: STOPPED}, 0),
]


@pytest.mark.parametrize("events, verdict, legs, code", [r[1:] for r in BOTH_ROWS], ids=[r[0] for r in BOTH_ROWS])
def test_both_ingests_verdicts(events, verdict, legs, code):
    life = run([L.Live(B), *events], names=(A, B))
    assert verdicts(life) == {A: verdict, B: STOPPED}
    assert {ingest: v for name, ingest, v, _ in L.legs_final(life) if name == A} == legs
    assert L.exit_code(life) == code


def test_both_destination_state_follows_its_ingests():
    life = L.initial([A])
    seen = []
    for e in (L.Connecting(A, P), L.Connecting(A, K), L.Down(A, "Connection refused", K), L.Live(A, P),
              L.Connecting(A, K), L.Live(A, K), L.Stalled(A, 5.0, P), L.Down(A, "stalled", K), L.Resumed(A, P),
              L.Down(A, "Broken pipe", P)):
        old, life = life, L.step(life, e)
        seen.append((life.dest(A).state, L.leg_changes(old, life)))
    assert [s for s, _ in seen] == [CONNECTING, CONNECTING, CONNECTING, LIVE, LIVE, LIVE, LIVE, STALLED, LIVE,
                                    RETRYING]
    # the ingests' own changes, announced one by one (an error only with retrying)
    assert seen[2][1] == [(A, K, RETRYING, "Connection refused")]
    assert seen[6][1] == [(A, P, STALLED, None)]
    assert life.dest(A).error == "primary: Broken pipe"
    assert life.dest(A).stalled_since is None


def test_both_edited_to_failover_while_live_is_judged_as_one_connection():
    # mutation caught: the ingests of a mode the destination left still deciding its verdict
    life = run([L.Live(A, P), L.Down(A, "refused", K), L.Connecting(A), L.Live(A), L.Down(A, "Broken pipe"),
                L.StopBegan("input ended")], names=(A,))
    assert verdicts(life) == {A: FAILED} and L.legs_final(life) == []


def test_both_in_relay_mode_each_session_judged_by_its_ingests():
    life = run([L.SessionStart(), L.Live(A, P), L.Down(A, "refused", K), L.SessionEnd(),
                L.SessionStart(), L.Live(A, K), L.Down(A, "Broken pipe", P), L.SessionEnd(),
                L.StopBegan("interrupted")], names=(A,), relay=True)
    assert verdicts(life) == {A: STOPPED}  # each session delivered by one ingest or the other
    assert {i: v for _, i, v, _ in L.legs_final(life)} == {P: FAILED, K: FAILED}  # neither delivered every session
