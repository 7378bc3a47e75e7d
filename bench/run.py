"""Regenerate docs/benchmarks.md: run every bench script in turn, collect their side-by-side ratios, write one table.

Usage:  python bench/run.py [--skip-slow] [--skip-soak] [--only NAME] [--soak-json FILE] [--slate-json FILE]
                           [--out docs/benchmarks.md]

Benches (NAME), each measured side by side in one run of its own:

* ``go_cpu``     bench/go_cpu.py (slow): whole-tree CPU of `restream go` vs the expert's tee one-liner (5 and 1
                 destinations) and vs PyLivestream (5), same file input, interleaved rounds, medians.
* ``relay_nginx`` bench/relay_nginx.py (slow): `restream relay` (copy) vs nginx-rtmp `push` to 5 receivers: CPU
                 and first media at the slowest receiver.
* ``profile``    bench/profile_go.py (slow, needs py-spy): where the Python process's time goes while live; the
                 top entries go into the document.
* ``list``       bench/bench_list.py: `restream list`, `show` and `--help` wall time vs a bare `python -c pass`.
* ``cpu``        bench/cpu.py (slow): whole-tree CPU of `restream go` vs the same ffmpeg argv by hand; 5 vs 1
                 destinations; peak RSS of the Python process.
* ``relay_cpu``  bench/relay_cpu.py (slow): the slot relay's CPU vs the ffmpeg feeding it (5 slots x 6 Mbit/s).
* ``relay_vs_transcode``  bench/relay_vs_transcode.py (slow), when it exists.
* ``groups``     bench/groups_cpu.py (slow): 5 destinations in 2 encode groups vs 1 group vs two restream processes.
* ``faults``     measured here (``measure_faults``): `restream go` and the same ffmpeg argv by hand run at the same
                 time, each to 4 loopback receivers (a, b, c direct; f behind tests/faultproxy.py's FaultProxy).
                 c's receiver is killed and restarted 3 times on both sides at once: reconnect time = new receiver
                 listening -> it has media (its log shows the input); then both proxies pause f for 20 s: a and b's
                 delivery during the pause / the pause's wall time; and peak RSS of restream's Python process vs
                 its ffmpeg.
* ``slate``      bench/slate.py (slow): at the receiver, source killed/stalled -> slate and new publisher -> its
                 picture (medians of 5 rounds), and the switcher thread's CPU at 1280x720@30 (a "Slate" section).
* ``slate_rss``  bench/slate_rss.py: peak RSS of the Python process, `restream relay --slate`, 5 destinations.
* ``soak``       bench/soak.py --minutes 30 (slow; skipped with --skip-soak): its figures are read from --soak-json
                 (default: the newest restream-soak-*.json in the temp directory), and it draws docs/soak.png.

A bench not run this time (``--skip-slow``, ``--only``, a failure) keeps its previous figures, taken from the JSON
embedded at the end of docs/benchmarks.md, with their own date. The scripts that print a table are parsed (they
do not write JSON); ``faults`` and the soak give JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

DOC = ROOT / "docs" / "benchmarks.md"
PNG = ROOT / "docs" / "soak.png"
MARK = "<!-- bench-results (bench/run.py keeps figures of benches not re-run here)"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run_script(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    print(f"$ {' '.join(shlex.quote(a) for a in argv)}", file=sys.stderr, flush=True)
    r = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **env} if env else None)
    sys.stderr.write(r.stderr[-3000:])
    print(r.stdout, file=sys.stderr, flush=True)
    if r.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return r.stdout


def row(what: str, ratio: float | None, detail: str, target: str = "", met: bool | None = None) -> dict:
    return {"what": what, "ratio": ratio, "detail": detail, "target": target, "met": met}


# -- list ---------------------------------------------------------------------------------------------------------

def bench_list(fast: bool) -> dict:
    argv = ["bench/bench_list.py", "30"]
    return {"command": "python " + " ".join(argv), "rows": parse_list(run_script(argv, 600))}


def parse_list(out: str) -> list[dict]:
    found = re.findall(r"restream (\S+) \(5 destinations.*?median (\d+) ms, p90 (\d+) ms \| python -c pass: median "
                       r"(\d+) ms, p90 (\d+) ms \| ratio ([\d.]+)x", out)
    if not found:
        raise RuntimeError(f"cannot read bench_list output: {out!r}")
    floor = re.search(r"import typer'.*?median (\d+) ms", out)
    rows = []
    for name, *figures in found:
        med, p90, bmed, bp90, _ = (float(g) for g in figures)
        typer_path = re.search(rf"restream {re.escape(name)} \(5 destinations.*through the Typer app: median (\d+) ms",
                               out)
        rows.append(row(f"`restream {name}` (5 destinations) vs bare `python -c pass`, interleaved", med / bmed,
                        f"median {med:.0f} ms (p90 {p90:.0f}) vs {bmed:.0f} ms (p90 {bp90:.0f})"
                        + (f"; through the Typer app (before the fast path): {typer_path.group(1)} ms"
                           if typer_path else "")
                        + (f"; `python -c 'import typer'` alone: {floor.group(1)} ms" if floor else ""),
                        "median <= 80 ms",
                        med <= 80))
    return rows


# -- go_cpu: restream go vs the one-liner vs PyLivestream ----------------------------------------------------------

def bench_go_cpu(fast: bool) -> dict:
    argv = ["bench/go_cpu.py", "--seconds", "30", "--rounds", "3"]  # 30 s: the file issue 16 measured with
    return {"command": "python " + " ".join(argv), "rows": parse_go_cpu(run_script(argv, 3600))}


def parse_go_cpu(out: str) -> list[dict]:
    def grab(tag: str) -> re.Match:
        m = re.search(rf"^{tag} restream ([\d.]+) s(?: \(Python ([\d.]+) s\))? vs [\w -]+? ([\d.]+) s: ratio ([\d.]+)",
                      out, re.M)
        if not m:
            raise RuntimeError(f"cannot read bench/go_cpu.py output ({tag}): {out[-500:]!r}")
        return m

    g5, g1, pls, launch = grab("GO5"), grab("GO1"), grab("PLS"), grab("LAUNCH5")
    rounds = re.search(r"(\d+) rounds", out)
    n = rounds.group(1) if rounds else "?"
    length = re.search(r"^go_cpu: (\d+) s of", out, re.M)
    secs = length.group(1) if length else "?"

    def per_round(tag: str) -> str:
        m = re.search(rf"^{tag} .*; per round ([\d. ]+), their median ([\d.]+)", out, re.M)
        return f"; within each round: {m.group(1).strip()} (median {m.group(2)})" if m else ""

    def own(m: re.Match) -> str:
        return (f"; if both ffmpegs had cost the same (ffmpeg varies more than that run to run): "
                f"{1 + float(m.group(2)) / float(m.group(3)):.3f}x") if m.group(2) else ""

    return [
        row("CPU: `restream go` (live view) vs the expert tee one-liner, 5 destinations, whole tree", float(g5.group(4)),
            f"{g5.group(1)} s vs {g5.group(3)} s ({secs} s of 720p30 from a file, median of {n} rounds; restream's "
            f"Python {g5.group(2)} s){own(g5)}{per_round('GO5')}", "<= 1.03x", float(g5.group(4)) <= 1.03),
        row("CPU: `restream go` (live view) vs the one-liner, 1 destination, whole tree", float(g1.group(4)),
            f"{g1.group(1)} s vs {g1.group(3)} s (median of {n}; restream's Python {g1.group(2)} s){own(g1)}"
            f"{per_round('GO1')}",
            "<= 1.02x", float(g1.group(4)) <= 1.02),
        row("CPU: `restream go` vs PyLivestream 2.1.1 (one ffmpeg, plain tee, no isolation), 5 destinations, same "
            "encoder options, whole tree", float(pls.group(4)),
            f"{pls.group(1)} s vs {pls.group(3)} s (median of {n}){per_round('PLS')}",
            "< 1x", float(pls.group(4)) < 1),
        row("launch -> first media (8 KB) at the slowest of 5 receivers, `restream go` (live view) vs the one-liner",
            float(launch.group(4)), f"{launch.group(1)} s vs {launch.group(3)} s (median of {n}){per_round('LAUNCH5')}",
            "<= 1.05x",
            float(launch.group(4)) <= 1.05),
    ]


# -- relay_nginx: restream relay vs nginx-rtmp push ----------------------------------------------------------------

def bench_relay_nginx(fast: bool) -> dict:
    argv = ["bench/relay_nginx.py", "--seconds", "30", "--rounds", "3"]  # 30 s: issue 16's relay run
    rows = parse_relay_nginx(run_script(argv, 1800))
    old = os.environ.get("RESTREAM_BENCH_OLD_SRC")  # e.g. an earlier commit's src/ (git archive), for a before/after
    if old:  # the same bench on that code, right after (its restream imported from there)
        label = os.environ.get("RESTREAM_BENCH_OLD_LABEL", "an earlier commit")
        for r in parse_relay_nginx(run_script(argv, 1800, env={"PYTHONPATH": old})):
            rows.append({**r, "what": r["what"] + f" (the code of {label}, RESTREAM_BENCH_OLD_SRC)"})
    return {"command": "python " + " ".join(argv), "rows": rows}


def parse_relay_nginx(out: str) -> list[dict]:
    c = re.search(r"^CPU restream relay ([\d.]+) s vs nginx push ([\d.]+) s: ratio ([\d.]+)", out, re.M)
    f = re.search(r"^FIRST restream ([\d.infa]+) s vs nginx ([\d.infa]+) s", out, re.M)
    if not (c and f):
        raise RuntimeError(f"cannot read bench/relay_nginx.py output: {out[-500:]!r}")
    rf, nf = float(f.group(1)), float(f.group(2))
    length = re.search(r"^relay_nginx: (\d+) s,", out, re.M)
    secs = length.group(1) if length else "?"
    return [
        row("CPU: `restream relay` (copy) vs nginx-rtmp `push`, 1 publisher -> 5 x 3 Mbit/s, whole tree",
            float(c.group(3)), f"{c.group(1)} s vs {c.group(2)} s ({secs} s, median of 3)", "<= 3x",
            float(c.group(3)) <= 3),
        row("first media at the slowest of 5 receivers after the publisher starts, `restream relay` vs nginx-rtmp",
            rf / nf if nf else None, f"{rf:.2f} s vs {nf:.2f} s (median of 3)", "restream <= 1 s", rf <= 1.0),
    ]


# -- profile: py-spy top entries -----------------------------------------------------------------------------------

def bench_profile(fast: bool) -> dict:
    outs = []
    old = os.environ.get("RESTREAM_BENCH_OLD_SRC")  # e.g. main's src/: its profile too, for a before/after
    for extra in ([], ["--view"], *([["--old-src", old]] if old else [])):
        argv = ["bench/profile_go.py", "--dest", "5", "--seconds", "20", *extra]
        outs.append(run_script(argv, 600))
    rows, profiles = [], []
    for out in outs:
        head = re.search(r"^PROFILE (.+?): Python busy ([\d.]+) % of a core", out, re.M)
        if not head:
            raise RuntimeError(f"cannot read bench/profile_go.py output: {out[-500:]!r}")
        what = head.group(1) + (" (code before issue 16)" if ", src /" in out else "")
        rows.append(row(f"Python process busy while live (its own CPU), {what}", None, f"{head.group(2)} % of a core"))
        profiles.append({"what": what, "busy": float(head.group(2)),
                         "entries": [ln.split("\t") for ln in out.splitlines() if ln.startswith(("self\t", "total\t"))]})
    return {"command": "python bench/profile_go.py --dest 5 --seconds 20 [--view]", "rows": rows,
            "profiles": profiles}


# -- cpu ----------------------------------------------------------------------------------------------------------

def bench_cpu(fast: bool) -> dict:
    argv = ["bench/cpu.py", "--seconds", "20", "--rounds", "2"]
    return {"command": "python " + " ".join(argv), "rows": parse_cpu(run_script(argv, 1800))}


def parse_cpu(out: str) -> list[dict]:
    def check(tag: str) -> tuple[str, str]:
        m = re.search(rf"^\| \({re.escape(tag)}\) (.+?) \| (.+?) \| (.*?) \|$", out, re.M)
        if not m:
            raise RuntimeError(f"cannot find row ({tag}) in bench/cpu.py output")
        return m.group(2).replace("*", "").strip(), m.group(3).strip()

    def run_row(label: str) -> list[str]:
        m = re.search(rf"^\| {re.escape(label)} \| (.+) \|$", out, re.M)
        return [c.strip() for c in m.group(1).split("|")] if m else []

    a, a_t = check("a")
    a2, _ = check("a'")
    b, b_t = check("b")
    c, c_t = check("c")
    live3, hand3 = run_row("restream go, live view on a pty (3 dest)"), run_row("same ffmpeg argv by hand, direct (3 dest)")
    live1, live5 = run_row("restream go, live view (1 dest)"), run_row("restream go, live view (5 dest)")
    ra, rb = float(a.rstrip("x")), float(b.rstrip("x"))
    ra2 = float(a2.rstrip("x"))
    return [
        row("CPU: `restream go` (live view) vs the same ffmpeg argv by hand, 3 destinations, whole process tree",
            ra, f"{live3[0] if live3 else '?'} s vs {hand3[0] if hand3 else '?'} s (20 s, 720p30, mean of 2 rounds); "
            f"restream's own part (Python + probes) alone: {ra2:.3f}x", a_t, ra <= 1.05),
        row("CPU: 5 destinations vs 1 destination (restream go, live view), whole tree", rb,
            f"{live5[0] if live5 else '?'} s vs {live1[0] if live1 else '?'} s (Python {live5[1] if live5 else '?'} s "
            f"vs {live1[1] if live1 else '?'} s)", b_t, rb <= 1.10),
        row("peak RSS of the restream Python process (VmHWM, max over the cpu.py runs)", None, c, c_t,
            float(c.split()[0]) <= 60 if c.split()[0].replace(".", "").isdigit() else None),
    ]


# -- relay_cpu ----------------------------------------------------------------------------------------------------

def bench_relay_cpu(fast: bool) -> dict:
    argv = ["bench/relay_cpu.py", "--seconds", "15"]
    return {"command": "python " + " ".join(argv), "rows": parse_relay_cpu(run_script(argv, 900))}


def parse_relay_cpu(out: str) -> list[dict]:
    rows = []
    found = {}
    for line in out.splitlines():
        m = re.match(r"^(new|old|pipe)\s+(ffmpeg -listen \(128 B\)|asyncio sink \(4096 B\))\s+([\d.]+)\s+([\d.]+)\s+"
                     r"([\d.]+)%\s+([\d.]+)%", line)
        if m:
            found[(m.group(1), m.group(2))] = tuple(float(x) for x in m.groups()[2:])
    for (relay, sink), (rc, fc, pct, core) in found.items():
        if relay != "new":
            continue
        pipe = found.get(("pipe", sink))
        rows.append(row(f"slot relay CPU vs the ffmpeg feeding it, 5 slots x 6 Mbit/s, sinks: {sink}", pct / 100,
                        f"{rc:.2f} s vs {fc:.2f} s ({core:.1f} % of a core)"
                        + (f"; a plain asyncio byte pipe: {pipe[2]:.1f} %" if pipe else "")))
    if not rows:
        raise RuntimeError(f"cannot read bench/relay_cpu.py output: {out[-500:]!r}")
    return rows


# -- relay_vs_transcode ---------------------------------------------------------------------------------------------

def bench_relay_vs_transcode(fast: bool) -> dict:
    if not (HERE / "relay_vs_transcode.py").exists():
        raise FileNotFoundError("bench/relay_vs_transcode.py does not exist yet")
    argv = ["bench/relay_vs_transcode.py"]
    return {"command": "python " + " ".join(argv), "rows": parse_relay_vs_transcode(run_script(argv, 1800))}


def parse_relay_vs_transcode(out: str) -> list[dict]:
    def cells(prefix: str) -> list[str]:
        m = re.search(rf"^\| {re.escape(prefix)}.*$", out, re.M)
        return [c.strip().replace("*", "") for c in m.group(0).strip("|").split("|")] if m else []

    tree, ff = cells("relay CPU ÷ transcode CPU"), cells("relay's ffmpeg ÷ transcode's ffmpeg")
    copy, enc = cells("`restream relay` (copy)"), cells("`restream relay --transcode`")
    if not tree:
        raise RuntimeError(f"cannot read bench/relay_vs_transcode.py output: {out[-500:]!r}")
    ratio = float(tree[1].rstrip("x"))
    target = tree[2]
    limit = re.search(r"([\d.]+)", target)
    return [row("CPU: `restream relay` (copy) vs `restream relay --transcode`, same 720p30 publisher, 5 receivers, "
                "whole tree", ratio,
                (f"{copy[1]} s vs {enc[1]} s; " if copy and enc else "") +
                (f"their ffmpeg alone {ff[1]}" if ff else ""), target,
                ratio <= float(limit.group(1)) if limit else None)]


# -- groups: encode groups (issue 14) -------------------------------------------------------------------------------

def bench_groups(fast: bool) -> dict:
    argv = ["bench/groups_cpu.py", "--seconds", "20", "--rounds", "1"]
    return {"command": "python " + " ".join(argv), "rows": parse_groups(run_script(argv, 900))}


def parse_groups(out: str) -> list[dict]:
    cpu = dict(re.findall(r"^(1 group|2 groups|2 processes): ([\d.]+) CPU-s$", out, re.M))
    if len(cpu) != 3:
        raise RuntimeError(f"cannot read bench/groups_cpu.py output: {out[-500:]!r}")
    one, two, procs = (float(cpu[k]) for k in ("1 group", "2 groups", "2 processes"))
    what = "5 destinations, 1280x720 30 fps test card: 3 at 6000k + 2 vertical 9:16 720x1280 at 3000k"
    return [row(f"CPU: 2 encode groups vs 1 group (5 x 6000k), one process, whole tree; {what}", two / one,
                f"{two:.2f} s vs {one:.2f} s (20 s)", "<= 1.9x", two / one <= 1.9),
            row(f"CPU: 2 encode groups in one process vs the same as two restream processes; {what}", two / procs,
                f"{two:.2f} s vs {procs:.2f} s (20 s; the two processes each make and decode the test card)",
                "<= 0.5x", two / procs <= 0.5)]


# -- faults: reconnect time and others' delivery while one is paused, restream vs ffmpeg by hand -----------------

FAULT_GO = ["--test-pattern", "--size", "640x360", "--fps", "30", "--video-bitrate", "1500k"]


def measure_faults(fast: bool, kills: int = 5, pause_s: float = 20.0) -> dict:
    import shutil

    tmp = Path(tempfile.mkdtemp(prefix="restream-bench-faults-"))
    try:
        return _measure_faults(tmp, kills, pause_s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _measure_faults(tmp: Path, kills: int, pause_s: float) -> dict:
    from faultproxy import FaultProxy
    from soak import SoakReceiver, _port_state, _status_kb, _ts, media_duration
    from support import free_port

    from restream import plan

    seconds = 20 + kills * 16 + pause_s + 15  # start, kills (6 s up, 5-6 s down, reconnect), pause, the rest
    sides = ("restream", "hand")
    names = ("a", "b", "c", "f")
    recs: dict[str, dict[str, SoakReceiver]] = {s: {} for s in sides}
    files: dict[str, dict[str, list[Path]]] = {s: {n: [] for n in names} for s in sides}
    ports = {s: {n: free_port() for n in names} for s in sides}
    proxies = {s: FaultProxy(ports[s]["f"]).start() for s in sides}
    every: list[SoakReceiver] = []
    go = hand = None
    go_events: list[dict] = []

    def start(side: str, n: str) -> float:
        out = tmp / f"{side}-{n}-{len(files[side][n])}.flv"
        r = SoakReceiver(ports[side][n], out, key=f"key-{n}")
        files[side][n].append(out)
        every.append(r)
        r.start()
        recs[side][n] = r
        return time.time()

    def url(side: str, n: str) -> str:
        port = proxies[side].port if n == "f" else ports[side][n]
        return f"rtmp://127.0.0.1:{port}/live"

    def config(side: str) -> dict[str, str]:
        env = {**os.environ, "RESTREAM_CONFIG_DIR": str(tmp / f"config-{side}"), "NO_COLOR": "1"}
        env.pop("RESTREAM_PROFILE", None)
        for n in names:
            subprocess.run([sys.executable, "-m", "restream", "add", n, "--url", url(side, n), "--key-stdin"],
                           input=f"key-{n}\n", text=True, env=env, check=True, capture_output=True)
        return env

    def has_media(r: SoakReceiver) -> bool:
        return "Input #0" in r.log_text()

    try:
        for s in sides:
            for n in names:
                start(s, n)
        env_go, env_hand = config("restream"), config("hand")
        # by hand: restream's own dry-run argv, each relay slot replaced by the destination's URL (spare slots dropped)
        dry = subprocess.run([sys.executable, "-m", "restream", "go", *FAULT_GO, "--duration", f"{seconds:.0f}s",
                              "--dry-run", "--show-keys"], env=env_hand, check=True, capture_output=True,
                             text=True).stdout
        argv = shlex.split(dry.strip().splitlines()[-1])
        slaves = re.split(r"(?<!\\)\|", argv[-1])
        argv[-1] = "|".join(f"{slaves[i].split(']', 1)[0]}]{plan.tee_escape(url('hand', n) + '/key-' + n)}"
                            for i, n in enumerate(names))
        go = subprocess.Popen([sys.executable, "-m", "restream", "go", *FAULT_GO, "--duration", f"{seconds:.0f}s",
                               "--json"], env=env_go, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, start_new_session=True)
        hand = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        t0 = time.time()

        def read() -> None:
            for raw in go.stdout:
                try:
                    go_events.append(json.loads(raw))
                except ValueError:
                    pass

        threading.Thread(target=read, daemon=True).start()
        hwm = {"python": 0, "ffmpeg": 0, "hand": 0}

        def sample_rss() -> None:
            while go.poll() is None:
                hwm["python"] = max(hwm["python"], _status_kb(go.pid, "VmHWM") or 0)
                for e in go_events[:3]:
                    if e.get("event") == "start":
                        hwm["ffmpeg"] = max(hwm["ffmpeg"], _status_kb(e["pid"], "VmHWM") or 0)
                hwm["hand"] = max(hwm["hand"], _status_kb(hand.pid, "VmHWM") or 0)
                time.sleep(0.5)

        threading.Thread(target=sample_rss, daemon=True).start()

        def wait(pred, timeout: float, what: str):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                v = pred()
                if v:
                    return v
                time.sleep(0.005)
            raise TimeoutError(what)

        wait(lambda: all(has_media(recs[s][n]) for s in sides for n in names), 30, "every receiver has media")
        reconnects = []
        for k in range(kills):
            time.sleep(6)
            for s in sides:
                recs[s]["c"].kill()
            killed = time.time()
            time.sleep(5 + random.random())  # a random phase against both sides' 1 s retry period
            listen = {s: start(s, "c") for s in sides}
            got = {}
            deadline = time.monotonic() + 20
            while len(got) < 4 and time.monotonic() < deadline:
                for s in sides:
                    if (s, "tcp") not in got and _port_state(ports[s]["c"]) == "accepted":
                        got[(s, "tcp")] = time.time()
                    if (s, "media") not in got and has_media(recs[s]["c"]):
                        got[(s, "media")] = time.time()
                time.sleep(0.002)
            live = next((_ts(e) for e in list(go_events) if e.get("event") == "state" and e["destination"] == "c"
                         and e["state"] == "live" and _ts(e) > killed), None)
            reconnects.append({s: {"accepted": got.get((s, "tcp"), float("nan")) - listen[s],
                                   "media": got.get((s, "media"), float("nan")) - listen[s]} for s in sides})
            reconnects[-1]["restream"]["live_event"] = (live - listen["restream"]) if live else None
            print(f"faults: kill {k + 1}: " + ", ".join(f"{s} accepted {reconnects[-1][s]['accepted']:.2f} s, media "
                                                        f"{reconnects[-1][s]['media']:.2f} s" for s in sides),
                  file=sys.stderr, flush=True)
        time.sleep(5)
        sizes0 = {s: {n: files[s][n][-1].stat().st_size for n in names} for s in sides}
        for s in sides:
            proxies[s].pause()
        p0 = time.time()
        frozen = {s: proxies[s].bytes_forwarded for s in sides}
        trace = []  # (time, {side: {name: size}}) every 0.1 s: does any other destination stall meanwhile?
        while time.time() < p0 + pause_s:
            trace.append((time.time(), {s: {n: _size(files[s][n][-1]) for n in ("a", "b")} for s in sides}))
            time.sleep(0.1)
        sizes1 = {s: {n: files[s][n][-1].stat().st_size for n in names} for s in sides}
        p1 = time.time()
        leaked = {s: proxies[s].bytes_forwarded - frozen[s] for s in sides}
        for s in sides:
            proxies[s].resume()
        resumed = time.time()
        go.wait(seconds + 60)
        hand.wait(60)
        t_end = time.time()
        go_code, hand_code = go.returncode, hand.returncode
        time.sleep(1)
    finally:
        for p in (go, hand):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, 9)
                p.wait()
        for r in every:
            if r.proc is not None and r.proc.poll() is None:
                try:
                    r.proc.wait(8)
                except subprocess.TimeoutExpired:
                    r.stop()
            r.kill()
        for p in proxies.values():
            p.stop()

    dur = {f: media_duration(f) for s in sides for n in names for f in files[s][n]}
    final = {f: f.stat().st_size if f.exists() else 0 for f in dur}

    def window(s: str, n: str) -> float:
        f = files[s][n][-1]
        size = final[f]
        return (sizes1[s][n] - sizes0[s][n]) * (dur[f] / size) / (p1 - p0) if size else float("nan")

    others = {s: statistics.fmean(window(s, n) for n in ("a", "b")) for s in sides}

    def longest_stall(s: str, n: str) -> float:
        """Longest time a's or b's file did not grow during the pause (a healthy one grows every ~0.2 s)."""
        worst, since, last = 0.0, trace[0][0], trace[0][1][s][n]
        for t, sizes in trace[1:]:
            if sizes[s][n] != last:
                since, last = t, sizes[s][n]
            worst = max(worst, t - since)
        return worst

    stall = {s: max(longest_stall(s, n) for n in ("a", "b")) for s in sides}
    f_states = [(e["state"], e.get("error")) for e in go_events if e.get("event") == "state"
                and e["destination"] == "f" and p0 <= _ts(e)]
    end = next((e for e in go_events if e.get("event") == "end"), {})
    f_share = {s: sum(dur[f] for f in files[s]["f"]) / sum(dur[f] for f in files[s]["a"]) for s in sides}
    stayed = " (reported live throughout the stall)" if not any(st != "stopped" for st, _ in f_states) else ""
    med = {s: statistics.median(r[s]["media"] for r in reconnects) for s in sides}
    med_tcp = {s: statistics.median(r[s]["accepted"] for r in reconnects) for s in sides}
    lives = [r["restream"]["live_event"] for r in reconnects if r["restream"].get("live_event") is not None]
    ratio_rss = hwm["python"] / hwm["ffmpeg"] if hwm["ffmpeg"] else None
    cmd = "python bench/run.py --only faults"
    result = {"command": cmd, "exit_codes": {"restream": go_code, "hand": hand_code}, "reconnects": reconnects,
              "pause": {"seconds": p1 - p0, "others_restream": others["restream"], "others_hand": others["hand"],
                        "proxy_leaked_bytes": leaked, "f_states_after_pause": f_states,
                        "f_final": (end.get("destinations") or {}).get("f"),
                        "f_window": {s: window(s, "f") for s in sides},
                        "windows": {s: {n: window(s, n) for n in names} for s in sides},
                        "longest_stall_of_others_s": stall,
                        "received_s": {s: {n: sum(dur[f] for f in files[s][n]) for n in names} for s in sides}},
              "hwm_kb": hwm, "rows": [
        row(f"reconnect time after a receiver returns (listening -> receiving media), restream vs the same "
            f"ffmpeg argv by hand, both at once, median of {kills}", med["restream"] / med["hand"],
            f"{med['restream']:.2f} s vs {med['hand']:.2f} s (TCP accept {med_tcp['restream']:.2f} s vs "
            f"{med_tcp['hand']:.2f} s; restream's `live` event {statistics.median(lives):.2f} s after listening)"
            if lives else f"{med['restream']:.2f} s vs {med['hand']:.2f} s", "", None),
        row(f"others' delivery while one destination is paused {pause_s:.0f} s (proxy stops forwarding): "
            f"received seconds / wall seconds of a and b during the pause, restream", others["restream"],
            f"by hand, same argv, same pause: {others['hand']:.3f}; longest time a or b got nothing during the pause "
            f"{stall['restream']:.1f} s (by hand {stall['hand']:.1f} s); f itself received {f_share['restream']:.3f} "
            f"(by hand {f_share['hand']:.3f}) of what a received over the run; restream's states for f from the "
            f"pause on: {', '.join(s for s, _ in f_states) or 'none'}{stayed}; exit codes {go_code}/{hand_code}",
            ">= 0.98", others["restream"] >= 0.98),
        row("peak RSS (VmHWM): restream's Python process vs its ffmpeg, 640x360 30 fps, 4 destinations",
            ratio_rss, f"{hwm['python'] / 1024:.1f} MB vs {hwm['ffmpeg'] / 1024:.1f} MB (ffmpeg by hand "
            f"{hwm['hand'] / 1024:.1f} MB)", "Python <= 60 MB", hwm["python"] / 1024 <= 60),
    ]}
    return result


# -- soak ---------------------------------------------------------------------------------------------------------

def newest_soak() -> Path | None:
    found = sorted(Path(tempfile.gettempdir()).glob("restream-soak-*.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def soak_figures(path: Path) -> dict:
    import soak

    r = json.loads(path.read_text())
    try:
        soak.plot(r, PNG)
        png = PNG.name
    except ImportError:
        png = None
        print("soak plot skipped: matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
    d = r["destinations"]
    return {"command": r["command"], "date": r["date"], "minutes": r["minutes"], "go": " ".join(r["go_argv"]),
            "faults": len(r["faults"]), "interval": r["fault_interval_s"],
            "random_phase": bool(r.get("downtime_random_phase")), "exit_code": r["exit_code"],
            "reason": (r.get("end") or {}).get("reason"), "ffmpeg_restarts": r["ffmpeg_restarts"],
            "ffmpeg_pids": r["ffmpeg_pids"], "reconnect": r["reconnect_s"], "rss": r["rss_mb"],
            "machine": r["machine"], "all_files_decode": r["all_files_decode"],
            "files": r.get("files"), "files_decode_whole": r.get("files_decode_whole"),
            "files_torn_tail_only": r.get("files_torn_tail_only"), "png": png,
            "destinations": {n: {k: v[k] for k in ("delivered_s", "wall_s", "planned_down_s", "expected_s", "ratio",
                                                   "faults", "reconnects_reported")} for n, v in d.items()}}


# -- slate --------------------------------------------------------------------------------------------------------

SLATE_ARGV = ["bench/slate.py", "--rounds", "5", "--cpu-seconds", "60"]


def bench_slate(fast: bool) -> dict:
    out = Path(tempfile.gettempdir()) / f"restream-slate-{os.getpid()}.json"
    run_script([*SLATE_ARGV, "--json", str(out)], 1200)
    return slate_result(json.loads(out.read_text()))


def slate_result(figures: dict) -> dict:
    from slate import table

    return {"command": "python " + " ".join(SLATE_ARGV), "rows": slate_rows(figures), "figures": figures,
            "table": table(figures)}


def slate_rows(f: dict) -> list[dict]:
    from slate import TARGETS, med

    size = f"{f['size']}@{f['fps']}"
    rows = []
    for key, what in (("kill", "source SIGKILLed -> slate visible"), ("stall", "source stalled (SIGSTOP) -> slate "
                      "visible"), ("new", "new publisher started -> its picture")):
        m = med(f[key])
        rows.append(row(f"slate: {what}, at the receiver, {size}, median of {len(f[key])}", None,
                        f"{m:.2f} s ({', '.join(f'{x:.2f}' for x in f[key])})", f"<= {TARGETS[key]} s",
                        m <= TARGETS[key]))
    live = f.get("cpu_live") or {}
    sw = live.get("switcher_pct")
    tree = live.get("tree_pct")
    rows.append(row(f"slate: the switcher thread's CPU vs the whole restream tree, live publisher {size}, "
                    f"{live.get('wall_s', 0):.0f} s", sw / tree if sw is not None and tree else None,
                    f"{'-' if sw is None else f'{sw:.1f} %'} vs {tree:.1f} % of one core "
                    f"({', '.join(f'{k} {v:.1f} %' for k, v in live.get('per_role_pct', {}).items())})",
                    f"switcher <= {TARGETS['switcher']:.0f} %", None if sw is None else sw <= TARGETS["switcher"]))
    if f.get("flaps") is not None:
        fl = f["flaps"]
        rows.append(row(f"slate: switches at the receiver that no step asked for ({f['rounds']} rounds: a lost "
                        "source flashing up between two slates, a slate inside a live source)", None,
                        f"{len(fl)}" + (": " + "; ".join(f"{x['what']} for {x.get('on_air_s', x.get('slate_s'))} s"
                                                         for x in fl) if fl else ""), "0", not fl))
    return rows


# -- slate_rss: peak memory with 5 destinations and --slate ------------------------------------------------------

def bench_slate_rss(fast: bool) -> dict:
    argv = ["bench/slate_rss.py", "--seconds", "25"]
    out = run_script(argv, 600)
    m = re.search(r"^RSS5SLATE ([\d.]+) MB \((.*)\)", out, re.M)
    if not m:
        raise RuntimeError(f"cannot read bench/slate_rss.py output: {out[-500:]!r}")
    mb = float(m.group(1))
    return {"command": "python " + " ".join(argv), "rows": [
        row("peak RSS (VmHWM) of restream's Python process, `restream relay --slate`, 5 destinations, 1280x720@30",
            None, f"{mb:.1f} MB ({m.group(2)})", "<= 60 MB", mb <= 60)]}


# -- the document -------------------------------------------------------------------------------------------------

BENCHES = [  # name, function, slow; in the order of the table
    ("go_cpu", bench_go_cpu, True),
    ("relay_nginx", bench_relay_nginx, True),
    ("cpu", bench_cpu, True),
    ("relay_vs_transcode", bench_relay_vs_transcode, True),
    ("groups", bench_groups, True),
    ("relay_cpu", bench_relay_cpu, True),
    ("faults", measure_faults, False),
    ("list", bench_list, False),
    ("slate", bench_slate, True),
    ("slate_rss", bench_slate_rss, False),
    ("profile", bench_profile, True),
]


def previous() -> dict:
    try:
        text = DOC.read_text()
    except OSError:
        return {}
    m = re.search(re.escape(MARK) + r"\n(.*?)\n-->", text, re.S)
    return json.loads(m.group(1)) if m else {}


def fmt_ratio(v) -> str:
    return "-" if v is None else f"**{v:.3f}**" if v < 2 else f"**{v:.1f}**"


def render(results: dict, soak: dict | None) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python bench/run.py` (every figure below; `--only NAME` re-runs one bench, `--skip-slow` the "
        "quick ones only, keeping the others' previous figures with their date). Everything runs on loopback on one "
        "machine: ffmpeg `-listen 1` receivers, a throwaway config directory, restream's test pattern. Each ratio is "
        "two figures measured side by side in one run of the command next to it (interleaved, or at the same time), "
        "so machine load affects both; the load average is shown because this machine is shared with other work.",
        "",
        "| measured | ratio | the two figures | target | met | command (date, load 1/5/15 min before) |",
        "|---|---:|---|---|:-:|---|",
    ]
    for name, _, _ in BENCHES:
        res = results.get(name)
        if res is None:
            continue
        if "error" in res and not res.get("rows"):
            lines.append(f"| {name} | - | not measured: {res['error']} | | | |")
            continue
        for r in res["rows"]:
            met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
            lines.append(f"| {r['what']} | {fmt_ratio(r['ratio'])} | {r['detail']} | {r['target']} | {met} "
                         f"| `{res['command']}` ({res['date']}, load {res['load']}) |")
    if "go_cpu" in results or "relay_nginx" in results:
        lines += ["", "Reading the `go_cpu` and `relay_nginx` rows: every contender uses the same ffmpeg binary and input; "
                  "CPU is user+sys of the whole process tree (`os.wait4`), medians of interleaved rounds. The receivers "
                  "are `ffmpeg -listen 1`, which announce no RTMP chunk size: a plain ffmpeg publisher (the one-liner, "
                  "PyLivestream, restream's ffmpeg before issue 16) then writes its media in 128-byte chunks, while "
                  "restream's slot relay announces 4096 to its own ffmpeg. Real platforms' servers announce their own "
                  "size (nginx-rtmp: 4096), which gives the one-liner the same saving, so part of restream's lead in "
                  "`go_cpu` is this test set-up. The row's *if both ffmpegs had cost the same* figure (1 + restream's "
                  "Python CPU / the one-liner's CPU) is what restream adds for certain. ffmpeg's own CPU varies by "
                  "several percent between identical runs on this shared machine.",
                  "",
                  "Since issue 16, `restream relay` copying to RTMP(S) destinations runs no ffmpeg (the native "
                  "fan-out: the gate's verified publisher's messages go straight to one publishing connection per "
                  "destination); rows marked *the code of ...* are the same bench on that earlier code "
                  "(`RESTREAM_BENCH_OLD_SRC`), run right after. What is left is Python's own: about 0.25 s to start "
                  "(interpreter, Typer and Click, asyncio, ~40 ms of dataclass creation), housekeeping each second "
                  "(status file, traffic; the profile watch every 0.25 s) and the fan-out itself (the gate reads the "
                  "publisher in ~0.1 s batches, each written once to every destination). The start is a fixed cost, "
                  "so the ratio falls with a longer run: the issue's run is 30 s.",
                  "",
                  "Why `go` with 1 destination is not within 1.02x, whatever one run's headline says: the whole of "
                  "restream's extra is its Python process, 0.77-1.03 s in the 30 s runs of this round, 4-4.5 % of the "
                  "one-liner's CPU (restream's ffmpeg costs what the one-liner's does; ffmpeg's own CPU moves by more "
                  "than that between identical runs, which is how a ratio of medians can come out below 1.02). About 0.25 s of it comes before ffmpeg is spawned (timed with an audit "
                  "hook on `subprocess.Popen`: 0.20-0.31 s of CPU; cProfile: imports of Typer and Click, asyncio, "
                  "~50 dataclasses built at import, ~45 regular expressions compiled at import). The rest is "
                  "1.4-1.8 % of a core while live (py-spy at 1 kHz, 1 destination, live view: of its busy samples "
                  "about 13 % the relay's reads and writes, 10 % Rich drawing the screen at 2 Hz, 6 % the status "
                  "file written each second, 4 % refusing ffmpeg's retries on the four free slots, the rest the "
                  "event loop). Each of these is a millisecond or two a second; without the last three the ratio "
                  "would be about 1.03. 1.02 needs a Python process that costs under 0.4 s for the whole broadcast, "
                  "start-up included, which is not what this design is.",
                  "",
                  "In `go_cpu`, restream's own cost while live is mostly the slot relay's reading and writing and, "
                  "with the live view, its redraws: since this round the table is drawn at most every 0.25 s (progress "
                  "keeps it at 2 Hz) and without Rich's Table layout (0.9 ms a redraw, was 6.4 ms), and a burst of "
                  "events is drawn once (ffmpeg's start-up lines had cost ~47 redraws, during which the relay on the "
                  "same loop forwarded nothing: launch -> first media fell from 0.82 s to about 0.5 s). What remains "
                  "between the launch and ffmpeg's start is about 0.2 s of Python (interpreter, Typer, asyncio, the "
                  "file's probe), which a bare ffmpeg does not pay: a Python tool cannot come within 5 % of it."]
    if "list" in results:
        lines += ["", "Reading the `list`/`show`/`--help` rows: `restream` is the installed console script. Since issue 16 "
                  "these three command lines are answered by `src/restream/fastpath.py` without importing Typer, Click "
                  "or Rich (anything else, and anything it does not recognise exactly, goes to the Typer app); *through "
                  "the Typer app* times the same command lines through `restream.cli.main` in the same rounds. What "
                  "`list` and `show` still add over `python -c pass` is mostly the standard library that reading a "
                  "profile needs (`python -X importtime`): `pathlib` with `re`, `enum` and `urllib.parse`. Since "
                  "this round they import neither `tomllib` (with `typing` and `datetime`; a profile restream wrote "
                  "is read by `quicktoml`, tomllib still reads anything else) nor `dataclasses` (with `inspect`; the "
                  "profile's records are named tuples): 83/86 ms became 43/41 ms. These milliseconds move with the "
                  "other work on this shared machine by a fifth or more between runs an hour apart (`python -c 'import "
                  "typer'` moves with them); the ratio to `python -c pass` moves less."]
    prof = (results.get("profile") or {}).get("profiles")
    if prof:
        lines += ["", f"## Profile of the Python process while live ({results['profile'].get('date', '?')})", "",
                  f"`{results['profile']['command']}`, and `RESTREAM_BENCH_OLD_SRC=<main's src>` for the same on the "
                  "code before issue 16. py-spy samples the Python process 200 times a second for 20 s; *self* is "
                  "the function on top of the stack, *total* a restream frame on the stack (% of the samples py-spy "
                  "took as not idle; `EpollSelector.select` is the event loop waiting: on a loaded machine py-spy "
                  "counts a thread that is runnable but not yet on a CPU as busy). *busy* is the process's own "
                  "utime+stime over the 20 s.", ""]
        for p in prof:
            lines += [f"**{p['what']}**: Python busy {p['busy']:.1f} % of a core", "",
                      "| kind | share | function |", "|---|---:|---|",
                      *[f"| {k} | {v.strip()} | `{f}` |" for k, v, f in p["entries"] if k == "self"][:8],
                      *[f"| {k} | {v.strip()} | `{f}` |" for k, v, f in p["entries"]
                        if k == "total" and "restream/" in f and "restream/cli" not in f and "__main__" not in f][:6], ""]
    if soak:
        s = soak
        rs, rc, m = s["rss"], s["reconnect"], s["machine"]
        ratios = [d["ratio"] for d in s["destinations"].values()]
        per = ", ".join(f"{n} {d['ratio']:.4f}" for n, d in s["destinations"].items())
        faulted = [d["ratio"] for d in s["destinations"].values() if d["faults"]]
        lines.append(f"| soak: delivered / expected per destination, {s['minutes']:g} min, {s['faults']} receiver "
                     f"kills | **{min(ratios):.4f}** (min) | {per} "
                     f"| >= 0.98 | {'yes' if min(ratios) >= 0.98 else '**no**'} | `{s['command']}` ({s['date']}) |")
        if rs.get("after_1min") and rs.get("last"):
            growth = rs["last"] - rs["after_1min"]
            slope = rs.get("slope_mb_per_hour") or 0.0
            # the target is over minutes 1..30; a shorter soak is judged by its trend carried to minute 30 as well
            projected = growth if s["minutes"] >= 30 else max(growth, slope * 29 / 60)
            lines.append(f"| soak: Python RSS growth from minute 1 to the end | **{growth:+.1f} MB** "
                         f"| {rs['after_1min']} MB -> {rs['last']} MB (max {rs['max']} MB, VmHWM {rs['hwm']} MB, "
                         f"trend {slope} MB/h"
                         + (f"; carried to minute 30: {projected:+.1f} MB" if s["minutes"] < 30 else "")
                         + ") | <= 1 MB from minute 1 to 30, <= 60 MB | "
                         f"{'yes' if rs['hwm'] <= 60 and projected <= 1.0 else '**no**'} "
                         f"| `{s['command']}` ({s['date']}) |")
        lines += [
            "",
            f"## Soak: {s['minutes']:g} minutes, {s['date']}",
            "",
            f"`{s['command']}` ran `{s['go']}` (it stops by itself) to 5 loopback receivers d0..d4, and every "
            f"{s['interval']:.0f} s killed the next receiver in turn (SIGKILL), waited 5-10 s and started a new one on "
            f"the same port. Machine: {m['cpus']} CPUs, load average (1 min) {m['load_1min_mean']} mean, "
            f"{m['load_1min_max']} max during the soak (sampled every 10 s; it counts everything else that ran on "
            f"this shared machine meanwhile).",
            "",
            "| destination | kills | delivered s | wall s | planned downtime s | expected s | delivered / expected "
            "| lost beyond the planned downtime s | reconnects reported |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *[f"| {n} | {d['faults']} | {d['delivered_s']:.1f} | {d['wall_s']:.1f} | {d['planned_down_s']:.1f} "
              f"| {d['expected_s']:.1f} | {d['ratio']:.4f} | {d['expected_s'] - d['delivered_s']:.1f} "
              f"| {d['reconnects_reported']} |"
              for n, d in s["destinations"].items()],
            "",
            "*delivered* is the sum of the decoded durations (first to last video packet) of every file its receivers "
            "wrote; *wall* runs from restream's first `live` event for it to restream's `end` event; *planned "
            "downtime* sums, over its kills, kill -> new receiver listening; *expected* = wall - planned downtime. "
            "A destination never killed can exceed 1 by a fraction of a second: ffmpeg's `-re` sends a short initial "
            "burst, so the stream time runs slightly ahead of the wall clock from the first `live` event.",
            "",
            f"* reconnect time, new receiver listening -> restream's `live` event: median **{rc['median']:.2f} s**, "
            f"max {rc['max']:.2f} s over {rc['n']} kills ({', '.join(f'{x:.2f}' for x in rc['all'])})"
            + ("." if s.get("random_phase") else
               ": this soak's downtimes were whole seconds, so every restart fell at the same phase of the "
               "publisher's 1 s retry period; the reconnect row of the table above restarts at a random phase."),
            f"* ffmpeg restarts: **{s['ffmpeg_restarts']}** (broadcasting ffmpeg PIDs seen among restream's children, "
            f"sampled every second: {s['ffmpeg_pids']}).",
            f"* Python RSS (VmRSS every 10 s): {rs['after_1min']} MB after 1 minute, {rs['max']} MB max, "
            f"{rs['last']} MB at the end; VmHWM {rs['hwm']} MB; linear trend after the first minute "
            f"{rs['slope_mb_per_hour']} MB/hour.",
            f"* exit code **{s['exit_code']}** ({s['reason']}); every receiver file decodes: {s['all_files_decode']} "
            f"({s['files_decode_whole']}/{s['files']} whole; {s['files_torn_tail_only']} files of killed receivers "
            f"decode up to their last second, a SIGKILLed receiver leaving a torn last packet).",
            "",
        ]
        tm = s.get("tracemalloc")
        if tm:
            lines += [f"tracemalloc (a separate run, `{s.get('tracemalloc_command')}`, {s.get('tracemalloc_date')}: "
                      f"the same soak with restream under bench/traced.py, so its RSS is not the figure above): "
                      f"{tm['traced_kb']} KB traced at the end (peak {tm['peak_kb']} KB); what grew between "
                      f"{tm['after_s']:g} s and the end ({tm['end_s']} s), top entries:", "",
                      "| growth | blocks | where |", "|---:|---:|---|",
                      *[f"| {e['size_diff_kb']:+.1f} KB | {e['count_diff']:+d} | `{e['where'].split('site-packages/')[-1]}` |"
                        for e in tm["top"][:10]], ""]
        if s.get("png"):
            lines += [f"![delivered seconds per destination during the soak]({s['png']})", "",
                      "Top: seconds delivered per destination (receiver file sizes every 10 s, converted with each "
                      "file's own duration/size). Middle: delivered minus wall time since its first `live`: each "
                      "kill is a step down of its downtime plus the reconnect. Red: kill, green dashed: new receiver "
                      "listening. Bottom: the Python process's RSS.", ""]
    sl = results.get("slate") or {}
    if sl.get("table"):
        lines += [
            "",
            f"## Slate: {sl['date']}",
            "",
            f"`{sl['command']}` (load {sl['load']} before): `restream relay --slate` with one destination, a frame tap "
            "(an `ffmpeg -listen 1` receiver decoding each frame's corner and centre to a pipe, stamped on arrival); "
            "marker publishers (a solid colour each, libx264 ultrafast, AAC, `-re`) at the broadcast's size and rate. "
            "The latencies include the broadcast encoder's lookahead and the tap's decode, as a viewer's player "
            "would see them; a new publisher's time counts from its ffmpeg's start (connection, key check, probe "
            "included). CPU is utime+stime from /proc over the window, in % of one core; the switcher is the "
            "restream thread named `restream-switch`.",
            "",
            *sl["table"].splitlines(),
            "",
        ]
    store = {"results": results, "soak": soak}
    lines += [MARK, json.dumps(store, indent=None, sort_keys=True), "-->", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-slow", action="store_true", help="run only the quick benches (list, faults)")
    ap.add_argument("--skip-soak", action="store_true", help="do not run the 30-minute soak: read its JSON")
    ap.add_argument("--only", metavar="NAME", help="run only this bench: " + ", ".join(
        [n for n, _, _ in BENCHES] + ["soak"]))
    ap.add_argument("--soak-json", type=Path, help="the soak's result (default: the newest in the temp directory)")
    ap.add_argument("--slate-json", type=Path, help="the figures of a bench/slate.py --json run, instead of running it")
    ap.add_argument("--tracemalloc-json", type=Path, help="a soak run with --tracemalloc: its top growth entries go "
                    "into the soak section")
    ap.add_argument("--render", action="store_true", help="run nothing: rewrite the document from the stored figures "
                    "(and --soak-json)")
    ap.add_argument("--out", type=Path, default=DOC)
    args = ap.parse_args()
    names = {n for n, _, _ in BENCHES} | {"soak"}
    if args.only and args.only not in names:
        ap.error(f"--only: unknown bench {args.only!r} (one of {', '.join(sorted(names))})")
    old = previous()
    results = dict(old.get("results") or {})
    soak = old.get("soak")
    failed = []
    for name, fn, slow in BENCHES:
        if args.render or args.only and args.only != name or not args.only and args.skip_slow and slow:
            continue
        before = load()
        try:
            if name == "slate" and args.slate_json:
                res = slate_result(json.loads(args.slate_json.read_text()))
                before = " ".join(f"{x:.1f}" for x in res["figures"]["load_before"])
            else:
                res = fn(args.skip_slow)
        except FileNotFoundError as exc:
            print(f"{name}: skipped: {exc}", file=sys.stderr)
            if not (results.get(name) or {}).get("rows"):
                results[name] = {"error": str(exc), "rows": []}
            continue
        except Exception as exc:  # keep going: the other benches still run; this row says what happened
            print(f"{name}: FAILED: {exc}", file=sys.stderr)
            failed.append(name)
            if name not in results:
                results[name] = {"error": str(exc)[:200], "rows": []}
            continue
        results[name] = {**res, "date": now(), "load": before}
        for r in res["rows"]:
            shown = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
            print(f"{name}: {r['what']}: {shown}  {r['detail']}")
    if args.render:
        if args.soak_json:
            soak = soak_figures(args.soak_json)
    elif args.only == "soak" or not args.only and not args.skip_soak and not args.skip_slow:
        path = args.soak_json or Path(tempfile.gettempdir()) / f"restream-soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
        run_script(["bench/soak.py", "--minutes", "30", "--out", str(path)], 3600)
        soak = soak_figures(path)
    elif not args.only or args.soak_json:
        path = args.soak_json or newest_soak()
        if path is not None and path.exists():
            soak = soak_figures(path)
    if soak and args.tracemalloc_json:
        tm = json.loads(args.tracemalloc_json.read_text())
        soak = {**soak, "tracemalloc": tm.get("tracemalloc"),
                "tracemalloc_command": tm.get("command"), "tracemalloc_date": tm.get("date")}
    args.out.write_text(render(results, soak), encoding="utf-8")
    print(f"wrote {args.out}" + (f" and {PNG}" if soak and soak.get("png") else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
