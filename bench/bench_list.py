"""Wall time of `restream list`, `show` and `--help` on a 5-destination profile, next to a bare `python -c pass`.

Usage:  python bench/bench_list.py [N]      (default N=30; runs in a throwaway RESTREAM_CONFIG_DIR)

`restream` is the installed console script next to this Python (what a user runs; `python -m restream` if there is
none): list, show and the root help take the fast path (src/restream/fastpath.py, no Typer). Each is also timed
through the Typer app alone (`restream.cli.main`, what served them before the fast path), in the same rounds.

Target (issue 16): median <= 80 ms each on a 2-core machine (issue 2 asked 150 ms of `list`). Runs are interleaved
(list, show, help, bare, list, ...) so all see the same machine load; the ratio says how much restream adds on top
of starting Python. Byte code is compiled once, as an install does (into a cache under the temp directory, so
PYTHONDONTWRITEBYTECODE in the caller's environment does not make every run compile restream's sources).
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
        env = {**os.environ, "RESTREAM_CONFIG_DIR": tmp, "COLUMNS": "100", "NO_COLOR": "1",
               "PYTHONPYCACHEPREFIX": os.path.join(tmp, "pycache")}
        env.pop("RESTREAM_PROFILE", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        script = os.path.join(os.path.dirname(sys.executable), "restream")
        restream = [script] if os.path.exists(script) else [sys.executable, "-m", "restream"]
        typer_path = [sys.executable, "-c", "import sys; sys.argv[0] = 'restream'; from restream.cli import main; main()"]
        for i, (name, url) in enumerate(DESTINATIONS):
            subprocess.run([*restream, "add", name, "--url", url, "--key", f"bench-key-{i}-0123456789"],
                           env=env, check=True, stdout=subprocess.DEVNULL)
        commands = {"list": ["list"], "show": ["show", "youtube"], "--help": ["--help"]}
        for args in commands.values():
            _wall_ms([*restream, *args], env)  # warm the page cache and compile the byte code
            _wall_ms([*typer_path, *args], env)
        _wall_ms([sys.executable, "-c", "pass"], env)
        _wall_ms([sys.executable, "-c", "import typer"], env)
        times: dict[str, list[float]] = {name: [] for name in [*commands, *(f"typer {c}" for c in commands), "bare",
                                                               "typer"]}
        for _ in range(n):
            for name, args in commands.items():
                times[name].append(_wall_ms([*restream, *args], env))
                times[f"typer {name}"].append(_wall_ms([*typer_path, *args], env))
            times["bare"].append(_wall_ms([sys.executable, "-c", "pass"], env))
            times["typer"].append(_wall_ms([sys.executable, "-c", "import typer"], env))
    bmed, bp90 = statistics.median(times["bare"]), _p90(times["bare"])
    print(f"floor: python -c 'import typer' (Typer and Click, which every command needs): median "
          f"{statistics.median(times['typer']):.0f} ms, p90 {_p90(times['typer']):.0f} ms; load {os.getloadavg()[0]:.1f}")
    for name in commands:
        med, p90 = statistics.median(times[name]), _p90(times[name])
        print(f"restream {name} (5 destinations, N={n}, {os.cpu_count()} CPUs): median {med:.0f} ms, p90 {p90:.0f} ms "
              f"| python -c pass: median {bmed:.0f} ms, p90 {bp90:.0f} ms | ratio {med / bmed:.1f}x | "
              f"target median <= 80 ms: {'met' if med <= 80 else 'MISSED'} | "
              f"through the Typer app: median {statistics.median(times['typer ' + name]):.0f} ms")
    print(f"medians side by side (ms): python -c pass {bmed:.0f} | "
          + " | ".join(f"{name}: {statistics.median(times[name]):.0f} fast path, "
                       f"{statistics.median(times['typer ' + name]):.0f} Typer" for name in commands))


if __name__ == "__main__":
    main()
