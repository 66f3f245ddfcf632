"""``clean.normalize`` and ``clean.filter``: per-table steps (any named inputs, one output each).

clean.normalize — consumes the text or messages columns in ``fields`` (a messages column: each
turn's content); produces the same columns,
normalized (Unicode form, whitespace, optional lowercasing). ``whitespace: collapse`` (the
default) folds runs of spaces, trims lines and keeps at most one blank line, but keeps the layout
of code: every line's indentation and fenced code blocks exactly (``collapse_keeping_code``;
inner runs of spaces on a line outside a fence are still folded, so use ``keep`` for raw code
whose string literals hold them). Each changed row gets a
``revised`` event, reason ``clean:normalize``, with the changed fields in ``detail_json``. The
default form, NFKC, folds full-width characters, ligatures and no-break spaces but keeps
superscripts, subscripts and vulgar fractions (``keep_math: true``): plain NFKC turns "5² = 25"
into "52 = 25" and "½" into "1⁄2", a change of meaning in math data.

clean.filter — consumes ``fields`` (length rules), ``required``, and the keys of the regex
maps; produces the kept rows unchanged. Each dropped row gets a ``dropped`` event with the
first rule it failed: ``filter:required``, ``filter:min_length``, ``filter:max_length``,
``filter:regex_keep``, ``filter:regex_drop`` (score = the measured length where one applies).
``required`` reads a field as missing when it is null or blank text, a messages list with no turn
holding text, or an empty list. Length and regex rules read a messages field as its turns'
contents joined by newlines.

Example::

    filtered:
      kind: clean.filter
      inputs: {train: clean.train}
      fields: [question, answer]
      min_length: 20
      max_length: 4000
      unit: chars              # chars | words | tokens (with `tokenizer: <path or name>`)
      required: [question, answer]
      keep_regex: {answer: "####"}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import polars as pl
from pydantic import field_validator, model_validator

from dataforge.engine.events import events
from dataforge.engine.step import (
    Columns,
    Context,
    PlanInfo,
    StepConfig,
    StepResult,
    per_table,
    require,
    require_text,
    step,
)
from dataforge.errors import DataError
from dataforge.text.fields import contents_text, is_conversation, require_messages
from dataforge.text.normalize import UnicodeForm, Whitespace, normalize_text

# -- clean.normalize ------------------------------------------------------------------------------


class NormalizeConfig(StepConfig):
    fields: list[str]
    form: UnicodeForm | None = "NFKC"
    # NFKC keeps superscripts, subscripts and vulgar fractions ("5²" would become "52"); false: plain NFKC
    keep_math: bool = True
    whitespace: Whitespace = "collapse"
    lowercase: bool = False

    @field_validator("fields")
    @classmethod
    def _some(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one field to normalize")
        return v


def _normalize_columns(cfg: NormalizeConfig, cols: Columns, info: PlanInfo) -> Columns:
    require(cols, cfg.fields, "fields")
    return cols


def _normalized_field(df: pl.DataFrame, field: str, text: Callable[[pl.Series], pl.Series]) -> pl.Series:
    """``field`` with ``text`` applied to it: a text column whole, a messages column to each turn's
    content (roles and the turns' order kept)."""
    col = df[field]
    if not is_conversation(col.dtype):
        require_text(df, field)
        return text(col)
    require_messages(field, col.dtype)
    rows = pl.DataFrame({"row": pl.int_range(df.height, eager=True), "was": col})
    turns = rows.explode("was")  # (a null or empty conversation: no turn, or a null one, to rebuild)
    contents = text(turns["was"].struct.field("content"))
    rebuilt = (
        turns.with_columns(
            pl.when(pl.col("was").is_not_null())
            .then(pl.col("was").struct.with_fields(contents.alias("content")))
            .alias("turn")
        )
        .group_by("row", maintain_order=True)
        .agg(pl.col("turn").drop_nulls())
    )
    joined = rows.join(rebuilt, on="row", how="left", maintain_order="left")
    keep = pl.col("was").is_null() | (pl.col("was").list.len() == 0)
    return joined.select(pl.when(keep).then(pl.col("was")).otherwise(pl.col("turn")))["was"].cast(col.dtype)


# 2: NFKC keeps superscripts, subscripts and vulgar fractions (keep_math; "5²" became "52")
# 3: collapse keeps indentation and fenced code blocks (it folded them: Python no longer parsed)
# 4: a messages field's turn contents are normalized (the field was refused as not text)
# 5: collapse keeps the spaces inside a string literal of code ('a   b' became 'a b')
@step("clean.normalize", version=5, inputs=None, per_table_columns=_normalize_columns, partition="rows")
def normalize(inputs: dict[str, pl.DataFrame], cfg: NormalizeConfig, ctx: Context) -> StepResult:
    """Normalize text fields; record a `revised` event for every row that changed."""

    def text(values: pl.Series) -> pl.Series:
        return normalize_text(values, cfg.form, cfg.whitespace, cfg.lowercase, cfg.keep_math, keep_code=True)

    def one(name: str, df: pl.DataFrame) -> StepResult:
        new = df.with_columns(_normalized_field(df, f, text).alias(f) for f in cfg.fields)
        changed = [(new[f] != df[f]).fill_null(False) for f in cfg.fields]
        mask = pl.DataFrame({f: c for f, c in zip(cfg.fields, changed, strict=True)})
        detail = mask.select(
            pl.concat_str(
                pl.lit('{"fields":['),
                pl.concat_list([pl.when(pl.col(f)).then(pl.lit(f'"{f}"')) for f in cfg.fields])
                .list.drop_nulls()
                .list.join(","),
                pl.lit("]}"),
            ).alias("d")
        )["d"]
        any_changed = mask.select(pl.any_horizontal(pl.all()).alias("c"))["c"]
        ev = events(new["_id"].filter(any_changed), "revised", "clean:normalize", detail=detail.filter(any_changed))
        return StepResult({name: new}, events=[ev])

    return per_table(inputs, one)


# -- clean.filter ---------------------------------------------------------------------------------


class FilterConfig(StepConfig):
    fields: list[str] = []
    min_length: int | None = None
    max_length: int | None = None
    unit: Literal["chars", "words", "tokens"] = "chars"
    tokenizer: str | None = None
    required: list[str] = []
    keep_regex: dict[str, str] = {}
    drop_regex: dict[str, str] = {}

    @field_validator("keep_regex", "drop_regex")
    @classmethod
    def _compiles(cls, v: dict[str, str]) -> dict[str, str]:
        for field, pattern in v.items():  # compiled by polars' regex engine, the one that runs it
            try:
                pl.Series([""]).str.contains(pattern)
            except pl.exceptions.ComputeError as exc:
                why = " ".join(line.strip() for line in str(exc).split("This error occurred")[0].splitlines())
                raise ValueError(f"pattern for '{field}' does not compile: {why.strip()}") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> FilterConfig:
        if (self.min_length is not None or self.max_length is not None) and not self.fields:
            raise ValueError("length rules need 'fields' to measure")
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise ValueError(f"min_length {self.min_length} is above max_length {self.max_length}")
        if self.unit == "tokens" and not self.tokenizer:
            raise ValueError("unit 'tokens' needs 'tokenizer' (a local path or a model name)")
        if not (self.fields or self.required or self.keep_regex or self.drop_regex):
            raise ValueError("the filter has no rule: give lengths, 'required' or a regex")
        return self


def _filter_columns(cfg: FilterConfig, cols: Columns, info: PlanInfo) -> Columns:
    require(cols, cfg.fields, "fields")
    require(cols, cfg.required, "required")
    require(cols, cfg.keep_regex, "keep_regex")
    require(cols, cfg.drop_regex, "drop_regex")
    return cols


def _field_text(df: pl.DataFrame, field: str) -> pl.Series:
    """The text a length or regex rule reads: a text column as it is (null: ""), a messages column
    as its turns' contents joined by newlines (a conversation is measured and matched on what it
    says); anything else is a DataError naming the field."""
    if is_conversation(df.schema[field]):
        return df.select(contents_text(field, df.schema[field]).fill_null(""))[field]
    require_text(df, field)
    return df[field].fill_null("")


def _lengths(df: pl.DataFrame, field: str, cfg: FilterConfig, tokenizer: object) -> pl.Series:
    col = _field_text(df, field)
    if cfg.unit == "chars":
        return col.str.len_chars().cast(pl.Int64)
    if cfg.unit == "words":
        return col.str.count_matches(r"\S+").cast(pl.Int64)
    encoded = tokenizer(col.to_list(), add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    return pl.Series([len(ids) for ids in encoded], dtype=pl.Int64)


def _load_tokenizer(name: str, ctx: Context) -> object:
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise DataError("unit 'tokens' needs the transformers package") from exc
    path = ctx.resolve(name)
    try:
        return AutoTokenizer.from_pretrained(str(path) if path.exists() else name)
    except Exception as exc:
        raise DataError(f"cannot load tokenizer '{name}': {exc}") from None


@step(
    "clean.filter",
    version=5,  # 2: a required conversation with no turn holding text, or an empty list, is missing (it was kept)
    # 3: length and regex rules read a messages field as its turns' contents (it was refused as not text)
    # 4: a turn's tool calls are its text too (a tool-only answer had length 0: min_length dropped it)
    # 5: `required` reads tool calls too (a tool-only answer was missing)
    inputs=None,
    per_table_columns=_filter_columns,
    partition="rows",
)
def filter_rows(inputs: dict[str, pl.DataFrame], cfg: FilterConfig, ctx: Context) -> StepResult:
    """Drop rows that fail a rule; each drop is an event naming the first rule it failed."""
    tokenizer = _load_tokenizer(cfg.tokenizer, ctx) if cfg.unit == "tokens" and cfg.tokenizer else None

    def one(name: str, df: pl.DataFrame) -> StepResult:
        alive = pl.Series([True] * df.height)
        found: list[pl.DataFrame] = []

        def drop(mask: pl.Series, reason: str, score: pl.Series | None, detail: dict) -> None:
            nonlocal alive
            hit = mask.fill_null(True) & alive
            if hit.any():
                found.append(
                    events(
                        df["_id"].filter(hit),
                        "dropped",
                        reason,
                        score=None if score is None else score.filter(hit).cast(pl.Float64),
                        detail=detail,
                    )
                )
            alive = alive & ~hit

        for f in cfg.required:
            col = df[f]
            if col.dtype == pl.String:
                empty = col.is_null() | (col.str.strip_chars() == "")
            elif is_conversation(col.dtype):
                # a conversation with no turns, or with nothing in any turn (a tool call is something)
                said = df.select(contents_text(f, col.dtype))[f]
                empty = col.is_null() | (said.str.strip_chars().fill_null("") == "")
            elif isinstance(col.dtype, pl.List):  # a list with no items
                empty = col.is_null() | (col.list.len() == 0)
            else:
                empty = col.is_null()
            drop(empty, "filter:required", None, {"field": f})
        for f in cfg.fields:
            n = _lengths(df, f, cfg, tokenizer)
            if cfg.min_length is not None:
                drop(n < cfg.min_length, "filter:min_length", n, {"field": f, "min": cfg.min_length, "unit": cfg.unit})
            if cfg.max_length is not None:
                drop(n > cfg.max_length, "filter:max_length", n, {"field": f, "max": cfg.max_length, "unit": cfg.unit})
        for f, pattern in cfg.keep_regex.items():
            found_in = _field_text(df, f).str.contains(pattern)
            drop(~found_in, "filter:regex_keep", None, {"field": f, "pattern": pattern})
        for f, pattern in cfg.drop_regex.items():
            found_in = _field_text(df, f).str.contains(pattern)
            drop(found_in, "filter:regex_drop", None, {"field": f, "pattern": pattern})
        return StepResult({name: df.filter(alive)}, events=found)

    return per_table(inputs, one)
