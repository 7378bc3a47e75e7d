"""Backup ingest with ``backup = "failover"`` (issue 15, part 1): the real CLI, real ffmpeg receivers.

* The primary is a port with nothing listening, or a server that refuses the publish (nginx-rtmp's ``on_publish``
  says no): the backup receives the stream within 6 s of the start and it decodes.
* The primary is killed mid-stream: the destination moves to the backup within 6 s; the other destination is
  untouched.
Plus the CLI side: ``add --backup`` fills YouTube's backup from the preset, ``--backup-url``, list/show/export/import,
and ``check`` probes both ingests.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from conftest import CANARY_KEY, assert_no_canary
from restream import profile as prof
from support import bound, free_port, probe, timing, wait_for
from test_go_e2e import CHEAP, _ts, receivers_done

SWITCH_BOUND_S = 6.0


# -- the CLI -------------------------------------------------------------------------------------------------------

def test_add_youtube_backup_from_preset_list_show_export_import(cli):
    code, out, err = cli("add", "youtube", "--backup", "--key", CANARY_KEY)
    assert code == 0, err
    d = prof.load("default").get("youtube")
    assert d.backup_url == "rtmp://b.rtmp.youtube.com/live2?backup=1" and d.backup_mode == "failover"
    assert cli("add", "own", "--url", "rtmp://127.0.0.1:1935/live", "--backup-url",
               "rtmps://127.0.0.2:443/live", "--key", "k-own")[0] == 0
    code, out, _ = cli("list")
    assert "BACKUP" in out and out.count("failover") == 2, out
    code, out, _ = cli("show", "youtube", "--json")
    row = json.loads(out)
    assert row["backup_url"] == "rtmp://b.rtmp.youtube.com/live2?backup=1" and row["backup"] == "failover"
    code, out, _ = cli("show", "own")
    assert "backup_url" in out and "rtmps://127.0.0.2:443/live" in out
    code, exported, _ = cli("export", "--show-keys")
    assert 'backup_url = "rtmp://b.rtmp.youtube.com/live2?backup=1"' in exported
    assert cli("import", "-", "-p", "copy", input=exported)[0] == 0
    assert prof.load("copy").destinations == prof.load("default").destinations
    # twitch has no backup preset; a SRT destination cannot have a backup; an unknown mode is refused
    code, _, err = cli("add", "twitch", "--backup", "--key", "k")
    assert code == 2 and "--backup-url" in err
    code, _, err = cli("add", "s", "--url", "srt://127.0.0.1:9000", "--no-key", "--backup-url", "rtmp://h/app")
    assert code == 2 and "SRT" in err
    code, _, err = cli("add", "b", "--url", "rtmp://h/app", "--key", "k", "--backup-url", "rtmp://i/app",
                       "--backup-mode", "twice")
    assert code == 2 and '"failover" or "both"' in err
    # "both": add, list, show, export/import keep it; edit switches modes
    assert cli("add", "b", "--url", "rtmp://h/app", "--key", "k-b", "--backup-url", "rtmp://i/app",
               "--backup-mode", "both")[0] == 0
    assert prof.load("default").get("b").backup_mode == "both"
    code, out, _ = cli("list")
    assert "both" in out, out
    code, out, _ = cli("show", "b", "--json")
    assert json.loads(out)["backup"] == "both"
    code, exported, _ = cli("export", "--show-keys")
    assert 'backup = "both"' in exported
    assert cli("import", "-", "-p", "copy2", input=exported)[0] == 0
    assert prof.load("copy2").get("b").backup_mode == "both"
    assert cli("edit", "b", "--backup-mode", "failover")[0] == 0
    assert prof.load("default").get("b").backup_mode == "failover"
    assert cli("edit", "b", "--backup-mode", "both")[0] == 0 and cli("remove", "b")[0] == 0
    # edit: add, then forget a backup
    assert cli("edit", "own", "--no-backup")[0] == 0
    assert prof.load("default").get("own").backup_url is None
    assert cli("edit", "youtube", "--no-backup")[0] == 0 and cli("edit", "youtube", "--backup")[0] == 0
    assert prof.load("default").get("youtube").backup_url == "rtmp://b.rtmp.youtube.com/live2?backup=1"


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_check_probes_both_ingests(cli, procs):
    r = procs.receiver("r", "k")  # an RTMP server that answers the handshake and connect
    dead = free_port()
    assert cli("add", "d", "--url", f"rtmp://127.0.0.1:{dead}/live", "--key", "k", "--backup-url", r.url)[0] == 0
    code, out, err = cli("check", "--json", "--timeout", "5")
    assert code == 1, out + err  # the primary is down
    rows = json.loads(out)["destinations"]
    assert [(x["name"], x["ingest"], x["reachable"]) for x in rows] == [("d", "primary", False), ("d", "backup", True)]


# -- going live ----------------------------------------------------------------------------------------------------

def _switches(go, name: str) -> list[dict]:
    return [e for e in go.events if e.get("event") == "ingest" and e["destination"] == name]


@timing
@pytest.mark.e2e
@pytest.mark.timeout(90)
@pytest.mark.parametrize("primary", ["nothing listening", "refuses the publish"])
def test_primary_down_at_start_backup_receives_within_6s(procs, cli, tmp_path, primary):
    key = "key-bk-" + "x" * 20
    backup = procs.receiver("backup", key)
    other = procs.receiver("other", "key-other")
    ngx = None
    if primary == "nothing listening":
        primary_url = f"rtmp://127.0.0.1:{free_port()}/live"
    else:
        from nginx import NginxRtmp, require_nginx

        require_nginx(tls=False)
        ngx = NginxRtmp(tmp_path, apps=["a1"], expected_keys={"a1": "some-other-key"}, tls=False).start()
        procs.things.append(ngx)
        primary_url = ngx.rtmp_url("a1")
    assert cli("add", "yt", "--url", primary_url, "--key", key,
               "--backup-url", f"rtmp://127.0.0.1:{backup.port}/live?backup=1")[0] == 0
    assert cli("add", "other", "--url", other.url, "--key", "key-other")[0] == 0
    go = procs.go(*CHEAP, "--duration", "10s", "--json", "--status-interval", "0.5")
    live = go.wait_state("yt", "live", 15)
    start = _ts(go.event("start"))
    took = _ts(live) - start
    (switch,) = _switches(go, "yt")
    assert switch["ingest"] == "backup" and "failed attempts on the primary ingest" in switch["reason"], switch
    assert live.get("ingest") == "backup", live
    print(f"primary {primary}: live on the backup {took:.2f} s after the start; switched after "
          f"{_ts(switch) - start:.2f} s: {switch['reason']}")
    bound(took, SWITCH_BOUND_S, "from the start to live on the backup")
    if ngx is not None:
        attempts = ngx.attempts("a1")
        assert len(attempts) >= 3 and not any(a.accepted for a in attempts)
        assert attempts[0].key == key  # it was the real key that was refused
    assert go.wait(40) == 0, go.stderr
    receivers_done(backup, other)
    end = go.events[-1]
    assert end["destinations"]["yt"]["state"] == "stopped" and end["destinations"]["yt"]["ingest"] == "backup"
    assert backup.stream_names() == []
    m = probe(backup.out)
    assert m.decodes and m.first_packet_key and m.duration >= 10 - SWITCH_BOUND_S - 1, m
    assert [e["state"] for e in go.states("other")] == ["connecting", "live", "stopped"]


@timing
@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_primary_killed_mid_stream_moves_to_backup_others_untouched(procs, cli):
    key = "key-yt-" + "y" * 20
    primary = procs.receiver("primary", key)
    backup = procs.receiver("backup", key)
    other = procs.receiver("other", "key-other")
    assert cli("add", "yt", "--url", primary.url, "--key", key, "--backup-url", backup.url)[0] == 0
    assert cli("add", "other", "--url", other.url, "--key", "key-other")[0] == 0
    go = procs.go(*CHEAP, "--duration", "16s", "--json", "--status-interval", "0.5")
    go.wait_live(["yt", "other"])
    assert _switches(go, "yt") == [] and not backup.connected()
    import time

    time.sleep(3)
    primary.kill()
    killed = time.time()
    live = go.wait_state("yt", "live", 10, after=killed)
    took = _ts(live) - killed
    (switch,) = _switches(go, "yt")
    print(f"killed the primary: live on the backup after {took:.2f} s; switch: {switch['reason']}")
    assert live.get("ingest") == "backup", live
    bound(took, SWITCH_BOUND_S, "from the primary's death to live on the backup")
    assert go.wait(40) == 0, go.stderr
    receivers_done(backup, other)
    end = go.events[-1]
    assert end["exit_code"] == 0 and end["destinations"]["yt"]["ingest"] == "backup", end
    assert end["destinations"]["other"]["reconnects"] == 0
    assert [e["state"] for e in go.states("other")] == ["connecting", "live", "stopped"]
    m = probe(backup.out)
    assert m.decodes and m.first_packet_key and m.duration >= 5, m


# -- the relay's failover rule (no ffmpeg: a bare client speaks the first handshake bytes) ---------------------------

async def _hold_server(port: int, accepted: list):
    """A TCP server that accepts and never answers (its sessions neither fail nor go live)."""

    async def on(reader, writer):
        accepted.append(port)
        try:
            await reader.read()
        finally:
            writer.close()

    return await asyncio.start_server(on, "127.0.0.1", port)


async def _attempt(relay, slot: int = 0, hold: float = 0.2):
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.ports[slot])
    writer.write(b"\x03" + bytes(1536))
    await asyncio.sleep(hold)
    writer.close()


def test_relay_failover_after_3_attempts_and_no_flapping():
    from restream.slotrelay import SlotRelay, Upstream

    async def main():
        events: list = []
        relay = SlotRelay(1, on_event=events.append, answer_timeout=60)
        relay.failover_after = 60  # only the attempt count here
        await relay.start()
        p_port, b_port = free_port(), free_port()
        relay.assign(0, Upstream("yt", f"rtmp://127.0.0.1:{p_port}/live", CANARY_KEY,
                                 backup_url=f"rtmp://127.0.0.1:{b_port}/live?backup=1"))
        accepted: list = []
        backup = await _hold_server(b_port, accepted)
        for _ in range(3):
            await _attempt(relay)
        switched = [e for e in events if e.kind == "switched"]
        assert [(e.ingest, e.error.split(" (")[0]) for e in switched] == \
            [("backup", "3 failed attempts on the primary ingest")]
        assert all(CANARY_KEY not in (e.error or "") for e in events)
        # the primary comes back; the backup neither fails nor goes live: new sessions stay on the backup
        primary = await _hold_server(p_port, accepted)
        for _ in range(3):
            await _attempt(relay, hold=0.3)
        assert accepted == [b_port] * 3 and relay._ingest == ["backup"]
        # the backup fails 3 times: back to the primary
        backup.close()
        await backup.wait_closed()
        for _ in range(3):
            await _attempt(relay)
        assert [e.ingest for e in events if e.kind == "switched"] == ["backup", "primary"]
        await _attempt(relay, hold=0.3)
        assert accepted[-1] == p_port
        primary.close()
        await relay.close()

    asyncio.run(main())


@timing
@pytest.mark.e2e  # a black-hole server and the relay on loopback, against the clock
def test_relay_failover_after_5s_without_the_primary_cuts_a_hanging_session():
    from restream.slotrelay import SlotRelay, Upstream

    async def main():
        events: list = []
        relay = SlotRelay(1, on_event=events.append, answer_timeout=60)
        relay.failover_after = 1.0
        await relay.start()
        p_port, b_port = free_port(), free_port()
        accepted: list = []
        primary = await _hold_server(p_port, accepted)  # accepts, never answers the handshake: a black hole
        relay.assign(0, Upstream("yt", f"rtmp://127.0.0.1:{p_port}/live", "key-zq-123",
                                 backup_url=f"rtmp://127.0.0.1:{b_port}/live"))
        start = time.monotonic()
        hanging = asyncio.create_task(_attempt(relay, hold=5))
        while not any(e.kind == "switched" for e in events) and time.monotonic() - start < 10:
            await asyncio.sleep(0.05)
        took = time.monotonic() - start
        (switch,) = [e for e in events if e.kind == "switched"]
        assert switch.ingest == "backup" and "not live for 1 s" in switch.error and took >= 1.0, (switch, took)
        bound(took, 2.5, "failover after 1 s without the primary")  # (a bound on seconds: TimingError, see support)
        while not any(e.kind == "disconnected" for e in events) and time.monotonic() - start < 10:
            await asyncio.sleep(0.05)
        cut = next(e for e in events if e.kind == "disconnected")
        assert cut.ingest == "primary" and "switching to the backup" in cut.error
        hanging.cancel()
        primary.close()
        await relay.close()

    asyncio.run(main())


T0 = 1000.0


def _shown(*events):
    """Fold ``events`` (after a start with one destination, "yt") into a snapshot, rendered by the JSON and the
    plain views: (snapshot, JSON lines, plain text)."""
    import io

    from restream import events as ev
    from restream import status, view

    out, plain = io.StringIO(), io.StringIO()
    sinks = [view.JsonView(out), view.PlainView(plain)]
    snap = status.initial(profile="p")
    for e in (ev.Started(T0, "p", "test", "ffmpeg", 1, (("yt", "rtmp://a/live2"),)), *events):
        snap = status.reduce(snap, e)
        for s in sinks:
            s.update(snap, e)
    return snap, [json.loads(x) for x in out.getvalue().splitlines()], plain.getvalue()


def test_status_and_views_show_the_backup_ingest():
    from restream import events as ev
    from restream import status, view

    t = T0
    snap, lines, plain = _shown(
        ev.DestState(t + 1, "yt", ev.RETRYING, "cannot connect"),
        ev.IngestSwitch(t + 2, "yt", "backup", "3 failed attempts on the primary ingest (cannot connect)"),
        ev.DestState(t + 3, "yt", ev.LIVE))
    row = snap.destination("yt")
    assert (row.state, row.ingest, row.switches) == ("live", "backup", 1)
    assert view.state_text(row, snap.now) == "live (backup)"
    switch = next(x for x in lines if x["event"] == "ingest")
    assert switch["destination"] == "yt" and switch["ingest"] == "backup" and "3 failed" in switch["reason"]
    assert lines[-1]["event"] == "state" and lines[-1]["state"] == "live" and lines[-1]["ingest"] == "backup"
    assert "yt: switched to the backup ingest (3 failed attempts" in plain
    assert "yt: live (backup)" in plain
    assert status.outcome(snap)["yt"]["ingest"] == "backup"


# -- backup = "both": primary and backup fed at once ---------------------------------------------------------------

def framemd5(path) -> dict[str, str]:
    """``"STREAM:PTS"`` (0 video, 1 audio; pts in ms, FLV's time base) -> the MD5 of that packet (``-c copy``)."""
    import subprocess

    from support import FFMPEG

    out = subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-i", str(path), "-map", "0", "-c", "copy",
                          "-f", "framemd5", "-"], capture_output=True, text=True, timeout=60).stdout
    frames = {}
    for line in out.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        stream, _dts, pts, _dur, _size, digest = [x.strip() for x in line.split(",")][:6]  # (flags may follow)
        frames[f"{stream}:{pts}"] = digest
    return frames


