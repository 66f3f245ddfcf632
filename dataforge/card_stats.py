"""The card's "Statistics" section: per split, the length of each row's text in characters,
whitespace words and, with a named tokenizer (the dataset's ``tokenizer:``), tokens (min / median /
p95 / max), turns per conversation for message columns, the
chosen − rejected length gap of preference data (a known reward-hacking signal: a reward model
learns "longer is better"), and the kinds of answers of a GRPO set's ``answer`` column.

Consumes the exported Arrow tables; produces Markdown lines. Deterministic: no sampling."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa


def _text(value: Any) -> str:
    """A cell as text: a messages list → its contents joined, anything else → str."""
    if isinstance(value, list):
        return "\n".join(m.get("content") or "" if isinstance(m, dict) else str(m) for m in value)
    return "" if value is None else str(value)


def row_texts(table: pa.Table) -> list[str]:
    """Each row's text: every column but ``_id``, messages as their contents, joined by newlines."""
    df = pl.from_arrow(table)
    return ["\n".join(_text(v) for k, v in row.items() if k != "_id") for row in df.iter_rows(named=True)]


def _spread(values: list[float]) -> str:
    if not values:
        return "—"
    a = np.asarray(values, dtype=np.float64)
    return " / ".join(f"{x:,.0f}" for x in (a.min(), np.median(a), np.percentile(a, 95), a.max()))


def _answer_kind(value: Any) -> str:
    text = str(value).strip().replace(",", "")
    if text.lstrip("-").isdigit():
        return "integer"
    try:
        float(text)
        return "decimal"
    except ValueError:
        return "fraction" if "/" in text else "text"


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


def statistics_section(tables: dict[str, pa.Table], tokenizer: Any = None, tokenizer_name: str = "") -> list[str]:
    """Markdown lines of the statistics of every split (text columns: every column but ``_id``);
    token counts when a ``tokenizer`` (``load_tokenizer``) is given."""
    tokens_header = f" tokens (`{tokenizer_name}`) |" if tokenizer is not None else ""
    lines = [
        "Lengths of each row's text (every column but `_id`), as min / median / p95 / max"
        + ("." if tokenizer is not None else "; no `tokenizer:` named for this dataset, so no token counts."),
        "",
        "| split | rows | characters | words |" + tokens_header,
        "|---|---|---|---|" + ("---|" if tokenizer is not None else ""),
    ]
    frames = {s: pl.from_arrow(t) for s, t in tables.items()}
    for split, df in frames.items():
        texts = row_texts(tables[split])
        chars = [len(t) for t in texts]
        words = [len(t.split()) for t in texts]
        tokens = f" {_spread(token_counts(tokenizer, texts))} |" if tokenizer is not None else ""
        lines.append(f"| {split} | {df.height:,} | {_spread(chars)} | {_spread(words)} |" + tokens)
    lines.append("")
    message_columns = [c for c, t in next(iter(frames.values())).schema.items() if isinstance(t, pl.List)]
    for col in message_columns:
        lines += [f"Turns per conversation in `{col}` (min / median / p95 / max):", ""]
        lines += [f"- {s}: {_spread([len(v or []) for v in df[col].to_list()])}" for s, df in frames.items()]
        lines.append("")
    first = next(iter(frames.values()))
    if {"chosen", "rejected"} <= set(first.columns):
        lines += ["Chosen − rejected length gap (characters; a reward model can learn that longer wins):", ""]
        for s, df in frames.items():
            gap = [
                len(_text(c)) - len(_text(r))
                for c, r in zip(df["chosen"].to_list(), df["rejected"].to_list(), strict=True)
            ]
            longer = sum(g > 0 for g in gap) / len(gap) if gap else 0.0
            median = f"{np.median(gap):+,.0f}" if gap else "—"
            lines.append(f"- {s}: median {median}, chosen longer in {longer:.0%} of pairs")
        lines.append("")
    if "answer" in first.columns and "prompt" in first.columns:
        lines += ["Kinds of `answer` (what a verifier compares):", ""]
        for s, df in frames.items():
            kinds = pl.Series([_answer_kind(a) for a in df["answer"].to_list()], dtype=pl.String).value_counts()
            counts = ", ".join(f"{k} {n:,}" for k, n in sorted(kinds.rows()))
            lines.append(f"- {s}: {counts or 'no rows'}")
        lines.append("")
    return lines
