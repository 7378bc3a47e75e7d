"""Soak: one `restream go` for N minutes to 5 local receivers, killing and restarting one every few minutes.

Usage:  python bench/soak.py [--minutes 30] [--interval SECONDS] [--out RESULT.json] [--plot docs/soak.png]

Not in CI. Everything is on loopback:

* 5 receivers: ``ffmpeg -listen 1`` RTMP receivers (tests/support.py's ``Receiver``) on ports 20000-30000 (below
  the ephemeral range), each writing ``-c copy`` to an FLV file. A receiver serves one session, so a "restart" is a
  new receiver process on the same port writing a new file.
* the broadcast: ``python -m restream go --test-pattern --size 640x360 --fps 30 --video-bitrate 1500k --json
  --duration <N>m`` in a throwaway RESTREAM_CONFIG_DIR with destinations d0..d4 (one per receiver); it stops by
  itself when the duration is reached.
* faults: every ``--interval`` seconds (default 180; shorter for short soaks so that at least two faults happen)
  the next receiver in turn (d0, d1, ... d4, d0, ...) is killed with SIGKILL, and after a pause of 5..10 s (5, 6,
  7, 8, 9 s cycling, plus a random fraction of a second so that the restart falls at a random phase of the
  publisher's 1 s retry period) a new receiver is started on the same port. No fault is started in the last interval.

What it records and prints:

* per destination, **delivered / expected**:
    - delivered  = the sum of the decoded durations (first to last video packet timestamp) of all its receiver files;
    - wall       = from restream's first ``live`` event for it to restream's ``end`` event (the time the broadcast
                   could have delivered to it);
    - planned downtime = the sum over its faults of (new receiver listening - old receiver killed);
    - expected   = wall - planned downtime.
  What is lost beyond the planned downtime is the reconnect time plus whatever the receivers lost at the cut.
* **reconnect time**: new receiver listening (polled in /proc/net/tcp) -> restream's ``live`` event for it.
* **Python RSS** of the restream process (VmRSS from /proc/<pid>/status every 10 s) and its peak (VmHWM).
* **ffmpeg restarts**: distinct PIDs of broadcasting ffmpeg processes (children of restream with a ``tee`` output)
  seen over the run (sampled every second), minus one. Must be 0.
* restream's exit code and its ``end`` event; every receiver file decodes (``ffmpeg -xerror -f null``; a file
  whose receiver was SIGKILLed may end in a torn packet: reported, not hidden).
* the machine's load average every 10 s (the machine may be shared: the result says what it saw).

The result (all figures, the time series and the fault log) is written as JSON to ``--out``, and with ``--plot``
a PNG (needs matplotlib: ``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from support import FFMPEG, Receiver, free_port  # noqa: E402

N_DEST = 5
GO_ARGS = ["--test-pattern", "--size", "640x360", "--fps", "30", "--video-bitrate", "1500k", "--json"]
SAMPLE_S = 10.0
DOWN_S = (5, 6, 7, 8, 9)  # plus a random fraction of a second: a random phase against the 1 s retry period


def _port_state(port: int) -> str | None:
    """'listen' if something LISTENs on ``port``, 'accepted' if a connection to it is established, else None."""
    seen = None
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and int(parts[1].rsplit(":", 1)[1], 16) == port:
                if parts[3] == "0A":
                    return "listen"
                if parts[3] == "01":
                    seen = "accepted"
    return seen


class SoakReceiver(Receiver):
    """support.Receiver, but ready when LISTENing *or* already accepted: restream's relay retries so fast that the
    one-shot listener may be gone from /proc/net/tcp before a LISTEN poll sees it."""

    def start(self) -> "SoakReceiver":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "info", "-listen", "1",
                 "-rw_timeout", "20000000",
                 "-i", f"rtmp://127.0.0.1:{self.port}/{self.app}/{self.key}",
                 "-c", "copy", "-f", "flv", "-y", str(self.out)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 15
        while (state := _port_state(self.port)) is None or (state == "accepted" and self.proc.poll() is not None):
            if self.proc.poll() is not None:
                raise RuntimeError(f"receiver on {self.port} exited ({self.proc.returncode}): "
                                   f"{self.log_text()[-500:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"receiver on {self.port} not listening after 15 s")
            time.sleep(0.002)
        self.ready = state
        return self


def _ts(event: dict) -> float:
    return dt.datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def _status_kb(pid: int, key: str) -> int | None:
    try:
        m = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for t in tasks:
        try:
            out.update(int(c) for c in (t / "children").read_text().split())
        except OSError:
            pass
    return out


def _argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


class Go:
    """The restream child: JSON events read in a thread, as they come."""

    def __init__(self, argv: list[str], env: dict[str, str], stderr: Path) -> None:
        self._err = open(stderr, "wb")
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._err, start_new_session=True)
        self.events: list[dict] = []
        self.bad_lines = 0
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                e = json.loads(raw)
            except ValueError:
                self.bad_lines += 1
                continue
            with self._cv:
                self.events.append(e)
                self._cv.notify_all()

    def wait_event(self, pred, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                hit = next((e for e in self.events if pred(e)), None)
                left = deadline - time.monotonic()
                if hit is not None or left <= 0:
                    return hit
                if self.proc.poll() is not None:  # gone: one more look after its last lines are read
                    self._cv.wait(min(left, 1.0))
                    return next((e for e in self.events if pred(e)), None)
                self._cv.wait(min(left, 0.5))

    def states(self, name: str) -> list[dict]:
        with self._cv:
            return [e for e in self.events if e.get("event") == "state" and e.get("destination") == name]

    def stop(self) -> None:
        """Make sure the whole tree is gone (restream, its ffmpeg): SIGINT, then SIGKILL to the group."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        try:  # ffmpeg is in restream's process group's session only via PDEATHSIG; sweep the group anyway
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._err.close()


