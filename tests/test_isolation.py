"""Issue 17: nobody else on the machine may inject into or disrupt a broadcast (the real CLI, real processes).

An intruder here does what a local attacker would: it finds every TCP port restream's process tree listens on
(from /proc, as `ss -ltnp` would show it) and publishes to each with the bundled ffmpeg — under the slot relay's own
placeholder names — or connects and holds the connection. Nothing may reach a destination, the live session must
not notice (no reconnect, no hole over 0.5 s in what the receivers recorded), and restream reports the intruder.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from restream import peercheck, rtmp
from restream.slotrelay import SlotRelay, Upstream
from support import FFMPEG, Receiver, descendants, free_port, wait_for
from test_go_e2e import CHEAP, Go
from test_live_changes import largest_gap
from test_relay_mode import INGEST_KEY, Publisher, Relay, assert_delivered, published_ok

GAP_LIMIT = 0.5
REFUSED = "refused a connection to relay slot"


# -- an attacker's view -----------------------------------------------------------------------------------------------

def listening_ports(root: int) -> dict[int, int]:
    """Every TCP port ``root`` or a descendant listens on -> the PID holding that socket (read from /proc)."""
    owner: dict[int, int] = {}
    for pid in [root, *descendants(root)]:
        links = peercheck.fd_links(pid) or []
        for inode in peercheck.socket_inodes(links):
            owner[inode] = pid
    entries = peercheck.read_tables() or []
    return {e.local[1]: owner[e.inode] for e in entries if e.state == 0x0A and e.inode in owner}


class Intruders:
    """Publishers (ffmpeg, a test picture of another size) and raw connections holding a port after a C0+C1."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.publishers: list[subprocess.Popen] = []
        self.holders: list[socket.socket] = []

    def publish(self, port: int, path: str, seconds: float = 2) -> None:
        log = open(self.tmp / f"intruder-{len(self.publishers)}.log", "wb")
        self.publishers.append(subprocess.Popen(
            [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "warning", "-re", "-f", "lavfi",
             "-i", "testsrc=size=160x90:rate=10", "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast",
             "-f", "flv", f"rtmp://127.0.0.1:{port}/{path}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True))
        log.close()

    def hold(self, port: int) -> None:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"\x03" + os.urandom(rtmp.HANDSHAKE_SIZE))
        self.holders.append(s)

    def attack(self, ports, gate: int | None = None) -> None:
        for i, port in enumerate(sorted(ports)):
            path = "live/not-the-key" if port == gate else f"slot/slot-{i}"
            self.publish(port, path)
            self.hold(port)

    def wait(self, timeout: float = 30) -> list[int]:
        codes = [p.wait(timeout) for p in self.publishers]
        for s in self.holders:
            s.close()
        self.publishers, self.holders = [], []
        return codes

    def kill(self) -> None:
        for p in self.publishers:
            if p.poll() is None:
                p.kill()
                p.wait()
        for s in self.holders:
            s.close()


class Things:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.items: list = []

    def add(self, thing):
        self.items.append(thing)
        return thing

    def receiver(self, name: str, key: str) -> Receiver:
        return self.add(Receiver(free_port(), self.tmp / f"{name}.flv", key=key)).start()

    def close(self) -> None:
        for t in reversed(self.items):
            t.kill()


@pytest.fixture
def things(tmp_path: Path):
    t = Things(tmp_path)
    yield t
    t.close()


@pytest.fixture
def destinations(cli, things):
    def make(n: int) -> list[Receiver]:
        recs = []
        for i in range(n):
            r = things.receiver(f"d{i}", f"dest-key-{i}")
            code, _, err = cli("add", f"d{i}", "--url", r.url, "--key-stdin", input=f"dest-key-{i}\n")
            assert code == 0, err
            recs.append(r)
        return recs

    return make


def untouched(recs: list[Receiver]) -> None:
    for r in recs:
        assert r.proc.poll() is None and not r.connected() and not r.out.exists(), \
            f"{r.out.name} received something:\n{r.log_text()[-1500:]}"


def one_clean_session(r: Receiver, seconds: float) -> None:
    """The receiver got exactly one publisher (restream's), for the whole time, with no hole."""
    assert r.log_text().count("Input #0") == 1, r.log_text()[-2000:]
    assert r.stream_names() == [], "the receiver saw an unexpected stream name"
    assert_delivered(r.out, seconds, within=1.0)
    gap = largest_gap(r.out)
    assert gap <= GAP_LIMIT, f"{r.out.name}: a {gap:.2f} s hole"


# -- relay mode ---------------------------------------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_relay_mode_intruders_on_every_port_reach_nothing(things, destinations, tmp_path):
    recs = destinations(2)
    relay = things.add(Relay(free_port(), INGEST_KEY, ())).ready()
    intruders = things.add(Intruders(tmp_path))
    ffmpeg = next(e for e in relay.events if e.get("event") == "start")["pid"]

    ports = listening_ports(relay.proc.pid)
    assert relay.port in ports and ports[relay.port] == relay.proc.pid
    assert ffmpeg not in ports.values(), f"restream's ffmpeg listens: {ports}"
    # copy mode, RTMP destinations: the native fan-out (no ffmpeg, no relay slot to listen on)
    native = relay.native
    assert len(ports) == (1 if native else 6), f"the gate (and five relay slots), nothing else: {ports}"

    # 1. while waiting for a publisher
    intruders.attack(ports, gate=relay.port)
    assert all(code != 0 for code in intruders.wait()), "an intruder's publish succeeded"
    if not native:
        relay.wait_log(REFUSED, level="warning")
    relay.wait_log("rejected: wrong stream key", level="warning")
    time.sleep(1.0)  # anything that had slipped through would have reached the receivers by now
    untouched(recs)
    assert not relay.states("d0", "live") and not relay.states("d1", "live"), relay.summary()
    assert set(relay.ffmpegs()) <= {ffmpeg}, "an intruder reached ffmpeg (it ended and was restarted)"

    # 2. while a publisher is live (a connection that never shows the key, held open meanwhile, holds nothing)
    squatter = socket.create_connection(("127.0.0.1", relay.port))
    squatter.sendall(b"\x03" + os.urandom(rtmp.HANDSHAKE_SIZE))
    pub = things.add(Publisher(relay.port, INGEST_KEY, 10, tmp_path / "publisher.log"))
    relay.wait_live(["d0", "d1"], timeout=30)
    squatter.close()
    ports = listening_ports(relay.proc.pid)
    assert len(ports) == (1 if native else 6), ports
    refused_before = len([e for e in relay.logs("warning") if REFUSED in e["message"]])
    intruders.attack(ports, gate=relay.port)
    assert all(code != 0 for code in intruders.wait()), "an intruder's publish succeeded"
    relay.wait_log("rejected: another publisher is live", level="warning")
    if not native:
        wait_for(lambda: len([e for e in relay.logs("warning") if REFUSED in e["message"]]) > refused_before, 10,
                 what="the slot intruders reported")
    assert pub.proc.poll() is None, "the live publisher was cut off"
    published_ok(pub)
    relay.wait_log("publisher gone")
    for r in recs:
        r.proc.wait(10)
    assert relay.interrupt() == 130

    for name in ("d0", "d1"):
        assert [e["state"] for e in relay.states(name)][:3] == ["waiting", "connecting", "live"]
        assert len(relay.states(name, "live")) == 1 and not relay.states(name, "retrying"), relay.states(name)
    for r in recs:
        one_clean_session(r, 10.0)
    warnings = [e["message"] for e in relay.logs("warning") if REFUSED in e["message"]]
    assert all("127.0.0.1:" in w for w in warnings), warnings  # the peer is named
    assert INGEST_KEY not in relay.stdout + relay.stderr


# -- go -----------------------------------------------------------------------------------------------------------------

@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_go_intruders_on_every_slot_change_nothing(things, destinations, tmp_path):
    recs = destinations(2)
    go = things.add(Go([*CHEAP, "--duration", "12s", "--json"]))
    go.wait_live(["d0", "d1"])
    ports = listening_ports(go.proc.pid)
    assert len(ports) == 5, f"five relay slots, nothing else: {ports}"
    assert set(ports.values()) == {go.proc.pid}, "only restream itself listens (its ffmpeg does not)"

    intruders = things.add(Intruders(tmp_path))
    intruders.attack(ports)
    assert all(code != 0 for code in intruders.wait()), "an intruder's publish succeeded"
    assert go.wait(60) == 0, go.stderr[-3000:]

    end = go.events[-1]
    assert end["event"] == "end" and end["exit_code"] == 0, end
    for name in ("d0", "d1"):
        states = [e["state"] for e in go.states(name)]
        assert states.count("live") == 1 and "retrying" not in states, states
    for r in recs:
        r.proc.wait(10)
        one_clean_session(r, 12.0)
    warnings = [e["message"] for e in go.events if e.get("event") == "log" and REFUSED in e["message"]]
    assert warnings and all("127.0.0.1:" in w for w in warnings), warnings


# -- SRT: ffmpeg takes its key only on the command line, so restream says so ------------------------------------------

SRT_WARNING = "any local user can read it with `ps`"


def test_adding_an_srt_key_warns_that_local_users_can_read_it(cli):
    from conftest import CANARY_KEY

    code, out, err = cli("add", "studio", "--url", "srt://127.0.0.1:9000", "--key-stdin", input=CANARY_KEY + "\n")
    assert code == 0, err
    assert SRT_WARNING in err and "studio" in err, err
    code, out, err = cli("edit", "studio", "--key-stdin", input=CANARY_KEY + "x\n")
    assert code == 0 and SRT_WARNING in err, err
    code, out, err = cli("add", "viaurl", "--url", "srt://127.0.0.1:9001?streamid=abc", "--no-key")
    assert code == 0 and SRT_WARNING in err, err


def test_no_srt_warning_without_an_srt_key(cli):
    code, out, err = cli("add", "open", "--url", "srt://127.0.0.1:9000?latency=200", "--no-key")
    assert code == 0 and SRT_WARNING not in err, err
    code, out, err = cli("add", "yt", "--url", "rtmp://127.0.0.1/live2", "--key-stdin", input="k-123456\n")
    assert code == 0 and SRT_WARNING not in err, err


# -- the slot relay's door, on its own ----------------------------------------------------------------------------------

async def _upstream():
    """A TCP server standing in for a destination: records the connections it gets and the bytes on each."""
    got: list[bytearray] = []

    async def serve(reader, writer):
        buf = bytearray()
        got.append(buf)
        while data := await reader.read(65536):
            buf += data

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, got


def test_slot_relay_holds_connections_until_the_pid_is_known_then_serves_them():
    async def main():
        server, got = await _upstream()
        events = []
        relay = SlotRelay(1, on_event=events.append)
        await relay.start()
        relay.assign(0, Upstream("d0", f"rtmp://127.0.0.1:{server.sockets[0].getsockname()[1]}/live", "k"))
        relay.allow_only(None)  # as run.py does before starting ffmpeg
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.ports[0])
        c0c1 = b"\x03" + os.urandom(rtmp.HANDSHAKE_SIZE)
        writer.write(c0c1)
        await asyncio.sleep(0.3)
        assert events == [] and got == [], "a connection was served before the PID was known"
        relay.allow_only(os.getpid())  # this process is "ffmpeg": the held connection is its own
        for _ in range(100):
            if got and len(got[0]) >= len(c0c1):
                break
            await asyncio.sleep(0.02)
        assert [e.kind for e in events][:1] == ["connecting"] and bytes(got[0]) == c0c1
        writer.close()
        await relay.close()
        server.close()

    asyncio.run(main())


def test_slot_relay_refuses_another_process_and_keeps_the_live_session():
    async def main():
        server, got = await _upstream()
        events, intruders = [], []
        relay = SlotRelay(1, on_event=events.append)
        relay.on_intruder = lambda slot, who: intruders.append((slot, who))
        await relay.start()
        relay.assign(0, Upstream("d0", f"rtmp://127.0.0.1:{server.sockets[0].getsockname()[1]}/live", "k"))
        relay.allow_only(os.getpid())
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.ports[0])  # ours: served
        writer.write(b"\x03" + os.urandom(rtmp.HANDSHAKE_SIZE))
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.02)
        assert len(got) == 1
        port = relay.ports[0]
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import os,socket,sys;"
            f"s=socket.create_connection(('127.0.0.1',{port}));s.sendall(b'\\x03'+os.urandom(1536));"
            "\ntry: print(s.recv(10) == b'', flush=True)\nexcept ConnectionResetError: print(True, flush=True)",
            stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(child.communicate(), 10)
        assert out.strip() == b"True", "the intruder's connection was not closed (reset) at once"
        assert len(intruders) == 1 and intruders[0][0] == 0, intruders
        assert intruders[0][1].startswith("127.0.0.1:") and f"(uid {os.getuid()})" in intruders[0][1]
        assert len(got) == 1, "the intruder reached the destination"
        assert [e.kind for e in events] == ["connecting"], events  # the live session saw nothing
        assert not writer.is_closing()
        writer.close()
        await relay.close()
        server.close()

    asyncio.run(main())
