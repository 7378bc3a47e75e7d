"""What the Python side of `restream go` costs: whole-tree CPU next to the same ffmpeg run by hand, and peak RSS.

Usage:  python bench/cpu.py [--seconds 20] [--rounds 2] [--out docs/benchmarks-cpu.md]

Everything is local: ffmpeg ``-listen 1`` RTMP receivers on 127.0.0.1 (``-c copy -f null``; their CPU is not
counted), a throwaway RESTREAM_CONFIG_DIR, the test pattern at 1280x720, 30 fps (restream's default 4500k/160k).
Runs are interleaved round by round (every configuration once per round) so that all see the same machine load;
the table shows the mean over rounds, and the load average before and after.

What is measured, per run (user+sys CPU seconds, from ``os.wait4`` on the process we started, which on Linux includes
every descendant it reaped):

* **restream, live view**: ``python -m restream go --test-pattern --size 1280x720 --fps 30 --duration Ns`` on a
  pseudo-terminal (100x30, TERM=xterm-256color; the bench drains the terminal without emulating it). The tree is the
  Python process (CLI start-up, the slot relay forwarding every byte, event parsing, status reducer, the Rich view),
  the broadcasting ffmpeg, and the short ``ffmpeg -version``/capability probes discovery runs at start.
  The split is read from ``/proc/<pid>/stat`` of the restream process, polled every 10 ms: ``cutime+cstime`` when the
  broadcasting ffmpeg appears (the probes) and after it has been reaped (probes + ffmpeg); Python = tree - children.
* **restream, no view**: the same with ``--plain --quiet`` and stdout to /dev/null: relay and engine, no live view.
* **ffmpeg by hand**: the argv of ``restream go … --dry-run --show-keys`` (same input, encode and ``-t N``), with
  each destination's relay-slot slave URL replaced by the receiver's own URL ``rtmp://127.0.0.1:PORT/live/KEY`` and
  the slaves of restream's unassigned spare slots left out — i.e. the one command you would run without restream.
  (restream's argv always has five relay slaves; the spare ones are refused by the relay and retried by ffmpeg's fifo
  once a second. That cost is counted as restream's.)

Peak RSS is ``VmHWM`` of the restream Python process (``/proc/<pid>/status``, last sample before it exits).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import random
import re
import shlex
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import imageio_ffmpeg

from restream import plan, ports

FFMPEG = os.environ.get("RESTREAM_FFMPEG") or imageio_ffmpeg.get_ffmpeg_exe()
TICK = os.sysconf("SC_CLK_TCK")
GO = ["--test-pattern", "--size", "1280x720", "--fps", "30"]
COLS, ROWS = 100, 30


# -- processes ------------------------------------------------------------------------------------------------------

_taken: set[int] = set()


def free_port() -> int:
    return ports.free_port(_taken)


@dataclass
class Receiver:
    port: int
    key: str
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtmp://127.0.0.1:{self.port}/live"

    def start(self) -> "Receiver":
        self.proc = subprocess.Popen(
            [FFMPEG, "-hide_banner", "-nostdin", "-loglevel", "error", "-listen", "1", "-rw_timeout", "30000000",
             "-i", f"{self.url}/{self.key}", "-c", "copy", "-f", "null", "-"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not ports.listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"receiver on {self.port} did not start")
            time.sleep(0.01)
        return self

    def done(self) -> None:
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def receivers(n: int) -> list[Receiver]:
    return [Receiver(free_port(), f"bench-{i}-{random.randrange(16**6):06x}").start() for i in range(n)]


def _stat(pid: int) -> tuple[float, float] | None:
    """(self utime+stime, reaped children cutime+cstime) in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK, (int(fields[13]) + int(fields[14])) / TICK


def _hwm_kb(pid: int) -> int | None:
    try:
        m = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _is_tee(pid: int) -> bool:
    try:
        return b"\0tee\0" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _reap(proc: subprocess.Popen) -> tuple[int, float]:
    """Wait for ``proc`` with wait4: (exit code, user+sys CPU seconds of it and every descendant it reaped)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


@dataclass
class Run:
    what: str
    n: int
    total: float  # CPU seconds, whole tree
    wall: float
    code: int
    python: float | None = None
    ffmpeg: float | None = None
    probes: float | None = None
    hwm_kb: int | None = None
    first: float | None = None  # launch -> media (8 KB) at the slowest receiver, s (None: not every one got any)
    notes: list[str] = field(default_factory=list)


# -- the runs -------------------------------------------------------------------------------------------------------

def first_media(recs: list[Receiver]):
    """A started watcher of the receivers' sockets (bench/relay_nginx.py's ``FirstMedia``, no ingest): launch ->
    each receiver's first 8 KB. Call it just before the contender is started."""
    from relay_nginx import FirstMedia

    watch = FirstMedia([r.port for r in recs], 0)
    watch.start(time.monotonic())
    return watch


