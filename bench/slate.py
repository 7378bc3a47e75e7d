"""The slate's figures (issue 13), measured at the receiver: how fast the slate replaces a lost source and a new
publisher replaces the slate, and what the frame switcher costs.

Usage:  python bench/slate.py [--rounds 5] [--size 1280x720] [--fps 30] [--cpu-seconds 60] [--slate-cpu-seconds 20]
                              [--json FILE]

Everything is local: ``restream relay --slate --size WxH --fps N --json`` with one destination, a *frame tap*: an
``ffmpeg -listen 1`` receiver that decodes (``-threads 1``, no input buffering) and writes, for every frame, the
top-left and the centre 16x16 blocks as raw RGB to a pipe that this script reads; each frame is stamped with the
wall clock (``time.monotonic``) when it arrives and named by ``tests/avcheck.classify`` (the slate's background in
the corner, else the publisher's colour in the centre). Publishers are tests/avcheck.py's marker publishers (a solid
colour per publisher, libx264 ultrafast, AAC, ``-re``) at the same size and rate.

Latencies, per round (the first publisher, which starts the broadcast, is not counted):

* **kill -> slate**: the publisher SIGKILLed -> the first slate frame at the tap (target <= 1.5 s);
* **stall -> slate**: the publisher SIGSTOPped (its connection stays open) -> the first slate frame (<= 2 s);
* **new publisher -> picture**: the publisher's ffmpeg started -> the first frame of its colour (<= 1.5 s); this
  includes its own start (~0.1 s), the connection, the ingest key check and the probe.

Medians over ``--rounds`` rounds (each gives one kill, one stall and two new publishers). All of it includes the
broadcast encoder's lookahead and muxing and the tap's decode, as a viewer's player would.

CPU, over a window of ``--cpu-seconds`` with a live publisher at WxH@N, then ``--slate-cpu-seconds`` on slate:

* **switcher**: utime+stime of the restream process's thread named ``restream-switch`` (``/proc/PID/task/*/comm``),
  % of one core (target <= 5 % at 1280x720@30);
* **tree**: the restream process (all its threads) and every descendant alive at both ends of the window (the
  broadcast ffmpeg, the source ffmpeg), each and together. The publisher and the tap are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
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

import avcheck  # noqa: E402
from avcheck import FLASH, SLATE, Frame, Marker  # noqa: E402
from support import FFMPEG, Restream, cmdline, descendants, free_port, wait_listening  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
KEY = "bench-ingest-key"
SWITCH_THREAD = "restream-switch"
COLOURS = ["red", "green", "blue", "yellow"]
BLOCK = avcheck.BLOCK
TARGETS = {"kill": 1.5, "stall": 2.0, "new": 1.5, "switcher": 5.0}


class FrameTap:
    """An ``ffmpeg -listen 1`` RTMP receiver that decodes to the corner and centre blocks of each frame, raw RGB on a
    pipe; a thread stamps each frame's arrival and names it."""

    FRAME = 2 * BLOCK * BLOCK * 3

    def __init__(self, port: int, key: str, log: Path) -> None:
        self.port = port
        self.url = f"rtmp://127.0.0.1:{port}/live"
        graph = (f"[0:v]split[a][b];[a]crop={BLOCK}:{BLOCK}:0:0[c];"
                 f"[b]crop={BLOCK}:{BLOCK}:(iw-{BLOCK})/2:(ih-{BLOCK})/2[d];[c][d]hstack,format=rgb24[o]")
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(
                [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "warning", "-listen", "1", "-rw_timeout", "30000000",
                 "-fflags", "nobuffer", "-flags", "low_delay", "-threads", "1", "-i", f"{self.url}/{key}",
                 "-filter_complex", graph, "-map", "[o]", "-fps_mode", "passthrough", "-f", "rawvideo", "pipe:1"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=f, start_new_session=True, bufsize=0)
        self.frames: list[tuple[float, str]] = []  # (arrival, label)
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        wait_listening(port, 10, proc=self.proc)

    def _read(self) -> None:
        buf = bytearray(self.FRAME)
        view = memoryview(buf)
        stride = 2 * BLOCK * 3
        while True:
            got = 0
            while got < self.FRAME:
                n = self.proc.stdout.readinto(view[got:])
                if not n:
                    return
                got += n
            t = time.monotonic()
            sums = [[0, 0, 0], [0, 0, 0]]
            for y in range(BLOCK):
                row = buf[y * stride:(y + 1) * stride]
                for half in (0, 1):
                    part = row[half * BLOCK * 3:(half + 1) * BLOCK * 3]
                    for c in range(3):
                        sums[half][c] += sum(part[c::3])
            n = BLOCK * BLOCK
            frame = Frame(0.0, tuple(s / n for s in sums[0]), tuple(s / n for s in sums[1]))
            with self.changed:
                self.frames.append((t, avcheck.classify(frame)))
                self.changed.notify_all()

    def first(self, labels: set[str], after: float, timeout: float) -> float:
        """Arrival time of the first frame named one of ``labels`` that arrived after ``after`` (monotonic)."""
        deadline = time.monotonic() + timeout
        i = 0
        with self.changed:
            while True:
                while i < len(self.frames):
                    t, label = self.frames[i]
                    i += 1
                    if t > after and label in labels:
                        return t
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self.thread.is_alive():
                    raise TimeoutError(f"no frame {sorted(labels)} within {timeout} s "
                                       f"(last: {self.frames[-5:] if self.frames else 'none'})")
                self.changed.wait(min(left, 0.5))

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


# -- CPU from /proc ------------------------------------------------------------------------------------------------

def cpu_s(stat_path: str) -> float | None:
    try:
        fields = Path(stat_path).read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_id(pid: int, name: str) -> int | None:
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == name:
                return int(task.name)
        except OSError:
            continue
    return None


def role(pid: int, top: int) -> str:
    if pid == top:
        return "restream (Python)"
    argv = (cmdline(pid) or b"").split(b"\0")
    if b"libx264" in argv:  # (a source ffmpeg writes its two pipes through a tee too: the encoder tells them apart)
        return "broadcast ffmpeg"
    if b"rawvideo" in argv:
        return "source ffmpeg"
    return "other"


def snapshot(top: int, tid: int | None) -> dict:
    procs = {p: cpu_s(f"/proc/{p}/stat") for p in [top, *descendants(top)]}
    return {"t": time.monotonic(), "procs": {p: c for p, c in procs.items() if c is not None},
            "roles": {p: role(p, top) for p in procs},
            "switch": cpu_s(f"/proc/{top}/task/{tid}/stat") if tid else None}


def window(top: int, tid: int | None, seconds: float) -> dict:
    a = snapshot(top, tid)
    time.sleep(seconds)
    b = snapshot(top, tid)
    wall = b["t"] - a["t"]
    per: dict[str, float] = {}
    for p, c in b["procs"].items():
        if p in a["procs"]:
            r = b["roles"][p]
            per[r] = per.get(r, 0.0) + (c - a["procs"][p]) / wall * 100
    out = {"wall_s": round(wall, 2), "per_role_pct": {k: round(v, 2) for k, v in per.items()},
           "tree_pct": round(sum(per.values()), 2), "switcher_pct": None,
           "started_or_ended": sorted(set(a["procs"]) ^ set(b["procs"]))}
    if a["switch"] is not None and b["switch"] is not None:
        out["switcher_pct"] = round((b["switch"] - a["switch"]) / wall * 100, 2)
    return out


# -- the run -------------------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--cpu-seconds", type=float, default=60.0)
    ap.add_argument("--slate-cpu-seconds", type=float, default=20.0)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--note", help="a line to keep with the figures (how this run differed)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="restream-slate-bench-"))
    env = {"RESTREAM_CONFIG_DIR": str(tmp / "config")}
    tap = FrameTap(free_port(), "tap-key", tmp / "tap.log")
    subprocess.run([sys.executable, "-m", "restream", "add", "tap", "--url", tap.url, "--key-stdin"],
                   input="tap-key\n", text=True, capture_output=True, check=True, env={**os.environ, **env})
    things: list = [tap]
    figures: dict = {"size": args.size, "fps": args.fps, "rounds": args.rounds, "kill": [], "stall": [], "new": [],
                     "load_before": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
                     "start_hangs": 0, "note": args.note}
    n = 0
    port = ingest = relay = None

    def publisher(**kw) -> Marker:
        nonlocal n
        n += 1
        m = Marker(ingest, tmp / f"pub-{n}.log", size=args.size, fps=args.fps, colour=COLOURS[n % len(COLOURS)],
                   **kw)
        things.append(m)
        return m

    def seen(m: Marker, timeout: float = 15.0) -> float:
        return tap.first({m.kw["colour"], FLASH}, m.started, timeout) - m.started

    try:
        for attempt in range(3):  # a start that hangs is counted and tried again (the tap still listens)
            port = free_port()
            ingest = f"rtmp://127.0.0.1:{port}/live/{KEY}"
            relay = Restream("relay", ["--listen", ingest, "--json", "--size", args.size, "--fps", str(args.fps),
                                       "--slate-timeout", "10m", "--slate"], env)
            things.append(relay)
            wait_listening(port, 30, proc=relay.proc)
            first = publisher()
            try:
                seen(first, 30)  # the broadcast starts: not a hand-over
                break
            except TimeoutError:
                figures["start_hangs"] += 1
                print(f"the first publisher never went on air (start {attempt + 1}): restream is restarted",
                      file=sys.stderr, flush=True)
                first.kill()
                relay.kill()
                if tap.proc.poll() is not None:
                    raise
        else:
            raise RuntimeError("restream never put the first publisher on air in 3 starts")
        time.sleep(2)
        for r in range(args.rounds):
            t = time.monotonic()
            first.signal(signal.SIGKILL)
            figures["kill"].append(round(tap.first({SLATE}, t, 15) - t, 3))
            time.sleep(1.5)
            second = publisher()
            figures["new"].append(round(seen(second), 3))
            time.sleep(3)
            t = time.monotonic()
            second.signal(signal.SIGSTOP)
            figures["stall"].append(round(tap.first({SLATE}, t, 15) - t, 3))
            time.sleep(1.0)
            second.kill()
            time.sleep(1.5)
            first = publisher()
            figures["new"].append(round(seen(first), 3))
            time.sleep(3)
            print(f"round {r + 1}: kill->slate {figures['kill'][-1]:.2f} s, stall->slate {figures['stall'][-1]:.2f} s,"
                  f" new->picture {figures['new'][-2]:.2f} / {figures['new'][-1]:.2f} s", file=sys.stderr, flush=True)

        tid = thread_id(relay.proc.pid, SWITCH_THREAD)
        figures["switch_thread_found"] = tid is not None
        time.sleep(2)
        figures["cpu_live"] = window(relay.proc.pid, tid, args.cpu_seconds)
        first.kill()
        tap.first({SLATE}, time.monotonic(), 15)
        time.sleep(2)
        figures["cpu_slate"] = window(relay.proc.pid, tid, args.slate_cpu_seconds)
        figures["source_events"] = [(e["ts"][11:23], e["state"], e.get("detail")) for e in relay.events
                                    if e.get("event") == "source"]
        figures["flaps"] = flaps(tap.frames)
        os.kill(relay.proc.pid, signal.SIGINT)
        figures["exit_code"] = relay.wait(30)
        end = relay.events[-1] if relay.events and relay.events[-1].get("event") == "end" else {}
        figures["end"] = {k: end.get(k) for k in ("reason", "slate_s", "handovers", "sessions")}
        figures["warnings"] = [e["message"] for e in relay.events if e.get("event") == "log"
                               and e.get("level") in ("warning", "error")][:10]
    finally:
        for t in reversed(things):
            t.kill()
    figures["load_after"] = [round(x, 2) for x in os.getloadavg()]
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


