"""Lineage (contract): ``<out>/lineage.duckdb`` with the tables runs, steps, events, edges, artifacts.

Writes are batched: a step's events and edges go in as one Arrow scan each, never one
INSERT per row. A step's events are stored once per fingerprint (by the run that executed
it); a later run that reuses the artifact records a ``steps`` row with ``cache_hit`` and
points at the same events through the fingerprint. The ``latest_*`` views select what the
newest build used, which is what ``dataforge why`` reads.

Read connections (``open_read``) also expose, as temporary views:
- ``artifact_<step>_<output>``: the Parquet artifacts of the newest build,
- ``dataset_<name>_<split>``: the exported datasets (their Arrow files),
so one SQL query can join decisions with the data they were made on.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import polars as pl

from dataforge.errors import DataforgeError

DB_NAME = "lineage.duckdb"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, started_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR,
    recipe_path VARCHAR, recipe_sha256 VARCHAR, dataforge_version VARCHAR, error VARCHAR);
CREATE TABLE IF NOT EXISTS steps (
    run_id VARCHAR, step VARCHAR, kind VARCHAR, version INTEGER, fingerprint VARCHAR,
    config_json VARCHAR, rows_in BIGINT, rows_out BIGINT, seconds DOUBLE, cache_hit BOOLEAN,
    status VARCHAR, error VARCHAR, position INTEGER);
CREATE TABLE IF NOT EXISTS events (
    run_id VARCHAR, step VARCHAR, fingerprint VARCHAR, row_id VARCHAR, action VARCHAR,
    reason VARCHAR, related_id VARCHAR, score DOUBLE, detail_json VARCHAR);
CREATE TABLE IF NOT EXISTS edges (
    run_id VARCHAR, step VARCHAR, fingerprint VARCHAR, child_id VARCHAR, parent_id VARCHAR,
    relation VARCHAR);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id VARCHAR, step VARCHAR, output VARCHAR, fingerprint VARCHAR, path VARCHAR,
    rows BIGINT, sha256 VARCHAR);
ALTER TABLE steps ADD COLUMN IF NOT EXISTS position INTEGER;
CREATE OR REPLACE VIEW latest_run AS
    SELECT * FROM runs ORDER BY (status = 'succeeded') DESC, started_at DESC LIMIT 1;
CREATE OR REPLACE VIEW latest_steps AS
    SELECT s.* FROM steps s JOIN latest_run r USING (run_id);
CREATE OR REPLACE VIEW latest_events AS
    SELECT e.* FROM events e JOIN latest_steps s ON e.step = s.step AND e.fingerprint = s.fingerprint;
CREATE OR REPLACE VIEW latest_edges AS
    SELECT e.* FROM edges e JOIN latest_steps s ON e.step = s.step AND e.fingerprint = s.fingerprint;
CREATE OR REPLACE VIEW latest_artifacts AS
    SELECT a.* FROM artifacts a JOIN latest_run r USING (run_id);
"""


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _connect(path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        raise DataforgeError(f"cannot open lineage database {path}: {exc} (is another build running?)") from None


class LineageWriter:
    """The one writer of a build's lineage. Every method commits what it writes."""

    def __init__(self, out: Path):
        self.path = Path(out) / DB_NAME
        self.con = _connect(self.path)
        self.con.execute(SCHEMA)

    @staticmethod
    def new_run_id() -> str:
        return _now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]

    def close(self) -> None:
        self.con.close()

    def start_run(self, run_id: str, recipe_path: str, recipe_sha256: str, version: str) -> None:
        self.con.execute(
            "INSERT INTO runs VALUES (?, ?, NULL, 'running', ?, ?, ?, NULL)",
            [run_id, _now(), recipe_path, recipe_sha256, version],
        )

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        self.con.execute(
            "UPDATE runs SET finished_at = ?, status = ?, error = ? WHERE run_id = ?", [_now(), status, error, run_id]
        )

    def record_step(self, run_id: str, row: StepRow) -> None:
        """One ``steps`` row (used alone for a step that failed)."""
        self.con.execute("INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row.values(run_id))

    def has_decisions(self, step: str, fingerprint: str) -> bool:
        """Whether the events/edges of this step execution are recorded (by any run)."""
        row = self.con.execute(
            "SELECT count(*) FROM artifacts WHERE step = ? AND fingerprint = ?", [step, fingerprint]
        ).fetchone()
        return bool(row and row[0])

    def record_execution(
        self,
        run_id: str,
        row: StepRow,
        artifacts: list[tuple[str, str, int, str]],
        events: pl.DataFrame | None,
        edges: pl.DataFrame | None,
    ) -> None:
        """Everything one step adds to the lineage, in one transaction: its decisions (replacing
        any earlier record of the same fingerprint; ``None`` keeps them), its artifacts
        ((output, path, rows, sha256) each) and its ``steps`` row. Rows go in as Arrow batches."""
        self.con.execute("BEGIN")
        try:
            if events is not None and edges is not None:
                key = [row.step, row.fingerprint]
                if self.has_decisions(row.step, row.fingerprint):  # a forced re-run: replace, never double
                    self.con.execute("DELETE FROM events WHERE step = ? AND fingerprint = ?", key)
                    self.con.execute("DELETE FROM edges WHERE step = ? AND fingerprint = ?", key)
                params = [run_id, *key]
                if events.height:
                    ev = events.to_arrow()  # noqa: F841  (scanned by name below)
                    self.con.execute(
                        "INSERT INTO events SELECT ?, ?, ?, row_id, action, reason, related_id, score, detail_json "
                        "FROM ev",
                        params,
                    )
                if edges.height:
                    ed = edges.to_arrow()  # noqa: F841
                    self.con.execute("INSERT INTO edges SELECT ?, ?, ?, child_id, parent_id, relation FROM ed", params)
            self.record_artifacts(run_id, row.step, row.fingerprint, artifacts)
            if row.kind:
                self.record_step(run_id, row)
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def record_artifacts(self, run_id: str, step: str, fingerprint: str, rows: list[tuple[str, str, int, str]]) -> None:
        """``rows``: (output, path, rows, sha256) for each stored output, inserted as one batch."""
        if rows:
            values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(rows))
            flat = [v for o, p, n, sha in rows for v in (run_id, step, o, fingerprint, p, n, sha)]
            self.con.execute(f"INSERT INTO artifacts VALUES {values}", flat)


