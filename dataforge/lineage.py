"""Lineage (contract): ``<out>/lineage.duckdb`` with the tables runs, steps, events, edges, artifacts.

``runs``, ``steps`` and ``artifacts`` are DuckDB tables (a few rows per step). ``events`` and
``edges`` are views over Parquet shards that the store writes beside each artifact
(``artifacts/<step>/<fingerprint>/lineage/*.parquet``, with the run that decided them): a
step's decisions cost the database nothing per row, and a reader never waits for them to be
inserted. A step's events are stored once per fingerprint (by the run that executed it); a
later run that reuses the artifact records a ``steps`` row with ``cache_hit`` and points at
the same events through the fingerprint. The ``latest_*`` views select what the newest build
used, which is what ``dataforge why`` reads.

The views name the shards by absolute path, rewritten by every build: a raw DuckDB connection
to a build folder that was moved since its last build fails to read decisions ("No files
found") until the next build there; ``open_read`` reads them wherever the folder is. A
database from before the shards, with ``events`` and ``edges`` as tables, is converted by the
next build (each artifact's rows become its shards; rows of an artifact since deleted are
kept in a shard where it was).

Read connections (``open_read``) also expose, as temporary views:
- ``artifact_<step>_<output>``: the Parquet artifacts of the newest build,
- ``dataset_<name>_<split>``: the exported datasets (their Arrow files),
so one SQL query can join decisions with the data they were made on.
"""

from __future__ import annotations

import glob
import json
import re
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import polars as pl

from dataforge.engine.events import (
    DECISION_SCHEMAS,
    KEY_SCHEMA,
    decision_shard,
    shard_glob,
    write_shard,
)
from dataforge.engine.lock import file_lock
from dataforge.errors import DataforgeError

DB_NAME = "lineage.duckdb"

TABLES_SQL = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY, started_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR,
    recipe_path VARCHAR, recipe_sha256 VARCHAR, dataforge_version VARCHAR, error VARCHAR);
CREATE TABLE IF NOT EXISTS steps (
    run_id VARCHAR, step VARCHAR, kind VARCHAR, version INTEGER, fingerprint VARCHAR,
    config_json VARCHAR, rows_in BIGINT, rows_out BIGINT, seconds DOUBLE, cache_hit BOOLEAN,
    status VARCHAR, error VARCHAR, position INTEGER);
CREATE TABLE IF NOT EXISTS artifacts (
    run_id VARCHAR, step VARCHAR, output VARCHAR, fingerprint VARCHAR, path VARCHAR,
    rows BIGINT, sha256 VARCHAR);
ALTER TABLE steps ADD COLUMN IF NOT EXISTS position INTEGER;
"""

LATEST_SQL = """
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

# A shard with no rows of each decision table, so the views' globs always match a file (DuckDB
# refuses a glob that matches none) and fix the column types. It sits where the glob looks.
SCHEMA_SHARD_DIR = Path("artifacts") / ".schema" / "v1"


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def decision_views_sql(out: Path, empty: Collection[str] = ()) -> str:
    """``CREATE OR REPLACE VIEW`` events and edges over the shards under ``out`` (absolute
    paths); the tables in ``empty`` (no shard to read) as empty views with the columns."""
    root = Path(out).resolve() / "artifacts"
    sql = []
    for table, schema in DECISION_SCHEMAS.items():
        columns = [*KEY_SCHEMA, *schema]
        if table not in empty:
            body = f"SELECT {', '.join(columns)} FROM read_parquet({_sql_text(shard_glob(root, table))})"
        else:
            typed = ", ".join(f"NULL::{'DOUBLE' if schema.get(c) == pl.Float64 else 'VARCHAR'} AS {c}" for c in columns)
            body = f"SELECT {typed} WHERE false"
        sql.append(f"CREATE OR REPLACE VIEW {table} AS {body};")
    return "\n".join(sql)


def ensure_schema_shards(out: Path) -> None:
    """Write the empty schema shards under ``out`` if they are missing."""
    folder = Path(out) / SCHEMA_SHARD_DIR
    for table, schema in DECISION_SCHEMAS.items():
        path = decision_shard(folder, table)
        if not path.exists():
            write_shard(pl.DataFrame(schema={**KEY_SCHEMA, **schema}), path)


TABLES = ("runs", "steps", "artifacts")  # stored in the database; events and edges are views
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
        self.out = Path(out)
        self.path = self.out / DB_NAME
        self.lock_path = self.out / LOCK_NAME
        ensure_schema_shards(self.out)
        with self._transaction() as con:
            con.execute(TABLES_SQL)
            _shard_decision_tables(con, self.out)
            con.execute(decision_views_sql(self.out))
            con.execute(LATEST_SQL)

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

    def record_execution(self, run_id: str, row: StepRow, artifacts: list[tuple[str, str, int, str]]) -> None:
        """What one executed step adds to the database, in one transaction: its artifacts
        ((output, path, rows, sha256) each) and its ``steps`` row. Its decisions are already
        in the artifact's shards (``Store.write``)."""
        with self._transaction() as con:
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

    def record_reuse(self, run_id: str, batch: list[tuple[StepRow, list[tuple[str, str, int, str]]]]) -> None:
        """Reused steps' ``steps`` and ``artifacts`` rows (one (row, artifacts) per step), in one
        transaction (their decisions are the artifacts' shards)."""
        with self._transaction() as con:
            for row, artifacts in batch:
                _insert_artifacts(con, run_id, row.step, row.fingerprint, artifacts)
                _insert_step(con, run_id, row)