@timing
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_both_ingests_get_identical_frames_one_killed_reconnects_by_itself(procs, cli, tmp_path):
    key = CANARY_KEY  # each receiver takes only the exact key (it warns on any other stream name)
    primary = procs.receiver("primary", key)
    backup = procs.receiver("backup", key)
    other = procs.receiver("other", "key-other")
    assert cli("add", "yt", "--url", primary.url, "--key-stdin", "--backup-url", backup.url,
               "--backup-mode", "both", input=key + "\n")[0] == 0
    assert cli("add", "other", "--url", other.url, "--key", "key-other")[0] == 0
    log = tmp_path / "go.log"
    go = procs.go(*CHEAP, "--duration", "20s", "--json", "--status-interval", "0.5", "--log-file", str(log))
    go.wait_live(["yt", "other"])
    go.wait_event(lambda e: e.get("event") == "ingest_state" and e["destination"] == "yt" and e["state"] == "live",
                  "both ingests live", 15, count=2)

    def status_row():
        code, out, _ = cli("status", "--json")
        rows = {d["name"]: d for d in json.loads(out).get("destinations", [])} if code == 0 else {}
        return rows.get("yt") if rows.get("yt", {}).get("state") == "live (primary+backup)" else None

    wait_for(status_row, 5, what="restream status: live (primary+backup)")
    go.wait_stream_time(4, 15)
    assert backup.connected()  # (its file stays empty: SIGKILL leaves ffmpeg's buffer unwritten)
    backup.kill()
    killed = time.time()
    # the primary goes on: the destination stays live, only the backup is retrying
    down = go.wait_event(lambda e: e.get("event") == "ingest_state" and e["ingest"] == "backup"
                         and e["state"] == "retrying", "the backup retrying", 10)[0]
    print(f"backup killed: retrying after {_ts(down) - killed:.2f} s")
    assert go.state_now("yt") == "live" and [e["state"] for e in go.states("yt")] == ["connecting", "live"]
    # 2 s of stream with the backup gone (the primary must not show a gap: checked on the files below)
    go.wait_stream_time(float(go.last_progress()["time_s"]) + 2, 10)
    backup2 = procs.receiver("backup", key, port=backup.port)
    started = time.time()
    back = go.wait_event(lambda e: e.get("event") == "ingest_state" and e["ingest"] == "backup"
                         and e["state"] == "live" and _ts(e) > started, "the backup live again", 10)[0]
    took = _ts(back) - started
    print(f"a new backup receiver: live again {took:.2f} s after it started listening")
    bound(took, 6.0, "from the new backup receiver to live on it")
    assert go.wait(60) == 0, go.stderr
    receivers_done(primary, backup2, other)
    end = go.events[-1]
    assert end["exit_code"] == 0 and end["destinations"]["yt"]["state"] == "stopped", end
    # the primary got the whole broadcast without a gap
    m = probe(primary.out)
    assert m.decodes and m.first_packet_key and m.duration >= 19, m
    # the same frames on both ingests: every packet the new backup got is the primary's packet at that time (the
    # receivers start their files at 0: align on the backup's first video packet, a keyframe)
    p, b = framemd5(primary.out), framemd5(backup2.out)
    first = min((k for k in b if k.startswith("0:")), key=lambda k: int(k[2:]))
    (at,) = [k for k, digest in p.items() if k.startswith("0:") and digest == b[first]]
    shift = int(at[2:]) - int(first[2:])
    moved = {f"{k[:2]}{int(k[2:]) + shift}": digest for k, digest in b.items()}
    same = [k for k in moved if p.get(k) == moved[k]]
    print(f"frames: primary {len(p)} packets, new backup {len(b)} (from {shift} ms), {len(same)} identical")
    assert len(b) > 100 and len(same) == len(b), "the ingests got different frames"
    vids = sorted(int(k[2:]) for k in p if k.startswith("0:"))
    gaps = [y - x for x, y in zip(vids, vids[1:])]
    assert max(gaps) <= 200, f"the primary has a gap of {max(gaps)} ms"
    assert primary.stream_names() == [] and backup2.stream_names() == []  # the exact key, on both ingests
    assert_no_canary(go.stdout + go.stderr + log.read_text(encoding="utf-8"), "restream's output and log")
    for pid, argvs in go.children.items():
        for argv in argvs:
            assert "CANARY-k3y" not in argv.decode("utf-8", "replace"), f"the key in the argv of child {pid}"


