"""``dataforge why``: the history of one row in the newest build — its source, every step
output it appears in, every decision about it (and rows decided against it), its edges,
and its fate (exported to which dataset split, or dropped by which step and why)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from dataforge.errors import DataforgeError
from dataforge.lineage import iter_dataset_tables, latest_artifact_files, open_read


@dataclass
class RowHistory:
    row_id: str
    run_id: str
    source: str | None
    steps: list[dict[str, Any]]  # one per step of the newest build: name, kind, present outputs, events
    related: list[dict[str, Any]]  # events of other rows whose related_id is this row
    edges: list[dict[str, Any]]
    datasets: list[dict[str, Any]]  # dataset, split, recipe, run_id of each exported appearance
    content: dict[str, Any] | None = None
    fate: str = ""


def _records(con: Any, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cur = con.execute(sql, params)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def row_history(out: str | Path, row_id: str) -> RowHistory:
    con = open_read(Path(out))
    run = _records(con, "SELECT run_id FROM latest_run", [])
    if not run:
        raise DataforgeError(f"no build recorded in {out}")
    steps = _records(con, "SELECT step, kind, fingerprint, cache_hit FROM latest_steps ORDER BY position", [])
    by_path = {str(path): (step, output) for step, output, path in latest_artifact_files(con, Path(out))}
    present: dict[str, list[str]] = {}
    last_path = None
    if by_path:
        paths = list(by_path)
        hits = con.execute(
            "SELECT DISTINCT filename FROM read_parquet(?, filename = true, union_by_name = true) WHERE _id = ?",
            [paths, row_id],
        ).fetchall()
        found = {h[0] for h in hits}
        for p in paths:  # in build order
            if p in found:
                step, output = by_path[p]
                present.setdefault(step, []).append(output)
                last_path = p
    events = _records(
        con,
        "SELECT step, action, reason, related_id, score, detail_json FROM latest_events WHERE row_id = ?",
        [row_id],
    )
    related = _records(
        con,
        "SELECT step, row_id, action, reason, score FROM latest_events WHERE related_id = ? "
        "ORDER BY step, row_id LIMIT 50",
        [row_id],
    )
    edges = _records(
        con,
        "SELECT step, child_id, parent_id, relation FROM latest_edges WHERE child_id = ? OR parent_id = ? "
        "ORDER BY step, child_id, parent_id",
        [row_id, row_id],
    )
    datasets = []
    for name, split, table in iter_dataset_tables(Path(out)):
        if "_id" in table.column_names and pc.any(pc.equal(table["_id"], row_id)).as_py():
            datasets.append(_appearance(Path(out), name, split))
    if not present and not events and not edges:
        raise DataforgeError(
            f"row '{row_id}' does not appear in the newest build in {out} (no artifact or event names it)"
        )
    content = None
    if last_path is not None:
        rows = _records(con, "SELECT * FROM read_parquet(?) WHERE _id = ?", [last_path, row_id])
        content = rows[0] if rows else None
    per_step = []
    for s in steps:
        per_step.append(
            {**s, "outputs": present.get(s["step"], []), "events": [e for e in events if e["step"] == s["step"]]}
        )
    source = next((s["step"] for s in per_step if s["kind"] == "source" and s["outputs"]), None)
    history = RowHistory(row_id, run[0]["run_id"], source, per_step, related, edges, datasets, content)
    history.fate = _fate(history, events)
    return history


def _appearance(out: Path, name: str, split: str) -> dict[str, Any]:
    """Which recipe and build exported the dataset a row appears in (several recipes can share
    one --out)."""
    meta = json.loads((out / "datasets" / name / "dataforge.json").read_text())
    return {"dataset": name, "split": split, "recipe": meta.get("recipe"), "run_id": meta.get("run_id")}


def _fate(h: RowHistory, events: list[dict[str, Any]]) -> str:
    if h.datasets:
        return "kept: in " + ", ".join(
            f"dataset {d['dataset']} split {d['split']} (recipe {d['recipe']}, build {d['run_id']})" for d in h.datasets
        )
    drop = next((e for e in events if e["action"] == "dropped"), None)
    if drop:
        extra = []
        if drop["score"] is not None:
            extra.append(f"score {drop['score']:g}")
        if drop["related_id"]:
            extra.append(f"related {drop['related_id']}")
        if drop["detail_json"]:
            extra.append(json.dumps(json.loads(drop["detail_json"]), ensure_ascii=False))
        return f"dropped by step '{drop['step']}': {drop['reason']}" + (f" ({'; '.join(extra)})" if extra else "")
    last = [s["step"] for s in h.steps if s["outputs"]]
    return f"not exported: last seen in step '{last[-1]}'" if last else "not in any artifact"
