"""Static tables for the light commands (list, platforms, ...), printed with Rich."""

from __future__ import annotations


def table(columns: list[tuple[str, str]], rows: list[dict], title: str | None = None) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", title_style="bold")
    for header, _ in columns:
        t.add_column(header, overflow="fold")
    for row in rows:
        t.add_row(*("" if row.get(key) is None else str(row.get(key)) for _, key in columns))
    Console(soft_wrap=False, highlight=False).print(t)
