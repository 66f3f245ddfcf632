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