def _table_kinds(con: duckdb.DuckDBPyConnection, database: str) -> dict[str, str]:
    """Name → ``BASE TABLE`` or ``VIEW`` for what ``database`` holds."""
    return dict(
        con.execute(
            "SELECT table_name, table_type FROM information_schema.tables WHERE table_catalog = ?", [database]
        ).fetchall()
    )


def _shard_decision_tables(con: duckdb.DuckDBPyConnection, out: Path) -> None:
    """Convert a database from before decisions were shards: each (step, fingerprint)'s rows of
    the ``events`` and ``edges`` tables become its artifact's shards (unless it has them),
    then the tables go. Rows of an artifact that no longer exists get a shard in its folder all
    the same (no ``meta.json``: still not a stored artifact), so nothing recorded is lost."""
    database = con.execute("SELECT current_database()").fetchone()[0]  # type: ignore[index]
    kinds = _table_kinds(con, database)
    for table, schema in DECISION_SCHEMAS.items():
        if kinds.get(table) != "BASE TABLE":
            continue
        frame = con.sql(f"SELECT * FROM {table}").pl()  # constants, not user text
        if frame.height:
            frame = frame.select(*KEY_SCHEMA, *schema).cast({**KEY_SCHEMA, **schema})  # type: ignore[arg-type]
            for (step, fingerprint), part in frame.group_by(["step", "fingerprint"], maintain_order=True):
                path = decision_shard(Path(out) / "artifacts" / str(step) / str(fingerprint), table)
                if not path.exists():
                    write_shard(part, path)
        con.execute(f"DROP VIEW IF EXISTS latest_{table}")
        con.execute(f"DROP TABLE {table}")


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


def latest_artifact_files(con: duckdb.DuckDBPyConnection, out: Path) -> list[tuple[str, str, list[Path]]]:
    """(step, output, its Parquet files as absolute paths, in row order) of each step output of
    the newest build that exists (in the store's layout under ``out``, wherever ``out`` was
    when the lineage recorded it)."""
    from dataforge.engine.store import output_files

    root = Path(out).resolve() / "artifacts"
    found = []
    for step, output, fingerprint in con.execute(
        "SELECT a.step, a.output, a.fingerprint FROM latest_artifacts a JOIN latest_steps s USING (step) "
        "ORDER BY s.position, a.output"
    ).fetchall():
        files = [f for f in output_files(root / step / fingerprint, output) if f.exists()]
        if files:
            found.append((step, output, files))
    return found


def open_read(out: Path) -> duckdb.DuckDBPyConnection:
    """A read-only view of a build's lineage, plus views over its artifacts and datasets.

    The lineage's tables (runs, steps, artifacts: a few rows per step) are copied into an
    in-memory database under a shared lock (a build's writer holds it only while it commits a
    transaction), and events and edges are views over the shards where the folder is now, so
    this works while a build runs and the build never waits for an open reader. The connection
    reads nothing outside ``<out>/artifacts`` (DuckDB's ``enable_external_access`` off,
    ``allowed_directories``, configuration locked)."""
    out = Path(out)
    db = out / DB_NAME
    if not db.exists():
        raise DataforgeError(f"no lineage database at {db} (run `dataforge build` first, or pass --out)")
    con = duckdb.connect(":memory:")
    with file_lock(out / LOCK_NAME, shared=True):
        try:
            con.execute("ATTACH ? AS lineage_file (READ_ONLY)", [str(db)])
            kinds = _table_kinds(con, "lineage_file")
            legacy = [t for t in DECISION_SCHEMAS if kinds.get(t) == "BASE TABLE"]  # not yet converted
            for table in (*TABLES, *legacy):  # constants, not user text
                if kinds.get(table) == "BASE TABLE":
                    con.execute(f"CREATE TABLE {table} AS SELECT * FROM lineage_file.{table}")
            con.execute("DETACH lineage_file")
        except duckdb.Error as exc:
            con.close()
            raise DataforgeError(f"cannot read the lineage database {db}: {exc}") from None
    con.execute(TABLES_SQL)  # tables a very old database lacks
    if not legacy:
        root = out.resolve() / "artifacts"
        con.execute(decision_views_sql(out, empty=[t for t in DECISION_SCHEMAS if not glob.glob(shard_glob(root, t))]))
    con.execute(LATEST_SQL)
    for step, output, files in latest_artifact_files(con, out):
        con.read_parquet([str(f) for f in files], union_by_name=True).create_view(_view_name("artifact", step, output))
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
