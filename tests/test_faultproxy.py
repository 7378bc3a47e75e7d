"""FaultProxy against real peers: an ffmpeg publisher -> proxy -> ffmpeg ``-listen`` receiver."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from faultproxy import FaultProxy
from support import FFMPEG, Receiver, TimingError, _listening_ports, free_port, probe, timing, wait_for

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def peers(tmp_path: Path):
    """Start receivers, proxies and publishers through this; everything is torn down by PID afterwards."""
    started: dict[str, list] = {"procs": [], "receivers": [], "proxies": []}

    class Peers:
        def receiver(self) -> Receiver:
            rx = Receiver(free_port(), tmp_path / f"rx{len(started['receivers'])}.flv").start()
            started["receivers"].append(rx)
            return rx

        def proxy(self, rx: Receiver) -> FaultProxy:
            px = FaultProxy(rx.port).start()
            started["proxies"].append(px)
            return px

        def publish(self, port: int, seconds: float, extra: list[str] = ()) -> subprocess.Popen:
            log = open(tmp_path / f"pub{len(started['procs'])}.log", "wb")
            proc = subprocess.Popen(
                [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "info", "-re",
                 "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=15", "-f", "lavfi", "-i", "sine",
                 "-t", str(seconds), "-map", "0:v", "-map", "1:a",
                 "-c:v", "libx264", "-preset", "ultrafast", "-g", "15", "-pix_fmt", "yuv420p", *extra,
                 "-c:a", "aac", "-rw_timeout", "10000000", "-f", "flv", f"rtmp://127.0.0.1:{port}/live/probe"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            log.close()
            started["procs"].append(proc)
            return proc

    yield Peers()
    for proc in started["procs"]:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for px in started["proxies"]:
        px.stop()
    for rx in started["receivers"]:
        rx.stop()


@timing
@pytest.mark.timeout(60)
def test_passthrough_file_decodes(peers):
    rx = peers.receiver()
    px = peers.proxy(rx)
    pub = peers.publish(px.port, 4)
    assert pub.wait(30) == 0
    assert rx.proc.wait(15) == 0
    media = probe(rx.out)
    assert media.decodes, media.errors
    assert (media.video_codec, media.audio_codec) == ("h264", "aac")
    assert 3.0 <= media.duration <= 4.5
    assert px.bytes_forwarded > 10_000 and px.bytes_returned > 0
    assert px.accepted == 1
    wait_for(lambda: px.connections == 0, 5, what="connection closed")


@timing
@pytest.mark.timeout(60)
def test_pause_stalls_bytes_and_resume_continues(peers):
    rx = peers.receiver()
    px = peers.proxy(rx)
    pub = peers.publish(px.port, 6)
    wait_for(lambda: px.bytes_forwarded > 20_000, 15, what="media flowing")
    px.pause()
    frozen = px.bytes_forwarded
    samples = []
    for _ in range(6):
        time.sleep(0.25)
        samples.append(px.bytes_forwarded)
    assert samples == [frozen] * 6, "bytes were forwarded while paused"
    assert pub.poll() is None, "publisher died while paused"
    px.resume()
    wait_for(lambda: px.bytes_forwarded > frozen + 10_000, 10, what="bytes after resume")
    assert pub.wait(30) == 0
    assert rx.proc.wait(15) == 0
    media = probe(rx.out)
    assert media.decodes, media.errors
    assert media.duration >= 5.0


@timing
@pytest.mark.timeout(60)
def test_cut_ends_the_connection_and_keeps_listening(peers):
    rx = peers.receiver()
    px = peers.proxy(rx)
    pub = peers.publish(px.port, 30)
    wait_for(lambda: px.bytes_forwarded > 20_000, 15, what="media flowing")
    assert px.connections == 1
    px.cut()
    wait_for(lambda: px.connections == 0, 5, what="connection gone")
    assert pub.wait(15) != 0, "publisher should fail when its connection is cut"
    rx.proc.wait(15)  # the one-shot receiver ends with its publisher; what it got so far still decodes
    assert probe(rx.out).decodes
    assert px.port in _listening_ports()


@timing
@pytest.mark.timeout(30)
def test_down_refuses_but_keeps_the_port_and_up_accepts_again():
    target = socket.socket()
    target.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    target.bind(("127.0.0.1", free_port()))
    target.listen(8)
    px = FaultProxy(target.getsockname()[1]).start()
    try:
        px.down()
        with socket.create_connection(("127.0.0.1", px.port), timeout=5) as c:
            c.settimeout(5)
            assert c.recv(10) == b""  # accepted then closed
        assert px.refused == 1 and px.accepted == 0
        assert px.port in _listening_ports()
        px.up()
        with socket.create_connection(("127.0.0.1", px.port), timeout=5) as c:
            server, _ = target.accept()
            with server:
                c.sendall(b"ping")
                server.settimeout(5)
                assert server.recv(10) == b"ping"
                server.sendall(b"pong")
                c.settimeout(5)
                assert c.recv(10) == b"pong"
        wait_for(lambda: px.bytes_forwarded == 4 and px.bytes_returned == 4, 5, what="counts")
        assert px.accepted == 1
    finally:
        px.stop()
        target.close()


@timing
@pytest.mark.timeout(60)
def test_throttle_limits_the_rate(peers):
    rx = peers.receiver()
    px = peers.proxy(rx)
    limit = 12_000  # bytes/s, well under what this publisher produces (~40-60 kB/s at 1 Mbit/s)
    px.throttle(limit)
    pub = peers.publish(px.port, 20, extra=["-b:v", "1M", "-maxrate", "1M", "-bufsize", "1M"])
    wait_for(lambda: px.bytes_forwarded > 5_000, 15, what="media flowing")
    time.sleep(1.0)
    b0, t0 = px.bytes_forwarded, time.monotonic()
    time.sleep(4.0)
    rate = (px.bytes_forwarded - b0) / (time.monotonic() - t0)
    assert rate <= limit * 1.3, f"{rate:.0f} B/s through a {limit} B/s throttle"
    if rate < limit * 0.7:  # the publisher could not keep up: the machine, not the proxy
        raise TimingError(f"{rate:.0f} B/s through a {limit} B/s throttle: under 70 %")
    # lifting the throttle lets the backlog through at full speed
    px.throttle(None)
    b1 = px.bytes_forwarded
    time.sleep(1.0)
    assert px.bytes_forwarded - b1 > limit * 1.5
    pub.send_signal(signal.SIGINT)
    pub.wait(10)
