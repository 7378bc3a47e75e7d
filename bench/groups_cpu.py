"""Encode groups (issue 14): CPU of 5 destinations in 2 groups next to 5 in 1 group, and next to two separate
restream processes doing the same, measured side by side in one run.

Usage:  python bench/groups_cpu.py [--seconds 20] [--rounds 1]

Everything is local: ffmpeg ``-listen 1`` receivers (``-c copy -f null``, their CPU not counted), a throwaway
RESTREAM_CONFIG_DIR, the test pattern at 1280x720 30 fps. Configurations, interleaved round by round:

* **1 group**: 5 destinations with the broadcast's encoding (6000k).
* **2 groups**: 3 with the broadcast's encoding, 2 vertical (``--crop 9:16``, 720x1280, 3000k): one process,
  one decode, a split, two encodes.
* **2 processes**: the same two groups as two ``restream go`` processes at once (profiles of 3 and of 2).

CPU is user+sys of each restream process and everything it reaped (``os.wait4``): Python, the slot relay, the
ffmpeg probes and the broadcasting ffmpeg.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from cpu import _reap, receivers  # noqa: E402  (bench/ is the script's directory)

GO = ["--test-pattern", "--size", "1280x720", "--fps", "30", "--video-bitrate", "6000k", "--plain", "--quiet"]
VERTICAL = ["--crop", "9:16", "--video-bitrate", "3000k"]


def restream(env: dict, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "restream", *args], env=env, check=True, capture_output=True, timeout=60)


def start_go(env: dict, profile: str, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "restream", "go", *GO, "--duration", f"{seconds}s",
                             "-p", profile], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def run(config: str, seconds: float) -> float:
    with tempfile.TemporaryDirectory(prefix="restream-bench-groups-") as tmp:
        env = {**os.environ, "RESTREAM_CONFIG_DIR": tmp}
        recs = receivers(5)
        for i, r in enumerate(recs):
            vertical = config != "1 group" and i >= 3
            profile = "v" if vertical and config == "2 processes" else "main"
            restream(env, "add", f"d{i}", "--url", r.url, "--key", r.key, "-p", profile,
                     *(VERTICAL if vertical else []))
        profiles = ["main", "v"] if config == "2 processes" else ["main"]
        procs = [start_go(env, p, seconds) for p in profiles]
        cpu = 0.0
        for proc in procs:
            code, used = _reap(proc)
            if code != 0:
                raise RuntimeError(f"{config}: restream go exited {code}")
            cpu += used
        for r in recs:
            r.done()
        return cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    configs = ["1 group", "2 groups", "2 processes"]
    cpu = {c: [] for c in configs}
    for _ in range(a.rounds):
        for c in configs:
            cpu[c].append(run(c, a.seconds))
    mean = {c: sum(v) / len(v) for c, v in cpu.items()}
    print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load before {load}; {a.seconds:g} s of "
          f"1280x720 30 fps, {a.rounds} round(s)")
    for c in configs:
        print(f"{c}: {mean[c]:.2f} CPU-s")
    print(f"2 groups / 1 group: {mean['2 groups'] / mean['1 group']:.3f} (target <= 1.9)")
    print(f"2 groups / 2 processes: {mean['2 groups'] / mean['2 processes']:.3f} (target <= 0.5)")


if __name__ == "__main__":
    main()
