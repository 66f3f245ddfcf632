"""The text of a column, whatever its shape: plain text, or a list of ``{role, content}``
messages (each turn as ``role: content`` on its own line). Shared by every step that compares
rows by their text (splits, audits, dedup, leakage)."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from dataforge.errors import DataError

MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
KEY_SEPARATOR = "\x1f"  # between the fields of a ``key_text``


def key_text(
    df: pl.DataFrame, fields: Sequence[str], roles: Sequence[str] | None = None, first_turns: int | None = None
) -> pl.Series:
    """The normalized (invisible characters dropped, NFKC, whitespace, lowercase) text of ``fields``
    joined by a unit separator: the key rows are grouped (splits) and matched (audits) by."""
    from dataforge.text.normalize import normalize_text, visible_text

    parts = [
        normalize_text(
            visible_text(df.select(text_expr(df, f, roles, first_turns).alias(f)).to_series()), lowercase=True
        )
        for f in fields
    ]
    return pl.select(pl.concat_str([pl.lit(p) for p in parts], separator=KEY_SEPARATOR)).to_series()


def blank_keys(keys: pl.Series) -> pl.Series:
    """Whether each ``key_text`` has no text in any of its fields (only separators left)."""
    return keys.str.replace_all(KEY_SEPARATOR, "", literal=True) == ""


def text_expr(
    df: pl.DataFrame, column: str, roles: Sequence[str] | None = None, first_turns: int | None = None
) -> pl.Expr:
    """An expression giving the text of ``column`` of ``df``; for messages, only ``roles`` if given,
    and only the first ``first_turns`` of those turns if given (text columns are whole)."""
    dtype = df.schema[column]
    if dtype == pl.String:
        return pl.col(column).fill_null("")
    if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct):
        turns = pl.col(column).list.eval(
            pl.when(pl.element().struct.field("role").is_in(list(roles)) if roles else pl.lit(True))
            .then(pl.concat_str(pl.element().struct.field("role"), pl.lit(": "), pl.element().struct.field("content")))
            .otherwise(None)
            .drop_nulls()
        )
        if first_turns is not None:
            turns = turns.list.head(first_turns)
        return turns.list.join("\n").fill_null("")
    if dtype.is_numeric() or dtype in (pl.Boolean, pl.Date) or isinstance(dtype, pl.Datetime):
        return pl.col(column).cast(pl.String).fill_null("")
    raise DataError(f"column '{column}' is {dtype}: neither text nor a list of messages")
