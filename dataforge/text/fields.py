"""The text of a column, whatever its shape: plain text, or a list of ``{role, content}``
messages (each turn as ``role: content`` on its own line). Shared by every step that compares
rows by their text (splits, audits, dedup, leakage)."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from dataforge.errors import DataError

MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
ROLES = ("system", "user", "assistant", "tool")  # the roles chat templates name
# other names datasets and chat formats give those roles (lowercase)
ROLE_NAMES = {
    "human": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bot": "assistant",
    "model": "assistant",  # Gemma
    "developer": "system",  # OpenAI's system role for its reasoning models
    "function": "tool",  # OpenAI's former function results
    "ipython": "tool",  # Llama 3.1's tool results
}


def role_names(more: dict[str, str] | None = None) -> dict[str, str]:
    """Lowercase role name → the role chat templates name it by: ``ROLES`` as they are,
    ``ROLE_NAMES``, then ``more`` (a recipe's own names, any case)."""
    return {**{r: r for r in ROLES}, **ROLE_NAMES, **{k.lower(): v for k, v in (more or {}).items()}}


def is_conversation(dtype: pl.DataType) -> bool:
    """Whether a column of ``dtype`` holds conversations: a list of structs (messages, with
    ``role`` and ``content``, and perhaps more fields)."""
    return isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)


def is_messages(dtype: pl.DataType) -> bool:
    """Whether a conversation column of ``dtype`` holds messages as every reader takes them: turns
    with a text ``role`` and a text ``content`` (null in a turn that only calls a tool)."""
    if not is_conversation(dtype):
        return False
    turn = dtype.inner.to_schema()  # type: ignore[attr-defined]
    return turn.get("role") == pl.String and turn.get("content") in (pl.String, pl.Null)


def require_messages(column: str, dtype: pl.DataType) -> None:
    """Raise DataError unless conversation column ``column`` holds messages (``is_messages``),
    naming what its turns hold and the step that reads such turns: ShareGPT's ``{from, value}``, a
    content given as a list of parts (``[{type: text, text: …}]``)."""
    if is_messages(dtype):
        return
    turn = dtype.inner.to_schema()  # type: ignore[attr-defined]
    held = ", ".join(f"{name}: {kind}" for name, kind in turn.items())
    raise DataError(
        f"column '{column}' holds turns of {{{held}}}, not messages with a text 'role' and 'content'; a "
        "'parse.chat' step reads ShareGPT turns ({from, value}) and contents given as lists of parts into messages"
    )


def contents_text(column: str, dtype: pl.DataType) -> pl.Expr:
    """A conversation column of ``dtype`` as text: its turns' texts (``turn_text``: a tool call is
    text too) joined by newlines (a turn with none: "")."""
    return pl.col(column).list.eval(turn_text(dtype, column).fill_null("")).list.join("\n")


KEY_SEPARATOR = "\x1f"  # between the fields of a ``key_text``
# what a chat format adds to a conversation, removed so that one conversation is one text in any
# of them: special tokens and turn headers with their role names (ChatML, Llama 2 and 3, Mistral,
# Gemma, Phi-3, Zephyr) and role labels opening a line ("user:" as a messages column reads,
# HH-RLHF's "Human:" / "Assistant:", Alpaca's "### Instruction:" / "### Response:")
CHAT_FORMAT = (
    r"<\|start_header_id\|>[^<>|]{0,40}<\|end_header_id\|>"
    r"|<\|im_start\|>\s*(?:system|user|assistant|tool)?|<start_of_turn>(?:user|model|system)?"
    r"|<\|[^|>\s]{1,40}\|>|\[/?INST\]|<</?SYS>>|</?s>|<end_of_turn>|<bos>|<eos>"
    r"|(?m:^)[ \t]*(?:#{1,4}[ \t]*)?(?i:system|user|assistant|human|model|instruction|input|response)[ \t]*:"
)


