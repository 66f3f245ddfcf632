"""The card's plots, written as PNG beside ``card.md`` and linked from it: the length of each
row's text per split (a histogram), and the funnel of rows through the steps that made the
dataset with the rows each dropped.

Consumes the exported Arrow tables and the build's step reports; produces PNG files and the
Markdown lines that show them. matplotlib draws off-screen (Agg); the files carry no date."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from dataforge.card_stats import row_texts

PNG_META = {"Software": None}  # no version or date in the file: the same data, the same bytes


def _figure(width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height), dpi=100)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, format="png", metadata=PNG_META)
    plt.close(fig)


def length_histogram(tables: dict[str, pa.Table], path: Path) -> None:
    """Characters per row, one histogram per split on shared logarithmic bins."""
    lengths = {s: np.array([max(len(t), 1) for t in row_texts(tab)]) for s, tab in tables.items()}
    top = max((int(v.max()) for v in lengths.values() if len(v)), default=10)
    low = min((int(v.min()) for v in lengths.values() if len(v)), default=1)
    bins = np.logspace(np.log10(low), np.log10(max(top, low * 10)), 40)
    fig, ax = _figure(7, 3.5)
    for split, values in lengths.items():
        ax.hist(values, bins=bins, alpha=0.55, label=f"{split} ({len(values):,} rows)")
    ax.set_xscale("log")
    ax.set_xlabel("characters per row")
    ax.set_ylabel("rows")
    ax.legend()
    _save(fig, path)


def funnel(reports: list, path: Path) -> None:
    """Rows out of each step, in build order, with the rows it dropped beside the bar."""
    fig, ax = _figure(7, 0.45 * len(reports) + 1.2)
    names = [r.name for r in reports]
    ax.barh(names, [r.rows_out for r in reports], color="#4c72b0")
    for k, r in enumerate(reports):
        dropped = sum(r.drops.values())
        label = f"{r.rows_out:,}" + (f"  (−{dropped:,}: " + ", ".join(sorted(r.drops)) + ")" if dropped else "")
        ax.text(r.rows_out, k, " " + label, va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("rows out")
    ax.set_xlim(0, max([r.rows_out for r in reports], default=1) * 1.6 or 1)
    _save(fig, path)


def write_plots(folder: Path, tables: dict[str, pa.Table], reports: list) -> list[str]:
    """Draw the plots into ``folder``; returns the card's Markdown lines that show them."""
    length_histogram(tables, folder / "lengths.png")
    lines = ["![Characters per row, by split](lengths.png)", ""]
    if reports:
        funnel(reports, folder / "funnel.png")
        lines += ["![Rows through the steps, with the rows each dropped](funnel.png)", ""]
    return lines