def _slowest(watch, recs: list[Receiver]) -> float | None:
    watch.stop()
    return max(watch.first.values()) if len(watch.first) == len(recs) else None


def terminal() -> tuple[int, int]:
    """A pseudo-terminal of COLS x ROWS: (master, slave)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
    return master, slave


def drain(master: int) -> None:
    """Read and drop what the terminal shows, in a thread, until it closes (the bench does not emulate it)."""

    def run() -> None:
        while True:
            try:
                if not os.read(master, 1 << 16):
                    return
            except OSError:
                return

    threading.Thread(target=run, daemon=True).start()


def _config(folder: Path, recs: list[Receiver]) -> dict[str, str]:
    env = {**os.environ, "RESTREAM_CONFIG_DIR": str(folder), "COLUMNS": str(COLS), "LINES": str(ROWS),
           "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    # byte code compiled once, as an installed package has it: with PYTHONDONTWRITEBYTECODE in the caller's
    # environment every run would compile the modules changed since their .pyc (~0.1 s of CPU charged to restream).
    # No PYTHONPYCACHEPREFIX: under one, even the standard library's and Typer's .pyc files are not found, and the
    # first run of each bench compiled them all (~0.5 s of CPU)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPYCACHEPREFIX", None)
    env["RESTREAM_CACHE_DIR"] = str(folder.parent / "cache")  # what ffmpeg can do: learnt by the first run only
    import restream

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(restream.__file__).parent)], env=env,
                   check=True, capture_output=True)
    for i, r in enumerate(recs):
        subprocess.run([sys.executable, "-m", "restream", "add", f"d{i}", "--url", r.url, "--key-stdin"],
                       input=r.key + "\n", text=True, env=env, check=True, capture_output=True)
    return env


def run_restream(n: int, seconds: int, live_view: bool, tmp: Path) -> Run:
    recs = receivers(n)
    env = _config(Path(tempfile.mkdtemp(dir=tmp)), recs)
    argv = [sys.executable, "-m", "restream", "go", *GO, "--duration", f"{seconds}s"]
    master = None
    if live_view:
        master, slave = terminal()
        io = dict(stdin=slave, stdout=slave, stderr=slave)
    else:
        argv += ["--plain", "--quiet"]
        io = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watch = first_media(recs)
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, start_new_session=True, **io)
    if master is not None:
        os.close(slave)
        drain(master)

    seen = {"probes": None, "children": 0.0, "hwm": None, "tee": None}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            st = _stat(proc.pid)
            if st is None:
                return
            hwm = _hwm_kb(proc.pid)
            if hwm:
                seen["hwm"] = hwm
            seen["children"] = st[1]
            if seen["tee"] is None:
                tee = next((c for c in _children(proc.pid) if _is_tee(c)), None)
                if tee is not None:
                    seen["tee"], seen["probes"] = tee, st[1]
            time.sleep(0.01)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    code, total = _reap(proc)
    wall = time.monotonic() - start
    stop.set()
    poller.join()
    if master is not None:
        os.close(master)
    for r in recs:
        r.done()
    run = Run("restream, live view" if live_view else "restream, no view", n, total, wall, code, hwm_kb=seen["hwm"],
              first=_slowest(watch, recs))
    if seen["probes"] is not None and seen["children"] > seen["probes"]:
        run.probes, run.ffmpeg = seen["probes"], seen["children"] - seen["probes"]
        run.python = total - seen["children"]
    else:
        run.notes.append("split unavailable (ffmpeg not seen or not yet reaped at the last sample)")
    return run


def by_hand_argv(n: int, seconds: int, tmp: Path) -> tuple[list[str], list[Receiver]]:
    """restream's dry-run argv with the relay slots replaced by direct URLs to fresh receivers."""
    recs = [Receiver(free_port(), f"bench-{i}-{random.randrange(16**6):06x}") for i in range(n)]
    env = _config(Path(tempfile.mkdtemp(dir=tmp)), recs)
    out = subprocess.run([sys.executable, "-m", "restream", "go", *GO, "--duration", f"{seconds}s", "--dry-run",
                          "--show-keys"], env=env, check=True, capture_output=True, text=True).stdout
    argv = shlex.split(out.strip().splitlines()[-1])
    spec = argv[-1]  # ... -f tee -use_fifo 1 -fifo_options OPTS SPEC
    assert argv[argv.index("-f", argv.index("-flags")) + 1] == "tee" and spec.startswith("["), argv
    slaves = re.split(r"(?<!\\)\|", spec)
    direct = []
    for slot, r in enumerate(recs):
        opts, url = slaves[slot].split("]", 1)
        assert f"slot\\-{slot}" in url, url
        direct.append(f"{opts}]{plan.tee_escape(f'{r.url}/{r.key}')}")
    argv[-1] = "|".join(direct)
    return argv, recs


