"""Wall time of `restream list` on a 5-destination profile, next to a bare `python -c pass`.

Usage:  python bench/bench_list.py [N]      (default N=30; runs in a throwaway RESTREAM_CONFIG_DIR)

Target (issue 2): median <= 150 ms on a 2-core machine. Runs are interleaved (list, bare, list, bare, ...) so
both see the same machine load; the ratio says how much restream adds on top of starting Python.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

DESTINATIONS = [
    ("youtube", "rtmp://a.rtmp.youtube.com/live2"),
    ("twitch", "rtmp://ingest.global-contribute.live-video.net/app"),
    ("facebook", "rtmps://live-api-s.facebook.com:443/rtmp/"),
    ("apivideo", "rtmp://broadcast.api.video/s"),
    ("studio", "srt://203.0.113.7:9000"),
]


def _wall_ms(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return (time.perf_counter() - start) * 1000


def _p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    with tempfile.TemporaryDirectory(prefix="restream-bench-") as tmp:
        env = {**os.environ, "RESTREAM_CONFIG_DIR": tmp, "COLUMNS": "100", "NO_COLOR": "1"}
        env.pop("RESTREAM_PROFILE", None)
        restream = [sys.executable, "-m", "restream"]
        for i, (name, url) in enumerate(DESTINATIONS):
            subprocess.run([*restream, "add", name, "--url", url, "--key", f"bench-key-{i}-0123456789"],
                           env=env, check=True, stdout=subprocess.DEVNULL)
        _wall_ms([*restream, "list"], env)  # warm the page cache and .pyc files
        _wall_ms([sys.executable, "-c", "pass"], env)
        listing, bare = [], []
        for _ in range(n):
            listing.append(_wall_ms([*restream, "list"], env))
            bare.append(_wall_ms([sys.executable, "-c", "pass"], env))
    med, p90 = statistics.median(listing), _p90(listing)
    bmed, bp90 = statistics.median(bare), _p90(bare)
    print(f"restream list (5 destinations, N={n}, {os.cpu_count()} CPUs): median {med:.0f} ms, p90 {p90:.0f} ms | "
          f"python -c pass: median {bmed:.0f} ms, p90 {bp90:.0f} ms | ratio {med / bmed:.1f}x | "
          f"target median <= 150 ms: {'met' if med <= 150 else 'MISSED'}")


if __name__ == "__main__":
    main()
