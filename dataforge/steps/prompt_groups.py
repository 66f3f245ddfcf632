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


def prompt_groups(df: pl.DataFrame, group: str, prompt: str) -> PromptGroups:
    """``df``'s rows by ``group``, the rows without one and the groups that mix prompts apart."""
    key = pl.col(group)
    none = key.is_null()
    if df.schema[group] == pl.String:
        none = none | (key.str.strip_chars() == "")
    out = PromptGroups(ungrouped=df.filter(none)["_id"])
    for g in df.filter(~none).partition_by(group, maintain_order=True):
        (out.mixed if prompt_texts(g, prompt).n_unique() > 1 else out.groups).append(g)
    return out