def test_status_and_views_show_both_ingests():
    from restream import events as ev
    from restream import status, view

    t = T0
    snap, lines, text = _shown(
        ev.IngestState(t + 0.1, "yt", "primary", ev.CONNECTING),
        ev.IngestState(t + 0.1, "yt", "backup", ev.CONNECTING),
        ev.IngestState(t + 0.5, "yt", "primary", ev.LIVE),
        ev.IngestState(t + 0.6, "yt", "backup", ev.RETRYING, "cannot connect to b:1935: Connection refused"),
        ev.DestState(t + 0.5, "yt", ev.LIVE),
        ev.Traffic(t + 1, (("yt", 5000),), (("yt", "primary", 4000), ("yt", "backup", 1000))))
    row = snap.destination("yt")
    assert view.state_text(row, snap.now) == "live (primary; backup retrying)"
    snap = status.reduce(snap, ev.IngestState(t + 2, "yt", "backup", ev.LIVE))
    assert view.state_text(snap.destination("yt"), snap.now) == "live (primary+backup)"
    states = [x for x in lines if x["event"] == "ingest_state"]
    assert [(x["ingest"], x["state"]) for x in states] == [("primary", "connecting"), ("backup", "connecting"),
                                                           ("primary", "live"), ("backup", "retrying")]
    assert "Connection refused" in states[-1]["error"]
    live = next(x for x in lines if x["event"] == "state" and x["state"] == "live")
    assert live["ingests"] == {"primary": "live", "backup": "retrying"}
    assert "yt: backup ingest retrying (cannot connect to b:1935: Connection refused)" in text
    assert "yt: live (primary; backup retrying)" in text
    # the end: delivered through the primary only, and the summary says so
    for e in (ev.IngestState(t + 3, "yt", "primary", ev.STOPPED),
              ev.IngestState(t + 3, "yt", "backup", ev.FAILED, "not live when the broadcast ended"),
              ev.DestState(t + 3, "yt", ev.STOPPED), ev.Ended(t + 3, 0, "input ended", 0)):
        snap = status.reduce(snap, e)
    assert status.outcome(snap)["yt"]["ingests"] == {
        "primary": {"state": "stopped", "bytes_sent": 4000, "last_error": None},
        "backup": {"state": "failed", "bytes_sent": 1000, "last_error": "not live when the broadcast ended"}}
    assert view.summary_lines(snap)[0].startswith("summary yt: delivered (primary; backup failed), ")