@dataclass(frozen=True)
class StepRow:
    """A ``steps`` row, less its run id."""

    step: str
    kind: str
    version: int
    fingerprint: str
    config: dict
    rows_in: int = 0
    rows_out: int = 0
    seconds: float = 0.0
    cache_hit: bool = False
    status: str = "ok"
    error: str | None = None
    position: int = 0

    def values(self, run_id: str) -> list:
        return [
            run_id,
            self.step,
            self.kind,
            self.version,
            self.fingerprint,
            json.dumps(self.config, sort_keys=True),
            self.rows_in,
            self.rows_out,
            self.seconds,
            self.cache_hit,
            self.status,
            self.error,
            self.position,
        ]


def _view_name(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9_]", "_", p) for p in parts)


def open_read(out: Path) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a build's lineage, plus views over its artifacts and datasets."""
    out = Path(out)
    db = out / DB_NAME
    if not db.exists():
        raise DataforgeError(f"no lineage database at {db} (run `dataforge build` first, or pass --out)")
    con = duckdb.connect(":memory:")
    con.execute(f"ATTACH '{db}' AS lineage (READ_ONLY)")
    con.execute("USE lineage")
    for step, output, path in con.execute(
        "SELECT step, output, path FROM latest_artifacts WHERE path LIKE '%.parquet' ORDER BY step, output"
    ).fetchall():
        if Path(path).exists():
            name = _view_name("artifact", step, output)
            con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM read_parquet('{path}')")
    for name, split, table in iter_dataset_tables(out):
        con.register(_view_name("dataset", name, split), table)
    return con


def iter_dataset_tables(out: Path):
    """Yield (dataset, split, pyarrow.Table) for every exported dataset under ``<out>/datasets``."""
    import pyarrow as pa

    root = Path(out) / "datasets"
    if not root.exists():
        return
    for ds_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        dd = ds_dir / "dataset_dict.json"
        if not dd.exists():
            continue
        for split in json.loads(dd.read_text())["splits"]:
            # the data files the split's state.json lists: a `datasets` map over a loaded copy can
            # leave cache-*.arrow files of other schemas beside them
            state = json.loads((ds_dir / split / "state.json").read_text())
            files = [ds_dir / split / f["filename"] for f in state["_data_files"]]
            tables = [pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files]
            if tables:
                yield ds_dir.name, split, pa.concat_tables(tables)
