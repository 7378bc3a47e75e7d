"""Interop with a real ingest server: `restream go` (the real CLI, ``--json``) to five nginx-rtmp applications at once.

Some destinations are plain RTMP, the others RTMPS through nginx's TLS ``stream`` front (verified with the test
certificate, given per destination with ``restream add … --ca-file``). Every key is full of ``? & = : | [ ] \\ '`` and
spaces; nginx's ``on_publish`` callback accepts only the exact key (``PublishAttempt.key`` rebuilds the name nginx-rtmp
cut at ``?``). Needs nginx with the rtmp and stream modules: skipped loudly without it, a failure when
RESTREAM_REQUIRE_INTEROP=1 (CI).

Cheap on two cores: 320x180 at 15 fps, 300k video, 64k audio.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nginx import CERT, NginxRtmp, require_nginx
from support import near, probe, timing, wait_for
from test_go_e2e import CHEAP, _ts

pytestmark = [pytest.mark.interop, pytest.mark.e2e]

APPS = [f"a{i}" for i in range(1, 6)]
SECURE = {"a2", "a4"}  # RTMPS through the TLS front; the others plain RTMP
# distinct heads before '?' (nginx-rtmp names the stream, and the recording, after that head)
KEYS = {app: f"k{i} x?s_bl=1&s_psm=1&a=Z|[x]:y\\'q w = e{i} & [end]" for i, app in enumerate(APPS, 1)}


@pytest.fixture
def ngx(tmp_path: Path):
    require_nginx(tls=True)
    server = NginxRtmp(tmp_path, apps=APPS, expected_keys=KEYS, tls=True).start()
    yield server
    server.stop()


def _add(cli, ngx: NginxRtmp, app: str, key: str) -> None:
    if app in SECURE:
        args = ["--url", ngx.rtmps_url(app), "--ca-file", str(CERT)]
    else:
        args = ["--url", ngx.rtmp_url(app)]
    code, _, err = cli("add", app, *args, "--key-stdin", input=key + "\n")
    assert code == 0, err


def _head(key: str) -> str:
    return key.split("?", 1)[0]


@timing
@pytest.mark.timeout(120)
def test_five_apps_rtmp_and_rtmps_exact_keys(ngx, procs, cli):
    for app in APPS:
        _add(cli, ngx, app, KEYS[app])
    go = procs.go(*CHEAP, "--duration", "10s", "--json", "--status-interval", "0.5")
    lives = go.wait_live(APPS, timeout=20)

    # while live: rtmp_stat shows each stream publishing H.264 + AAC at the size sent
    def all_described():
        stat = ngx.stat()
        rows = {app: stat.get(app, {}).get(_head(KEYS[app])) for app in APPS}
        return rows if all(r and r["publishing"] and r["video_codec"] and r["audio_codec"]
                           for r in rows.values()) else None

    rows = wait_for(all_described, 10, what="five streams described in rtmp_stat")
    for app, row in rows.items():
        assert (row["video_codec"], row["audio_codec"]) == ("H264", "AAC"), (app, row)
        assert (row["width"], row["height"]) == (320, 180), (app, row)
        assert row["sample_rate"] == 48000 and row["channels"] == 2, (app, row)
    def bytes_in() -> dict[str, int]:
        stat = ngx.stat()
        return {a: (stat.get(a, {}).get(_head(KEYS[a])) or {}).get("bytes_in") or 0 for a in APPS}

    try:
        wait_for(lambda: min(bytes_in().values()) > 20_000, 10, what="bytes_in to grow on every app")
    except TimeoutError:
        raise AssertionError(f"bytes_in did not grow on every app: {bytes_in()}") from None

    assert go.wait(45) == 0, go.stderr
    end = go.events[-1]
    assert end["event"] == "end" and end["exit_code"] == 0, end
    assert {n: d["state"] for n, d in end["destinations"].items()} == dict.fromkeys(APPS, "stopped")
    assert len(go.tee_ffmpegs()) == 1, "one ffmpeg for all five"

    # on_publish saw every exact key, once, over RTMP and RTMPS alike
    for app in APPS:
        attempts = ngx.attempts(app)
        assert [(a.key, a.accepted) for a in attempts] == [(KEYS[app], True)], (app, attempts)
        tcurl = ngx.rtmps_url(app) if app in SECURE else ngx.rtmp_url(app)
        assert attempts[0].fields["tcurl"] == [tcurl], (app, attempts[0].fields)

    wait_for(lambda: not any(ngx.publishing(a) for a in APPS), 10, what="streams closed")
    for app in APPS:
        m = probe(ngx.recording(app, KEYS[app]))
        wall = _ts(end) - _ts(lives[app])
        assert m.decodes, (app, m.errors)
        assert (m.video_codec, m.audio_codec, m.pix_fmt) == ("h264", "aac", "yuv420p"), (app, m)
        assert m.first_packet_key, app
        near(m.duration, wall, 1.5, f"{app}: recorded vs wall time live")


@timing
@pytest.mark.timeout(120)
def test_wrong_key_is_retrying_with_an_error_the_others_live(ngx, procs, cli):
    wrong = "a3"
    for app in APPS:
        _add(cli, ngx, app, KEYS[app] + " WRONG" if app == wrong else KEYS[app])
    go = procs.go(*CHEAP, "--duration", "12s", "--json", "--status-interval", "0.5")
    others = [a for a in APPS if a != wrong]
    go.wait_live(others, timeout=20)
    retrying = go.wait_state(wrong, "retrying", 10)
    assert retrying["error"], retrying
    assert "WRONG" not in retrying["error"] and _head(KEYS[wrong]) not in retrying["error"], \
        f"the key leaked into the error: {retrying['error']}"
    time.sleep(3)  # it keeps retrying; the others stay live meanwhile
    assert {a: go.state_now(a) for a in others} == dict.fromkeys(others, "live")
    assert go.state_now(wrong) == "retrying"
    assert "live" not in [e["state"] for e in go.states(wrong)]

    rc = go.wait(45)
    end = go.events[-1]
    assert rc == 1 and end["exit_code"] == 1, (rc, end)
    assert end["destinations"][wrong]["state"] != "stopped" and end["destinations"][wrong]["last_error"], end
    assert all(end["destinations"][a]["state"] == "stopped" for a in others), end

    attempts = ngx.attempts(wrong)
    assert len(attempts) >= 2 and not any(a.accepted for a in attempts), attempts  # rejected, and retried
    assert attempts[0].key == KEYS[wrong] + " WRONG"  # it was the exact (wrong) key that nginx judged
    assert ngx.recordings(wrong) == []
    wait_for(lambda: not any(ngx.publishing(a) for a in others), 10, what="streams closed")
    for app in others:
        assert [a.accepted for a in ngx.attempts(app)] == [True], app
        assert probe(ngx.recording(app, KEYS[app])).decodes, app
    print(f"{wrong} retrying after {_ts(retrying) - _ts(go.event('start')):.2f} s: {retrying['error']!r}; "
          f"{len(attempts)} rejected attempts")


@timing
@pytest.mark.timeout(120)
def test_both_ingests_nginx_rtmps_primary_and_rtmp_backup_exact_key(tmp_path, procs, cli):
    """backup = "both" against nginx-rtmp: the primary over RTMPS (the TLS front, --ca-file), the backup plain RTMP,
    the same odd key; both publish at once, on_publish sees the exact key once on each, both recordings decode and
    hold the same frames."""
    require_nginx(tls=True)
    key = KEYS["a1"]
    ngx = NginxRtmp(tmp_path, apps=["p", "b"], expected_keys={"p": key, "b": key}, tls=True).start()
    procs.things.append(ngx)
    code, _, err = cli("add", "yt", "--url", ngx.rtmps_url("p"), "--ca-file", str(CERT), "--backup-url",
                       ngx.rtmp_url("b"), "--backup-mode", "both", "--key-stdin", input=key + "\n")
    assert code == 0, err
    go = procs.go(*CHEAP, "--duration", "10s", "--json", "--status-interval", "0.5")
    lives = go.wait_live(["yt"], timeout=20)
    wait_for(lambda: ngx.publishing("p") and ngx.publishing("b"), 10, what="both ingests publishing at nginx")
    assert go.wait(45) == 0, go.stderr
    end = go.events[-1]
    yt = end["destinations"]["yt"]
    assert yt["state"] == "stopped" and {i: v["state"] for i, v in yt["ingests"].items()} == \
        {"primary": "stopped", "backup": "stopped"}, yt
    assert yt["ingests"]["primary"]["bytes_sent"] > 100_000 and yt["ingests"]["backup"]["bytes_sent"] > 100_000, yt
    for app in ("p", "b"):
        assert [(a.key, a.accepted) for a in ngx.attempts(app)] == [(key, True)], (app, ngx.attempts(app))
    assert ngx.attempts("p")[0].fields["tcurl"] == [ngx.rtmps_url("p")]
    wait_for(lambda: not ngx.publishing("p") and not ngx.publishing("b"), 10, what="streams closed")
    from test_backup_ingest import framemd5

    files = [ngx.recording(app, key) for app in ("p", "b")]
    for f in files:
        m = probe(f)
        assert m.decodes and m.first_packet_key, (f.name, m.errors)
        near(m.duration, _ts(end) - _ts(lives["yt"]), 1.5, f"{f.name}: recorded vs wall time live")
    p, b = (framemd5(f) for f in files)
    same = set(p.items()) & set(b.items())
    print(f"nginx both: primary {len(p)} packets, backup {len(b)}, {len(same)} identical at the same time")
    assert len(same) >= 0.9 * min(len(p), len(b)), "the ingests got different frames"
    assert key not in go.stdout + go.stderr