def run_dry(n: int, seconds: int, tmp: Path) -> Run:
    """Start-up alone: ``restream go … --dry-run`` (imports, argument parsing, profile, ffmpeg discovery and its
    probes, the plan), the part of every run that does not depend on its length."""
    recs = [Receiver(free_port(), f"bench-{i}") for i in range(n)]
    env = _config(Path(tempfile.mkdtemp(dir=tmp)), recs)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "restream", "go", *GO, "--duration", f"{seconds}s", "--dry-run"],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    code, total = _reap(proc)
    return Run("restream --dry-run", n, total, time.monotonic() - start, code)


def run_by_hand(n: int, seconds: int, tmp: Path) -> Run:
    argv, recs = by_hand_argv(n, seconds, tmp)
    for r in recs:
        r.start()
    watch = first_media(recs)
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    code, total = _reap(proc)
    wall = time.monotonic() - start
    for r in recs:
        r.done()
    return Run("ffmpeg by hand", n, total, wall, code, ffmpeg=total, first=_slowest(watch, recs))


# -- report ---------------------------------------------------------------------------------------------------------

def mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def fmt(v, spec=".2f", none="-"):
    return none if v is None else format(v, spec)


def cpu_model() -> str:
    m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    return m.group(1).strip() if m else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    args = ap.parse_args()
    command = "python bench/cpu.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])

    configs = [("hand", 3), ("live", 3), ("quiet", 3), ("live", 1), ("live", 5), ("dry", 3)]
    load_before = os.getloadavg()
    results: dict[tuple[str, int], list[Run]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="restream-bench-") as tmp:
        for rnd in range(args.rounds):
            for kind, n in configs:
                if kind == "hand":
                    r = run_by_hand(n, args.seconds, Path(tmp))
                elif kind == "dry":
                    r = run_dry(n, args.seconds, Path(tmp))
                else:
                    r = run_restream(n, args.seconds, kind == "live", Path(tmp))
                results[(kind, n)].append(r)
                print(f"round {rnd + 1}: {r.what:<20} {n} dest  exit {r.code}  cpu {r.total:6.2f} s  "
                      f"wall {r.wall:5.1f} s  python {fmt(r.python)}  ffmpeg {fmt(r.ffmpeg)}  "
                      f"probes {fmt(r.probes)}  hwm {fmt(r.hwm_kb and r.hwm_kb / 1024, '.1f')} MB "
                      f"{' '.join(r.notes)}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    def m(kind, n, attr="total"):
        return mean([getattr(r, attr) for r in results[(kind, n)]])

    hand3, live3, quiet3, live1, live5 = m("hand", 3), m("live", 3), m("quiet", 3), m("live", 1), m("live", 5)
    hwm = max((r.hwm_kb for k, runs in results.items() if k[0] != "hand" for r in runs if r.hwm_kb), default=None)
    codes = sorted({r.code for runs in results.values() for r in runs})
    rows = [
        ("restream go, live view on a pty (3 dest)", live3, m("live", 3, "python"), m("live", 3, "ffmpeg"),
         m("live", 3, "probes"), m("live", 3, "wall")),
        ("restream go --plain --quiet (3 dest)", quiet3, m("quiet", 3, "python"), m("quiet", 3, "ffmpeg"),
         m("quiet", 3, "probes"), m("quiet", 3, "wall")),
        ("same ffmpeg argv by hand, direct (3 dest)", hand3, 0.0, hand3, 0.0, m("hand", 3, "wall")),
        ("restream go --dry-run: start-up alone (3 dest)", m("dry", 3), None, None, None, m("dry", 3, "wall")),
        ("restream go, live view (1 dest)", live1, m("live", 1, "python"), m("live", 1, "ffmpeg"),
         m("live", 1, "probes"), m("live", 1, "wall")),
        ("restream go, live view (5 dest)", live5, m("live", 5, "python"), m("live", 5, "ffmpeg"),
         m("live", 5, "probes"), m("live", 5, "wall")),
    ]
    ratio_a = live3 / hand3
    extra = live3 - hand3
    startup = m("dry", 3)
    own = m("live", 3, "python") + m("live", 3, "probes")
    view = m("live", 3, "python") - m("quiet", 3, "python")
    relay = m("quiet", 3, "python") + m("quiet", 3, "probes") - startup
    wall3 = m("live", 3, "wall")
    ratio_b = live5 / live1
    py5, py1 = m("live", 5, "python"), m("live", 1, "python")

    lines = [
        "# CPU and memory of `restream go` (bench/cpu.py)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} CPUs, {cpu_model()}; "
        f"load average (1/5/15 min) {' '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' '.join(f'{x:.2f}' for x in load_after)} after (the machine is shared: other runs add noise).  ",
        f"Input: test pattern 1280x720 @ 30 fps, libx264 veryfast 4500k + AAC 160k, `-re`, {args.seconds} s; "
        f"{args.rounds} round(s), interleaved; figures are means. Exit codes seen: {codes}.",
        "",
        "| run | tree CPU s | Python s | Python % of a core | ffmpeg s | probes s | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[f"| {name} | {fmt(t)} | {fmt(py)} | {fmt(py and py / w * 100, '.1f')} | {fmt(ff)} | {fmt(pr)} "
          f"| {fmt(w, '.1f')} |" for name, t, py, ff, pr, w in rows],
        "",
        "| check | figure | target |",
        "|---|---:|---:|",
        f"| (a) restream (live view) / ffmpeg by hand, 3 destinations | **{ratio_a:.3f}x** | <= 1.05x |",
        f"| &nbsp;&nbsp;tree difference, live view - by hand (noisy: ffmpeg's own CPU varies run to run) "
        f"| {extra:.2f} s | |",
        f"| restream's own CPU (Python + probes), live view, 3 destinations | {own:.2f} s "
        f"({own / hand3 * 100:.1f} % of by hand) | |",
        f"| &nbsp;&nbsp;start-up (the dry run: imports, discovery probes, plan; once per run) | {startup:.2f} s | |",
        f"| &nbsp;&nbsp;relay + engine while streaming (no-view run's Python + probes - start-up) "
        f"| {relay:.2f} s ({relay / wall3 * 100:.1f} % of a core) | |",
        f"| &nbsp;&nbsp;live view (Python: live-view run - no-view run) | {view:.2f} s "
        f"({view / wall3 * 100:.1f} % of a core) | |",
        f"| (a') 1 + (Python + probes of the live-view run) / ffmpeg by hand: the ratio if both ffmpegs had used "
        f"the same CPU (ffmpeg's own CPU varies more than that between identical runs on this shared machine) "
        f"| {1 + ((m('live', 3, 'python') or 0) + (m('live', 3, 'probes') or 0)) / hand3:.3f}x | <= 1.05x |",
        f"| (b) 5 destinations / 1 destination (both restream, live view) | **{ratio_b:.3f}x** | <= 1.10x |",
        f"| &nbsp;&nbsp;Python process, 1 -> 5 destinations | {fmt(py1)} s -> {fmt(py5)} s | |",
        f"| (c) peak RSS of the restream Python process (VmHWM, max over runs) "
        f"| **{fmt(hwm and hwm / 1024, '.1f')} MB** | <= 60 MB |",
        "",
        "How to read it: *tree CPU* is user+sys of the process started and all it reaped (`os.wait4`). *Python* is "
        "the restream process itself (CLI start-up, slot relay forwarding every byte, parsing, reducer, view); "
        "*probes* are discovery's short `ffmpeg -version`/capability runs at start; *ffmpeg* the broadcasting "
        "ffmpeg. The by-hand run is restream's dry-run argv with each relay slot's URL replaced by the receiver's "
        "direct URL and the spare slots left out (see the docstring of bench/cpu.py). The start-up/relay/view split "
        "uses the Python process's CPU only (exact per run, and far less noisy than ffmpeg's), as differences of "
        "separate runs.",
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
