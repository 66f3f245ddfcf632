"""The card's "Statistics" section: per split, the length of each row's text in characters,
whitespace words and, with a named tokenizer (the dataset's ``tokenizer:``), tokens (min / median /
p95 / max), turns per conversation for message columns, the
chosen − rejected length gap of preference data (a known reward-hacking signal: a reward model
learns "longer is better"), and the kinds of answers of a GRPO set's ``answer`` column.

Consumes the exported Arrow tables; produces Markdown lines. Deterministic: no sampling."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from dataforge.text.fields import contents_text, is_messages


def _column_text(name: str, dtype: pl.DataType) -> pl.Expr:
    """A column as text: a messages list → its contents joined by newlines, a list → its items,
    anything else → its string form; null → ""."""
    col = pl.col(name)
    if is_messages(dtype):
        return contents_text(name, dtype)
    if isinstance(dtype, pl.List) and not isinstance(dtype.inner, pl.List | pl.Struct | pl.Array):
        return col.list.eval(pl.element().cast(pl.String).fill_null("")).list.join("\n")
    if isinstance(dtype, pl.Struct | pl.List | pl.Array | pl.Object):
        return col.map_elements(str, return_dtype=pl.String)
    return col.cast(pl.String)


def row_text_expr(schema: pl.Schema) -> pl.Expr:
    """Each row's text: every column but ``_id`` as text (``_column_text``), joined by newlines."""
    parts = [_column_text(n, t).fill_null("") for n, t in schema.items() if n != "_id"]
    return pl.concat_str(parts, separator="\n") if parts else pl.lit("")


def row_texts(table: pa.Table) -> list[str]:
    """Each row's text (``row_text_expr``), for a tokenizer."""
    df = pl.from_arrow(table)
    return df.select(row_text_expr(df.schema).alias("t"))["t"].to_list()


def _spread(values: Any) -> str:
    if len(values) == 0:
        return "—"
    a = np.asarray(values, dtype=np.float64)
    return " / ".join(f"{x:,.0f}" for x in (a.min(), np.median(a), np.percentile(a, 95), a.max()))


def _answer_kinds(answers: pl.Series) -> pl.Series:
    """integer / decimal / fraction / text of each answer (thousands separators ignored)."""
    text = answers.cast(pl.String).fill_null("").str.strip_chars().str.replace_all(",", "")
    return (
        pl.select(
            pl.when(text.str.contains(r"^-?\d+$"))
            .then(pl.lit("integer"))
            .when(text.cast(pl.Float64, strict=False).is_not_null())
            .then(pl.lit("decimal"))
            .when(text.str.contains("/"))
            .then(pl.lit("fraction"))
            .otherwise(pl.lit("text"))
        )
        .to_series()
        .alias("kind")
    )


def load_tokenizer(name: str, dataset: str) -> Any:
    """The tokenizer ``name`` (a hub id or a local path) for the card's token counts."""
    from transformers import AutoTokenizer

    from dataforge.errors import DataError

    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise DataError(f"dataset '{dataset}': tokenizer '{name}' could not be loaded ({exc})") from exc
    tok.model_max_length = 1 << 60  # counting, not feeding a model: no "sequence too long" warning
    return tok


def token_counts(tokenizer: Any, texts: list[str], chunk: int = 1024) -> list[int]:
    """Tokens per text, without the special tokens a model would add."""
    counts: list[int] = []
    for k in range(0, len(texts), chunk):
        ids = tokenizer(texts[k : k + chunk], add_special_tokens=False)["input_ids"]
        counts += [len(i) for i in ids]
    return counts


