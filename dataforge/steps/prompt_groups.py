"""A prompt's responses, grouped for the steps that compare them with each other
(``preference.pairs``, ``ai_feedback``, ``rollout``).

Consumes a table of responses with a ``group`` column (default ``_parent_id``: the prompt row
``generate`` wrote each response from) and a ``prompt`` column; produces the groups to compare
and the rows that must not be compared:

- a row whose group is null or blank belongs to no prompt: grouped together, such rows were
  compared with each other, so a response to one prompt was paired with (or judged against) a
  response to another, under the first one's prompt;
- a group whose rows hold different prompts (a ``group`` column that is not the prompt's)
  would pair or judge responses to different questions the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from dataforge.formats import conversation_text


@dataclass
class PromptGroups:
    groups: list[pl.DataFrame] = field(default_factory=list)  # one prompt's rows each, in order of first row
    ungrouped: pl.Series = field(default_factory=lambda: pl.Series([], dtype=pl.String))  # ids: no group
    mixed: list[pl.DataFrame] = field(default_factory=list)  # groups whose rows hold different prompts


def prompt_texts(df: pl.DataFrame, prompt: str) -> pl.Series:
    """Each row's prompt as the text groups are compared by (``formats.conversation_text``, outer
    whitespace aside)."""
    if df.schema[prompt] == pl.String:
        return df[prompt].str.strip_chars().fill_null("")
    return pl.Series([conversation_text(p).strip() for p in df[prompt].to_list()], dtype=pl.String)


def group_marks(df: pl.DataFrame, group: str, prompt: str) -> tuple[pl.Series, pl.Series]:
    """Per row, whether it has a group (a null or blank group is none) and whether its group mixes
    prompts: read once over the whole table, not group by group."""
    key = pl.col(group)
    none = key.is_null()
    if df.schema[group] == pl.String:
        none = none | (key.str.strip_chars() == "")
    marks = df.select(key, (~none).alias("has"), prompt_texts(df, prompt).alias("p"))
    mixed = marks.select((pl.col("p").n_unique().over(group) > 1) & pl.col("has"))
    return marks["has"], mixed.to_series()


def prompt_groups(df: pl.DataFrame, group: str, prompt: str) -> PromptGroups:
    """``df``'s rows by ``group``, the rows without one and the groups that mix prompts apart."""
    has, mixed = group_marks(df, group, prompt)
    return PromptGroups(
        groups=df.filter(has & ~mixed).partition_by(group, maintain_order=True),
        ungrouped=df.filter(~has)["_id"],
        mixed=df.filter(mixed).partition_by(group, maintain_order=True),
    )