class Sampler(threading.Thread):
    """Every second: restream's ffmpeg children. Every 10 s: RSS, load, receiver file sizes."""

    def __init__(self, go: Go, files: dict[str, list[Path]], t0: float) -> None:
        super().__init__(daemon=True)
        self.go, self.files, self.t0 = go, files, t0
        self.stop_flag = threading.Event()
        self.ffmpeg_pids: dict[int, bool] = {}  # pid -> broadcasting (has a tee output)
        self.rss: list[tuple[float, int]] = []
        self.hwm_kb: int | None = None
        self.load: list[tuple[float, float]] = []
        self.sizes: list[tuple[float, dict[str, list[int]]]] = []

    def run(self) -> None:
        pid = self.go.proc.pid
        next_sample = time.time()
        while not self.stop_flag.is_set() and self.go.proc.poll() is None:
            for c in _children(pid):
                if c not in self.ffmpeg_pids:
                    argv = _argv(c)
                    if argv and "ffmpeg" in os.path.basename(argv[0].decode(errors="replace")):
                        self.ffmpeg_pids[c] = b"tee" in argv
            now = time.time()
            if now >= next_sample:
                next_sample += SAMPLE_S
                rss = _status_kb(pid, "VmRSS")
                hwm = _status_kb(pid, "VmHWM")
                if rss is not None:
                    self.rss.append((now - self.t0, rss))
                if hwm is not None:
                    self.hwm_kb = hwm
                self.load.append((now - self.t0, os.getloadavg()[0]))
                self.sizes.append((now - self.t0, {d: [_size(f) for f in fs] for d, fs in self.files.items()}))
            self.stop_flag.wait(1.0)


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def media_duration(path: Path) -> float:
    """First to last video packet timestamp (stream copy, no decode)."""
    out = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:v:0?",
                          "-c", "copy", "-f", "framecrc", "-"], capture_output=True, text=True, timeout=600).stdout
    tb, times = 1 / 1000, []
    for line in out.splitlines():
        if line.startswith("#tb 0:"):
            num, den = line.split(":", 1)[1].strip().split("/")
            tb = int(num) / int(den)
        elif line and not line.startswith("#"):
            times.append(int(line.split(",")[2]) * tb)
    return max(times) - min(times) if times else 0.0


def decodes(path: Path, upto: float | None = None) -> tuple[bool, str]:
    """Decode the whole file (or its first ``upto`` seconds), stopping at the first error."""
    limit = ["-t", f"{upto:.3f}"] if upto is not None else []
    r = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-xerror", "-threads", "1",
                        "-i", str(path), *limit, "-f", "null", "-"], capture_output=True, text=True, timeout=1800)
    return r.returncode == 0, r.stderr.strip()[-300:]


def check_file(path: Path, killed: bool, duration: float) -> dict:
    """Does it decode? A SIGKILLed receiver's file may end in a torn packet: then check all but its last second."""
    ok, err = decodes(path)
    out = {"decodes": ok, "decode_errors": err}
    if not ok and killed and duration > 2:
        out["decodes_but_last_1s"] = decodes(path, duration - 1.0)[0]
    return out