def test_a_leg_that_overflows_drops_until_a_keyframe_never_blocks():
    """Each ingest has its own buffer: one above LEG_BUFFER drops media (the other is not involved at all) and
    resumes at the next keyframe; decoder configurations always pass."""
    from types import SimpleNamespace

    from restream import dualingest as D
    from restream import rtmp

    class Transport:
        size = 0

        def get_write_buffer_size(self):
            return self.size

        def is_closing(self):
            return False

    written: list[bytes] = []
    relay = SimpleNamespace(_assigned=[None], _bytes=[0], _leg_bytes=[{}])
    sess = SimpleNamespace(relay=relay, slot=0, upstream=object(), has_video=True, headers={})
    leg = D._Leg(sess, "backup", "rtmp://127.0.0.1/live")  # type: ignore[arg-type]
    leg.live, leg.need_key, leg.transport = True, False, Transport()
    leg.writer = SimpleNamespace(write=written.append)  # type: ignore[assignment]

    def video(key: bool, ts: int, config: bool = False) -> rtmp.Message:
        return rtmp.Message(6, ts, rtmp.VIDEO, 1, bytes([0x17 if key else 0x27, 0 if config else 1]) + b"x" * 10)

    def audio(ts: int) -> rtmp.Message:
        return rtmp.Message(4, ts, rtmp.AUDIO, 1, b"\xaf\x01" + b"a" * 5)

    def feed(m: rtmp.Message) -> bool:
        before = len(written)
        leg.media(m, D.header_kind(m))
        return len(written) > before

    assert D.is_keyframe(video(True, 0)) and not D.is_keyframe(video(True, 0, config=True))
    assert D.header_kind(video(True, 0, config=True)) == "video" and D.header_kind(video(False, 0)) is None
    assert feed(video(False, 40)) and feed(audio(41))
    leg.transport.size = D.LEG_BUFFER + 1  # the ingest is not taking its bytes
    assert not feed(video(False, 80)) and not feed(audio(81)) and leg.need_key
    leg.transport.size = 0  # drained: media again from the next keyframe, not mid-GOP
    assert not feed(video(False, 120)) and not feed(audio(121))
    assert feed(video(True, 0, config=True))  # a decoder configuration always passes
    assert feed(video(True, 2000)) and feed(audio(2001)) and feed(video(False, 2040))
    assert relay._leg_bytes == [{}]  # not the assigned upstream: nothing counted for the slot


