"""The card's plots, written as PNG beside ``card.md`` and linked from it: the length of each
row's text per split (a histogram), the funnel of rows through the steps that made the dataset
with the rows each dropped, each leakage check's score distribution against its threshold, and
the split audit as a matrix of the rows two splits share.

Consumes the exported Arrow tables, the build's step reports, the leakage checks' ``scores``
tables and the dataset's split audit; produces PNG files and the Markdown lines that show them.
matplotlib draws off-screen (Agg); the files carry no date."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from dataforge.card_stats import SplitSummary, summaries
from dataforge.steps.audit import DatasetAudit

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


def length_histogram(tables: dict[str, pa.Table | SplitSummary], path: Path) -> None:
    """Characters per row, one histogram per split on shared logarithmic bins."""
    lengths = {s: np.maximum(sm.values("chars"), 1) for s, sm in summaries(tables).items()}
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


def funnel(reports: list, path: Path, flow: dict[str, set[str]] | None = None) -> None:
    """Rows out of each step, in build order, with the rows it dropped beside the bar. ``flow``
    names, per step, the outputs that lead on to the dataset: a step's side tables (leakage
    matches and scores, failed requests, rollout groups) are not rows of the funnel."""

    def rows(r: Any) -> int:
        keep = (flow or {}).get(r.name)
        return sum(n for o, n in r.outputs.items() if o in keep) if keep and r.outputs else r.rows_out

    fig, ax = _figure(7, 0.45 * len(reports) + 1.2)
    names = [r.name for r in reports]
    counts = [rows(r) for r in reports]
    ax.barh(names, counts, color="#4c72b0")
    for k, (r, n) in enumerate(zip(reports, counts, strict=True)):
        dropped = sum(r.drops.values())
        label = f"{n:,}" + (f"  (−{dropped:,}: " + ", ".join(sorted(r.drops)) + ")" if dropped else "")
        ax.text(n, k, " " + label, va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("rows out")
    ax.set_xlim(0, max(counts, default=1) * 1.6 or 1)
    _save(fig, path)


def leakage_margins(scores: pl.DataFrame, path: Path, step_name: str) -> None:
    """Each train row's closest eval item, as its similarity with the evidence minus the threshold
    (``leakage.similarity_margin``): rows the check matched and rows it kept, the threshold at 0."""
    fig, ax = _figure(7, 3.2)
    margins = scores["margin"].to_numpy()
    matched = scores["detector"].is_not_null().to_numpy()
    low, high = min(float(margins.min(initial=0.0)), -0.05), max(float(margins.max(initial=0.0)), 0.05)
    bins = np.linspace(low, high, 50)
    ax.hist(margins[~matched], bins=bins, alpha=0.6, color="#4c72b0", label=f"kept ({int((~matched).sum()):,})")
    ax.hist(margins[matched], bins=bins, alpha=0.7, color="#c44e52", label=f"matched ({int(matched.sum()):,})")
    ax.axvline(0.0, color="black", linestyle="--", linewidth=1, label="threshold")
    ax.set_yscale("log")
    ax.set_xlabel("cosine + evidence − threshold (closest eval item)")
    ax.set_ylabel("train rows")
    ax.set_title(f"leakage check `{step_name}`", fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, path)


def audit_matrix(audit: DatasetAudit, path: Path) -> None:
    """Split × split: the prompts two splits share (exact, same prompt with another target, or
    near-duplicate), from the dataset's split audit. The diagonal is not compared."""
    names = audit.splits
    grid = np.full((len(names), len(names)), np.nan)
    for a, b, exact, other_target, near, _time in audit.summary():
        i, j = names.index(str(a)), names.index(str(b))
        grid[i, j] = grid[j, i] = int(exact) + int(other_target) + int(near)  # type: ignore[call-overload]
    fig, ax = _figure(1.2 * len(names) + 2.5, 1.0 * len(names) + 1.5)
    ax.imshow(np.nan_to_num(grid, nan=0.0), cmap="Reds", vmin=0, vmax=max(1.0, float(np.nanmax(grid))))
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, "—" if i == j else f"{int(grid[i, j]):,}", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_title("prompts shared between splits", fontsize=9)
    _save(fig, path)


def write_plots(
    folder: Path,
    tables: dict[str, pa.Table | SplitSummary],
    reports: list,
    leakage: dict[str, pl.DataFrame] | None = None,
    audit: DatasetAudit | None = None,
    flow: dict[str, set[str]] | None = None,
) -> list[str]:
    """Draw the plots into ``folder``; returns the card's Markdown lines that show them.
    ``leakage``: step name → that check's ``scores`` table; ``audit``: the dataset's split audit;
    ``flow``: step → the outputs that lead on to the dataset (``funnel``)."""
    length_histogram(tables, folder / "lengths.png")
    lines = ["![Characters per row, by split](lengths.png)", ""]
    if reports:
        funnel(reports, folder / "funnel.png", flow)
        lines += ["![Rows through the steps, with the rows each dropped](funnel.png)", ""]
    for name, scores in (leakage or {}).items():
        if scores.height:
            leakage_margins(scores, folder / f"leakage_{name}.png", name)
            lines += [
                f"![Leakage check {name}: closest eval item per train row, against the threshold](leakage_{name}.png)",
                "",
            ]
    if audit is not None and len(audit.splits) > 1:
        audit_matrix(audit, folder / "split_audit.png")
        lines += ["![Prompts shared between splits (split audit)](split_audit.png)", ""]
    return lines