def schedule(total_s: float, interval: float | None) -> tuple[float, list[float]]:
    """Seconds after all-live at which faults start; none in the last interval."""
    if interval is None:
        interval = 180.0 if total_s >= 6 * 180 else max(20.0, total_s / 4)
    times, t = [], interval
    while t + max(DOWN_S) + 1 + interval <= total_s + 1e-9:
        times.append(t)
        t += interval
    return interval, times


def run(args, work: Path) -> dict:
    total_s = args.minutes * 60
    interval, fault_at = schedule(total_s, args.interval)
    config = work / "config"
    env = {**os.environ, "RESTREAM_CONFIG_DIR": str(config), "NO_COLOR": "1"}
    env.pop("RESTREAM_PROFILE", None)
    names = [f"d{i}" for i in range(N_DEST)]
    ports = {n: free_port() for n in names}
    keys = {n: f"soak-{n}-key" for n in names}
    files: dict[str, list[Path]] = {n: [] for n in names}
    current: dict[str, Receiver] = {}
    all_receivers: list[Receiver] = []
    faults: list[dict] = []
    go = None
    sampler = None

    def start_receiver(n: str) -> float:
        out = work / f"{n}-s{len(files[n])}.flv"
        r = SoakReceiver(ports[n], out, key=keys[n])
        files[n].append(out)
        all_receivers.append(r)
        r.start()  # returns once the port LISTENs (read from /proc/net/tcp, no connect)
        current[n] = r
        return time.time()

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    old_term = signal.signal(signal.SIGTERM, on_term)
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    try:
        for n in names:
            start_receiver(n)
            subprocess.run([sys.executable, "-m", "restream", "add", n, "--url", f"rtmp://127.0.0.1:{ports[n]}/live",
                            "--key-stdin"], input=keys[n] + "\n", text=True, env=env, check=True,
                           capture_output=True)
        argv = [sys.executable, "-m", "restream", "go", *GO_ARGS, "--duration", f"{args.minutes:g}m"]
        if args.tracemalloc:  # the same CLI under tracemalloc (bench/traced.py): its RSS figures are inflated
            env = {**env, "RESTREAM_TRACEMALLOC": str(work / "tracemalloc.json")}
            argv[1:3] = [str(HERE / "traced.py"), "--after", "60"]
        t0 = time.time()
        go = Go(argv, env, work / "restream.stderr")
        sampler = Sampler(go, files, t0)
        sampler.start()
        for n in names:
            if go.wait_event(lambda e, n=n: e.get("event") == "state" and e.get("destination") == n
                             and e.get("state") == "live", 60) is None:
                raise RuntimeError(f"{n} did not go live within 60 s; stderr: "
                                   f"{(work / 'restream.stderr').read_text(errors='replace')[-2000:]}")
        all_live = time.time()
        print(f"soak: all {N_DEST} live after {all_live - t0:.1f} s; {args.minutes:g} min, "
              f"faults at +{', +'.join(f'{t:.0f}' for t in fault_at)} s (rotating d0..d4)", file=sys.stderr,
              flush=True)
        for k, at in enumerate(fault_at):
            n = names[k % N_DEST]
            while time.time() < all_live + at:
                if go.proc.poll() is not None:
                    raise RuntimeError(f"restream exited early ({go.proc.returncode})")
                time.sleep(0.2)
            down = DOWN_S[k % len(DOWN_S)] + random.random()
            current[n].kill()
            killed = time.time()
            time.sleep(down)
            listening = start_receiver(n)
            live = go.wait_event(lambda e, n=n: e.get("event") == "state" and e.get("destination") == n
                                 and e.get("state") == "live" and _ts(e) > killed, 60)
            f = {"destination": n, "killed": killed, "listening": listening, "planned_down_s": listening - killed,
                 "live": _ts(live) if live else None,
                 "reconnect_s": (_ts(live) - listening) if live else None,
                 "states_between": [(e["state"], e.get("error")) for e in go.states(n)
                                    if killed <= _ts(e) <= (_ts(live) if live else time.time())]}
            faults.append(f)
            print(f"soak: +{killed - t0:6.0f} s  killed {n}, down {f['planned_down_s']:.1f} s, "
                  f"live again {f['reconnect_s'] if f['reconnect_s'] is None else round(f['reconnect_s'], 2)} s "
                  f"after its receiver listened", file=sys.stderr, flush=True)
        try:
            go.proc.wait(max(0.0, t0 + total_s + 90 - time.time()))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        t_exit = time.time()
    finally:
        if sampler is not None:
            sampler.stop_flag.set()
        if go is not None:
            go.stop()
        for r in all_receivers:  # they end with their publisher; the last ones get a moment to close their files
            if r.proc is not None and r.proc.poll() is None:
                try:
                    r.proc.wait(10)
                except subprocess.TimeoutExpired:
                    r.stop()
            r.kill()
        signal.signal(signal.SIGTERM, old_term)
    load_after = os.getloadavg()
    sampler.join(5)

    events = go.events
    end = next((e for e in events if e.get("event") == "end"), None)
    start_ev = next((e for e in events if e.get("event") == "start"), None)
    t_end = _ts(end) if end else t_exit

    # files: durations and decode checks (in parallel: 30-minute files take a while to decode)
    flat = [f for n in names for f in files[n]]
    with ThreadPoolExecutor(max_workers=2) as pool:
        durations = dict(zip(flat, pool.map(media_duration, flat)))
        killed_files = {f for n in names for f in files[n][:-1]}  # every file but the last was SIGKILLed
        checks = (dict(zip(flat, pool.map(lambda f: check_file(f, f in killed_files, durations[f]), flat)))
                  if not args.no_decode_check else {})

    per_dest = {}
    for n in names:
        first_live = next((_ts(e) for e in go.states(n) if e["state"] == "live"), None)
        wall = t_end - first_live if first_live else 0.0
        planned = sum(f["planned_down_s"] for f in faults if f["destination"] == n)
        delivered = sum(durations[f] for f in files[n])
        expected = wall - planned
        final = (end or {}).get("destinations", {}).get(n, {})
        per_dest[n] = {
            "files": [{"name": f.name, "duration_s": round(durations[f], 3), "bytes": _size(f),
                       "receiver_killed": f in killed_files, **checks.get(f, {})}
                      for f in files[n]],
            "delivered_s": round(delivered, 3), "wall_s": round(wall, 3), "planned_down_s": round(planned, 3),
            "expected_s": round(expected, 3), "ratio": round(delivered / expected, 5) if expected > 0 else None,
            "faults": sum(1 for f in faults if f["destination"] == n),
            "reconnects_reported": final.get("reconnects"), "final_state": final.get("state"),
            "uptime_s_reported": final.get("uptime_s"),
        }

    broadcasting = sorted(p for p, tee in sampler.ffmpeg_pids.items() if tee)
    rss = sampler.rss
    warm = [kb for t, kb in rss if t >= 60] or [kb for _, kb in rss]
    slope = None
    pts = [(t, kb) for t, kb in rss if t >= 60]
    if len(pts) >= 3:
        mt = statistics.fmean(t for t, _ in pts)
        mk = statistics.fmean(k for _, k in pts)
        den = sum((t - mt) ** 2 for t, _ in pts)
        slope = sum((t - mt) * (k - mk) for t, k in pts) / den * 3600 / 1024 if den else None  # MB per hour
    reconnects = [f["reconnect_s"] for f in faults if f["reconnect_s"] is not None]

    # delivered seconds over wall time, per destination (for the plot): receiver-side file sizes sampled every
    # 10 s, each file's bytes converted to seconds with that file's own final duration / size
    sec_per_byte = {f: (durations[f] / _size(f)) if _size(f) else 0.0 for f in flat}
    series = {"t": [round(t, 1) for t, _ in sampler.sizes],
              "delivered_s": {n: [round(sum(s * sec_per_byte[f] for s, f in zip(sz[n], files[n])), 2)
                                  for _, sz in sampler.sizes] for n in names},
              "first_live_s": {n: (next((_ts(e) for e in go.states(n) if e["state"] == "live"), t0) - t0)
                               for n in names}}

    result = {
        "kind": "restream soak",
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python bench/soak.py " + " ".join(sys.argv[1:]),
        "go_argv": ["restream", "go", *GO_ARGS, "--duration", f"{args.minutes:g}m"],
        "minutes": args.minutes, "fault_interval_s": interval, "downtime_random_phase": True,
        "machine": {"cpus": os.cpu_count(), "load_before": load_before, "load_after": load_after,
                    "load_1min_mean": round(statistics.fmean(l for _, l in sampler.load), 2) if sampler.load else None,
                    "load_1min_max": round(max(l for _, l in sampler.load), 2) if sampler.load else None},
        "exit_code": go.proc.returncode, "timed_out": timed_out,
        "end": end, "restream_pid": go.proc.pid, "ffmpeg_pid_start_event": (start_ev or {}).get("pid"),
        "broadcast_s": round(t_end - t0, 2),
        "ffmpeg_pids": broadcasting, "ffmpeg_restarts": max(0, len(broadcasting) - 1),
        "probe_ffmpeg_pids": sorted(p for p, tee in sampler.ffmpeg_pids.items() if not tee),
        "rss_mb": {"first": round(rss[0][1] / 1024, 1) if rss else None,
                   "after_1min": round(warm[0] / 1024, 1) if warm else None,
                   "max": round(max(warm) / 1024, 1) if warm else None,
                   "last": round(rss[-1][1] / 1024, 1) if rss else None,
                   "hwm": round(sampler.hwm_kb / 1024, 1) if sampler.hwm_kb else None,
                   "slope_mb_per_hour": round(slope, 2) if slope is not None else None},
        "rss_series": [(round(t, 1), kb) for t, kb in rss],
        "load_series": [(round(t, 1), round(l, 2)) for t, l in sampler.load],
        "reconnect_s": {"n": len(reconnects), "median": round(statistics.median(reconnects), 3) if reconnects else None,
                        "max": round(max(reconnects), 3) if reconnects else None,
                        "all": [round(r, 3) for r in reconnects]},
        "faults": [{**f, "killed": round(f["killed"] - t0, 2), "listening": round(f["listening"] - t0, 2),
                    "live": round(f["live"] - t0, 2) if f["live"] else None,
                    "planned_down_s": round(f["planned_down_s"], 2),
                    "reconnect_s": round(f["reconnect_s"], 3) if f["reconnect_s"] is not None else None}
                   for f in faults],
        "destinations": per_dest,
        "ratio_min": min((d["ratio"] for d in per_dest.values() if d["ratio"] is not None), default=None),
        # every file decodes; a killed receiver's file at least up to its last second (a torn last packet)
        "tracemalloc": (json.loads((work / "tracemalloc.json").read_text())
                        if (work / "tracemalloc.json").exists() else None),
        "all_files_decode": all(c["decodes"] or c.get("decodes_but_last_1s") for c in checks.values())
        if checks else None,
        "files_decode_whole": sum(c["decodes"] for c in checks.values()),
        "files_torn_tail_only": sum(not c["decodes"] and bool(c.get("decodes_but_last_1s")) for c in checks.values()),
        "files": len(flat),
        "bad_json_lines": go.bad_lines,
        "series": series,
        "workdir": str(work) if args.keep else None,
    }
    return result


