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
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import polars as pl

from dataforge.engine.lock import file_lock
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


TABLES = ("runs", "steps", "events", "edges", "artifacts")
LOCK_NAME = ".lineage.lock"


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _connect(path: Path) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path))
    except duckdb.Error as exc:
        raise DataforgeError(f"cannot open the lineage database {path}: {exc}") from None


class LineageWriter:
    """The one writer of a build's lineage. Every method is one transaction, committed before it
    returns; the database file is open only inside it (under an exclusive lock on
    ``<out>/.lineage.lock``), so ``why``/``query``/``open_read`` can read between transactions
    while a build runs."""

    def __init__(self, out: Path):
        self.path = Path(out) / DB_NAME
        self.lock_path = Path(out) / LOCK_NAME
        with self._transaction() as con:
            con.execute(SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with file_lock(self.lock_path):
            con = _connect(self.path)
            try:
                con.execute("BEGIN")
                yield con
                con.execute("COMMIT")
            except BaseException:
                with suppress(duckdb.Error):
                    con.execute("ROLLBACK")
                raise
            finally:
                con.close()

    @staticmethod
    def new_run_id() -> str:
        return _now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]

    def start_run(self, run_id: str, recipe_path: str, recipe_sha256: str, version: str) -> None:
        with self._transaction() as con:
            con.execute(
                "INSERT INTO runs VALUES (?, ?, NULL, 'running', ?, ?, ?, NULL)",
                [run_id, _now(), recipe_path, recipe_sha256, version],
            )

    def finish_run(self, run_id: str, status: str, error: str | None = None) -> None:
        with self._transaction() as con:
            con.execute(
                "UPDATE runs SET finished_at = ?, status = ?, error = ? WHERE run_id = ?",
                [_now(), status, error, run_id],
            )

    def mark_interrupted(self) -> list[str]:
        """Runs still ``running`` when a new build holds the output folder's lock: their process
        died (killed, out of memory, power lost). They become ``interrupted``; returns their ids."""
        with self._transaction() as con:
            ids = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE status = 'running'").fetchall()]
            if ids:
                con.execute(
                    "UPDATE runs SET status = 'interrupted', finished_at = ?, "
                    "error = 'the build process ended without finishing (killed or crashed)' "
                    "WHERE status = 'running'",
                    [_now()],
                )
        return ids

    def record_step(self, run_id: str, row: StepRow) -> None:
        """One ``steps`` row (used alone for a step that failed)."""
        with self._transaction() as con:
            _insert_step(con, run_id, row)

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
        with self._transaction() as con:
            if events is not None and edges is not None:
                key = [row.step, row.fingerprint]
                if _has_decisions(con, row.step, row.fingerprint):  # a forced re-run: replace, never double
                    con.execute("DELETE FROM events WHERE step = ? AND fingerprint = ?", key)
                    con.execute("DELETE FROM edges WHERE step = ? AND fingerprint = ?", key)
                _insert_decisions(con, run_id, row, events, edges)
            _insert_artifacts(con, run_id, row.step, row.fingerprint, artifacts)
            if row.kind:
                _insert_step(con, run_id, row)

    def record_artifacts(self, run_id: str, step: str, fingerprint: str, rows: list[tuple[str, str, int, str]]) -> None:
        """``rows``: (output, path, rows, sha256) for each stored output, inserted as one batch."""
        with self._transaction() as con:
            _insert_artifacts(con, run_id, step, fingerprint, rows)

    def recorded_artifacts(self) -> dict[tuple[str, str], dict[str, str]]:
        """(step, fingerprint) → {output: sha256}, as the lineage last recorded each stored or
        exported artifact (read once per build: one transaction, not one per step)."""
        with self._transaction() as con:
            found = con.execute(
                "SELECT a.step, a.fingerprint, a.output, a.sha256 FROM artifacts a JOIN runs r USING (run_id) "
                "ORDER BY r.started_at"
            ).fetchall()
        recorded: dict[tuple[str, str], dict[str, str]] = {}
        for step, fingerprint, output, sha in found:
            recorded.setdefault((step, fingerprint), {})[output] = sha
        return recorded

    def record_reuse(
        self,
        run_id: str,
        batch: list[tuple[StepRow, list[tuple[str, str, int, str]]]],
        stored_decisions: Callable[[StepRow], tuple[pl.DataFrame, pl.DataFrame]],
    ) -> None:
        """Reused steps' ``steps`` and ``artifacts`` rows (one (row, artifacts) per step), in one
        transaction; a step's decisions are re-recorded from ``stored_decisions(row)`` (the
        artifact's copy) only if the lineage lost them."""
        with self._transaction() as con:
            for row, artifacts in batch:
                if not _has_decisions(con, row.step, row.fingerprint):
                    events, edges = stored_decisions(row)
                    _insert_decisions(con, run_id, row, events, edges)
                _insert_artifacts(con, run_id, row.step, row.fingerprint, artifacts)
                _insert_step(con, run_id, row)


def _has_decisions(con: duckdb.DuckDBPyConnection, step: str, fingerprint: str) -> bool:
    row = con.execute(
        "SELECT count(*) FROM artifacts WHERE step = ? AND fingerprint = ?", [step, fingerprint]
    ).fetchone()
    return bool(row and row[0])


def _insert_decisions(
    con: duckdb.DuckDBPyConnection, run_id: str, row: StepRow, events: pl.DataFrame, edges: pl.DataFrame
) -> None:
    params = [run_id, row.step, row.fingerprint]
    if events.height:
        ev = events.to_arrow()  # noqa: F841  (scanned by name below)
        con.execute(
            "INSERT INTO events SELECT ?, ?, ?, row_id, action, reason, related_id, score, detail_json FROM ev", params
        )
    if edges.height:
        ed = edges.to_arrow()  # noqa: F841
        con.execute("INSERT INTO edges SELECT ?, ?, ?, child_id, parent_id, relation FROM ed", params)


