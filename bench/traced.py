"""Run restream's CLI under tracemalloc (bench only; bench/soak.py --tracemalloc): a snapshot after ``--after``
seconds and one at exit, their difference (top entries by size growth) written as JSON to ``$RESTREAM_TRACEMALLOC``.

Usage:  RESTREAM_TRACEMALLOC=diff.json python bench/traced.py [--after 60] go ...
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
import tracemalloc

OUT = os.environ["RESTREAM_TRACEMALLOC"]
AFTER = 60.0
args = sys.argv[1:]
if args[:1] == ["--after"]:
    AFTER, args = float(args[1]), args[2:]

tracemalloc.start(8)
first: list = []
t0 = time.monotonic()


def _first() -> None:
    time.sleep(AFTER)
    first.append(tracemalloc.take_snapshot())


def _dump() -> None:
    last = tracemalloc.take_snapshot()
    keep = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, __file__)]
    last = last.filter_traces(keep)
    if first:
        stats = last.compare_to(first[0].filter_traces(keep), "lineno")
    else:
        stats = last.statistics("lineno")
    traced, peak = tracemalloc.get_traced_memory()
    with open(OUT, "w", encoding="utf-8") as fh:
        json.dump({"after_s": AFTER, "end_s": round(time.monotonic() - t0, 1), "diffed": bool(first),
                   "traced_kb": traced // 1024, "peak_kb": peak // 1024,
                   "top": [{"where": f"{s.traceback[0].filename}:{s.traceback[0].lineno}",
                            "size_diff_kb": round(getattr(s, "size_diff", s.size) / 1024, 1),
                            "count_diff": getattr(s, "count_diff", s.count), "size_kb": round(s.size / 1024, 1)}
                           for s in stats[:15]]}, fh, indent=1)


threading.Thread(target=_first, daemon=True).start()
atexit.register(_dump)
sys.argv = ["restream", *args]
from restream.cli import main  # noqa: E402

main()