def report(r: dict) -> str:
    lines = [f"restream soak, {r['date']}: {r['minutes']:g} min ({r['broadcast_s']:.0f} s broadcast), "
             f"{len(r['faults'])} receiver kills every {r['fault_interval_s']:.0f} s; {r['machine']['cpus']} CPUs, "
             f"load (1 min) mean {r['machine']['load_1min_mean']} max {r['machine']['load_1min_max']}",
             f"  {' '.join(r['go_argv'])}",
             "",
             f"{'dest':5} {'files':>5} {'delivered s':>11} {'wall s':>9} {'planned down s':>14} {'expected s':>10} "
             f"{'delivered/expected':>18} {'kills':>5} {'reconnects':>10} {'decodes':>7}"]
    for n, d in r["destinations"].items():
        dec = [f.get("decodes") or f.get("decodes_but_last_1s") for f in d["files"]]
        dec_s = "-" if None in dec else f"{sum(map(bool, dec))}/{len(dec)}"
        lines.append(f"{n:5} {len(d['files']):5d} {d['delivered_s']:11.1f} {d['wall_s']:9.1f} "
                     f"{d['planned_down_s']:14.1f} {d['expected_s']:10.1f} {d['ratio']:18.4f} {d['faults']:5d} "
                     f"{d['reconnects_reported']!s:>10} {dec_s:>7}")
    rc = r["reconnect_s"]
    rss = r["rss_mb"]
    lines += [
        "",
        "delivered = sum of decoded durations of its receiver files; wall = its first live event -> end event;",
        "expected = wall - planned downtime (kill -> new receiver listening)",
        "",
        f"reconnect (receiver listening -> live event): n={rc['n']} median {rc['median']} s, max {rc['max']} s; "
        f"all {rc['all']}",
        f"Python RSS: {rss['first']} MB at start, {rss['after_1min']} MB after 1 min, max {rss['max']} MB, "
        f"last {rss['last']} MB, VmHWM {rss['hwm']} MB, trend {rss['slope_mb_per_hour']} MB/h (after 1 min)",
        f"ffmpeg: broadcasting PIDs {r['ffmpeg_pids']} (start event {r['ffmpeg_pid_start_event']}) -> "
        f"restarts {r['ffmpeg_restarts']} (must be 0)",
        f"exit code {r['exit_code']} ({(r['end'] or {}).get('reason')}); files decode: {r['all_files_decode']} "
        f"({r['files_decode_whole']}/{r['files']} whole, {r['files_torn_tail_only']} of the killed receivers' files "
        f"up to a torn last packet); bad JSON lines {r['bad_json_lines']}",
    ]
    tm = r.get("tracemalloc")
    if tm:
        lines.append(f"tracemalloc: traced {tm['traced_kb']} KB at the end (peak {tm['peak_kb']} KB); growth from "
                     f"{tm['after_s']:g} s to the end ({tm['end_s']} s), top entries:" if tm["diffed"] else
                     "tracemalloc: (ended before the first snapshot) largest entries:")
        lines += [f"  {e['size_diff_kb']:+8.1f} KB  {e['count_diff']:+6d} blocks  {e['where']}" for e in tm["top"]]
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = r["series"]
    t = [x / 60 for x in s["t"]]
    fig, (top, mid, low) = plt.subplots(3, 1, figsize=(9, 7.5), sharex=True,
                                        gridspec_kw={"height_ratios": [2, 2, 1.2]})
    for n, ys in s["delivered_s"].items():
        top.plot(t, ys, label=n, lw=1.2)
        fl = s["first_live_s"][n]
        mid.plot(t, [y - max(0.0, x - fl) for x, y in zip(s["t"], ys)], label=n, lw=1.2)
    for f in r["faults"]:
        for ax in (top, mid):
            ax.axvline(f["killed"] / 60, color="red", lw=0.6, alpha=0.6)
            ax.axvline(f["listening"] / 60, color="green", lw=0.6, alpha=0.6, ls="--")
        mid.annotate(f["destination"], (f["killed"] / 60, 0), fontsize=7, color="red", xytext=(2, 2),
                     textcoords="offset points")
    top.set_ylabel("delivered s")
    top.set_title(f"soak {r['date']}: 5 receivers, one killed (red) and restarted (green dashed) "
                  f"every {r['fault_interval_s']:.0f} s", fontsize=9)
    top.legend(fontsize=7, ncol=5, loc="upper left")
    mid.set_ylabel("delivered - wall s\n(since its first live)")
    rss = r["rss_series"]
    low.plot([x / 60 for x, _ in rss], [kb / 1024 for _, kb in rss], color="black", lw=1)
    low.set_ylabel("Python RSS MB")
    low.set_ylim(0, max(kb / 1024 for _, kb in rss) * 1.3)
    low.set_xlabel("minutes since restream go started (receiver sizes sampled every 10 s)")
    for ax in (top, mid, low):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--interval", type=float, default=None, help="seconds between faults (default 180, or a third "
                                                                 "of a short soak)")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default: restream-soak-<time>.json in the "
                                                          "temp directory)")
    ap.add_argument("--plot", type=Path, default=None, help="also draw the result as a PNG (matplotlib)")
    ap.add_argument("--workdir", default=None, help="where the receivers' files go (a temp directory inside it)")
    ap.add_argument("--keep", action="store_true", help="keep the receivers' files")
    ap.add_argument("--no-decode-check", action="store_true")
    ap.add_argument("--tracemalloc", action="store_true", help="run restream under tracemalloc: the result gets the "
                    "top growth between minute 1 and the end (RSS is then inflated by tracemalloc itself)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.gettempdir()) / f"restream-soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    work = Path(tempfile.mkdtemp(prefix="restream-soak-", dir=args.workdir))
    try:
        result = run(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(report(result))
    print(f"\nresult: {out}")
    if args.plot:
        try:
            plot(result, args.plot)
            print(f"plot: {args.plot}")
        except ImportError:
            print("plot skipped: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
    ok = (result["exit_code"] == 0 and result["ffmpeg_restarts"] == 0 and not result["timed_out"]
          and all(f["reconnect_s"] is not None for f in result["faults"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