def flaps(frames: list[tuple[float, str]], short_s: float = 2.0) -> list[dict]:
    """What the tap saw that no step of the bench asked for (every publisher is on air for 3 s or more): a colour
    on air for less than ``short_s`` between two slates (``back``: the colour it had before that slate, i.e. a lost
    source's last frames flashing up), and a slate between two long runs of the same colour (the source was taken
    off air and came back by itself). Times: s from the tap's first frame."""
    runs: list[list] = []  # [label, first arrival, last arrival, frames]
    for t, label in frames:
        if label == FLASH and runs and runs[-1][0] != SLATE:
            label = runs[-1][0]
        if runs and runs[-1][0] == label:
            runs[-1][2], runs[-1][3] = t, runs[-1][3] + 1
        else:
            runs.append([label, t, t, 1])
    t0 = frames[0][0] if frames else 0.0
    out = []
    for i in range(1, len(runs) - 1):
        before, run, after = runs[i - 1], runs[i], runs[i + 1]
        on_air = after[1] - run[1]
        if run[0] != SLATE and before[0] == SLATE == after[0] and on_air < short_s:
            back = i >= 2 and runs[i - 2][0] == run[0]
            out.append({"what": f"{run[0]} {'back ' if back else ''}on air between two slates",
                        "at_s": round(run[1] - t0, 2), "on_air_s": round(on_air, 2), "frames": run[3],
                        "after_slate_s": round(run[1] - before[1], 2)})
        if run[0] == SLATE and before[0] == after[0] != SLATE and (i + 2 >= len(runs) or
                                                                   runs[i + 2][1] - after[1] >= short_s):
            out.append({"what": f"slate in the middle of {before[0]}", "at_s": round(run[1] - t0, 2),
                        "slate_s": round(after[1] - run[1], 2)})
    return out


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def table(f: dict) -> str:
    def row(what: str, xs: list[float], target: float) -> str:
        m = med(xs)
        return (f"| {what} | **{m:.2f} s** | {', '.join(f'{x:.2f}' for x in xs)} | <= {target} s "
                f"| {'yes' if m <= target else '**no**'} |")

    size = f"{f['size']}@{f['fps']}"
    live, slate = f.get("cpu_live", {}), f.get("cpu_slate", {})

    def pct(x) -> str:
        return "-" if x is None else f"{x:.1f} %"

    lines = [
        f"| measured ({size}, at the receiver) | median | rounds | target | met |",
        "|---|---:|---|---|:-:|",
        row("source SIGKILLed -> slate visible", f["kill"], TARGETS["kill"]),
        row("source SIGSTOPped (stall) -> slate visible", f["stall"], TARGETS["stall"]),
        row("new publisher started -> its picture", f["new"], TARGETS["new"]),
        "",
        f"| CPU, % of one core ({size}) | live publisher, {live.get('wall_s', 0):.0f} s | on slate, "
        f"{slate.get('wall_s', 0):.0f} s | target |",
        "|---|---:|---:|---|",
        f"| switcher thread (`{SWITCH_THREAD}`) | **{pct(live.get('switcher_pct'))}** | "
        f"{pct(slate.get('switcher_pct'))} | <= {TARGETS['switcher']:.0f} % |",
    ]
    for r in ("restream (Python)", "broadcast ffmpeg", "source ffmpeg", "other"):
        a, b = live.get("per_role_pct", {}).get(r), slate.get("per_role_pct", {}).get(r)
        if a is not None or b is not None:
            lines.append(f"| {r} | {pct(a)} | {pct(b)} | |")
    lines.append(f"| restream tree, total | {pct(live.get('tree_pct'))} | {pct(slate.get('tree_pct'))} | |")
    if f.get("start_hangs"):
        lines.append(f"\nstarts where the first publisher never went on air (restream restarted): {f['start_hangs']}")
    if not f.get("switch_thread_found"):
        lines.append(f"\n(no thread named `{SWITCH_THREAD}` in the restream process: the switcher's CPU is unknown)")
    fl = f.get("flaps")
    if fl is not None:
        lines.append(f"\nunasked-for switches seen at the tap: {len(fl)}" + (": " + "; ".join(
            f"{x['what']} at {x['at_s']} s for {x.get('on_air_s', x.get('slate_s'))} s"
            + (f" ({x['frames']} frames, {x['after_slate_s']} s after the slate came)" if "frames" in x else "")
            for x in fl) if fl else ""))
    if f.get("note"):
        lines.append(f"\n{f['note']}")
    lines.append(f"\nexit code {f.get('exit_code')}, end {f.get('end')}; load {f['load_before']} before, "
                 f"{f['load_after']} after; {f['cpus']} CPUs")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
