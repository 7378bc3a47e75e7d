"""Whole-tree CPU of `restream go` next to the expert's tee one-liner and PyLivestream, same input, side by side.

Usage:  python bench/go_cpu.py [--seconds 30] [--rounds 3]

Input: a 1280x720 30 fps file (test card + tone, H.264 3000k, AAC) made once per run of this script; every contender
reads it with ``-re`` and encodes it (libx264 veryfast, 4500k, keyframe every 2 s, AAC 160k 48 kHz) for
``--seconds`` seconds, to ``ffmpeg -listen 1`` receivers on loopback (their CPU is not counted). The same ffmpeg binary
serves every contender. Contenders, each run once per round, rounds interleaved; the figures are medians over rounds:

* ``restream N``: ``restream go FILE --duration Ns`` with its live view on a pseudo-terminal (bench/cpu.py), N = 5, 1;
* ``one-liner N``: restream's own dry-run argv with each relay slot replaced by the receiver's URL: the one command an
  expert would type (same encoder options, tee + fifo, onfail=ignore);
* ``PyLivestream 5``: PyLivestream 2.1.1 (``pylivestream.api.stream_file``, one ffmpeg with a plain tee), configured
  with the same preset, bitrates, keyframe interval and audio rate. It is a bench-only dependency, installed into
  its own venv under the temp directory (``--pls-venv`` to reuse one). It insists on ffprobe, which the bundled
  ffmpeg lacks: a shim answers its one question (size and frame rate of the file) from ``ffmpeg -i``.

CPU = user+sys of the process started and everything it reaped (``os.wait4``). First media (``LAUNCH5``): from the
launch of the process to the slowest of the 5 receivers' sockets holding 8 KB (``ss -tin`` every 25 ms), restream vs
the one-liner; restream's includes its start-up (imports, probes, the slot relay) before ffmpeg starts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu  # noqa: E402  (bench/cpu.py: receivers, runs, the one-liner's argv)

PLS_VERSION = "2.1.1"
FFPROBE_SHIM = r'''#!{python}
import json, re, subprocess, sys
fn = sys.argv[-1]
err = subprocess.run([{ffmpeg!r}, "-hide_banner", "-i", fn], capture_output=True, text=True).stderr
streams = []
for line in err.splitlines():
    m = re.search(r"Stream #\S+.*?: (Video|Audio): .*", line)
    if not m:
        continue
    if m.group(1) == "Video":
        w, h = map(int, re.search(r", (\d{{2,5}})x(\d{{2,5}})", line).groups())
        fps = re.search(r", ([\d.]+) fps", line).group(1)
        streams.append({{"codec_type": "video", "width": w, "height": h, "avg_frame_rate": f"{{round(float(fps))}}/1"}})
    else:
        streams.append({{"codec_type": "audio"}})
print(json.dumps({{"streams": streams, "format": {{}}}}))
'''


def make_input(path: Path, seconds: int) -> None:
    subprocess.run([cpu.FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc2=size=1280x720:rate=30:duration={seconds}",
                    "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
                    "-c:v", "libx264", "-preset", "veryfast", "-b:v", "3000k", "-g", "60", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-b:a", "128k", "-shortest", str(path)], check=True)


def pls_venv(where: Path) -> Path:
    py = where / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"pylivestream=={PLS_VERSION}"], check=True)
    return py


def run_pylivestream(py: Path, n: int, seconds: int, infile: Path, tmp: Path) -> cpu.Run:
    recs = cpu.receivers(n)
    shim_dir = Path(tempfile.mkdtemp(dir=tmp))
    shim = shim_dir / "ffprobe"
    shim.write_text(FFPROBE_SHIM.format(python=sys.executable, ffmpeg=cpu.FFMPEG))
    shim.chmod(0o755)
    sites = {f"d{i}": {"keyframe_sec": 2, "video_kbps": 4500, "url": r.url, "streamid": r.key}
             for i, r in enumerate(recs)}
    config = shim_dir / "pls.json"
    config.write_text(json.dumps({
        "audio_rate": 48000, "audio_bps": 160000, "preset": "veryfast", "video_codec": "libx264",
        "audio_codec": "aac", "exe": cpu.FFMPEG, "ffprobe_exe": str(shim),
        "linux": {"video_format": "yuv420p", "audio_chan": "default", "acap": "pulse", "vcap": "x11grab",
                  "hcam": "v4l2", "screen_chan": ":0.0", "camera_chan": "/dev/video0"},
        "sites": sites}))
    code = ("import pylivestream.api as p, sys; "
            f"p.stream_file(ini_file={str(config)!r}, websites={list(sites)!r}, video_file={str(infile)!r}, "
            f"assume_yes=True, timeout={seconds})")
    env = {**os.environ, "PATH": f"{shim_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.monotonic()
    proc = subprocess.Popen([str(py), "-c", code], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    rc, total = cpu._reap(proc)
    wall = time.monotonic() - start
    for r in recs:
        r.done()
    return cpu.Run("PyLivestream", n, total, wall, rc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=30)  # issue 16 measured a 30 s file
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pls-venv", type=Path, default=None, help="a venv with pylivestream (made if missing)")
    args = ap.parse_args()
    configs = [("restream", 5), ("hand", 5), ("pls", 5), ("restream", 1), ("hand", 1)]
    runs: dict[tuple[str, int], list[cpu.Run]] = {c: [] for c in configs}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="restream-bench-") as tmp_s:
        tmp = Path(tmp_s)
        py = pls_venv(args.pls_venv or tmp / "pls-venv")
        infile = tmp / "input-720p30.mp4"
        make_input(infile, args.seconds)  # PyLivestream drops its own -t with several sites: all end with the file
        cpu.GO = [str(infile)]
        for rnd in range(args.rounds):
            order = configs[:]
            random.Random(rnd).shuffle(order)
            for kind, n in order:
                if kind == "restream":
                    r = cpu.run_restream(n, args.seconds, True, tmp)
                elif kind == "hand":
                    r = cpu.run_by_hand(n, args.seconds, tmp)
                else:
                    r = run_pylivestream(py, n, args.seconds, infile, tmp)
                runs[(kind, n)].append(r)
                print(f"round {rnd + 1}: {kind:8} {n} dest  exit {r.code}  cpu {r.total:6.2f} s  wall {r.wall:5.1f} s"
                      f"  python {cpu.fmt(r.python)}  first media {cpu.fmt(r.first)} s", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    def med(kind: str, n: int, attr: str = "total") -> float:
        values = [getattr(r, attr) for r in runs[(kind, n)] if getattr(r, attr) is not None]
        return statistics.median(values) if values else float("nan")

    def paired(kind: str, n: int, other: str, m: int, attr: str = "total") -> str:
        """The ratio within each round (both ran minutes apart at most, under the same load), and their median."""
        pairs = [getattr(a, attr) / getattr(b, attr) for a, b in zip(runs[(kind, n)], runs[(other, m)])
                 if getattr(a, attr) and getattr(b, attr)]
        if not pairs:
            return ""
        return f"; per round {' '.join(f'{x:.3f}' for x in pairs)}, their median {statistics.median(pairs):.3f}"

    r5, h5, p5, r1, h1 = med("restream", 5), med("hand", 5), med("pls", 5), med("restream", 1), med("hand", 1)
    load = " ".join(f"{x:.1f}" for x in load_before) + " -> " + " ".join(f"{x:.1f}" for x in load_after)
    print(f"go_cpu: {args.seconds} s of 720p30 from a file, {args.rounds} rounds interleaved, medians; "
          f"load {load}")
    print(f"GO5 restream {r5:.2f} s (Python {med('restream', 5, 'python'):.2f} s) vs one-liner {h5:.2f} s: "
          f"ratio {r5 / h5:.3f}{paired('restream', 5, 'hand', 5)}")
    print(f"GO1 restream {r1:.2f} s (Python {med('restream', 1, 'python'):.2f} s) vs one-liner {h1:.2f} s: "
          f"ratio {r1 / h1:.3f}{paired('restream', 1, 'hand', 1)}")
    print(f"PLS restream {r5:.2f} s vs PyLivestream {p5:.2f} s: ratio {r5 / p5:.3f}{paired('restream', 5, 'pls', 5)}")
    f5, fh5 = med("restream", 5, "first"), med("hand", 5, "first")
    print(f"LAUNCH5 restream {f5:.2f} s vs one-liner {fh5:.2f} s: ratio {f5 / fh5:.3f}"
          f"{paired('restream', 5, 'hand', 5, 'first')}")
    print("runs: " + json.dumps({f"{k}{n}": [round(r.total, 2) for r in v] for (k, n), v in runs.items()}))
    print("exit codes: " + json.dumps({f"{k}{n}": [r.code for r in v] for (k, n), v in runs.items()}))
    print("command: python bench/go_cpu.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]))


if __name__ == "__main__":
    main()
