"""Relay mode next to nginx-rtmp: `restream relay` (copy) vs nginx-rtmp `push`, one publisher fanned out to 5.

Usage:  python bench/relay_nginx.py [--seconds 30] [--rounds 3]

30 s by default: the run issue 16 specifies for relay mode ("publisher -c copy -> 5 x 3 Mbit/s, 30 s"; this bench
used 20 s before). restream's start-up (~0.2 s of Python) is a fixed cost, so its ratio falls with the length of
the run: compare figures of the same length only, and give both when in doubt (``--seconds 20``).

Each round runs both, one after the other (order alternating), with the same publisher: ``ffmpeg -re -i clip.flv
-c copy -f flv rtmp://127.0.0.1:PORT/live/KEY``, the clip a 1280x720 30 fps H.264 3000k CBR + AAC 160k FLV made once.
Five ``ffmpeg -listen 1`` receivers (``-c copy`` to FLV; their CPU is not counted) on 127.0.0.1 each time.

* restream: ``restream relay --listen rtmp://127.0.0.1:PORT/live/KEY --once --plain --quiet`` with 5 destinations;
  CPU = ``os.wait4`` of the restream process (Python, probes and the relay's ffmpeg, the whole tree).
* nginx: nginx 1.22 + libnginx-mod-rtmp (``master_process off``: one process) with ``application live { live on;
  push rtmp://127.0.0.1:P1/live/K1; ... }``; CPU = its utime+stime from /proc, read just before it is stopped
  (its start-up included).

First media: for each receiver, the time from the publisher's first packet (the first time the ingest port's
accepted connection shows ``bytes_received`` > 0) to the receiver's socket having received 8 KB (``ss -tin`` every
25 ms), i.e. past the handshake and the commands; reported as the slowest of the five. A receiver that got nothing
counts as a failed run. Medians over rounds.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from nginx import RTMP_MODULE, nginx_binary  # noqa: E402
from support import FFMPEG, Receiver, free_port, wait_listening  # noqa: E402

sys.path.insert(0, str(HERE))
from relay_vs_transcode import make_clip  # noqa: E402  (the same clip, at 3000k here)

TICK = os.sysconf("SC_CLK_TCK")
KEY = "bench-ingest-key"
DESTS = 5
FIRST_BYTES = 8 * 1024


def _cpu(pid: int) -> float | None:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(f[11]) + int(f[12])) / TICK


class FirstMedia:
    """Polls ``ss`` for the receivers' listening ports: when each connection first held FIRST_BYTES received."""

    def __init__(self, ports: list[int], ingest: int) -> None:
        self.ports = ports
        self.ingest = ingest
        self.t0 = 0.0
        self.first: dict[int, float] = {}
        self.published: float | None = None  # the publisher's first packet (from t0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, t0: float) -> None:
        self.t0 = t0
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        flt = " or ".join(f"sport = :{p}" for p in [*self.ports, self.ingest])
        while not self._stop.is_set() and len(self.first) < len(self.ports):
            out = subprocess.run(["ss", "-tinH", f"( {flt} )"], capture_output=True, text=True).stdout
            now = time.monotonic()
            port = None
            for line in out.splitlines():
                m = re.match(r"\S+\s+\d+\s+\d+\s+\S+:(\d+)\s", line)
                if m:
                    port = int(m.group(1))
                    continue
                b = re.search(r"bytes_received:(\d+)", line)
                if port == self.ingest:
                    if b and self.published is None:
                        self.published = now - self.t0
                elif port is not None and b and int(b.group(1)) >= FIRST_BYTES and port not in self.first:
                    self.first[port] = now - self.t0 - (self.published or 0.0)
            time.sleep(0.025)


def publish(clip: Path, url: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-re", "-i", str(clip),
                             "-c", "copy", "-f", "flv", url], stdin=subprocess.DEVNULL,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def receivers(work: Path) -> list[Receiver]:
    return [Receiver(free_port(), work / f"r{i}.flv", key=f"dest-{i}").start() for i in range(DESTS)]


def finish(recs: list[Receiver]) -> int:
    got = 0
    for r in recs:
        try:
            r.proc.wait(15)
        except subprocess.TimeoutExpired:
            r.proc.kill()
            r.proc.wait()
        got += r.out.exists() and r.out.stat().st_size > 100_000
    return got


