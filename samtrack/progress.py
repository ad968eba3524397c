"""Progress bars for the CLI (rich). Library code takes a ``progress(done, total)`` callback instead."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextlib.contextmanager
def progress_bar(label: str, *, total: int | None = None, unit: str = "frames",
                 show_memory: bool = False) -> Iterator[Callable[[int, int], None]]:
    """Yield an ``update(done, total)`` callback drawing a bar with rate and ETA on stderr.

    The bar appears at the first update, so a command that fails before doing
    any work prints only its error.
    """
    from rich.console import Console

    state: dict = {}

    def update(done: int, total_now: int | None = None) -> None:
        if "bar" not in state:
            cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[rate]}"), TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn()]
            bar = Progress(*cols, console=Console(stderr=True), transient=False)
            bar.start()
            state["bar"], state["task"] = bar, bar.add_task(label, total=total_now or total, rate="")
        bar, task = state["bar"], state["task"]
        t = bar.tasks[task]
        rate = f"{t.speed:6.1f} {unit}/s" if t.speed else ""
        if show_memory:
            import psutil

            rate += f"  RSS {psutil.Process().memory_info().rss / 2**30:.2f} GiB"
        bar.update(task, completed=done, total=total_now if total_now is not None else t.total, rate=rate)

    try:
        yield update
    finally:
        if "bar" in state:
            state["bar"].stop()
