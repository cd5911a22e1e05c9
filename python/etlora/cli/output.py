"""What every `etlora` command prints through: rich consoles (messages on stderr, results on
stdout), sizes in MB, and a spinner around one long step."""

from __future__ import annotations

import time
from contextlib import contextmanager

from rich.console import Console

console = Console(stderr=True)
stdout = Console()


def megabytes(size: int) -> str:
    return f"{size / 1e6:,.2f} MB" if size >= 1e5 else f"{size / 1e3:,.1f} kB"


@contextmanager
def step(name: str):
    """One long step with a spinner, then its time."""
    started = time.perf_counter()
    with console.status(f"{name}..."):
        yield
    console.print(f"[green]✓[/] {name} ({time.perf_counter() - started:.1f} s)")
