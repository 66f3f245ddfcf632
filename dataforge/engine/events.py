"""Builders for the lineage frames a step returns: events (decisions about rows) and edges.

Steps build these vectorised, one frame per decision kind; the store adds ``run_id``,
``step`` and ``fingerprint`` and writes them as Parquet shards beside the step's outputs.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import polars as pl

ACTIONS = ("dropped", "flagged", "generated", "revised", "paired", "split")

EVENT_SCHEMA = {
    "row_id": pl.String,
    "action": pl.String,
    "reason": pl.String,
    "related_id": pl.String,
    "score": pl.Float64,
    "detail_json": pl.String,
}
EDGE_SCHEMA = {"child_id": pl.String, "parent_id": pl.String, "relation": pl.String}


def _column(value: Any, n: int, dtype: pl.DataType) -> pl.Series:
    if isinstance(value, pl.Series):
        return value.cast(dtype)
    return pl.Series([value] * n, dtype=dtype)


def events(
    row_ids: pl.Series,
    action: str,
    reason: str | pl.Series,
    *,
    related_id: str | pl.Series | None = None,
    score: float | pl.Series | None = None,
    detail: dict[str, Any] | pl.Series | None = None,
) -> pl.DataFrame:
    """One event per row id. ``detail`` is a dict (same for all rows) or a Series of JSON strings."""
    if action not in ACTIONS:
        raise ValueError(f"unknown event action {action!r}; one of {ACTIONS}")
    n = len(row_ids)
    if isinstance(detail, dict):
        detail = json.dumps(detail, sort_keys=True, ensure_ascii=False)
    return pl.DataFrame(
        {
            "row_id": _column(row_ids, n, pl.String),
            "action": _column(action, n, pl.String),
            "reason": _column(reason, n, pl.String),
            "related_id": _column(related_id, n, pl.String),
            "score": _column(score, n, pl.Float64),
            "detail_json": _column(detail, n, pl.String),
        },
        schema=EVENT_SCHEMA,
    )


def edges(child_ids: pl.Series, parent_ids: pl.Series, relation: str) -> pl.DataFrame:
    """One edge per (child, parent) pair."""
    n = len(child_ids)
    return pl.DataFrame(
        {
            "child_id": _column(child_ids, n, pl.String),
            "parent_id": _column(parent_ids, n, pl.String),
            "relation": _column(relation, n, pl.String),
        },
        schema=EDGE_SCHEMA,
    )


def concat_events(frames: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=EVENT_SCHEMA)


def concat_edges(frames: list[pl.DataFrame]) -> pl.DataFrame:
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=EDGE_SCHEMA)


# Where decisions live: beside the outputs they explain, as Parquet shards of the contract
# tables (``run_id``, ``step``, ``fingerprint`` and the frame's columns), one folder per
# artifact. ``lineage.duckdb`` reads them through views over ``shard_glob``; nothing per row
# goes through the database. A shard's index leaves room for one shard per batch.
DECISIONS_DIR = "lineage"
DECISION_SCHEMAS = {"events": EVENT_SCHEMA, "edges": EDGE_SCHEMA}
KEY_SCHEMA = {"run_id": pl.String, "step": pl.String, "fingerprint": pl.String}


def shard_glob(artifacts: Path, table: str) -> str:
    """The glob under an ``artifacts`` folder that matches every shard of ``table``."""
    return str(artifacts / "*" / "*" / DECISIONS_DIR / f"{table}-*.parquet")


def decision_shard(folder: Path, table: str, index: int = 0) -> Path:
    """Shard ``index`` of ``table`` (events or edges) of the artifact in ``folder``."""
    return folder / DECISIONS_DIR / f"{table}-{index:05d}.parquet"


def decision_shards(folder: Path, table: str) -> list[Path]:
    """Every shard of ``table`` of the artifact in ``folder``, in batch order."""
    return sorted((folder / DECISIONS_DIR).glob(f"{table}-*.parquet"))


def keyed(frame: pl.DataFrame, table: str, run_id: str, step: str, fingerprint: str) -> pl.DataFrame:
    """A step's events or edges frame as the contract table's rows: the run that decided them,
    the step and its fingerprint first."""
    keys = [pl.lit(v, pl.String).alias(k) for k, v in zip(KEY_SCHEMA, (run_id, step, fingerprint), strict=True)]
    return frame.select(*keys, *DECISION_SCHEMAS[table])


def write_shard(frame: pl.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` under a temporary name first (which the shard glob does not
    match), so a reader sees no shard or the whole one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        frame.write_parquet(tmp, compression="zstd", compression_level=1, statistics=True)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_decisions(
    folder: Path,
    run_id: str,
    step: str,
    fingerprint: str,
    events: pl.DataFrame,
    edges: pl.DataFrame,
    index: int = 0,
) -> None:
    """Store a step's decisions (of one batch: shard ``index``) as shards in its artifact
    ``folder`` (a table with no rows writes no shard: an absent shard reads as no rows)."""
    for table, frame in (("events", events), ("edges", edges)):
        if frame.height:
            write_shard(keyed(frame, table, run_id, step, fingerprint), decision_shard(folder, table, index))


def has_decisions(folder: Path) -> bool:
    """Whether the artifact in ``folder`` has its decisions stored as shards."""
    return (folder / DECISIONS_DIR).is_dir()


def reason_counts(events: pl.DataFrame, action: str) -> dict[str, int]:
    """Rows per reason among the events with ``action``."""
    chosen = events.filter(pl.col("action") == action)
    if chosen.is_empty():
        return {}
    counts = chosen.group_by("reason").len().sort("reason")
    return dict(zip(counts["reason"].to_list(), counts["len"].to_list(), strict=True))
