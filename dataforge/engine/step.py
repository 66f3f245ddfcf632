"""The step interface (contract): ``@step(kind, version)`` functions from named tables to a StepResult.

A step is a pure function ``fn(inputs, cfg, ctx) -> StepResult``. It never reads artifacts or
writes lineage: the runner does. It declares, through ``columns``, which columns it needs and
which it produces, so the planner can reject a recipe that feeds it the wrong data before any
row is processed.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, BeforeValidator, ConfigDict

from dataforge.errors import DataforgeError

if typing.TYPE_CHECKING:
    from dataforge.engine.table import Mapper

Columns = list[str] | None  # None: not known before the step runs (checks downstream are skipped)


def _as_list(v: object) -> object:
    return [v] if isinstance(v, str) else v


# A config key naming columns: one name or a list of names (always a list once validated).
Fields = Annotated[list[str], BeforeValidator(_as_list)]


class StepConfig(BaseModel):
    """Base of every step config: frozen, and a key the step does not know is an error.
    ``CARD_ONLY`` names keys that change no row (what the card says of the data): they stay
    out of the step's fingerprint, so changing one rebuilds the card, not the data."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    CARD_ONLY: typing.ClassVar[frozenset[str]] = frozenset()

    def fingerprint_json(self) -> dict[str, Any]:
        """The config as the fingerprint sees it: every key but the ``CARD_ONLY`` ones."""
        return self.model_dump(mode="json", exclude=set(self.CARD_ONLY))


class ColumnContractError(DataforgeError):
    """A step is fed a table that lacks a column it needs (raised by ``columns`` functions)."""

    def __init__(self, column: str, key: str | None, available: Sequence[str], input_name: str | None = None):
        self.column, self.key, self.available, self.input_name = column, key, list(available), input_name
        super().__init__(f"needs column '{column}', which its input does not have (it has: {', '.join(available)})")


def require(columns: Columns, needed: Iterable[str | None], key: str | None = None) -> None:
    """Raise ColumnContractError if a needed column is absent from known ``columns``."""
    if columns is None:
        return
    for col in needed:
        if col is not None and col not in columns:
            raise ColumnContractError(col, key, columns)


def require_text(df: pl.DataFrame, field: str) -> None:
    """Raise DataError unless column ``field`` of ``df`` holds text (checked when a step runs)."""
    from dataforge.errors import DataError

    if df.schema[field] != pl.String:
        raise DataError(f"field '{field}' is {df.schema[field]}, not text")


def with_columns(columns: Columns, added: Iterable[str]) -> Columns:
    """Columns after a step that adds ``added`` (kept in order, no repeats)."""
    if columns is None:
        return None
    out = list(columns)
    out.extend(c for c in added if c not in out)
    return out


class Progress(typing.Protocol):
    """What a step may use to report progress; the runner supplies a rich implementation
    (``engine.progress.StepProgress``: ``total`` in ``unit``s, ``size(item)`` units per item)."""

    def track(
        self,
        items: Iterable[Any],
        total: int | None = None,
        description: str = "",
        unit: str = "",
        size: typing.Callable[[Any], int] | None = None,
    ) -> Iterator[Any]: ...


class _SilentProgress:
    def track(self, items: Iterable[Any], *args: Any, **kwargs: Any) -> Iterator[Any]:  # no display
        yield from items