def key_text(
    df: pl.DataFrame, fields: Sequence[str], roles: Sequence[str] | None = None, first_turns: int | None = None
) -> pl.Series:
    """The normalized text of ``fields`` (chat-format tokens, turn headers and role labels removed:
    ``CHAT_FORMAT``; invisible characters dropped, NFKC, whitespace, lowercase) joined by a unit
    separator: the key rows are grouped (splits) and matched (audits) by, so one prompt is one key
    in any chat format or as a messages list."""
    from dataforge.text.normalize import normalize_text, visible_text

    texts = (without_chat_format(df.select(text_expr(df, f, roles, first_turns).alias(f))[f]) for f in fields)
    parts = [normalize_text(visible_text(text), lowercase=True) for text in texts]
    return pl.select(pl.concat_str([pl.lit(p) for p in parts], separator=KEY_SEPARATOR)).to_series()


def without_chat_format(text: pl.Series) -> pl.Series:
    """``text`` with ``CHAT_FORMAT`` replaced by spaces, read only in the texts that hold one of the
    characters every part of it needs (``<``, ``[`` or ``:``)."""
    idx = text.str.contains(r"[<\[:]").fill_null(False).arg_true()
    if len(idx) == 0:
        return text
    return text.scatter(idx, text.gather(idx).str.replace_all(CHAT_FORMAT, " "))


def folded_keys(keys: pl.Series) -> pl.Series:
    """``key_text`` keys without the spaces beside punctuation and symbols: "what is 2 + 2 ?" and
    "what is 2+2?" are one key (tokenized text, as older datasets hold it, puts spaces where the
    same prompt elsewhere has none). What rows are linked and matched by; a split draws each unit
    from its unfolded key, so folding joins units without re-drawing any other."""
    return keys.str.replace_all(r" ?([\p{P}\p{S}]) ?", "${1}")


def blank_keys(keys: pl.Series) -> pl.Series:
    """Whether each ``key_text`` has no text in any of its fields (only separators left)."""
    return keys.str.replace_all(KEY_SEPARATOR, "", literal=True) == ""


def turn_text(dtype: pl.DataType, column: str = "") -> pl.Expr:
    """Inside ``list.eval`` over a conversation column of ``dtype``: a turn's text. Its content,
    and for a turn that calls tools (the OpenAI format's ``tool_calls``) each call's function, name
    and arguments, as JSON on a line of its own; the calls' ids are left out (two samples of one
    call have other ids). Read as its content alone, a turn that only calls a tool was no text, so
    two answers calling different tools were exact duplicates of each other. Turns that are not
    messages are an error naming ``column`` (``require_messages``)."""
    require_messages(column, dtype)
    content = pl.element().struct.field("content").cast(pl.String)
    turn = dtype.inner.to_schema()  # type: ignore[attr-defined]
    calls_type = turn.get("tool_calls")
    if not (isinstance(calls_type, pl.List) and isinstance(calls_type.inner, pl.Struct)):
        return content
    function = calls_type.inner.to_schema().get("function")
    call = pl.element().struct.field("function") if isinstance(function, pl.Struct) else pl.element()
    calls = pl.element().struct.field("tool_calls").list.eval(call.struct.json_encode()).list.join("\n")
    said = pl.concat_str(content.fill_null(""), calls, separator="\n").str.strip_chars()
    return pl.when(calls.fill_null("") != "").then(said).otherwise(content)


def text_expr(
    df: pl.DataFrame,
    column: str,
    roles: Sequence[str] | None = None,
    first_turns: int | None = None,
    labels: bool = True,
) -> pl.Expr:
    """An expression giving the text of ``column`` of ``df``; for messages, only ``roles`` if given,
    and only the first ``first_turns`` of those turns if given (text columns are whole), each turn
    as ``role: text`` (``labels``) or its text alone (``turn_text``: a tool call is text too)."""
    dtype = df.schema[column]
    if dtype == pl.String:
        return pl.col(column).fill_null("")
    if is_conversation(dtype):
        role, content = pl.element().struct.field("role"), turn_text(dtype, column)
        turns = pl.col(column).list.eval(
            pl.when(role.is_in(list(roles)) if roles else pl.lit(True))
            .then(pl.concat_str(role, pl.lit(": "), content) if labels else content)
            .otherwise(None)
            .drop_nulls()
        )
        if first_turns is not None:
            turns = turns.list.head(first_turns)
        return turns.list.join("\n").fill_null("")
    if dtype.is_numeric() or dtype in (pl.Boolean, pl.Date) or isinstance(dtype, pl.Datetime):
        return pl.col(column).cast(pl.String).fill_null("")
    raise DataError(f"column '{column}' is {dtype}: neither text nor a list of messages")
