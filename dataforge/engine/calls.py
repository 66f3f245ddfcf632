"""A step function called on some or all of its rows, the same way wherever it runs: in the
build's process (``engine.runner``) or in a Ray worker (``engine.ray_runner``).

``call_step`` turns a step's own errors into a ``StepError`` naming the step and checks its
result against its contract; ``partition_batch`` and ``call_bucket`` are the two halves of a
``key`` step run bucket by bucket (rows to buckets with their keys and positions; the step on
one bucket, its output rows placed back at their input positions).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import polars as pl

from dataforge.engine.events import ACTIONS
from dataforge.engine.plan import PlannedStep
from dataforge.engine.step import Context, StepResult
from dataforge.engine.streaming import BUCKET, KEY, POSITION, key_hashes
from dataforge.errors import DataforgeError, StepError


def step_error(step: str, exc: Exception) -> StepError:
    """A step's own error as a StepError naming the step (one already naming it is kept)."""
    if isinstance(exc, StepError):
        return exc
    if isinstance(exc, DataforgeError):
        return StepError(step, str(exc))
    return StepError(step, f"{type(exc).__name__}: {exc}")


@contextmanager
def step_errors(step: str) -> Iterator[None]:
    """The errors raised inside as a StepError naming ``step`` (``step_error``)."""
    try:
        yield
    except Exception as exc:
        error = step_error(step, exc)
        if error is exc:
            raise
        raise error from exc


def check_result(
    ps: PlannedStep, result: StepResult, inputs: Iterable[str] | None = None, partial: bool = False
) -> None:
    """``result`` against the step's contract; ``inputs``: the inputs it was given, when a
    per-table step ran on some of them (a batch of one input gives that input's outputs);
    ``partial``: a batch of some of its outputs."""
    if not isinstance(result, StepResult):
        raise StepError(ps.name, f"returned {type(result).__name__}, not a StepResult")
    expected = ps.outputs if inputs is None else ps.stepdef.outputs(ps.cfg, list(inputs))
    given, wanted = set(result.tables), set(expected)
    if not given <= wanted if partial else given != wanted:
        raise StepError(ps.name, f"returned outputs {sorted(result.tables)}, its plan says {sorted(expected)}")
    for name, df in result.tables.items():
        if "_id" not in df.columns or df.schema["_id"] != pl.String:
            raise StepError(ps.name, f"output '{name}' has no string '_id' column")
        if df.height and df["_id"].n_unique() != df.height:
            dup = df["_id"].filter(df["_id"].is_duplicated()).head(3).to_list()
            raise StepError(ps.name, f"output '{name}' repeats row ids, e.g. {dup}")
        declared = ps.columns.get(name)
        missing = [c for c in declared or [] if c not in df.columns]
        if missing:
            raise StepError(ps.name, f"output '{name}' lacks declared columns {missing}")
    for ev in result.events:
        bad = set(ev["action"].unique().to_list()) - set(ACTIONS)
        if bad:
            raise StepError(ps.name, f"events with unknown actions {sorted(bad)}")


def call_step(ps: PlannedStep, inputs: dict[str, pl.DataFrame], ctx: Context) -> StepResult:
    """The step function on ``inputs`` (all of its inputs, or a batch of a per-table step's),
    its errors as a StepError naming the step, its result checked against its contract."""
    with step_errors(ps.name):
        result = ps.stepdef.fn(inputs, ps.cfg, ctx)
    check_result(ps, result, inputs if ps.stepdef.inputs is None else None)
    return result


def partition_batch(
    ps: PlannedStep, batch: pl.DataFrame, start: int, buckets: int, bucket_of: np.ndarray | None = None
) -> dict[int, pl.DataFrame]:
    """A batch of a key step's divided input (its first row at input position ``start``) divided
    into buckets: each row with its position (``POSITION``), its key (``KEY``, the step's
    ``partition_key``) and no bucket column; a row's bucket is its key's hash modulo ``buckets``
    (``streaming.key_hashes``: the same on every node), or ``bucket_of`` (one bucket per row of
    the batch, ``streaming.group_buckets``)."""
    key_of = ps.stepdef.partition_key
    assert key_of is not None
    with step_errors(ps.name):
        key = key_of(ps.cfg, batch).alias(KEY)
    bucket = pl.Series(BUCKET, bucket_of) if bucket_of is not None else (key_hashes(key)["h0"] % buckets).alias(BUCKET)
    placed = batch.with_columns(pl.int_range(start, start + batch.height).alias(POSITION), key, bucket)
    return {b: part for (b,), part in placed.partition_by(BUCKET, as_dict=True, include_key=False).items()}


def call_bucket(
    ps: PlannedStep,
    name: str,
    rows: pl.DataFrame,
    whole: dict[str, pl.DataFrame],
    ctx: Context,
    grouped: Iterable[str],
) -> StepResult:
    """A key step on one bucket of its divided input ``name`` (``rows``, from ``partition_batch``,
    in input order). Outputs made group by group (``grouped``) come back as the step gives them;
    the others are rows of the input and come back with their input position (``POSITION``)."""
    grouped = set(grouped)
    result = call_step(ps, {**whole, name: rows.drop(POSITION, KEY)}, replace(ctx, partition_keys=rows[KEY]))
    where = rows.select("_id", POSITION)
    tables = {}
    for output, table in result.tables.items():
        if output in grouped:
            tables[output] = table
            continue
        placed = table.join(where, on="_id", how="left")
        if placed[POSITION].null_count():
            raise StepError(ps.name, f"output '{output}' has rows that are not rows of input '{name}'")
        tables[output] = placed
    return StepResult(tables, result.events, result.edges)