def test_both_slot_refuses_a_client_that_is_not_ffmpeg_publishing_the_placeholder():
    """The relay answers a "both" slot's client itself: a `connect` to another app is refused before any ingest is
    dialled (nothing listens there: a dial would show as an ingest event)."""
    from restream import rtmp
    from restream.slotrelay import SlotRelay, Upstream

    async def main():
        events: list = []
        relay = SlotRelay(1, on_event=events.append)
        await relay.start()
        relay.assign(0, Upstream("yt", f"rtmp://127.0.0.1:{free_port()}/live", CANARY_KEY,
                                 backup_url=f"rtmp://127.0.0.1:{free_port()}/live", backup_mode="both"))
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.ports[0])
        writer.write(b"\x03" + bytes(rtmp.HANDSHAKE_SIZE))
        s0s1s2 = await reader.readexactly(1 + 2 * rtmp.HANDSHAKE_SIZE)
        assert s0s1s2[0] == 3  # answered by the relay itself, not passed to an ingest
        writer.write(s0s1s2[1:1 + rtmp.HANDSHAKE_SIZE])
        writer.write(rtmp.serialize(rtmp.command_message(["connect", 1.0, {"app": "other", "tcUrl": "x"}]), 128))
        assert await reader.read() == b""  # cut off
        for _ in range(100):
            if events:
                break
            await asyncio.sleep(0.02)
        assert [(e.kind, e.leg) for e in events] == [("refused", False)], events
        assert "unexpected app 'other'" in events[0].error and CANARY_KEY not in events[0].error
        writer.close()
        await relay.close()

    asyncio.run(main())