def run_restream(clip: Path, work: Path) -> dict:
    work.mkdir(parents=True)
    env = {**os.environ, "RESTREAM_CONFIG_DIR": str(work / "config")}
    env.pop("RESTREAM_PROFILE", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    recs = receivers(work)
    for i, r in enumerate(recs):
        subprocess.run([sys.executable, "-m", "restream", "add", f"d{i}", "--url", r.url, "--key-stdin"],
                       input=f"dest-{i}\n", text=True, env=env, check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "restream", "relay", "--listen",
                             f"rtmp://127.0.0.1:{port}/live/{KEY}", "--once", "--plain", "--quiet"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(work / "restream.log", "wb"), env=env)
    try:
        wait_listening(port, 30, proc=proc)
        time.sleep(1.0)  # the relay's ffmpeg is started and waiting, as when OBS connects to a running relay
        fm = FirstMedia([r.port for r in recs], port)
        t0 = time.monotonic()
        pub = publish(clip, f"rtmp://127.0.0.1:{port}/live/{KEY}", work / "publisher.log")
        fm.start(t0)
        pub.wait()
        _, status, usage = os.wait4(proc.pid, 0)
        fm.stop()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return {"cpu": usage.ru_utime + usage.ru_stime, "first": fm.first, "got": finish(recs),
            "code": os.waitstatus_to_exitcode(status)}


def run_nginx(clip: Path, work: Path) -> dict:
    work.mkdir(parents=True)
    for d in ("logs", "tmp"):
        (work / d).mkdir()
    recs = receivers(work)
    port = free_port()
    pushes = "\n".join(f"            push {r.url}/{r.key};" for r in recs)
    conf = work / "nginx.conf"
    conf.write_text(f"""load_module {RTMP_MODULE};
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/logs/error.log warn;
events {{ worker_connections 64; }}
rtmp {{
    server {{
        listen 127.0.0.1:{port};
        chunk_size 4096;
        application live {{
            live on;
{pushes}
        }}
    }}
}}
""")
    proc = subprocess.Popen([nginx_binary(), "-p", str(work), "-c", str(conf), "-e", str(work / "logs/error.log")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, 10, proc=proc)
        fm = FirstMedia([r.port for r in recs], port)
        t0 = time.monotonic()
        pub = publish(clip, f"rtmp://127.0.0.1:{port}/live/{KEY}", work / "publisher.log")
        fm.start(t0)
        pub.wait()
        time.sleep(0.5)  # nginx passes the end on to the pushes
        cpu = _cpu(proc.pid)
        fm.stop()
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {"cpu": cpu or 0.0, "first": fm.first, "got": finish(recs), "code": proc.returncode}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if nginx_binary() is None or not RTMP_MODULE.is_file():
        print("nginx with libnginx-mod-rtmp is needed", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    res: dict[str, list[dict]] = {"restream": [], "nginx": []}
    with tempfile.TemporaryDirectory(prefix="restream-bench-") as tmp_s:
        tmp = Path(tmp_s)
        clip = tmp / "clip.flv"
        make_clip(clip, args.seconds, kbps=3000)
        for rnd in range(args.rounds):
            order = ["restream", "nginx"] if rnd % 2 == 0 else ["nginx", "restream"]
            for who in order:
                r = (run_restream if who == "restream" else run_nginx)(clip, tmp / f"{who}-{rnd}")
                res[who].append(r)
                first = max(r["first"].values()) if len(r["first"]) == DESTS else float("nan")
                print(f"round {rnd + 1}: {who:8} cpu {r['cpu']:6.2f} s  first media (slowest of "
                      f"{len(r['first'])}/{DESTS}) {first:5.2f} s  receivers with data {r['got']}/{DESTS}  "
                      f"exit {r['code']}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    def med(who: str, f) -> float:
        return statistics.median(f(r) for r in res[who])

    def slowest(r: dict) -> float:
        return max(r["first"].values()) if len(r["first"]) == DESTS else float("inf")

    rc, nc = med("restream", lambda r: r["cpu"]), med("nginx", lambda r: r["cpu"])
    rf, nf = med("restream", slowest), med("nginx", slowest)
    load = " ".join(f"{x:.1f}" for x in load_before) + " -> " + " ".join(f"{x:.1f}" for x in load_after)
    print(f"relay_nginx: {args.seconds} s, 5 x 3 Mbit/s, {args.rounds} rounds alternating, medians; load {load}")
    print(f"CPU restream relay {rc:.2f} s vs nginx push {nc:.2f} s: ratio {rc / nc:.2f}")
    print(f"FIRST restream {rf:.2f} s vs nginx {nf:.2f} s (slowest of 5 receivers, from the publisher's first packet)")
    print("runs: " + " ".join(f"{w}={[round(r['cpu'], 2) for r in v]}" for w, v in res.items()))
    print("got: " + " ".join(f"{w}={[r['got'] for r in v]}" for w, v in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