@dataclass
class Context:
    """What a step may use besides its inputs."""

    step: str
    fingerprint: str
    base_dir: Path
    scratch_dir: Path
    progress: Progress = field(default_factory=_SilentProgress)
    llm: Any = None
    # a ``key`` step run bucket by bucket: the partition key of each row of its partitioned
    # input, as its ``partition_key`` computed it (the step may use it instead of computing it
    # again); None when the step has its whole input
    partition_keys: pl.Series | None = None
    # how a global step's divided work runs where the executor spreads it (``table.Mapper``:
    # ``Table.map_batches``, ``cluster.verified_jaccard``; Ray tasks, ``engine.ray_runner``);
    # None: here, in order
    mapper: Mapper | None = None

    @property
    def rng(self) -> np.random.Generator:
        """A generator seeded from the step fingerprint: the same recipe gives the same draws."""
        return np.random.default_rng(int(self.fingerprint[:16], 16))

    def resolve(self, path: str | Path) -> Path:
        """A path from the recipe, relative to the recipe's directory."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)


@dataclass
class StepResult:
    """Output tables by name, plus the lineage the step decided: events and edges frames."""

    tables: dict[str, pl.DataFrame]
    events: list[pl.DataFrame] = field(default_factory=list)
    edges: list[pl.DataFrame] = field(default_factory=list)

    def merge(self, other: StepResult) -> StepResult:
        return StepResult({**self.tables, **other.tables}, self.events + other.events, self.edges + other.edges)


@dataclass(frozen=True)
class PlanInfo:
    """What a ``columns`` or ``data_fingerprint`` function may know at plan time."""

    base_dir: Path
    step: str

    def resolve(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)


ColumnsFn = Callable[[Any, dict[str, Columns], PlanInfo], dict[str, Columns]]
OutputsFn = Callable[[Any, Sequence[str]], tuple[str, ...]]
KeyFn = Callable[[Any, pl.DataFrame], pl.Series]

# How a step's work divides (the contract a streaming or distributed executor relies on):
#   rows:   the output of a batch of rows depends only on that batch, f(a ∪ b) = f(a) ∪ f(b),
#           row for row and in input order (the streaming executor concatenates its batches'
#           outputs; so no sorting by anything but input position, and randomness per row from
#           a hash of its id, never from ``ctx.rng`` draws, which restart in every batch)
#   key:    the same, for batches that keep every row of a key together (``partition_key``)
#   global: needs all its rows at once
# ``partitioned`` names the inputs that are divided; the others are passed whole to every batch
# (None: every input of a per-table step, or the one "data" input). tests/engine/test_partitioning.py
# runs every rows and key step on random batchings of real data against one whole-table call.
Partition = Literal["rows", "key", "global"]
PARTITIONS: tuple[str, ...] = ("rows", "key", "global")


def column_key(option: str) -> KeyFn:
    """A ``partition_key``: the column named by config option ``option`` (e.g. ``group``)."""
    return lambda cfg, df: df[getattr(cfg, option)]


@dataclass(frozen=True)
class StepDef:
    """A registered step kind."""

    kind: str
    version: int
    fn: Callable[[dict[str, pl.DataFrame], Any, Context], StepResult]
    config: type[StepConfig]
    inputs: tuple[str, ...] | None  # None: any input names, each mapped to an output of the same name
    outputs: OutputsFn
    columns: ColumnsFn
    data_fingerprint: Callable[[Any, PlanInfo], str] | None = None
    doc: str = ""
    partition: Partition = "global"
    partition_key: KeyFn | None = None
    partitioned: tuple[str, ...] | None = None
    keeps_input_rows: bool = False  # its outputs are rows of its divided input (kept or not, columns added)
    # a key step's outputs made group by group, in order of each group's first row (the others
    # are rows of its divided input); None from it: this configuration's order is not that
    group_outputs: Callable[[Any, Sequence[str]], tuple[str, ...] | None] | None = None
    out_of_core: bool = False  # a global step that reads engine.table.Table inputs (see there)
    # a rows step's configurations that need every row at once (True from it: run it whole)
    whole_when: Callable[[Any], bool] | None = None
    # a rows or key step whose model calls are its work: the Ray executor may run it once per
    # round of its calls, writing nothing, to gather them for ray.data.llm (engine.ray_llm)
    gathers_requests: bool = False

    @property
    def is_source(self) -> bool:
        return self.inputs == ()


REGISTRY: dict[str, StepDef] = {}


def _same_names(cfg: Any, input_names: Sequence[str]) -> tuple[str, ...]:
    return tuple(input_names)


def _unknown_columns(cfg: Any, cols: dict[str, Columns], info: PlanInfo) -> dict[str, Columns]:
    return {}


def step(
    kind: str,
    *,
    version: int,
    inputs: tuple[str, ...] | None = ("data",),
    outputs: tuple[str, ...] | OutputsFn | None = None,
    columns: ColumnsFn | None = None,
    per_table_columns: Callable[[Any, Columns, PlanInfo], Columns] | None = None,
    data_fingerprint: Callable[[Any, PlanInfo], str] | None = None,
    partition: Partition,
    partition_key: KeyFn | None = None,
    partitioned: tuple[str, ...] | None = None,
    keeps_input_rows: bool = False,
    group_outputs: Callable[[Any, Sequence[str]], tuple[str, ...] | None] | None = None,
    out_of_core: bool = False,
    whole_when: Callable[[Any], bool] | None = None,
    gathers_requests: bool = False,
) -> Callable[[Callable[..., StepResult]], Callable[..., StepResult]]:
    """Register ``fn`` as step ``kind``. The config model is the annotation of its ``cfg`` parameter.

    ``inputs=None`` takes any named inputs. Unless ``outputs`` says otherwise, such a step is
    per-table: it returns an output of the same name for each input, and ``per_table_columns``
    says how one table's columns change. ``partition`` (required) declares how its work divides
    (``Partition``); a ``key`` step names its key with ``partition_key(cfg, table)``, and with
    ``keeps_input_rows`` says its outputs are rows of its divided input (by ``_id``, columns may
    be added), which lets the streaming executor put them back in input order; ``group_outputs``
    (given the config and output names) names the outputs it makes group by group, in order of
    each group's first row (its other outputs are rows of its divided input), which lets the
    executor run it on buckets of whole groups — None from it where a configuration makes rows
    in another order. An
    ``out_of_core`` global step reads its inputs as ``engine.table.Table``s and may give outputs
    as ``Streamed`` batches when the runner calls it on inputs larger than a batch; called with
    frames it returns frames (``engine.table.out_of_core_step``). ``whole_when(cfg)`` names the
    configurations of a ``rows`` step that need every row at once (leakage.check's LLM judge,
    whose calls are capped over the whole step): the executor runs those whole. A ``rows`` or
    ``key`` step with ``gathers_requests`` does little besides its model calls: the Ray executor may run it
    once per round of its calls, writing nothing, to gather them for ``ray.data.llm``
    (``engine.ray_llm``).
    """
    if partition not in PARTITIONS:
        raise TypeError(f"step {kind}: partition must be one of {', '.join(PARTITIONS)}, not {partition!r}")
    if (partition == "key") != (partition_key is not None):
        raise TypeError(f"step {kind}: a partition_key goes with partition='key', and only with it")
    if (keeps_input_rows or group_outputs is not None) and partition != "key":
        raise TypeError(f"step {kind}: keeps_input_rows and group_outputs are for key steps")
    if out_of_core and partition != "global":
        raise TypeError(f"step {kind}: out_of_core is for global steps")
    if whole_when is not None and partition != "rows":
        raise TypeError(f"step {kind}: whole_when is for rows steps")
    if gathers_requests and partition == "global":
        raise TypeError(f"step {kind}: gathers_requests is for rows and key steps")

    def register(fn: Callable[..., StepResult]) -> Callable[..., StepResult]:
        hints = typing.get_type_hints(fn)
        config = hints.get("cfg")
        if not (isinstance(config, type) and issubclass(config, StepConfig)):
            raise TypeError(f"step {kind}: the cfg parameter must be annotated with a StepConfig subclass")
        if kind in REGISTRY:
            raise TypeError(f"step kind {kind!r} registered twice")
        out_fn: OutputsFn
        if outputs is None:  # default: per-table steps mirror their inputs, others give "data"
            out_fn = _same_names if inputs is None else (lambda cfg, names: ("data",))
        elif callable(outputs):
            out_fn = outputs
        else:
            fixed = tuple(outputs)
            out_fn = lambda cfg, names: fixed  # noqa: E731
        col_fn = columns
        if col_fn is None and per_table_columns is not None:
            ptc = per_table_columns

            def col_fn(cfg: Any, cols: dict[str, Columns], info: PlanInfo) -> dict[str, Columns]:
                out: dict[str, Columns] = {}
                for name, c in cols.items():
                    try:
                        out[name] = ptc(cfg, c, info)
                    except ColumnContractError as exc:
                        exc.input_name = name
                        raise
                return out

        if out_of_core:
            from dataforge.engine.table import out_of_core_step

            fn = out_of_core_step(fn)
        REGISTRY[kind] = StepDef(
            kind=kind,
            version=version,
            fn=fn,
            config=config,
            inputs=inputs,
            outputs=out_fn,
            columns=col_fn or _unknown_columns,
            data_fingerprint=data_fingerprint,
            doc=(fn.__doc__ or "").strip(),
            partition=partition,
            partition_key=partition_key,
            partitioned=partitioned,
            keeps_input_rows=keeps_input_rows,
            group_outputs=group_outputs,
            out_of_core=out_of_core,
            whole_when=whole_when,
            gathers_requests=gathers_requests,
        )
        return fn

    return register


def get_step(kind: str) -> StepDef | None:
    from dataforge.steps import load_builtin

    load_builtin()
    return REGISTRY.get(kind)


def per_table(inputs: dict[str, pl.DataFrame], one: Callable[[str, pl.DataFrame], StepResult]) -> StepResult:
    """Run a one-table function over every named input and merge the results."""
    result = StepResult({})
    for name, df in inputs.items():
        result = result.merge(one(name, df))
    return result
