"""What form a data file is in, and a recipe to start from (``dataforge inspect FILE``).

Consumes the first rows of a file as the ``source`` step reads them; produces the form they are in
(``recognize``) and a recipe that builds them into a TRL dataset (``starter_recipe``): the source,
the parse step the form needs, ``format``, exact dedup and a split by prompt (the same prompt never
in train and test). Forms, tried in this order:

- ``hh_pairs``: ``chosen`` / ``rejected`` HH-RLHF transcripts → ``parse.hh_rlhf`` → preference;
- ``preference``: ``chosen`` / ``rejected`` responses (text or conversations; with a ``prompt``
  column, or without one: the turns both sides open with) → preference;
- ``conversations``: a column of turns (messages, ShareGPT ``{from, value}``, contents as parts;
  the last two read by ``parse.chat``) → messages;
- ``chat_text``: a text column written out in a chat format (``text.chat_text``) → ``parse.chat``
  → messages;
- ``alpaca``: ``instruction`` (+ ``input``) and ``output`` → messages;
- ``gsm8k``: ``question`` and a worked ``answer`` ending in ``#### N`` → ``parse.gsm8k`` → the
  reasoning format → messages;
- ``prompt_completion``: a prompt column (``prompt``, ``question``, ``query``) and a response
  column (``completion``, ``response``, ``answer``, ``output``) → prompt-completion;
- ``prompt_only``: a prompt column alone → prompt-only (to generate from, or for GRPO).

A form is taken only when at least 90 % of the sampled rows hold it (a chat format, a ``####``
answer); none is guessed from column names alone where the values say otherwise.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from dataforge.text.chat_text import PARTS_AS_TEXT, format_of
from dataforge.text.fields import ROLES, is_conversation, is_messages

SHARE = 0.9  # of the sampled rows that must hold a form
PROMPTS = ("prompt", "question", "query")
RESPONSES = ("completion", "response", "answer", "output")


@dataclass
class Form:
    """A form the rows are in: what it is, and the steps that shape it for TRL."""

    name: str
    summary: str
    steps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # after the source, in order
    trl_type: str = "messages"


def _share(values: pl.Series, holds: Any) -> float:
    present = [v for v in values.to_list() if v is not None]
    return sum(1 for v in present if holds(v)) / len(present) if present else 0.0


def _turn_fields(dtype: pl.DataType) -> set[str]:
    return set(dtype.inner.to_schema()) if is_conversation(dtype) else set()  # type: ignore[attr-defined]


def _is_turns(dtype: pl.DataType) -> bool:
    fields = _turn_fields(dtype)
    return bool({"role", "from"} & fields and {"content", "value"} & fields)


def _first(df: pl.DataFrame, names: tuple[str, ...], dtype: pl.DataType | None = pl.String) -> str | None:
    return next((n for n in names if n in df.columns and (dtype is None or df.schema[n] == dtype)), None)


def _format(**config: Any) -> tuple[str, dict[str, Any]]:
    return ("sft", {"kind": "format", **config})


def _unread(df: pl.DataFrame, column: str) -> bool:
    """Whether a conversation column needs ``parse.chat``: turns that are not messages, contents
    given as parts (also as the JSON text polars makes of them) or roles no template names."""
    if not is_conversation(df.schema[column]):
        return False
    if not is_messages(df.schema[column]):
        return True
    turns = df.select(pl.col(column).explode().struct.unnest()).drop_nulls("role")
    parts = turns["content"].drop_nulls().str.contains(PARTS_AS_TEXT.pattern).any()
    return bool(parts) or not turns["role"].is_in(ROLES).all()


def _read_turns(df: pl.DataFrame, columns: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """``parse.chat`` for the conversation columns that need it (none when none does)."""
    unread = [c for c in columns if _unread(df, c)]
    return [("chat", {"kind": "parse.chat", "fields": unread})] if unread else []


def _preference(df: pl.DataFrame) -> Form | None:
    if not {"chosen", "rejected"} <= set(df.columns):
        return None
    sides = (df.schema["chosen"], df.schema["rejected"])
    if all(t == pl.String for t in sides) and _share(df["chosen"], lambda v: format_of(v) == "transcript") >= SHARE:
        steps = [
            ("parsed", {"kind": "parse.hh_rlhf"}),
            _format(type="preference", prompt="prompt", chosen="chosen", rejected="rejected"),
        ]
        return Form("hh_pairs", "preference pairs as HH-RLHF transcripts (Human: … Assistant: …)", steps, "preference")
    prompt = _first(df, PROMPTS, None)
    if not (all(t == pl.String for t in sides) or all(_is_turns(t) for t in sides)):
        return None
    if prompt is None and not all(_is_turns(t) for t in sides):
        return None  # text responses with no prompt to them
    steps = _read_turns(df, ["chosen", "rejected", *([prompt] if prompt else [])])
    config: dict[str, Any] = {"type": "preference", "chosen": "chosen", "rejected": "rejected"}
    if prompt:
        config = {"type": "preference", "prompt": prompt, **config}
    how = f"prompt '{prompt}'" if prompt else "no prompt column: the turns both sides open with are the prompt"
    return Form("preference", f"preference pairs ({how})", [*steps, _format(**config)], "preference")


def _conversations(df: pl.DataFrame) -> Form | None:
    column = next((c for c, t in df.schema.items() if _is_turns(t)), None)
    if column is None:
        return None
    fields = _turn_fields(df.schema[column])
    kind = "ShareGPT turns ({from, value})" if "from" in fields else "messages"
    if "from" not in fields and _unread(df, column):
        kind = "messages with contents as lists of parts, or roles to name (parse.chat)"
    steps = [*_read_turns(df, [column]), _format(type="messages", messages=column)]
    return Form("conversations", f"conversations in column '{column}': {kind}", steps)


def _chat_text(df: pl.DataFrame) -> Form | None:
    for column, dtype in df.schema.items():
        if dtype != pl.String or _share(df[column], lambda v: format_of(v) is not None) < SHARE:
            continue
        formats = {format_of(v) for v in df[column].drop_nulls().to_list()} - {None}
        chat_format = formats.pop() if len(formats) == 1 else "auto"
        steps = [
            ("chat", {"kind": "parse.chat", "fields": [column], "chat_format": chat_format}),
            _format(type="messages", messages=column),
        ]
        return Form("chat_text", f"conversations written out as text in column '{column}' ({chat_format})", steps)
    return None


def _alpaca(df: pl.DataFrame) -> Form | None:
    if _first(df, ("instruction",)) is None or _first(df, ("output",)) is None:
        return None
    prompt: str | list[str] = ["instruction", "input"] if _first(df, ("input",)) else "instruction"
    steps = [_format(type="messages", prompt=prompt, completion="output")]
    return Form("alpaca", "Alpaca instructions (instruction, input, output)", steps)


def _gsm8k(df: pl.DataFrame) -> Form | None:
    if _first(df, ("question",)) is None or _first(df, ("answer",)) is None:
        return None
    if _share(df["answer"], lambda v: re.search(r"####\s*\S", v) is not None) < SHARE:
        return None
    steps = [
        ("parsed", {"kind": "parse.gsm8k"}),
        ("reasoning", {"kind": "format.reasoning"}),
        _format(type="messages", prompt="question", completion="completion"),
    ]
    return Form("gsm8k", "GSM8K-style problems (a worked answer ending in '#### N')", steps)


def _prompts(df: pl.DataFrame) -> Form | None:
    prompt = _first(df, PROMPTS)
    if prompt is None:
        return None
    response = _first(df, tuple(r for r in RESPONSES if r != prompt))
    if response is None:
        steps = [_format(type="prompt_only", prompt=prompt)]
        return Form("prompt_only", f"prompts alone (column '{prompt}')", steps, "prompt_only")
    steps = [_format(type="prompt_completion", prompt=prompt, completion=response)]
    return Form("prompt_completion", f"prompts '{prompt}' with responses '{response}'", steps, "prompt_completion")


def recognize(df: pl.DataFrame) -> Form | None:
    """The form of the sampled rows ``df`` (see the module doc), or None."""
    for rule in (_preference, _conversations, _chat_text, _alpaca, _gsm8k, _prompts):
        form = rule(df)
        if form is not None:
            return form
    return None


# the columns the shaped rows are compared by (dedup) and split by (a prompt never in two splits)
_SHAPED = {
    "messages": (["messages"], {"group": "messages", "group_turns": 1}),
    "prompt_completion": (["prompt", "completion"], {"group": "prompt"}),
    "preference": (["prompt", "chosen", "rejected"], {"group": "prompt"}),
    "prompt_only": (["prompt"], {"group": "prompt"}),
}


def source_of(
    path: Path | None, recipe_dir: Path, hub: dict[str, Any] | None = None, split: str | None = None
) -> tuple[str, dict[str, Any]]:
    """The name and the ``source`` step of a recipe in ``recipe_dir`` that reads a local ``path``
    or the hub dataset ``hub`` (its ``hub``, ``hub_config``, ``data_files`` keys), its ``split``."""
    if path is not None:
        stem, where = path.name.split(".")[0], {"path": os.path.relpath(path, recipe_dir)}
    else:
        assert hub is not None
        stem, where = str(hub["hub"]).rstrip("/").split("/")[-1], {k: v for k, v in hub.items() if v is not None}
    name = re.sub(r"[^A-Za-z0-9_]+", "_", stem).strip("_").lower() or "data"
    return name, {"kind": "source", **where, "name": name, **({"split": split} if split else {})}


def starter_recipe(name: str, source: dict[str, Any], form: Form) -> str:
    """A recipe (YAML) that reads ``source`` (``source_of``) and builds it into a dataset of
    ``form``'s TRL type, split 95/5 into train and test by prompt."""
    steps: dict[str, dict[str, Any]] = {"raw": source}
    previous = "raw"
    for step_name, config in form.steps:
        steps[step_name] = {
            "kind": config["kind"],
            "inputs": {"data": previous},
            **{k: v for k, v in config.items() if k != "kind"},
        }
        previous = f"{step_name}.data"
    fields, group = _SHAPED[form.trl_type]
    steps["dedup"] = {"kind": "dedup.exact", "inputs": {"data": previous}, "fields": fields}
    # a seed of the file's own: rows split before with the same seed and fractions (a built
    # dataset's test split read again) would all fall in the same split again
    seed = zlib.crc32(json.dumps(source, sort_keys=True).encode()) % 10_000
    fractions = {"train": 0.95, "test": 0.05}
    steps["split"] = {"kind": "split", "inputs": "dedup", "fractions": fractions, **group, "seed": seed}
    recipe = {
        "name": name,
        "description": f"{name}: {form.summary} → TRL {form.trl_type} (written by dataforge inspect)",
        "steps": steps,
        "datasets": {name: {"splits": {"train": "split.train", "test": "split.test"}}},
    }
    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True, width=100, default_flow_style=None)
