"""``dataforge why``: the history of one row in the newest build — its source, every step
output it appears in, every decision about it (and rows decided against it), its edges,
and its fate (exported to which dataset split, or dropped by which step and why)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from dataforge.engine.events import decision_shards
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
    """The history of one row (``row_histories`` for one id); an error when no artifact or event
    of the newest build names it."""
    h = row_histories(out, [row_id]).get(row_id)
    if h is None:
        raise DataforgeError(
            f"row '{row_id}' does not appear in the newest build in {out} (no artifact or event names it)"
        )
    return h


def row_histories(out: str | Path, row_ids: list[str], con: Any = None) -> dict[str, RowHistory]:
    """The histories of many rows at once, each lineage table and artifact read once (the HTML
    report shows dozens); rows that no artifact or event of the newest build names are left out.
    ``con``: an ``open_read`` connection to use (and leave open), else one is opened and closed."""
    own = con is None
    con = open_read(Path(out)) if own else con
    run = _records(con, "SELECT run_id FROM latest_run", [])
    if not run:
        raise DataforgeError(f"no build recorded in {out}")
    ids = sorted(set(row_ids))
    con.execute("CREATE OR REPLACE TEMP TABLE wanted AS SELECT unnest(?::VARCHAR[]) AS _id", [ids])
    steps = _records(con, "SELECT step, kind, fingerprint, cache_hit FROM latest_steps ORDER BY position", [])
    by_path = {str(f): (step, output) for step, output, files in latest_artifact_files(con, Path(out)) for f in files}
    present: dict[str, dict[str, list[str]]] = {i: {} for i in ids}
    last_path: dict[str, str] = {}
    if by_path:
        paths = list(by_path)
        hits = con.execute(
            "SELECT DISTINCT filename, _id FROM read_parquet(?, filename = true, union_by_name = true) "
            "WHERE _id IN (SELECT _id FROM wanted)",
            [paths],
        ).fetchall()
        found: dict[str, set[str]] = {}
        for path, rid in hits:
            found.setdefault(rid, set()).add(path)
        for rid, files in found.items():
            for p in paths:  # in build order
                if p in files:
                    step, output = by_path[p]
                    present[rid].setdefault(step, []).append(output)
                    last_path[rid] = p
    _decisions_about_wanted(con, Path(out))
    events = _grouped(
        con,
        "SELECT row_id AS _key, step, action, reason, related_id, score, detail_json FROM wanted_events "
        "WHERE row_id IN (SELECT _id FROM wanted)",
    )
    related = _grouped(
        con,
        "SELECT related_id AS _key, step, row_id, action, reason, score FROM wanted_events "
        "WHERE related_id IN (SELECT _id FROM wanted) ORDER BY step, row_id",
    )
    edges = _grouped(
        con,
        "SELECT w._id AS _key, e.step, e.child_id, e.parent_id, e.relation FROM wanted_edges e "
        "JOIN wanted w ON w._id = e.child_id OR w._id = e.parent_id ORDER BY e.step, e.child_id, e.parent_id",
    )
    appearances: dict[str, list[dict[str, Any]]] = {}
    for name, split, table in iter_dataset_tables(Path(out)):
        if "_id" not in table.column_names:
            continue
        # polars, not pyarrow.compute: that imports pandas (0.4 s on every report)
        inside = pl.Series(ids, dtype=pl.String).is_in(pl.from_arrow(table["_id"]).cast(pl.String).implode())
        hits = [rid for rid, hit in zip(ids, inside.to_list(), strict=True) if hit]
        if hits:
            appearance = _appearance(Path(out), name, split)  # its dataforge.json, read once per split
            for rid in hits:
                appearances.setdefault(rid, []).append(appearance)
    contents: dict[str, dict[str, Any]] = {}
    for path in sorted(set(last_path.values())):
        for row in _records(con, "SELECT * FROM read_parquet(?) WHERE _id IN (SELECT _id FROM wanted)", [path]):
            if last_path.get(row["_id"]) == path:
                contents[row["_id"]] = row
    histories = {}
    for rid in ids:
        mine = events.get(rid, [])
        if not present[rid] and not mine and not edges.get(rid):
            continue
        per_step = [
            {**s, "outputs": present[rid].get(s["step"], []), "events": [e for e in mine if e["step"] == s["step"]]}
            for s in steps
        ]
        source = next((s["step"] for s in per_step if s["kind"] == "source" and s["outputs"]), None)
        h = RowHistory(
            rid,
            run[0]["run_id"],
            source,
            per_step,
            related.get(rid, [])[:50],
            edges.get(rid, []),
            appearances.get(rid, []),
            contents.get(rid),
        )
        h.fate = _fate(h, mine)
        histories[rid] = h
    if own:
        con.close()
    return histories


def _decisions_about_wanted(con: Any, out: Path) -> None:
    """Temporary tables ``wanted_events`` and ``wanted_edges``: the newest build's decisions that
    name a row of ``wanted``, each read in one scan of the newest build's shards only (the
    ``latest_*`` views read every build's shards, once per query)."""
    legacy = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'events'").fetchone()[0]
    latest = con.execute("SELECT DISTINCT step, fingerprint FROM latest_steps ORDER BY ALL").fetchall()
    root = Path(out).resolve() / "artifacts"
    for table, about in (("events", ("row_id", "related_id")), ("edges", ("child_id", "parent_id"))):
        files = [str(f) for step, fp in latest for f in decision_shards(root / step / fp, table)]
        where = " OR ".join(f"{c} IN (SELECT _id FROM wanted)" for c in about)
        if files and not legacy:
            source, params = "read_parquet(?, union_by_name = true)", [files]
        else:  # no shard (an empty view then) or a database not yet converted: the view reads it
            source, params = f"latest_{table}", []
        con.execute(f"CREATE OR REPLACE TEMP TABLE wanted_{table} AS SELECT * FROM {source} WHERE {where}", params)


def _grouped(con: Any, sql: str) -> dict[str, list[dict[str, Any]]]:
    """The records of ``sql`` grouped by its ``_key`` column (dropped from each record)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in _records(con, sql, []):
        out.setdefault(r.pop("_key"), []).append(r)
    return out


def describe_event(e: dict[str, Any]) -> str:
    """One decision as ``dataforge why`` and the report show it: action, reason, score, related
    row, detail, joined by " · "."""
    parts = [f"{e['action']}: {e['reason']}"]
    if e["score"] is not None:
        parts.append(f"score {e['score']:g}")
    if e["related_id"]:
        parts.append(f"related {e['related_id']}")
    if e["detail_json"]:
        parts.append(e["detail_json"])
    return " · ".join(parts)


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
