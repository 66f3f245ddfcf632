"""Rich progress for the runner: one bar over the steps, and a bar for each step's own loops."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


def make_progress(console: Console | None, enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", style="bold", markup=False),  # descriptions hold user text
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


class StepProgress:
    """The ``ctx.progress`` a running step gets: ``track`` shows a bar for one loop."""

    def __init__(self, progress: Progress, step: str):
        self.progress, self.step = progress, step

    def track(self, items: Iterable[Any], total: int | None = None, description: str = "") -> Iterator[Any]:
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        task = self.progress.add_task(f"  {self.step}: {description}", total=total)
        try:
            for item in items:
                yield item
                self.progress.advance(task)
        finally:
            self.progress.remove_task(task)
