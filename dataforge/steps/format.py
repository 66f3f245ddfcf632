"""Steps that shape rows into TRL's dataset types (per-table steps).

format.reasoning — consumes a reasoning column and an answer column; produces ``column``
(default ``completion``) = ``<think>\\n…\\n</think>\\n<answer>…</answer>``. A row whose answer
is null or blank gets a null target, not an empty answer block (which is not the reasoning
format, and would teach a model to answer nothing): the ``format`` after it drops the row as
``format:missing_field``.

format — consumes the columns named by its keys; produces exactly one TRL dataset type, plus
``_id`` (and other ``_`` columns) and the ``extra`` columns:

| type              | columns                      | conversational form                      |
|-------------------|------------------------------|------------------------------------------|
| messages          | messages                     | [system?, user…, assistant]              |
| prompt_completion | prompt, completion           | prompt: [system?, user…]; completion: [assistant] |
| prompt_only       | prompt                       | prompt: [system?, user…]                 |
| preference        | prompt, chosen, rejected     | prompt: [system?, user…]; chosen/rejected: [assistant] |

Type ``messages`` is made from ``prompt`` + ``completion``, or from ``messages``, a column of
whole conversations kept as they are (one whose last request has no answer that says something
is dropped, ``format:no_response``; one with no request, ``format:no_prompt``).
``prompt_completion`` and ``prompt_only`` take ``messages`` too:
every turn up to the last user turn is the prompt, what follows it the completion
(``_parted_at_last_request``). ``prompt`` may name several text columns: their texts that
are not blank, joined by a blank line (Alpaca's ``[instruction, input]``). A source column may be
text (wrapped as one message) or already a list of messages. A
conversation's turns may carry more than ``role`` and ``content`` (the OpenAI tool-calling
format: an assistant turn's ``tool_calls`` with a null content, a ``tool`` turn's
``tool_call_id`` / ``name``): they are kept, and every turn of the shaped column gets every such
field (null where it has none), as one Arrow column must; a ``tools`` column goes through
``extra`` (TRL reads it, as a list or as JSON text). A
response written as the whole conversation (UltraFeedback's ``chosen`` = [user, assistant]) that
opens with the prompt's turns has them removed; a preference without ``prompt`` takes as its prompt
the turns chosen and rejected open with alike (TRL's implicit prompt); see
``_responses_after_prompt`` for the rows dropped on the way. Rows
whose needed fields are empty are dropped with ``format:missing_field``; preference pairs whose
chosen and rejected sides are the same text, with ``format:tie``. ``system`` opens each prompt
with a system message; a prompt that already opens with one is an error (it would get two). A
turn whose role is none of system, user, assistant, tool ("human", "gpt") is an error naming it:
chat templates refuse such roles or render them as text (``parse.chat`` names them).

Example::

    sft:
      kind: format
      type: messages
      inputs: {train: split.train, validation: split.validation}
      prompt: question
      completion: completion
      extra: {answer: final_answer}      # output column ← input column
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import polars as pl
from pydantic import model_validator

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
    with_columns,
)
from dataforge.errors import DataError
from dataforge.formats import same_text, shared_turns
from dataforge.text.fields import MESSAGES, ROLES, is_conversation, require_messages, turn_text
from dataforge.text.reasoning import reasoning_expr

# -- format.reasoning -------------------------------------------------------------------------------


class ReasoningConfig(StepConfig):
    think: str = "reasoning"
    answer: str = "final_answer"
    column: str = "completion"


def _reasoning_columns(cfg: ReasoningConfig, cols: Columns, info: PlanInfo) -> Columns:
    require(cols, [cfg.think], "think")
    require(cols, [cfg.answer], "answer")
    return with_columns(cols, [cfg.column])


# 2: a null or blank answer gives a null target (it wrote an empty answer block)
@step("format.reasoning", version=2, inputs=None, per_table_columns=_reasoning_columns, partition="rows")
def format_reasoning(inputs: dict[str, pl.DataFrame], cfg: ReasoningConfig, ctx: Context) -> StepResult:
    """Write the reasoning target ``<think>…</think><answer>…</answer>``."""

    def one(name: str, df: pl.DataFrame) -> StepResult:
        require_text(df, cfg.think)
        answer = pl.col(cfg.answer).cast(pl.String)
        answer = pl.when(answer.str.strip_chars() != "").then(answer)  # blank: null, as a missing answer
        return StepResult({name: df.with_columns(reasoning_expr(pl.col(cfg.think), answer).alias(cfg.column))})

    return per_table(inputs, one)


# -- format -----------------------------------------------------------------------------------------

TrlType = Literal["messages", "prompt_completion", "prompt_only", "preference"]
FIELDS: dict[str, tuple[str, ...]] = {
    "messages": ("prompt", "completion"),
    "prompt_completion": ("prompt", "completion"),
    "prompt_only": ("prompt",),
    "preference": ("prompt", "chosen", "rejected"),
}


class FormatConfig(StepConfig):
    type: TrlType
    style: Literal["conversational", "standard"] = "conversational"
    messages: str | None = None  # type 'messages': a column of whole conversations (else prompt + completion)
    prompt: str | list[str] | None = None  # a list: text columns joined (Alpaca's instruction and input)
    completion: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    system: str | None = None
    extra: dict[str, str] = {}

    def needed(self) -> tuple[str, ...]:
        """The keys naming the input columns the step shapes."""
        if self.type == "preference" and self.prompt is None:
            return ("chosen", "rejected")  # the prompt is the turns the two open with alike
        return ("messages",) if self.messages is not None else FIELDS[self.type]

    def columns_of(self, key: str) -> list[str]:
        """The input columns a key names (``prompt`` may name several)."""
        value = getattr(self, key)
        return [] if value is None else [value] if isinstance(value, str) else list(value)

    @model_validator(mode="after")
    def _fields_for_type(self) -> FormatConfig:
        if isinstance(self.prompt, list) and (not self.prompt or len(set(self.prompt)) < len(self.prompt)):
            raise ValueError("a list 'prompt' names one or more text columns, each once")
        if self.messages is not None and self.type == "preference":
            raise ValueError(
                "type 'preference' does not use 'messages' (a pair is two responses: 'chosen', 'rejected')"
            )
        if self.messages is not None and (self.prompt or self.completion):
            raise ValueError(
                f"type '{self.type}' takes 'messages' (whole conversations) or 'prompt' and 'completion', not both"
            )
        for f in self.needed():
            if getattr(self, f) is None:
                also = " (or 'messages', a column of whole conversations)" if self.type == "messages" else ""
                raise ValueError(f"type '{self.type}' needs '{f}' (the input column to use){also}")
        unused = [
            f for f in ("prompt", "completion", "chosen", "rejected") if getattr(self, f) and f not in self.needed()
        ]
        if unused:
            raise ValueError(f"type '{self.type}' does not use '{unused[0]}'")
        if self.type == "messages" and self.style == "standard":
            raise ValueError("type 'messages' is conversational; for standard text use prompt_completion")
        if self.system is not None and self.style == "standard":
            raise ValueError("'system' needs the conversational style")
        taken = [c for c in self.extra if c in self.output_columns() or c.startswith("_")]
        if taken:
            raise ValueError(
                f"extra column '{taken[0]}' is one the step writes itself ({', '.join(self.output_columns())}, or an "
                "internal _ column); give it another name"
            )
        return self

    def output_columns(self) -> list[str]:
        return ["messages"] if self.type == "messages" else list(FIELDS[self.type])


def _format_columns(cfg: FormatConfig, cols: Columns, info: PlanInfo) -> Columns:
    for f in cfg.needed():
        require(cols, cfg.columns_of(f), f)
    require(cols, cfg.extra.values(), "extra")
    if cols is None:
        return None
    return [c for c in cols if c.startswith("_")] + cfg.output_columns() + list(cfg.extra)


def turn_fields(df: pl.DataFrame, columns: Iterable[str]) -> dict[str, pl.DataType]:
    """The fields of the turns the shaped conversations hold: ``role`` and ``content`` (text),
    then every other field a conversation column among ``columns`` has (a tool-calling turn's
    ``tool_calls``, a tool result's ``tool_call_id`` or ``name``), in the order first seen. A
    field with another type in another column is an error naming both."""
    fields: dict[str, pl.DataType] = dict(MESSAGES.inner.to_schema())
    where: dict[str, str] = {}
    for column in columns:
        dtype = df.schema[column]
        if not is_conversation(dtype):
            continue
        require_messages(column, dtype)
        turn = dtype.inner.to_schema()
        for name, ftype in turn.items():
            if name in ("role", "content"):
                continue
            if name in fields and fields[name] != ftype:
                raise DataError(
                    f"the turns of column '{column}' have a '{name}' of type {ftype}, those of '{where[name]}' of "
                    f"type {fields[name]}: one conversation cannot hold both"
                )
            fields.setdefault(name, ftype)
            where.setdefault(name, column)
    return fields


def _messages(df: pl.DataFrame, column: str, role: str, style: str, fields: dict[str, pl.DataType]) -> pl.Expr:
    """``column`` as the step writes it: text as it is (standard style) or as one turn of ``role``;
    a conversation as its turns, each with every field of ``fields`` (null where it has none)."""
    dtype = df.schema[column]
    if dtype == pl.String:
        if style == "standard":
            return pl.col(column)
        return pl.concat_list(_turn(pl.lit(role), pl.col(column), fields))
    if is_conversation(dtype) and style == "conversational":
        have = dtype.inner.to_schema()
        if list(have) == list(fields) and all(have[n] == t for n, t in fields.items()):
            return pl.col(column)
        element = pl.element().struct
        return pl.col(column).list.eval(
            pl.struct(
                *[
                    (element.field(n).cast(t) if n in have else pl.lit(None, dtype=t)).alias(n)
                    for n, t in fields.items()
                ]
            )
        )
    raise DataError(
        f"column '{column}' is {dtype}; the {style} style needs text or a list of {{role, content}} messages"
    )


def _turn(role: pl.Expr, content: pl.Expr, fields: dict[str, pl.DataType]) -> pl.Expr:
    """One turn of ``role`` saying ``content``, with ``fields``' other fields null."""
    others = [pl.lit(None, dtype=t).alias(n) for n, t in fields.items() if n not in ("role", "content")]
    return pl.struct(role.alias("role"), content.cast(pl.String).alias("content"), *others)


def _says(dtype: pl.DataType, column: str) -> pl.Expr:
    """Inside ``list.eval`` over conversation column ``column``: whether a turn says something
    (``text.fields.turn_text`` not blank: a tool call is something)."""
    return turn_text(dtype, column).fill_null("").str.strip_chars() != ""


def _empty(df: pl.DataFrame, column: str) -> pl.Expr:
    """Whether a needed field is missing: null, blank text, no turns, or turns that say nothing
    (``text.fields.turn_text`` blank: a chosen response ``[{assistant: ""}]`` is no response; an
    assistant turn that only calls a tool says something)."""
    col = pl.col(column)
    dtype = df.schema[column]
    if dtype == pl.String:
        return col.is_null() | (col.str.strip_chars() == "")
    missing = col.is_null() | (col.list.len() == 0)
    if not is_conversation(dtype):
        return missing  # not messages: ``_messages`` refuses the column, naming it
    return missing | col.list.eval(~_says(dtype, column)).list.all()


def _ties(df: pl.DataFrame, chosen: str, rejected: str) -> pl.Series:
    """Whether a preference pair's two sides are the same text (``formats.same_text``): a pair that
    prefers a response to itself teaches nothing, as ``preference.pairs`` and ``preference.rm_pairs``
    hold (``pair:tie``)."""
    same = [same_text(c, r) for c, r in zip(df[chosen].to_list(), df[rejected].to_list(), strict=True)]
    return pl.Series(same, dtype=pl.Boolean)


def _fresh(df: pl.DataFrame, name: str) -> str:
    """A column name ``df`` does not have, for a column the step makes for itself."""
    return next(f"{name}{'_' * k}" for k in range(1, len(df.columns) + 2) if f"{name}{'_' * k}" not in df)


SIDES = ("completion", "chosen", "rejected")  # the keys whose columns hold responses


def _responses_after_prompt(
    df: pl.DataFrame, fields: dict[str, str], cfg: FormatConfig
) -> tuple[pl.DataFrame, dict[str, str], list[pl.DataFrame]]:
    """Responses without the prompt's turns. A response written as the whole conversation (the
    UltraFeedback form: ``chosen`` = [user, assistant]) that opens with the prompt's turns has them
    removed: kept, the trainer would read the prompt twice. A preference without ``prompt`` takes
    as its prompt the turns chosen and rejected open with alike, up to the last turn that is not
    the assistant's (TRL's implicit prompt); a pair with none is dropped, ``format:no_prompt``.
    A response left holding a user or system turn (it goes on past the point the sides part, or
    opens with another prompt) is dropped, ``format:user_turn_in_response``; one left with no turn
    that says something, ``format:missing_field``."""
    sides = [s for s in SIDES if s in fields and is_conversation(df.schema[fields[s]])]
    implicit = cfg.type == "preference" and "prompt" not in fields
    if implicit and len(sides) < 2:
        raise DataError(
            "without 'prompt', chosen and rejected must be conversations that open with their prompt's turns "
            f"(columns '{fields['chosen']}' and '{fields['rejected']}' are {df.schema[fields['chosen']]} and "
            f"{df.schema[fields['rejected']]}); name the prompt column with 'prompt'"
        )
    if not sides:
        return df, fields, []
    values = {s: df[fields[s]].to_list() for s in sides}
    if implicit:
        cut = []
        for chosen, rejected in zip(values["chosen"], values["rejected"], strict=True):
            n = shared_turns(chosen, rejected)
            while n and (chosen[n - 1] or {}).get("role") == "assistant":
                n -= 1
            cut.append(n)
        prompt = _fresh(df, "prompt")
        df = df.with_columns(pl.col(fields["chosen"]).list.head(pl.lit(pl.Series(cut, dtype=pl.Int64))).alias(prompt))
        fields = {**fields, "prompt": prompt}
        cuts = dict.fromkeys(sides, cut)
    else:
        asked = df[fields["prompt"]]
        opening = asked.to_list() if is_conversation(asked.dtype) else [[{"role": "user", "content": t}] for t in asked]
        cuts = {s: [_opened_with(v or [], p) for v, p in zip(values[s], opening, strict=True)] for s in sides}
    fields = dict(fields)
    for s in sides:
        column = _fresh(df, s)
        df = df.with_columns(pl.col(fields[s]).list.slice(pl.lit(pl.Series(cuts[s], dtype=pl.Int64))).alias(column))
        fields[s] = column
    dropped = []
    bad = pl.lit(False)
    if implicit:
        none = pl.col(fields["prompt"]).list.len() == 0
        dropped.append(events(df["_id"].filter(df.select(none).to_series()), "dropped", "format:no_prompt"))
        bad = none
    asking = pl.any_horizontal(
        [
            pl.col(fields[s]).list.eval(pl.element().struct.field("role").is_in(["user", "system"])).list.any()
            for s in sides
        ]
    ).fill_null(False)
    dropped.append(
        events(df["_id"].filter(df.select(~bad & asking).to_series()), "dropped", "format:user_turn_in_response")
    )
    bad = bad | asking
    empty = pl.any_horizontal([_empty(df, fields[s]) for s in sides])
    dropped.append(
        events(
            df["_id"].filter(df.select(~bad & empty).to_series()),
            "dropped",
            "format:missing_field",
            detail={"fields": [cfg.columns_of(s)[0] for s in sides]},
        )
    )
    return df.filter(~(bad | empty)), fields, dropped


def _opened_with(response: list[dict], prompt: list[dict]) -> int:
    """How many turns ``response`` repeats its prompt with: all the prompt's turns, or those but
    its system turns (a response written as the conversation without the system prompt), or none."""
    for asked in (prompt, [t for t in prompt if (t or {}).get("role") != "system"]):
        if asked and shared_turns(response, asked) == len(asked):
            return len(asked)
    return 0


def _joined_prompt(df: pl.DataFrame, cfg: FormatConfig) -> tuple[pl.DataFrame, dict[str, str]]:
    """``df`` and the column each needed key reads. A ``prompt`` naming several text columns reads
    them joined: their texts that are not blank, in order, separated by a blank line (Alpaca's
    instruction, then its input when it has one), in a column of its own; all blank is missing."""
    fields = {f: cfg.columns_of(f)[0] for f in cfg.needed()}
    if not isinstance(cfg.prompt, list):
        return df, fields
    for column in cfg.prompt:
        require_text(df, column)
    fields["prompt"] = _fresh(df, "prompt")
    said = [pl.when(pl.col(c).str.strip_chars() != "").then(pl.col(c)) for c in cfg.prompt]
    return df.with_columns(pl.concat_str(said, separator="\n\n", ignore_nulls=True).alias(fields["prompt"])), fields


def _parted_at_last_request(
    df: pl.DataFrame, column: str, completion: bool
) -> tuple[pl.DataFrame, dict[str, str], list[pl.DataFrame]]:
    """Whole conversations parted into a prompt (every turn up to the last user turn) and, with
    ``completion``, what follows it (the assistant's answer, with its tool calls and their results).
    One with no user turn is dropped, ``format:no_prompt``; one whose last request has no answer
    that says something, ``format:no_response`` (with ``completion``; a prompt needs none: a
    conversation to train on does, or its last request would be trained on unanswered). A text
    column is refused: it is no conversation."""
    dtype = df.schema[column]
    if not is_conversation(dtype):
        raise DataError(f"column '{column}' is {dtype}; 'messages' takes whole conversations (a list of messages)")
    users = pl.col(column).list.eval(pl.element().struct.field("role") == "user")
    cut = pl.col(column).list.len() - users.list.reverse().list.arg_max()
    fields = {"prompt": _fresh(df, "prompt")}
    df = df.with_columns(pl.col(column).list.head(cut).alias(fields["prompt"]))
    asked = df.select(users.list.any().fill_null(False)).to_series()
    dropped = [events(df["_id"].filter(~asked), "dropped", "format:no_prompt")]
    df = df.filter(asked)
    if completion:
        fields["completion"] = _fresh(df, "completion")
        df = df.with_columns(pl.col(column).list.slice(cut).alias(fields["completion"]))
        answer = (pl.element().struct.field("role") == "assistant") & _says(dtype, column)
        answered = df.select(pl.col(fields["completion"]).list.eval(answer).list.any().fill_null(False)).to_series()
        dropped.append(events(df["_id"].filter(~answered), "dropped", "format:no_response"))
        df = df.filter(answered)
    return df, fields, dropped


_ROLE_LETTERS = {"user": "u", "assistant": "a", "tool": "t"}  # a system turn is no letter


def _not_alternating(shaped: pl.DataFrame) -> pl.Series:
    """Whether a shaped conversation (messages; prompt + completion; prompt + either side) has two
    user turns in a row, or two assistant turns with no tool result between them: chat templates
    that want roles to alternate (Llama 2, Mistral, Gemma) refuse to render it, which TRL meets only
    when it prepares the data. Flagged, not dropped: other templates render it."""
    sequences = [[c] for c in ("messages",) if c in shaped.columns] or [
        ["prompt", *([side] if side in shaped.columns else [])] for side in ("completion", "chosen", "rejected")
    ]
    flags = pl.Series([False] * shaped.height, dtype=pl.Boolean)
    for columns in sequences:
        if not all(is_conversation(shaped.schema[c]) for c in columns):
            continue
        letters = pl.concat_list(columns).list.eval(
            pl.element().struct.field("role").replace_strict(_ROLE_LETTERS, default="", return_dtype=pl.String)
        )
        flags = flags | shaped.select(letters.list.join("").str.contains("uu|aa").fill_null(False)).to_series()
    return flags


def _refuse_unknown_roles(df: pl.DataFrame, column: str) -> None:
    """A conversation's roles must be those chat templates name (``ROLES``): "human" or "gpt" would
    reach the trainer's template, which refuses them or renders them as text. Refused, naming the
    role, a row and the step that renames them."""
    if not is_conversation(df.schema[column]) or df.is_empty():
        return
    roles = df.select(pl.col("_id"), pl.col(column).list.eval(pl.element().struct.field("role")).alias("r"))
    odd = roles.explode("r").filter(pl.col("r").is_not_null() & ~pl.col("r").is_in(ROLES))
    if odd.height:
        raise DataError(
            f"column '{column}': row {odd['_id'][0]} has a turn of role '{odd['r'][0]}', which is none of "
            f"{', '.join(ROLES)}; a 'parse.chat' step before this one names roles (human → user, gpt → assistant, "
            "and its 'roles' for others)"
        )


def _refuse_a_second_system_turn(df: pl.DataFrame, column: str, name: str) -> None:
    """``system`` opens every prompt with the recipe's system message; a prompt that opens with
    its own would get two, which chat templates refuse or render as one instruction after the
    other. Refused, naming the key, the column and the rows."""
    if not is_conversation(df.schema[column]) or df.is_empty():
        return
    first_role = pl.col(column).list.first().struct.field("role")
    has = df.filter((first_role == "system").fill_null(False))["_id"]
    if has.len():
        raise DataError(
            f"'system' is set, but {has.len():,} row(s) of '{name}' already open their '{column}' with a system "
            f"message (first: {has[0]}): each would get two; remove 'system' from the step to keep the rows' own"
        )


@step(
    "format",
    version=6,  # 3: a preference pair whose sides are the same text is dropped (format:tie); 'system' on
    # prompts that open with a system message is refused (they got two)
    # 4: tool-calling turns are kept (they were refused); a turn that only calls a tool is not missing;
    # two sides tie only with the same tool calls
    # 5: whole conversations (`messages`); roles a chat template does not name are refused (they passed)
    # 6: a response that opens with the prompt's turns loses them (DPO read the request twice); a
    # preference without `prompt` takes the turns its sides open with; roles that do not alternate
    # are flagged
    inputs=None,
    per_table_columns=_format_columns,
    partition="rows",
)
def format_trl(inputs: dict[str, pl.DataFrame], cfg: FormatConfig, ctx: Context) -> StepResult:
    """Shape rows into one of TRL's dataset types. A row with a needed field empty is dropped as
    ``format:missing_field``; a preference pair whose chosen and rejected sides are the same text,
    as ``format:tie``."""
    named = [c for f in cfg.needed() for c in cfg.columns_of(f)]

    def one(name: str, df: pl.DataFrame) -> StepResult:
        df, fields = _joined_prompt(df, cfg)
        turns = turn_fields(df, fields.values())  # first: it refuses turns without text role and content
        missing = pl.any_horizontal([_empty(df, c) for c in fields.values()])
        bad = df.filter(missing)
        dropped = [events(bad["_id"], "dropped", "format:missing_field", detail={"fields": named})]
        df = df.filter(~missing)
        for column in fields.values():
            _refuse_unknown_roles(df, column)
        df, fields, after = _responses_after_prompt(df, fields, cfg)
        dropped.extend(after)
        if "messages" in fields:  # whole conversations: kept whole (type messages), or parted
            df, parted, more = _parted_at_last_request(df, fields["messages"], cfg.type != "prompt_only")
            dropped.extend(more)
            fields = fields if cfg.type == "messages" else parted
        if cfg.type == "preference":
            tie = _ties(df, fields["chosen"], fields["rejected"])
            dropped.append(events(df["_id"].filter(tie), "dropped", "format:tie"))
            df = df.filter(~tie)
        opening = fields.get("prompt", fields.get("messages"))
        if cfg.system:
            _refuse_a_second_system_turn(df, opening, name)
        system = [pl.concat_list(_turn(pl.lit("system"), pl.lit(cfg.system), turns))] if cfg.system else []
        prompt = _messages(df, opening, "user", cfg.style, turns)
        prompt = pl.concat_list([*system, prompt]) if system else prompt
        out: dict[str, pl.Expr] = {}
        if "messages" in fields:
            out["messages"] = prompt
        elif cfg.type == "messages":
            completion = _messages(df, fields["completion"], "assistant", cfg.style, turns)
            out["messages"] = pl.concat_list([prompt, completion])
        else:
            out["prompt"] = prompt
            for f in ("completion", "chosen", "rejected"):
                if f in fields:
                    out[f] = _messages(df, fields[f], "assistant", cfg.style, turns)
        internal = [c for c in df.columns if c.startswith("_")]
        shaped = df.select(
            *internal,
            *[e.alias(n) for n, e in out.items()],
            *[pl.col(src).alias(dst) for dst, src in cfg.extra.items()],
        )
        flagged = events(shaped["_id"].filter(_not_alternating(shaped)), "flagged", "format:roles_not_alternating")
        return StepResult({name: shaped}, events=[*dropped, flagged])

    return per_table(inputs, one)
