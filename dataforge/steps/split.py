"""``split``: assign every row to exactly one named split, so that nothing that should stay
together crosses a split boundary.

Consumes one input ``data``; produces one output per split. The unit of assignment is a set of
rows that must stay together — rows sharing a ``group`` key (normalized text of one or more
columns: a prompt, a conversation id, a source document id; for a messages column,
``group_turns: N`` keys on its first N user turns only; a row whose key is blank, null or empty
in every group field, has no group and is a unit of its own, drawn by its id) and rows of one
near-duplicate ``cluster`` (a cluster id column from a dedup step, or clusters computed here with MinHash LSH
over text fields) are joined into one unit, transitively. Each unit then goes to one split:

- by ``fractions``: a seeded hash of the unit's key into [0, 1), cut at the cumulative
  fractions; with ``stratify: column`` units are ordered by that hash within each stratum and
  cut by row counts, so every stratum is split in the same proportions;
- by ``time``: the unit's earliest ``_ts`` against ``cutoffs`` (or ``quantiles`` of the
  timestamps); ``missing`` names the split for rows without a timestamp (else an error). A row
  of a unit dated past its unit's split (a later copy or rewording of an earlier item) is
  dropped, reason ``split:late_duplicate``, ``related_id`` = the unit's earliest row: so every
  split stays strictly older than the next, and the item stays in the split it first appeared in.

Assignment depends only on the rows' values, never on their order: shuffling the input gives
the same splits. A split without group, cluster or time must say ``random: true`` (the unit is
the row; the dataset card then warns that random splits can leak).

Several datasets from one pool: carve them in one step (``fractions: {ft_train: …, rm_train: …,
rl_train: …, final_eval: …}``) and no group or cluster crosses between any two of them.

Lineage: one ``split`` event per row, reason ``split:<rule>`` (e.g. ``split:group+cluster``,
``split:time``, ``split:random``), ``detail_json`` = ``{"split": name, "unit_rows": n}``.

Example::

    split:
      kind: split
      inputs: parsed.train
      fractions: {train: 0.95, validation: 0.05}
      group: question                       # the same question never in two splits
      cluster: {fields: [question], threshold: 0.8}   # nor two near-duplicate ones
      seed: 13
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
from pydantic import field_validator, model_validator

from dataforge.cluster import lsh_keys, near_duplicate_pairs_in_batches
from dataforge.divided_components import components_of
from dataforge.engine.events import events
from dataforge.engine.step import Columns, Context, Fields, PlanInfo, StepConfig, StepResult, require, step
from dataforge.engine.streaming import key_hashes
from dataforge.engine.table import Mapper, Table
from dataforge.errors import DataError
from dataforge.recipe import NAME_RE
from dataforge.text.fields import blank_keys, folded_keys, key_text


def _check_names(names: Sequence[str]) -> None:
    for name in names:
        if not NAME_RE.match(name):
            raise ValueError(f"split name {name!r} must be letters, digits, '_' or '-'")
    if len(set(names)) != len(names):
        raise ValueError("split names repeat")


class ClusterSpec(StepConfig):
    """Keep near-duplicates together: take cluster ids from ``column`` (e.g. ``_cluster_id`` from a
    dedup step) or compute MinHash LSH clusters over the text of ``fields``."""

    column: str | None = None
    fields: list[str] | None = None
    threshold: float = 0.8
    ngram: int = 3
    num_perm: int = 128

    @model_validator(mode="after")
    def _one_source(self) -> ClusterSpec:
        if (self.column is None) == (not self.fields):
            raise ValueError("give exactly one of 'column' (cluster ids) or 'fields' (text to cluster)")
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be between 0 and 1, not {self.threshold}")
        return self


class TimeSpec(StepConfig):
    """Split by time: ``splits`` in time order, cut at ``cutoffs`` (one fewer than splits; a row
    at or after a cut-off goes to the later split) or at ``quantiles`` of the timestamps."""

    splits: list[str]
    cutoffs: list[datetime] | None = None
    quantiles: list[float] | None = None
    missing: str | None = None
    column: str = "_ts"

    @model_validator(mode="after")
    def _consistent(self) -> TimeSpec:
        _check_names(self.splits)
        if len(self.splits) < 2:
            raise ValueError("name at least two splits")
        if (self.cutoffs is None) == (self.quantiles is None):
            raise ValueError("give exactly one of 'cutoffs' or 'quantiles'")
        cuts = self.cutoffs if self.cutoffs is not None else self.quantiles
        assert cuts is not None
        if len(cuts) != len(self.splits) - 1:
            raise ValueError(f"{len(self.splits)} splits need {len(self.splits) - 1} cut-offs, got {len(cuts)}")
        if list(cuts) != sorted(cuts) or len(set(cuts)) != len(cuts):
            raise ValueError("cut-offs must increase")
        if self.quantiles is not None and not all(0 < q < 1 for q in self.quantiles):
            raise ValueError("quantiles must be between 0 and 1")
        if self.missing is not None and not NAME_RE.match(self.missing):
            raise ValueError(f"split name {self.missing!r} must be letters, digits, '_' or '-'")
        return self

    def utc_cutoffs(self) -> list[datetime]:
        return [c if c.tzinfo else c.replace(tzinfo=timezone.utc) for c in self.cutoffs or []]


class SplitConfig(StepConfig):
    fractions: dict[str, float] | None = None
    time: TimeSpec | None = None
    group: Fields | None = None
    group_turns: int | None = None  # messages in ``group``: only the first N user turns make the key
    cluster: ClusterSpec | None = None
    stratify: str | None = None
    random: bool = False
    seed: int = 0

    @field_validator("fractions")
    @classmethod
    def _valid_fractions(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is None:
            return v
        if len(v) < 2:
            raise ValueError("name at least two splits")
        _check_names(list(v))
        for name, f in v.items():
            if not 0 < f < 1:
                raise ValueError(f"fraction of '{name}' must be between 0 and 1, not {f}")
        total = sum(v.values())
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            raise ValueError(f"fractions must sum to 1, they sum to {total:g}")
        return v

    @model_validator(mode="after")
    def _one_rule(self) -> SplitConfig:
        if (self.fractions is None) == (self.time is None):
            raise ValueError("give exactly one of 'fractions' (hash-based splits) or 'time' (cut-offs on _ts)")
        linked = bool(self.group or self.cluster)
        if self.random and (linked or self.time):
            raise ValueError("'random: true' splits row by row; it does not combine with group, cluster or time")
        if self.fractions is not None and not linked and not self.random:
            raise ValueError(
                "a split by fractions needs 'group' and/or 'cluster' (rows that must stay together); "
                "random splits can leak, so ask for one explicitly with 'random: true'"
            )
        if self.group_turns is not None and (not self.group or self.group_turns < 1):
            raise ValueError("'group_turns' needs 'group' and counts user turns from 1")
        if self.stratify and self.time:
            raise ValueError("'stratify' goes with fractions, not with time cut-offs")
        return self

    @property
    def split_names(self) -> tuple[str, ...]:
        if self.fractions is not None:
            return tuple(self.fractions)
        assert self.time is not None
        names = list(self.time.splits)
        if self.time.missing and self.time.missing not in names:
            names.append(self.time.missing)
        return tuple(names)

    @property
    def rule(self) -> str:
        if self.random:
            return "random"
        parts = [p for p, on in (("time", self.time), ("group", self.group), ("cluster", self.cluster)) if on]
        if self.stratify:
            parts.append("stratified")
        return "+".join(parts)


def _outputs(cfg: SplitConfig, input_names: Sequence[str]) -> tuple[str, ...]:
    return cfg.split_names


def _columns(cfg: SplitConfig, cols: dict[str, Columns], info: PlanInfo) -> dict[str, Columns]:
    data = cols["data"]
    require(data, cfg.group or [], "group")
    if cfg.cluster:
        require(data, [cfg.cluster.column], "cluster.column")
        require(data, cfg.cluster.fields or [], "cluster.fields")
    require(data, [cfg.stratify], "stratify")
    if cfg.time:
        require(data, [cfg.time.column], "time.column")
    return {name: data for name in cfg.split_names}


def unit_hash(seed: int, key: str) -> float:
    """A stable hash of (seed, key) in [0, 1)."""
    digest = hashlib.blake2b(f"{seed}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def text_key(df: pl.DataFrame, fields: Sequence[str], first_turns: int | None = None) -> pl.Series:
    """Normalized (NFKC, whitespace, lowercase) text of ``fields``, joined; the grouping key. With
    ``first_turns``, a messages column gives only its first user turns: conversations that open
    with the same request share a key however they go on."""
    roles = ("user",) if first_turns is not None else None
    return key_text(df, fields, roles, first_turns).alias("k")


def _link_equal(keys: pl.DataFrame) -> np.ndarray:
    """Pairs linking every row to the first row with the same key (the frame's columns; rows
    with a null in any are left out)."""
    cols = keys.columns
    frame = keys.with_row_index("i").drop_nulls(cols)
    first = frame.group_by(cols).agg(pl.col("i").min().alias("f"))
    linked = frame.join(first, on=cols).filter(pl.col("i") != pl.col("f"))
    return np.column_stack([linked["f"].to_numpy(), linked["i"].to_numpy()]).astype(np.int64)


def _group_keys(batch: pl.DataFrame, cfg: SplitConfig) -> tuple[pl.Series, pl.Series]:
    """A batch's group keys (``text_key``) and whether each row has one: a key that is blank (null
    or blank text in every group field) is no group to keep together. (Every blank key was one
    group: a ``group: conversation_id`` that most rows lack put all of those rows in one split.)"""
    assert cfg.group
    key = text_key(batch, cfg.group, cfg.group_turns)
    return key, ~blank_keys(key)


def group_hashes(table: Table, cfg: SplitConfig) -> pl.DataFrame:
    """Each row's group key (``_group_keys``) as its ``key_hashes``, computed a batch at a time, so
    the keys of all rows are never held; null where the row has no group."""
    assert cfg.group
    parts = [pl.DataFrame(schema={"h0": pl.UInt64, "h1": pl.UInt64})]
    for batch in table.batches(columns=list(dict.fromkeys(cfg.group))):
        key, keyed = _group_keys(batch, cfg)
        parts.append(key_hashes(folded_keys(key)).with_columns(pl.when(pl.lit(keyed)).then(pl.all()).name.keep()))
    return pl.concat(parts)


def units_of(
    table: Table,
    df: pl.DataFrame,
    cfg: SplitConfig,
    near: np.ndarray | None = None,
    mapper: Mapper | None = None,
    folder: Path | None = None,
) -> np.ndarray:
    """Unit label per row of ``table`` (``df``: its ``needed_columns``): rows joined by equal group
    keys (``group_hashes``) and by near-duplicate clusters (``near``: the near-duplicate pairs of
    ``cluster.fields``, computed by ``cluster_pairs`` when not given). The components are found
    by ``components_of``: in the executor's jobs (``mapper``, edges staged under ``folder``)."""
    pairs = [np.zeros((0, 2), dtype=np.int64)]
    if cfg.group:
        pairs.append(_link_equal(group_hashes(table, cfg)))
    if cfg.cluster and cfg.cluster.column:
        pairs.append(_link_equal(df.select(pl.col(cfg.cluster.column).cast(pl.String))))
    elif cfg.cluster and cfg.cluster.fields:
        pairs.append(near if near is not None else cluster_pairs(table, cfg))
    return components_of(df.height, np.concatenate(pairs), mapper, folder)


