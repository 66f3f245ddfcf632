"""The build's rich progress is not broken by the libraries' own tqdm bars: once the runner makes
its progress display, loading a model prints no "Loading weights" bar, whether transformers was
imported before or after. Each case runs in a fresh interpreter (the switches are process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

LOAD = "from dataforge.embed import load_model; load_model(None)"
CASES = {
    "without the runner's display": LOAD,
    "display first": f"from dataforge.engine.progress import make_progress; make_progress(None, True); {LOAD}",
    "transformers imported first": (
        f"import transformers; from dataforge.engine.progress import make_progress; make_progress(None, True); {LOAD}"
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_model_loading_bars_stay_out_of_the_build_output(case):
    env = {k: v for k, v in os.environ.items() if "PROGRESS_BARS" not in k}
    env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run([sys.executable, "-c", CASES[case]], capture_output=True, text=True, env=env, check=True)
    printed = "Loading weights" in out.stderr + out.stdout
    assert printed == (case == "without the runner's display")


def test_step_loops_count_units_and_show_their_rate():
    """A step's loop over batches advances its bar by the rows of each batch and shows rows/s."""
    import io
    import time

    from rich.console import Console

    from dataforge.engine.progress import RateColumn, StepProgress, make_progress

    with make_progress(Console(file=io.StringIO(), width=120), True) as progress:
        loop = StepProgress(progress, "dedup")
        done, rates = [], []
        batches = loop.track(
            range(0, 2500, 1000), total=2500, description="signatures", unit="rows", size=lambda s: min(1000, 2500 - s)
        )
        for _ in batches:
            task = progress.tasks[-1]
            done.append(task.completed)
            rates.append(RateColumn().render(task).plain)
            time.sleep(0.02)
        assert progress.tasks == []  # the loop's bar is gone when it ends
    assert done == [0, 1000, 2000] and task.total == 2500
    assert rates[0] == "" and rates[-1].endswith(" rows/s") and float(rates[-1].split()[0].replace(",", "")) > 0
