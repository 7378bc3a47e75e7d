"""CPU of the slot relay next to ffmpeg's: one encode teed to 5 relay slots, each relayed to its own sink.

Usage:  python bench/relay_cpu.py [--seconds 20] [--old-src DIR] [--no-pipe]

One ffmpeg (720p30 libx264 veryfast, 6 Mbit/s CBR, test pattern + sine, ``-re``) publishes through the relay,
which runs in a child process. Each configuration is run against two kinds of sinks:

- ``listen``: ``ffmpeg -listen 1`` receivers (they never send Set Chunk Size: ffmpeg keeps 128-byte chunks);
- ``4096``:   a tiny asyncio RTMP server (child process) that announces Set Chunk Size 4096 (ffmpeg answers with
              the same size and uses it), answers connect/createStream/publish and discards the rest.

Relays measured: ``new`` (this tree's src), ``old`` (``--old-src``: the src directory of an older checkout, e.g.
``git worktree add /tmp/relay-old <commit>`` then ``--old-src /tmp/relay-old/src``) and ``pipe`` (a plain asyncio
byte pipe: the floor; its sinks accept the placeholder names). CPU = user+sys seconds: ffmpeg's from wait4(), the
relay's from /proc/<pid>/stat (minus its start-up). Each run checks that every slot carried the stream.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
SLOTS = 5
TICK = os.sysconf("SC_CLK_TCK")
FIFO_OPTIONS = ("attempt_recovery=1:recover_any_error=1:recovery_wait_time=1:drop_pkts_on_overflow=1:"
                "restart_with_keyframe=1:queue_size=2000")


def ffmpeg_exe() -> str:
    exe = os.environ.get("RESTREAM_FFMPEG")
    if exe:
        return exe
    import imageio_ffmpeg
    return imageio_ffmpeg.get_ffmpeg_exe()


# -- child processes: relay / pipe / sink ----------------------------------------------------------------------------

RELAY_CHILD = r"""
import asyncio, json, sys
mode, targets = sys.argv[1], json.loads(sys.argv[2])

