"""Builders for the lineage frames a step returns: events (decisions about rows) and edges.

Steps build these vectorised, one frame per decision kind; the runner adds ``run_id``,
``step`` and ``fingerprint`` and writes them to DuckDB in one batch.
"""

from __future__ import annotations

import json
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
