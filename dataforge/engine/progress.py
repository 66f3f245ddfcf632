"""Rich progress for the runner: one bar over the steps, and a bar for each step's own loops."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


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


def make_progress(console: Console | None, enabled: bool) -> Progress:
    silence_library_bars()
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
