"""Rich progress for the runner: one bar over the steps, and a bar for each step's own loops."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text


def silence_library_bars() -> None:
    """Turn off the tqdm bars of transformers ("Loading weights…"), huggingface_hub and datasets:
    printed between rich's redraws they break the build's own progress display. By environment
    for libraries not imported yet (importing them here would slow every build), by their own
    switch for those already imported. A user's explicit setting of the variables is kept."""
    import os
    import sys

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # huggingface_hub and transformers read it
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] != "1":
        return
    switches = {
        "huggingface_hub": ("huggingface_hub.utils", "disable_progress_bars"),
        "transformers": ("transformers.utils.logging", "disable_progress_bar"),
        "datasets": ("datasets", "disable_progress_bars"),
    }
    for top, (module, call) in switches.items():
        if top in sys.modules:
            getattr(__import__(module, fromlist=[call]), call)()


class RateColumn(ProgressColumn):
    """A step loop's throughput ("1,234 rows/s"), for tasks that name a ``unit``."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit")
        speed = task.finished_speed or task.speed
        if not unit or not speed:
            return Text("")
        return Text(f"{speed:,.0f} {unit}/s" if speed >= 10 else f"{speed:.1f} {unit}/s", style="cyan")


def make_progress(console: Console | None, enabled: bool) -> Progress:
    silence_library_bars()
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", style="bold", markup=False),  # descriptions hold user text
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        RateColumn(),
        console=console,
        disable=not enabled,
        transient=False,
    )


class StepProgress:
    """The ``ctx.progress`` a running step gets: ``track`` shows a bar for one loop."""

    def __init__(self, progress: Progress, step: str):
        self.progress, self.step = progress, step

    def track(
        self,
        items: Iterable[Any],
        total: int | None = None,
        description: str = "",
        unit: str = "",
        size: Callable[[Any], int] | None = None,
    ) -> Iterator[Any]:
        """Yield ``items`` under a bar of ``total`` ``unit``s (rows, requests …), showing the
        rate; ``size(item)`` is how many units an item is (a batch of rows), else one."""
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        task = self.progress.add_task(f"  {self.step}: {description}", total=total, unit=unit)
        try:
            for item in items:
                yield item
                self.progress.advance(task, size(item) if size is not None else 1)
        finally:
            self.progress.remove_task(task)
