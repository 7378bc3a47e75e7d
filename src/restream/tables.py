"""Static tables for the light commands (list, platforms, ...): plain aligned text.

Deliberately without Rich: importing it costs about 60 ms, a third of `restream list`'s budget.
Long cells are never cut or wrapped, so URLs stay copyable; the last column takes what is left.
"""

from __future__ import annotations

import sys


def table(columns: list[tuple[str, str]], rows: list[dict], title: str | None = None, out=None) -> None:
    out = out or sys.stdout
    cells = [[("" if row.get(key) is None else str(row.get(key))) for _, key in columns] for row in rows]
    headers = [header for header, _ in columns]
    widths = [max(len(c) for c in col) for col in zip(headers, *cells)]
    lines = []
    if title:
        lines.append(title)
    for cols in (headers, ["-" * w for w in widths], *cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
    out.write("\n".join(lines) + "\n")