def _insert_step(con: duckdb.DuckDBPyConnection, run_id: str, row: StepRow) -> None:
    con.execute("INSERT INTO steps VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row.values(run_id))


def _insert_artifacts(
    con: duckdb.DuckDBPyConnection, run_id: str, step: str, fingerprint: str, rows: list[tuple[str, str, int, str]]
) -> None:
    if rows:
        con.executemany(
            "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(run_id, step, o, fingerprint, p, n, sha) for o, p, n, sha in rows],
        )


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


def artifact_file(out: Path, step: str, fingerprint: str, output: str) -> Path:
    """Where a step output lives under ``out`` (the store's layout), wherever ``out`` was when
    the lineage recorded it."""
    return Path(out).resolve() / "artifacts" / step / fingerprint / f"{output}.parquet"


def latest_artifact_files(con: duckdb.DuckDBPyConnection, out: Path) -> list[tuple[str, str, Path]]:
    """(step, output, absolute path) of each Parquet artifact of the newest build that exists."""
    found = []
    for step, output, fingerprint in con.execute(
        "SELECT a.step, a.output, a.fingerprint FROM latest_artifacts a JOIN latest_steps s USING (step) "
        "WHERE a.path LIKE '%.parquet' ORDER BY s.position, a.output"
    ).fetchall():
        path = artifact_file(out, step, fingerprint, output)
        if path.exists():
            found.append((step, output, path))
    return found


def open_read(out: Path) -> duckdb.DuckDBPyConnection:
    """A read-only view of a build's lineage, plus views over its artifacts and datasets.

    The lineage is copied into an in-memory database under a shared lock (a build's writer holds
    it only while it commits a transaction), so this works while a build runs and the build
    never waits for an open reader. The connection reads nothing outside ``<out>/artifacts``
    (DuckDB's ``enable_external_access`` off, ``allowed_directories``, configuration locked)."""
    out = Path(out)
    db = out / DB_NAME
    if not db.exists():
        raise DataforgeError(f"no lineage database at {db} (run `dataforge build` first, or pass --out)")
    con = duckdb.connect(":memory:")
    with file_lock(out / LOCK_NAME, shared=True):
        try:
            con.execute("ATTACH ? AS lineage_file (READ_ONLY)", [str(db)])
            present = {r[0] for r in con.execute("SHOW TABLES FROM lineage_file").fetchall()}
            for table in TABLES:  # constants, not user text
                if table in present:
                    con.execute(f"CREATE TABLE {table} AS SELECT * FROM lineage_file.{table}")
            con.execute("DETACH lineage_file")
        except duckdb.Error as exc:
            con.close()
            raise DataforgeError(f"cannot read the lineage database {db}: {exc}") from None
    con.execute(SCHEMA)  # tables a very old database lacks, and the latest_* views
    for step, output, path in latest_artifact_files(con, out):
        con.read_parquet(str(path)).create_view(_view_name("artifact", step, output))
    for name, split, table in iter_dataset_tables(out):
        con.register(_view_name("dataset", name, split), table)
    con.execute("SET allowed_directories = ?", [[str(out.resolve() / "artifacts") + "/"]])
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


_READ_PRAGMAS = {
    "table_info",
    "show",
    "show_tables",
    "show_tables_expanded",
    "database_list",
    "database_size",
    "version",
    "storage_info",
    "functions",
    "collations",
    "platform",
}


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse SQL that does anything but read: DuckDB's own parser classifies each statement;
    only SELECT (with WITH, DESCRIBE, SHOW, SUMMARIZE, FROM-first), EXPLAIN of such a query and
    the PRAGMAs that describe tables pass. COPY, ATTACH, INSTALL/LOAD, SET, CREATE, INSERT,
    UPDATE, DELETE, EXPORT, CALL … are refused with the statement named."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise DataforgeError(f"query failed: {exc}") from None
    if not statements:
        raise DataforgeError("query: no SQL statement given")
    for st in statements:
        kind = st.type
        if kind == duckdb.StatementType.SELECT:
            continue
        if kind == duckdb.StatementType.EXPLAIN:
            inner = re.sub(r"(?is)^\s*EXPLAIN\s+(?:ANALY[SZ]E\s+)?", "", st.query)
            if inner != st.query and all(i.type == duckdb.StatementType.SELECT for i in con.extract_statements(inner)):
                continue
        if kind == duckdb.StatementType.PRAGMA:
            name = re.match(r"(?is)^\s*PRAGMA\s+(\w+)", st.query)
            if name and name.group(1).lower() in _READ_PRAGMAS:
                continue
        shown = " ".join(st.query.split())
        raise DataforgeError(
            f"query is read-only: {kind.name} statements are refused ({shown[:80]}); "
            "use SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN or PRAGMA table_info"
        )


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
        try:
            splits = json.loads(dd.read_text())["splits"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataforgeError(
                f"dataset {ds_dir} is damaged ({dd.name}: {exc}); the next build writes it again"
            ) from None
        for split in splits:
            # the data files the split's state.json lists: a `datasets` map over a loaded copy can
            # leave cache-*.arrow files of other schemas beside them
            try:
                state = json.loads((ds_dir / split / "state.json").read_text())
                files = [ds_dir / split / f["filename"] for f in state["_data_files"]]
                tables = [pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files]
            except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:
                raise DataforgeError(
                    f"dataset {ds_dir} split '{split}' is damaged ({type(exc).__name__}: {exc}); "
                    "the next build writes it again"
                ) from None
            if tables:
                yield ds_dir.name, split, pa.concat_tables(tables)
