"""Dataset cards: ``card.md`` for each exported dataset, in the Hub's dataset-card sections (its
YAML front matter, summary, structure with splits and statistics, creation with the steps and
their fingerprints, drops by step and reason, the split audit and what steps report,
considerations, use). Deterministic: no times, no run ids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from dataforge import __version__
from dataforge.card_stats import SplitSummary, statistics_section
from dataforge.engine.plan import Plan, PlannedDataset
from dataforge.engine.table import Table
from dataforge.formats import trl_dataset_type
from dataforge.steps.audit import DatasetAudit, dataset_audit_section


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def render_card(
    plan: Plan,
    ds: PlannedDataset,
    tables: dict[str, SplitSummary],
    reports: list,
    frames: dict[str, pl.DataFrame | Table],
    audit: DatasetAudit | None = None,
    load: Any = None,
    plots: list[str] | None = None,
) -> str:
    """The card; ``tables`` are the exported splits' ``SplitSummary`` (made with
    ``card_tokenizer(ds)``, so they count its tokens), ``frames`` the
    same rows with dataforge's internal columns (``_ts``), ``audit`` their split audit
    (``dataset_audit``)."""
    ancestors = plan.ancestors({r.step for r in ds.splits.values()})
    steps = [s for s in plan.steps if s.name in ancestors]
    first = next(iter(tables.values()))
    trl_type = trl_dataset_type(first.schema.names) or "none recognised"
    drops = [[r.name, reason, n] for r in reports if r.name in ancestors for reason, n in sorted(r.drops.items())]
    parts = [
        hub_front_matter(plan, ds, tables, trl_type if trl_type != "none recognised" else None),
        f"# {ds.name}",
        "",
        "## Dataset Summary",
        "",
        ds.description or f"Built by dataforge from recipe `{plan.loaded.recipe.name}`.",
        "",
        f"- recipe: `{plan.loaded.path.name}` (sha256 `{plan.recipe_sha256}`)",
        f"- dataforge: {__version__}",
        f"- TRL dataset type: **{trl_type}**",
        "",
        "## Dataset Structure",
        "",
        f"Columns: {', '.join(f'`{c}`' for c in first.schema.names)}. Every row's `_id` answers `dataforge why <_id>`.",
        "",
        "### Splits",
        "",
        _table(["split", "rows", "from"], [[s, t.num_rows, f"`{ds.splits[s]}`"] for s, t in tables.items()]),
        "",
        *_empty_splits_note(tables),
        "### Statistics",
        "",
        *statistics_section(tables, None, tokenizer_name(ds)),
        *(["### Plots", "", *plots] if plots else []),
        "## Dataset Creation",
        "",
        f"Built by the steps below from recipe `{plan.loaded.path.name}`; the lineage "
        "(`dataforge why`, `dataforge query`) says where each row came from and why it was kept, changed or dropped.",
        "",
        "### Steps",
        "",
        _table(
            ["step", "kind", "version", "fingerprint"],
            [[s.name, s.kind, s.stepdef.version, f"`{s.fingerprint}`"] for s in steps],
        ),
        "",
        "### Rows dropped on the way",
        "",
        _table(["step", "reason", "rows"], drops) if drops else "No row was dropped.",
        "",
        "### Split audit",
        "",
        *(dataset_audit_section(frames, audit) if len(frames) > 1 else ["One split: nothing to compare."]),
        "",
    ]
    sections = [
        line
        for s in steps
        if load is not None and hasattr(s.stepdef.fn, "card_section")
        for line in [*s.stepdef.fn.card_section(s, load, plan), ""]
    ]
    if sections:
        parts += ["### What the steps report", "", *sections]
    notes = [n for s in steps for n in _card_notes(s)]
    parts += ["## Considerations for Using the Data", ""]  # the Hub's section for how a split was made, risks
    parts += [f"- {n}" for n in notes] if notes else ["No step of this dataset added a note."]
    parts += [
        "",
        "## Use",
        "",
        "```python",
        "from datasets import load_from_disk",
        f'ds = load_from_disk("datasets/{ds.name}")',
        "```",
        "",
        f"`dataforge export --hub DIR` writes it as the Hub lays datasets out (`DIR/{ds.name}/data/*.parquet`"
        " and this card as `README.md`), for `datasets.load_dataset` or `huggingface-cli upload`. "
        "`datasets` caches a local folder by its name, not its content: after exporting again, load it with "
        '`load_dataset(DIR, download_mode="force_redownload")`.',
        "",
    ]
    return "\n".join(parts)


def hub_front_matter(plan: Plan, ds: PlannedDataset, tables: dict[str, SplitSummary], trl_type: str | None) -> str:
    """The Hub's YAML front matter of the card (``dataforge.hub``)."""
    from dataforge.hub import front_matter

    return front_matter(tables, trl_type, dataset_licenses(plan, ds), ds.language, ds.tags)


def dataset_licenses(plan: Plan, ds: PlannedDataset) -> list[str]:
    """The dataset's Hub licence ids: the recipe's ``license:`` for the dataset, else those of the
    sources it is made from — each source's own ``license:``, else the LICENSE file beside its
    local data; different ones are all listed (sorted), sources that say nothing add nothing."""
    from dataforge.hub import source_licenses

    if ds.license is not None:
        return list(ds.license)
    found: set[str] = set()
    ancestors = plan.ancestors({r.step for r in ds.splits.values()})
    for s in plan.steps:
        if s.name not in ancestors or s.kind != "source":
            continue
        own = getattr(s.cfg, "license", None)
        if own is not None:
            found.update([own] if isinstance(own, str) else own)
        elif getattr(s.cfg, "path", None):
            found.update(source_licenses([plan.loaded.base_dir / s.cfg.path]))
    return sorted(found)


def card_tokenizer(ds: PlannedDataset) -> Any:
    """The dataset's tokenizer for the statistics (None when it names none: the statistics say so)."""
    if ds.tokenizer is None:
        return None
    from dataforge.card_stats import load_tokenizer

    return load_tokenizer(ds.tokenizer, ds.name)


def tokenizer_name(ds: PlannedDataset) -> str:
    """The name the card gives the dataset's tokenizer: a local folder's name, else the hub id."""
    if ds.tokenizer is None:
        return ""
    return Path(ds.tokenizer).name if Path(ds.tokenizer).exists() else ds.tokenizer


def _card_notes(step: Any) -> list[str]:
    """A step's own line for the card: its function's ``card_note(cfg)``, when it has one."""
    note = getattr(step.stepdef.fn, "card_note", None)
    text = note(step.cfg) if note else None
    return [text] if text else []


def _empty_splits_note(tables: dict[str, Any]) -> list[str]:
    """A line naming the splits with no row (a filter too strict, a fraction too small): an empty
    evaluation split reads as a clean score, so the card says it plainly."""
    empty = [s for s, t in tables.items() if t.num_rows == 0]
    if not empty:
        return []
    names = ", ".join(f"`{s}`" for s in empty)
    return [
        f"**Empty: {names}.** No row reached {'it' if len(empty) == 1 else 'them'}; the steps below say where "
        "rows were dropped.",
        "",
    ]
