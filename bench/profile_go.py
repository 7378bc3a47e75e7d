"""Where restream's own Python time goes while live: py-spy samples of `restream go`, top entries.

Usage:  python bench/profile_go.py [--dest 5] [--seconds 20] [--view] [--old-src DIR]

Runs ``restream go --test-pattern --size 1280x720 --fps 30`` (``--plain --quiet``, or with ``--view`` the live view
on a pseudo-terminal) to ``--dest`` ``ffmpeg -listen 1`` receivers, waits 4 s (start-up over), then samples the
Python process with ``py-spy record --nonblocking -r 200`` for ``--seconds``. Prints the share of a core the Python
process was busy (samples / possible samples) and the top functions by own time ("self") and by inclusive time
("total", restream's and asyncio's frames). ``--old-src`` profiles another checkout's src/ (e.g. main's) the same
way, for a before/after. Needs py-spy (``pip install -e '.[bench]'``) and ptrace rights on the child (root, or
``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu  # noqa: E402  (bench/cpu.py: receivers)

RATE = 200


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--view", action="store_true", help="the live view on a pty (default: --plain --quiet)")
    ap.add_argument("--old-src", type=Path, default=None, help="profile this src/ directory instead")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is needed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="restream-bench-") as tmp:
        env = {**os.environ, "RESTREAM_CONFIG_DIR": tmp, "COLUMNS": "100", "LINES": "30", "TERM": "xterm-256color"}
        if args.old_src:
            env["PYTHONPATH"] = str(args.old_src.resolve())
        recs = cpu.receivers(args.dest)
        for i, r in enumerate(recs):
            subprocess.run([sys.executable, "-m", "restream", "add", f"d{i}", "--url", r.url, "--key-stdin"],
                           input=r.key + "\n", text=True, env=env, check=True, capture_output=True)
        argv = [sys.executable, "-m", "restream", "go", "--test-pattern", "--size", "1280x720", "--fps", "30",
                "--duration", f"{args.seconds + 6}s"]
        if args.view:
            master, slave = cpu.terminal()
            proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
            os.close(slave)
            cpu.drain(master)
        else:
            proc = subprocess.Popen([*argv, "--plain", "--quiet"], env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(4)
        raw = Path(tmp) / "spy.txt"
        cpu_before, t_before = cpu._stat(proc.pid), time.monotonic()
        subprocess.run([spy, "record", "-p", str(proc.pid), "-d", str(args.seconds), "-r", str(RATE),
                        "--nonblocking", "-f", "raw", "-o", str(raw)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        cpu_after, t_after = cpu._stat(proc.pid), time.monotonic()
        proc.wait()
        for r in recs:
            r.done()
        own, incl = collections.Counter(), collections.Counter()
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            frames = stack.split(";")
            total += int(n)
            own[frames[-1]] += int(n)
            for f in set(frames):
                if "restream/" in f or "asyncio/" in f or "rich/" in f:
                    incl[f] += int(n)
    possible = RATE * args.seconds
    what = f"{args.dest} destinations, {'live view' if args.view else '--plain --quiet'}"
    used = (cpu_after[0] - cpu_before[0]) / (t_after - t_before) * 100 if cpu_before and cpu_after else float("nan")
    print(f"PROFILE {what}: Python busy {used:.1f} % of a core (its utime+stime over the {args.seconds} s sampled); "
          f"{total} samples of {possible} ({total / possible * 100:.1f} %: py-spy also counts a thread that is "
          f"runnable but waiting for a CPU; py-spy {RATE} Hz{', src ' + str(args.old_src) if args.old_src else ''})")
    for label, counter in (("self", own), ("total", incl)):
        for f, n in counter.most_common(args.top):
            print(f"{label}\t{n / max(total, 1) * 100:5.1f}%\t{f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
