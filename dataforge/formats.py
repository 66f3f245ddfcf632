"""TRL's dataset types, told apart by their columns (the table in TRL's "Dataset formats" guide)."""

from __future__ import annotations

from collections.abc import Sequence

# (type, columns that identify it), most specific first
TRL_TYPES: list[tuple[str, tuple[str, ...]]] = [
    ("preference", ("prompt", "chosen", "rejected")),
    ("implicit_preference", ("chosen", "rejected")),
    ("unpaired_preference", ("prompt", "completion", "label")),
    ("stepwise_supervision", ("prompt", "completions", "labels")),
    ("prompt_completion", ("prompt", "completion")),
    ("language_modeling", ("messages",)),
    ("language_modeling", ("text",)),
    ("prompt_only", ("prompt",)),
]


def trl_dataset_type(columns: Sequence[str]) -> str | None:
    """The TRL dataset type a table with these columns is, or None."""
    cols = set(columns)
    for name, needed in TRL_TYPES:
        if cols.issuperset(needed):
            return name
    return None