def cluster_pairs(
    table: Table, cfg: SplitConfig, mapper: Mapper | None = None, folder: Path | None = None
) -> np.ndarray:
    """Near-duplicate pairs of the rows' ``cluster.fields`` (MinHash LSH, verified), reading
    the text a batch at a time (its band keys by ``Table.map_batches``; the verification's jobs
    staged under ``folder``), the divided work run by the executor's ``mapper``."""
    c = cfg.cluster
    assert c is not None and c.fields
    fields = list(dict.fromkeys(c.fields))
    keys_of = functools.partial(
        cluster_keys, fields=fields, threshold=c.threshold, num_perm=c.num_perm, ngram=c.ngram, seed=cfg.seed or 1
    )
    keyed = table.map_batches(keys_of, fields, mapper=mapper)
    pairs, _ = near_duplicate_pairs_in_batches(
        keyed,
        lambda index: text_key(table.take(index, fields), fields).to_arrow(),
        table.height,
        c.threshold,
        c.ngram,
        mapper=mapper,
        folder=folder,
    )
    return pairs


def cluster_keys(
    batch: pl.DataFrame, fields: list[str], threshold: float, num_perm: int, ngram: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A batch's ``cluster.lsh_keys`` of its cluster text (depends on the batch alone)."""
    return lsh_keys(text_key(batch, fields).to_arrow(), threshold, num_perm, ngram, seed)


def needed_columns(cfg: SplitConfig) -> list[str]:
    """The columns assignment reads whole (``assign``): ids, cluster ids, strata, times (group
    keys are read a batch at a time)."""
    wanted = ["_id"]
    if cfg.cluster and cfg.cluster.column:
        wanted.append(cfg.cluster.column)
    if cfg.stratify:
        wanted.append(cfg.stratify)
    if cfg.time:
        wanted.append(cfg.time.column)
    return list(dict.fromkeys(wanted))


def _cut(u: np.ndarray, fractions: dict[str, float]) -> np.ndarray:
    bounds = np.cumsum(list(fractions.values()))[:-1]
    return np.searchsorted(bounds, u, side="right")


def assign(
    table: Table, df: pl.DataFrame, cfg: SplitConfig, unit: np.ndarray
) -> tuple[pl.Series, pl.Series, pl.Series]:
    """(split name, unit size, earlier copy) for every row of ``table`` (``df``: its
    ``needed_columns``, read whole; ``unit``: each row's unit, from ``units_of``, or its own
    position in a random split); the last is null except, in a time split, for a row dated after
    its unit's split: the id of the unit's earliest row."""
    frame = pl.DataFrame({"unit": unit}).with_row_index("i")
    per_unit = frame.group_by("unit").agg(pl.len().alias("size"))
    names = list(cfg.split_names)
    earlier = pl.Series([None] * df.height, dtype=pl.String)
    if cfg.time is not None:
        idx, earlier = _time_index(df, frame, per_unit, cfg.time, names)
    else:
        assert cfg.fractions is not None
        per_unit = per_unit.join(_unit_draws(table, df, unit, cfg), on="unit", how="left")
        if cfg.stratify:
            idx = _stratified_index(df, frame, per_unit, cfg)
        else:
            per_unit = per_unit.with_columns(pl.Series("s", _cut(per_unit["u"].to_numpy(), cfg.fractions)))
            idx = frame.join(per_unit, on="unit", how="left").sort("i")["s"]
    size = frame.join(per_unit.select("unit", "size"), on="unit", how="left").sort("i")["size"]
    which = pl.Series(idx.cast(pl.Int64)).replace_strict(list(range(len(names))), names, return_dtype=pl.String)
    return which, size, earlier


def _unit_draws(table: Table, df: pl.DataFrame, unit: np.ndarray, cfg: SplitConfig) -> pl.DataFrame:
    """Each unit's draw ``u`` in [0, 1): ``unit_hash(seed, k)`` of its smallest key ``k`` (group
    key, else row id; a row whose group key is blank has none: its id). Group keys are read a batch
    at a time: a unit of one row is drawn from its own key at once; for larger units only their
    smallest key so far is held."""
    if not cfg.group:  # (a random split has no group)
        keys = pl.DataFrame({"unit": unit, "key": df["_id"]}).group_by("unit").agg(pl.col("key").min())
        return keys.select("unit", _draws(cfg.seed, keys["key"]))
    single = np.bincount(unit) == 1
    drawn: list[pl.DataFrame] = []
    smallest: list[pl.DataFrame] = []  # per batch, the smallest key of each larger unit in it
    compacted, at = 0, 0
    for batch in table.batches(columns=list(dict.fromkeys([*cfg.group, "_id"]))):
        key, keyed = _group_keys(batch, cfg)
        key = key.zip_with(keyed, batch["_id"])
        mine = unit[at : at + batch.height]
        at += batch.height
        alone = single[mine]
        drawn.append(pl.DataFrame({"unit": mine[alone]}).with_columns(_draws(cfg.seed, key.filter(pl.Series(alone)))))
        smallest.append(pl.DataFrame({"unit": mine[~alone], "key": key.filter(pl.Series(~alone))}))
        if sum(f.height for f in smallest) > 2 * compacted + table.batch_rows:  # one key per unit
            smallest = [pl.concat(smallest).group_by("unit").agg(pl.col("key").min())]
            compacted = smallest[0].height
    keys = pl.concat(smallest).group_by("unit").agg(pl.col("key").min())
    return pl.concat([*drawn, keys.select("unit", _draws(cfg.seed, keys["key"]))])


def _draws(seed: int, keys: pl.Series) -> pl.Series:
    """``unit_hash(seed, key)`` of each key, as the column ``u``."""
    return pl.Series("u", [unit_hash(seed, k) for k in keys.to_list()], dtype=pl.Float64)


def _stratified_index(df: pl.DataFrame, frame: pl.DataFrame, per_unit: pl.DataFrame, cfg: SplitConfig) -> pl.Series:
    """Within each stratum, units in hash order take consecutive shares of the stratum's rows."""
    assert cfg.fractions is not None and cfg.stratify is not None
    strata = frame.with_columns(df[cfg.stratify].cast(pl.String).fill_null("∅").alias("stratum"))
    # a unit's stratum: its most frequent value (ties: the smallest)
    mode = (
        strata.group_by("unit", "stratum")
        .len()
        .sort(["unit", "len", "stratum"], descending=[False, True, False])
        .group_by("unit", maintain_order=True)
        .first()
        .select("unit", "stratum")
    )
    units = per_unit.join(mode, on="unit").sort(["stratum", "u", "unit"])  # ties (null keys): by first row
    units = units.with_columns(
        ((pl.col("size").cum_sum().over("stratum") - pl.col("size") / 2) / pl.col("size").sum().over("stratum")).alias(
            "pos"
        )
    )
    units = units.with_columns(pl.Series("s", _cut(units["pos"].to_numpy(), cfg.fractions)))
    return frame.join(units.select("unit", "s"), on="unit", how="left").sort("i")["s"]


def _time_index(
    df: pl.DataFrame, frame: pl.DataFrame, per_unit: pl.DataFrame, spec: TimeSpec, names: list[str]
) -> tuple[pl.Series, pl.Series]:
    """Each row's split by its unit's earliest timestamp, and for each row that is a later copy
    (its own time falls in a later split than its unit's) the id of the unit's earliest row."""
    ts = df[spec.column]
    if not isinstance(ts.dtype, pl.Datetime):
        raise DataError(f"time.column '{spec.column}' is {ts.dtype}, not a timestamp")
    ts = ts.dt.convert_time_zone("UTC") if ts.dtype.time_zone else ts.dt.replace_time_zone("UTC")  # type: ignore[union-attr]
    earliest = frame.with_columns(ts.alias("ts")).group_by("unit").agg(pl.col("ts").min().alias("uts"))
    present = ts.drop_nulls()
    if present.is_empty():
        raise DataError(f"no row has a timestamp in '{spec.column}'")
    lo, hi = present.min(), present.max()
    if spec.quantiles is not None:
        cuts = [present.quantile(q, interpolation="lower") for q in spec.quantiles]
        if len(set(cuts)) != len(cuts) or cuts[0] == lo:
            raise DataError(f"time.quantiles {spec.quantiles} give empty splits: too few distinct timestamps")
    else:
        cuts = spec.utc_cutoffs()
        for c in cuts:
            if not lo < c <= hi:  # type: ignore[operator]
                raise DataError(
                    f"time.cutoffs: cut-off {c.isoformat()} is outside the data's range "
                    f"({lo.isoformat()} … {hi.isoformat()}), so a split would be empty"  # type: ignore[union-attr]
                )
    cut_np = pl.Series(cuts).cast(pl.Datetime("us", "UTC")).to_numpy()
    uts = earliest["uts"]
    idx = np.searchsorted(cut_np, uts.cast(pl.Datetime("us", "UTC")).to_numpy(), side="right")
    missing = uts.is_null().to_numpy()
    if missing.any():
        if spec.missing is None:
            n = int(frame.join(earliest.filter(pl.col("uts").is_null()), on="unit").height)
            raise DataError(f"{n} row(s) have no timestamp in '{spec.column}'; name a split for them with time.missing")
        idx = np.where(missing, names.index(spec.missing), idx)
    per = earliest.with_columns(pl.Series("s", idx))
    rows = frame.with_columns(ts.alias("ts"), df["_id"].alias("_id")).join(per, on="unit", how="left").sort("i")
    own = np.searchsorted(cut_np, rows["ts"].fill_null(rows["uts"]).cast(pl.Datetime("us", "UTC")).to_numpy(), "right")
    late = pl.Series((own > rows["s"].to_numpy()) & rows["ts"].is_not_null().to_numpy())
    first = rows.sort(["ts", "_id"], nulls_last=True).group_by("unit", maintain_order=True).agg(pl.col("_id").first())
    first_id = rows.join(first.rename({"_id": "first"}), on="unit", how="left").sort("i")["first"]
    return rows["s"], first_id.zip_with(late, pl.Series([None] * len(late), dtype=pl.String))


def _note(cfg: SplitConfig) -> str | None:
    if cfg.random:
        return "This dataset was split at random (seeded): random splits can leak near-duplicates across splits."
    said = []
    if cfg.time:
        said.append(f"by time on `{cfg.time.column}`")
    if cfg.group:
        said.append(f"so that rows with the same normalized {', '.join(f'`{g}`' for g in cfg.group)} share a split")
    if cfg.cluster:
        what = f"`{cfg.cluster.column}`" if cfg.cluster.column else f"MinHash Jaccard ≥ {cfg.cluster.threshold}"
        said.append(f"keeping near-duplicate clusters ({what}) together")
    if cfg.stratify:
        said.append(f"stratified by `{cfg.stratify}`")
    return "Split " + ", ".join(said) + "."


@step(
    "split",
    version=5,  # 3: a blank group key joins nothing (every blank key was one unit);
    # comparison keys drop invisible characters (zero-width spaces, the BOM, soft hyphens, bidi marks)
    # and chat-format tokens, turn headers and role labels (one prompt is one key in any chat format)
    # 4: group keys are linked without the spaces beside punctuation ("2 + 2 ?" and "2+2?" were two groups);
    # each unit is still drawn from its unfolded key, so no other unit moves
    # 5: a turn's tool calls (function name, arguments) are its text too (a tool-only turn was no text)
    outputs=_outputs,
    columns=_columns,
    partition="global",
    out_of_core=True,
)
def split(inputs: dict[str, Table], cfg: SplitConfig, ctx: Context) -> StepResult:
    """Assign each row to one split; rows that must stay together always share one.

    Out of core: assignment reads only the ``needed_columns`` whole (and the cluster fields a
    batch at a time, then for candidate pairs); each split's rows are written batch by batch."""
    table = Table.of(inputs["data"])
    near = (
        cluster_pairs(table, cfg, ctx.mapper, ctx.scratch_dir)
        if cfg.cluster and cfg.cluster.fields and not cfg.random
        else None
    )
    df = table.select(needed_columns(cfg))
    unit = np.arange(df.height) if cfg.random else units_of(table, df, cfg, near, ctx.mapper, ctx.scratch_dir)
    which, size, earlier = assign(table, df, cfg, unit)
    late = earlier.is_not_null()
    tables = {name: table.where(((which == name) & ~late).to_numpy()) for name in cfg.split_names}
    detail = pl.select(
        pl.concat_str(pl.lit('{"split":"'), pl.lit(which), pl.lit('","unit_rows":'), pl.lit(size), pl.lit("}"))
    ).to_series()
    placed = events(df["_id"].filter(~late), "split", f"split:{cfg.rule}", detail=detail.filter(~late))
    dropped = events(
        df["_id"].filter(late),
        "dropped",
        "split:late_duplicate",
        related_id=earlier.filter(late),
        detail=detail.filter(late),
    )
    return StepResult(tables, events=[placed, dropped])  # type: ignore[arg-type]


split.card_note = _note  # type: ignore[attr-defined]