@dataclass
class SplitSummary:
    """What the card says of one exported split, gathered block by block as the split is written
    (``add``), so no split is held whole: its schema, rows and Arrow bytes, and per row the
    lengths the statistics and plots show. ``tokenizer``: count tokens too."""

    schema: pa.Schema
    tokenizer: Any = None
    num_rows: int = 0
    nbytes: int = 0
    parts: dict[str, list[np.ndarray]] = field(default_factory=dict)
    answer_kinds: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, table: pa.Table, tokenizer: Any = None) -> SplitSummary:
        """The summary of a whole table."""
        summary = cls(table.schema, tokenizer)
        summary.add(table)
        return summary

    def add(self, block: pa.Table) -> None:
        self.num_rows += block.num_rows
        self.nbytes += block.nbytes
        df = pl.from_arrow(block)
        assert isinstance(df, pl.DataFrame)
        text = row_text_expr(df.schema)
        lengths = df.select(text.str.len_chars().alias("chars"), text.str.count_matches(r"\S+").alias("words"))
        got = {"chars": lengths["chars"].to_numpy(), "words": lengths["words"].to_numpy()}
        if self.tokenizer is not None:
            texts = df.select(text.alias("t"))["t"].to_list()
            got["tokens"] = np.asarray(token_counts(self.tokenizer, texts), dtype=np.int64)
        for col, dtype in df.schema.items():
            if isinstance(dtype, pl.List):
                got[f"turns:{col}"] = df[col].list.len().fill_null(0).to_numpy()
        if {"chosen", "rejected"} <= set(df.columns):
            length = {
                c: _column_text(c, df.schema[c]).fill_null("").str.len_chars().cast(pl.Int64)
                for c in ("chosen", "rejected")
            }
            got["gap"] = df.select((length["chosen"] - length["rejected"]).alias("g"))["g"].to_numpy()
        if {"answer", "prompt"} <= set(df.columns):
            self.answer_kinds.update(dict(_answer_kinds(df["answer"]).value_counts().rows()))
        for name, values in got.items():
            self.parts.setdefault(name, []).append(values)

    def join(self, later: SplitSummary) -> None:
        """Add the summary of the rows that follow this one's (another file of the split)."""
        self.num_rows += later.num_rows
        self.nbytes += later.nbytes
        for name, values in later.parts.items():
            self.parts.setdefault(name, []).extend(values)
        self.answer_kinds.update(later.answer_kinds)

    def values(self, name: str) -> np.ndarray:
        """Per-row values of ``name`` (chars, words, tokens, turns:<column>, gap), in row order."""
        parts = self.parts.get(name, [])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def summaries(tables: dict[str, pa.Table | SplitSummary], tokenizer: Any = None) -> dict[str, SplitSummary]:
    """Each split as a ``SplitSummary`` (a whole table is summarized here)."""
    return {s: t if isinstance(t, SplitSummary) else SplitSummary.of(t, tokenizer) for s, t in tables.items()}


def statistics_section(
    tables: dict[str, pa.Table | SplitSummary], tokenizer: Any = None, tokenizer_name: str = ""
) -> list[str]:
    """Markdown lines of the statistics of every split (text columns: every column but ``_id``);
    token counts when a ``tokenizer`` (``load_tokenizer``) is given (a ``SplitSummary`` counted
    them when it was made with one)."""
    splits = summaries(tables, tokenizer)
    counted = tokenizer is not None or any("tokens" in s.parts for s in splits.values())
    tokens_header = f" tokens (`{tokenizer_name}`) |" if counted else ""
    lines = [
        "Lengths of each row's text (every column but `_id`), as min / median / p95 / max"
        + ("." if counted else "; no `tokenizer:` named for this dataset, so no token counts."),
        "",
        "| split | rows | characters | words |" + tokens_header,
        "|---|---|---|---|" + ("---|" if counted else ""),
    ]
    for split, sm in splits.items():
        tokens = f" {_spread(sm.values('tokens'))} |" if counted else ""
        lines.append(
            f"| {split} | {sm.num_rows:,} | {_spread(sm.values('chars'))} | {_spread(sm.values('words'))} |" + tokens
        )
    lines.append("")
    first = next(iter(splits.values()))
    message_columns = [n[len("turns:") :] for n in first.parts if n.startswith("turns:")]
    message_columns = message_columns or [
        f.name for f in first.schema if pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
    ]
    for col in message_columns:
        lines += [f"Turns per conversation in `{col}` (min / median / p95 / max):", ""]
        lines += [f"- {s}: {_spread(sm.values(f'turns:{col}'))}" for s, sm in splits.items()]
        lines.append("")
    names = set(first.schema.names)
    if {"chosen", "rejected"} <= names:
        lines += ["Chosen − rejected length gap (characters; a reward model can learn that longer wins):", ""]
        for s, sm in splits.items():
            gap = sm.values("gap")
            longer = float((gap > 0).mean()) if len(gap) else 0.0
            median = f"{np.median(gap):+,.0f}" if len(gap) else "—"
            lines.append(f"- {s}: median {median}, chosen longer in {longer:.0%} of pairs")
        lines.append("")
    if "answer" in names and "prompt" in names:
        lines += ["Kinds of `answer` (what a verifier compares):", ""]
        for s, sm in splits.items():
            counts = ", ".join(f"{k} {n:,}" for k, n in sorted(sm.answer_kinds.items()))
            lines.append(f"- {s}: {counts or 'no rows'}")
        lines.append("")
    return lines
