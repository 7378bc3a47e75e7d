"""The private nginx-rtmp harness (tests/nginx.py) against the bundled ffmpeg: keys, rejection, RTMPS, restart."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from nginx import CERT, NginxRtmp, require_nginx
from support import FFMPEG, _listening_ports, probe, timing, wait_for

pytestmark = [pytest.mark.interop, pytest.mark.e2e]

KEY1 = "live_123-abc"
# every character the brief cares about, including spaces, and a '?' (nginx-rtmp splits the name there)
SPECIAL = "sk?s_bl=1&s_psm=1&a=Z|[x]:y\\'q w = end"
SPECIAL_NO_Q = "a&b=c:d|e[f]g\\h'i j k+%41"


@pytest.fixture
def ngx(tmp_path: Path):
    require_nginx()
    server = NginxRtmp(tmp_path, apps=["a1", "a2", "a3", "a4", "a5"],
                       expected_keys={"a1": KEY1, "a2": SPECIAL, "a3": SPECIAL_NO_Q}, tls=True).start()
    yield server
    server.stop()


@pytest.fixture
def publish(tmp_path: Path):
    """publish(url, seconds, *extra_output_options, wait=True) -> Popen (waited unless wait=False)."""
    procs: list[subprocess.Popen] = []

    def run(url: str, seconds: float = 2, *extra: str, wait: bool = True) -> subprocess.Popen:
        log = open(tmp_path / f"pub{len(procs)}.log", "wb")
        proc = subprocess.Popen(
            [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "info", "-re",
             "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=15", "-f", "lavfi", "-i", "sine",
             "-t", str(seconds), "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "ultrafast",
             "-g", "15", "-pix_fmt", "yuv420p", "-c:a", "aac", "-flags", "+global_header",
             "-rw_timeout", "10000000", *extra, "-f", "flv", url],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        procs.append(proc)
        if wait:
            proc.wait(60)
        return proc

    yield run
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@timing
@pytest.mark.timeout(60)
def test_right_key_is_recorded_and_seen_exactly(ngx, publish):
    pub = publish(ngx.rtmp_url("a1") + "/" + KEY1, 4, wait=False)
    live = wait_for(lambda: (ngx.stat().get("a1", {}).get(KEY1) or {}).get("video_codec") and
                    ngx.stat()["a1"][KEY1], 15, what="stream in rtmp_stat")
    assert live["publishing"] and live["audio_codec"] == "AAC" and live["video_codec"] == "H264"
    assert (live["width"], live["height"]) == (320, 180)
    wait_for(lambda: ngx.stat()["a1"][KEY1]["bytes_in"] > 10_000, 10, what="bytes_in grows")
    assert pub.wait(30) == 0
    [attempt] = ngx.attempts("a1")
    assert (attempt.name, attempt.key, attempt.accepted) == (KEY1, KEY1, True)
    assert attempt.fields["tcurl"] == [ngx.rtmp_url("a1")]
    wait_for(lambda: KEY1 not in ngx.stat().get("a1", {}), 10, what="stream closed")
    media = probe(ngx.recording("a1", KEY1))
    assert media.decodes, media.errors
    assert (media.video_codec, media.audio_codec) == ("h264", "aac")
    assert media.duration >= 3.0


@timing
@pytest.mark.timeout(60)
def test_wrong_key_is_rejected_without_recording(ngx, publish):
    pub = publish(ngx.rtmp_url("a1") + "/wrong-key", 2)
    assert pub.returncode != 0
    assert pub.returncode == 251, f"rejection exit code changed: {pub.returncode}"  # bundled ffmpeg 9.0.2
    [attempt] = ngx.attempts("a1")
    assert (attempt.name, attempt.accepted) == ("wrong-key", False)
    assert ngx.recordings("a1") == []


@timing
@pytest.mark.timeout(60)
def test_rtmps_through_the_tls_front_with_verification(ngx, publish):
    assert ngx.rtmps_url("a1").startswith("rtmps://localhost:")
    pub = publish(ngx.rtmps_url("a1") + "/" + KEY1, 2, "-tls_verify", "1", "-ca_file", str(CERT))
    assert pub.returncode == 0
    [attempt] = ngx.attempts("a1")
    assert attempt.accepted and attempt.key == KEY1
    assert attempt.fields["tcurl"] == [ngx.rtmps_url("a1")]
    wait_for(lambda: KEY1 not in ngx.stat().get("a1", {}), 10, what="stream closed")
    assert probe(ngx.recording("a1")).decodes
    # verification really is on: without our CA the self-signed certificate is refused before any publish
    bad = publish(ngx.rtmps_url("a1") + "/" + KEY1, 1, "-tls_verify", "1")
    assert bad.returncode != 0
    assert len(ngx.attempts("a1")) == 1


@timing
@pytest.mark.timeout(60)
def test_special_key_arrives_exact(ngx, publish):
    """Direct push with the key in ``-rtmp_playpath`` (a URL cannot carry spaces: FFMPEG_NOTES)."""
    for app, key in (("a2", SPECIAL), ("a3", SPECIAL_NO_Q)):
        pub = publish(ngx.rtmp_url(app), 1, "-rtmp_app", app, "-rtmp_playpath", key)
        assert pub.returncode == 0
        [attempt] = ngx.attempts(app)
        assert attempt.key == key and attempt.accepted
        if "?" in key:
            # nginx-rtmp cut the name at '?' and appended the rest to the form body verbatim (not escaped)
            head, tail = key.split("?", 1)
            assert attempt.name == head
            assert attempt.body.endswith("&type=live&" + tail)
        else:
            # the name field is percent-encoded (space %20, & %26, | %7C, \ %5C, + %2B, % %25); = : [ ] ' stay
            assert attempt.name == key
            assert "&name=a%26b=c:d%7Ce[f]g%5Ch'i%20j%20k%2B%2541&" in attempt.body
        wait_for(lambda: not ngx.stat().get(app), 10, what="stream closed")
        rec = ngx.recording(app, key)  # file named after the name before '?', percent-encoded
        assert rec.name == ("sk.flv" if "?" in key else "a%26b%3Dc%3Ad%7Ce%5Bf%5Dg%5Ch%27i%20j%20k%2B%2541.flv")
        assert probe(rec).decodes


@timing
@pytest.mark.timeout(60)
def test_restart_gives_a_new_process_on_the_same_ports(ngx, publish):
    ports = (ngx.rtmp_port, ngx.http_port, ngx.tls_port)
    old_pid = ngx.pid
    ngx.restart()
    assert ngx.pid != old_pid
    assert (ngx.rtmp_port, ngx.http_port, ngx.tls_port) == ports
    assert set(ports) <= _listening_ports()
    assert publish(ngx.rtmp_url("a1") + "/" + KEY1, 1).returncode == 0
    assert ngx.attempts("a1")[-1].accepted
    ngx.stop()
    assert not set(ports) & _listening_ports()
