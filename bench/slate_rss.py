"""Peak memory of restream's Python process with 5 destinations and ``--slate`` (issue 16's "<= 60 MB" row).

Usage:  python bench/slate_rss.py [--seconds 25]

``restream relay --listen rtmp://127.0.0.1:PORT/live/KEY --slate --plain --quiet`` with 5 ``ffmpeg -listen 1``
receivers on loopback; a publisher (``ffmpeg -re``, a 1280x720 30 fps H.264 3000k + AAC file, ``-c copy``) sends
``--seconds`` seconds, leaves, and the relay runs 7 s more on the slate (the switcher holding its raw frames);
then SIGINT. VmHWM of the restream process (Python, its switcher thread and buffers; not its ffmpegs) is read from
``/proc/PID/status`` every 0.2 s. Prints ``RSS5SLATE <MB>``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu  # noqa: E402  (receivers, the throwaway config)

LATER_S = 7.0  # on the slate after the publisher left


def hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=25)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="restream-bench-") as tmp_s:
        tmp = Path(tmp_s)
        clip = tmp / "clip.mp4"
        subprocess.run([cpu.FFMPEG, "-loglevel", "error", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
                        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(args.seconds + 2),
                        "-c:v", "libx264", "-preset", "veryfast", "-b:v", "3000k", "-g", "60", "-c:a", "aac",
                        str(clip)], check=True)
        recs = cpu.receivers(5)
        env = cpu._config(tmp / "cfg", recs)
        port = cpu.free_port()
        url = f"rtmp://127.0.0.1:{port}/live/bench-ingest"
        relay = subprocess.Popen([sys.executable, "-m", "restream", "relay", "--listen", url, "--slate", "--plain",
                                  "--quiet"], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 20
        while not cpu.ports.listening(port):
            if relay.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"restream relay did not listen: {relay.stderr.read().decode()[-500:]}")
            time.sleep(0.02)
        pub = subprocess.Popen([cpu.FFMPEG, "-loglevel", "error", "-re", "-t", str(args.seconds), "-i", str(clip),
                                "-c", "copy", "-f", "flv", url])
        peak = 0
        end = None
        while relay.poll() is None:
            peak = max(peak, hwm_kb(relay.pid) or 0)
            if end is None and pub.poll() is not None:
                end = time.monotonic() + LATER_S
            if end is not None and time.monotonic() >= end:
                break
            time.sleep(0.2)
        peak = max(peak, hwm_kb(relay.pid) or 0)
        os.kill(relay.pid, signal.SIGINT)
        err = relay.communicate(timeout=30)[1].decode()
        for r in recs:
            r.proc.kill()
            r.proc.wait()
        print(f"relay exit {relay.returncode} (130: the SIGINT), publisher exit {pub.returncode}; "
              f"{err.count(chr(10))} stderr lines", file=sys.stderr)
        print(f"RSS5SLATE {peak / 1024:.1f} MB ({args.seconds} s publisher, then {LATER_S:.0f} s on the slate)")


if __name__ == "__main__":
    main()