async def pipe_server(host, port, counter, i):
    async def copy(r, w, count):
        try:
            while data := await r.read(256 * 1024):
                w.write(data)
                if count:
                    counter[i] += len(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()
    async def handle(r, w):
        ur, uw = await asyncio.open_connection(host, port)
        await asyncio.gather(copy(r, uw, True), copy(ur, w, False))
    return await asyncio.start_server(handle, "127.0.0.1", 0)

async def main():
    loop = asyncio.get_running_loop()
    if mode == "pipe":
        counter = [0] * len(targets)
        servers = []
        for i, (url, key) in enumerate(targets):
            hostport = url.split("//")[1].split("/")[0]
            host, port = hostport.rsplit(":", 1)
            servers.append(await pipe_server(host, int(port), counter, i))
        urls = [f"rtmp://127.0.0.1:{s.sockets[0].getsockname()[1]}/slot/slot-{i}" for i, s in enumerate(servers)]
        stats = lambda: counter
    else:
        from restream.slotrelay import SlotRelay, Upstream
        relay = SlotRelay(len(targets))
        await relay.start()
        for i, (url, key) in enumerate(targets):
            relay.assign(i, Upstream(f"d{i}", url, key))
        urls = [relay.slave_url(i) for i in range(len(targets))]
        stats = lambda: [s.bytes_up for s in relay.stats()]
    print(json.dumps(urls), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    print(json.dumps(stats()), flush=True)

asyncio.run(main())
"""

SINK_CHILD = r"""
import asyncio, json, sys
from restream import rtmp

async def handle(r, w):
    try:
        c0c1 = await r.readexactly(1537)
        w.write(b"\x03" + bytes(1536) + c0c1[1:])
        await r.readexactly(1536)
        parser, out = rtmp.ChunkParser(), rtmp.ChunkWriter()
        published = False
        while not published and (data := await r.read(65536)):
            for m in parser.feed(data):
                name = rtmp.command_name(m)
                if name is None:
                    continue
                values = rtmp.command_values(m)
                if name == "connect":
                    w.write(out.write(rtmp.Message(2, 0, rtmp.WINDOW_ACK_SIZE, 0, (5000000).to_bytes(4, "big"))))
                    w.write(out.write(rtmp.set_chunk_size_message(4096)))
                    w.write(out.write(rtmp.command_message(
                        ["_result", values[1], {"fmsVer": "FMS/3,0,1,123"},
                         {"level": "status", "code": "NetConnection.Connect.Success"}])))
                elif name == "createStream":
                    w.write(out.write(rtmp.command_message(["_result", values[1], None, 1.0])))
                elif name == "publish":
                    w.write(out.write(rtmp.command_message(
                        ["onStatus", 0.0, None, {"level": "status", "code": "NetStream.Publish.Start",
                                                 "description": "published"}], csid=5, stream_id=1)))
                    published = True
            await w.drain()
        while await r.read(1 << 18):   # media: discarded unparsed (the sink's CPU is not what is measured)
            pass
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        w.close()

async def main():
    servers = [await asyncio.start_server(handle, "127.0.0.1", 0) for _ in range(int(sys.argv[1]))]
    print(json.dumps([s.sockets[0].getsockname()[1] for s in servers]), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

asyncio.run(main())
"""


def child(code: str, args: list[str], src: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(src))
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK   # utime, stime (fields 14, 15)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    want = f":{port:04X} "
    with open("/proc/net/tcp") as f:
        return any(want in line and line.split()[3] == "0A" for line in f)


# -- one run --------------------------------------------------------------------------------------------------------


def start_sinks(kind: str, relay: str, ffmpeg: str) -> tuple[list[tuple[str, str]], list[subprocess.Popen]]:
    """``SLOTS`` sinks: (url, key) for each, and the processes to stop afterwards."""
    app, keys = ("slot", [f"slot-{i}" for i in range(SLOTS)]) if relay == "pipe" else (
        "live", [f"key-{i}-{'k' * 20}" for i in range(SLOTS)])
    if kind == "4096":
        proc = child(SINK_CHILD, [str(SLOTS)], SRC)
        ports = json.loads(proc.stdout.readline())
        return [(f"rtmp://127.0.0.1:{p}/{app}", k) for p, k in zip(ports, keys)], [proc]
    procs, targets = [], []
    for key in keys:
        port = free_port()
        procs.append(subprocess.Popen(
            [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-listen", "1", "-rw_timeout", "30000000",
             "-i", f"rtmp://127.0.0.1:{port}/{app}/{key}", "-c", "copy", "-f", "null", "-"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        targets.append((f"rtmp://127.0.0.1:{port}/{app}", key))
        deadline = time.monotonic() + 10
        while not listening(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"ffmpeg -listen on {port} did not start")
            time.sleep(0.02)
    return targets, procs


def run(relay: str, src: Path, sink: str, seconds: float, ffmpeg: str) -> dict:
    targets, sinks = start_sinks(sink, relay, ffmpeg)
    rel = child(RELAY_CHILD, ["pipe" if relay == "pipe" else "relay", json.dumps(targets)], src)
    try:
        urls = json.loads(rel.stdout.readline())
        time.sleep(0.3)
        relay_start = cpu_seconds(rel.pid)
        slaves = "|".join(f"[f=flv:onfail=ignore]{u}" for u in urls)
        t0 = time.monotonic()
        enc = subprocess.Popen(
            [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-re",
             "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-f", "lavfi", "-i", "sine=f=440:r=48000",
             "-t", str(seconds), "-map", "0:v", "-map", "1:a",
             "-c:v", "libx264", "-preset", "veryfast", "-g", "60", "-pix_fmt", "yuv420p",
             "-b:v", "6M", "-minrate", "6M", "-maxrate", "6M", "-bufsize", "6M", "-x264-params", "nal-hrd=cbr",
             "-c:a", "aac", "-b:a", "128k", "-ac", "2", "-flags", "+global_header",
             "-f", "tee", "-use_fifo", "1", "-fifo_options", FIFO_OPTIONS, slaves],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(enc.pid, 0)
        enc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.monotonic() - t0
        time.sleep(0.5)   # let the relay forward the tail and see the sessions end
        relay_cpu = cpu_seconds(rel.pid) - relay_start
        rel.stdin.write("\n")
        rel.stdin.flush()
        sent = json.loads(rel.stdout.readline())
        err = enc.stderr.read().decode(errors="replace").strip()
    finally:
        for p in [rel, *sinks]:
            if p.poll() is None:
                if p.stdin:
                    try:
                        p.stdin.close()
                    except OSError:
                        pass
                try:
                    p.wait(3)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    ffmpeg_cpu = usage.ru_utime + usage.ru_stime
    mbit = [8 * b / wall / 1e6 for b in sent]
    ok = enc.returncode == 0 and min(mbit) > 3.0
    return {"relay": relay, "sink": sink, "wall": wall, "ffmpeg_cpu": ffmpeg_cpu, "relay_cpu": relay_cpu,
            "ratio": relay_cpu / ffmpeg_cpu, "core": relay_cpu / wall, "mbit": mbit, "ok": ok,
            "error": err[-300:] if not ok else ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--old-src", type=Path, help="src directory of the relay to compare against")
    ap.add_argument("--no-pipe", action="store_true", help="skip the plain byte pipe reference")
    args = ap.parse_args()
    ffmpeg = ffmpeg_exe()
    relays = [("new", SRC)]
    if args.old_src:
        relays.insert(0, ("old", args.old_src.resolve()))
    if not args.no_pipe:
        relays.append(("pipe", SRC))
    results = []
    for name, src in relays:
        for sink in ("listen", "4096"):
            r = run(name, src, sink, args.seconds, ffmpeg)
            results.append(r)
            print(f"  {name:5} {sink:7} relay {r['relay_cpu']:6.2f}s  ffmpeg {r['ffmpeg_cpu']:6.2f}s"
                  f"  {'ok' if r['ok'] else 'FAILED ' + r['error']}", file=sys.stderr, flush=True)
    print(f"\n{SLOTS} slots x 6 Mbit/s, {args.seconds:g} s, {os.cpu_count()} CPUs")
    print(f"{'relay':6} {'sinks':22} {'relay CPU s':>11} {'ffmpeg CPU s':>12} {'relay/ffmpeg':>12} "
          f"{'relay % core':>12} {'Mbit/s per slot':>16}")
    label = {"listen": "ffmpeg -listen (128 B)", "4096": "asyncio sink (4096 B)"}
    for r in results:
        print(f"{r['relay']:6} {label[r['sink']]:22} {r['relay_cpu']:11.2f} {r['ffmpeg_cpu']:12.2f} "
              f"{100 * r['ratio']:11.1f}% {100 * r['core']:11.1f}% "
              f"{min(r['mbit']):7.2f}..{max(r['mbit']):<7.2f}{'' if r['ok'] else '  FAILED'}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
