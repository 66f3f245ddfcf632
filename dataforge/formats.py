"""TRL's dataset types, told apart by their columns (the table in TRL's "Dataset formats" guide), and
the conversational form of a prompt or completion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

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


def message_content(message: Mapping[str, Any]) -> str:
    """A chat message's text: its ``content``, where a null (an assistant turn that only calls a
    tool, in the OpenAI format) or a missing one is no text, never the word "None"."""
    content = message.get("content")
    return "" if content is None else str(content)


def as_messages(value: Any, role: str) -> list[dict[str, str]]:
    """A prompt or completion in TRL's conversational form: a string is one message of ``role``;
    a list of messages keeps its roles, each content read by :func:`message_content`."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return [{"role": str(m["role"]), "content": message_content(m)} for m in value or []]


def conversation_text(value: Any) -> str:
    """A prompt or response as one text: a string as it is; a list of messages without its system
    turns, a single turn as its content, several as ``role: content`` lines."""
    if isinstance(value, str):
        return value
    turns = [m for m in value or [] if m["role"] != "system"]
    if len(turns) == 1:
        return message_content(turns[0])
    return "\n".join(f"{m['role']}: {message_content(m)}" for m in turns)


def same_text(a: Any, b: Any) -> bool:
    """Whether two responses say the same (``conversation_text``, outer whitespace aside, and the
    same tool calls): the sides of a tie, a pair that prefers a response to itself. Two turns
    that only call tools say the same only when the calls are."""
    return conversation_text(a).strip() == conversation_text(b).strip() and _calls(a) == _calls(b)


def same_turn(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two turns are one: the same role saying the same (``message_content``, outer
    whitespace aside) with the same tool calls (by function, as ``same_text`` compares them)."""
    if a is None or b is None:
        return a is b
    return (
        a.get("role") == b.get("role")
        and message_content(a).strip() == message_content(b).strip()
        and _calls([a]) == _calls([b])
    )


def shared_turns(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> int:
    """How many turns two conversations open with alike (``same_turn``)."""
    n = 0
    while n < min(len(a), len(b)) and same_turn(a[n], b[n]):
        n += 1
    return n


def _calls(value: Any) -> list[list[Any]]:
    """Each non-system turn's tool calls as ``text.fields.turn_text`` reads them: a call's function
    (name and arguments), not its id, which differs between two samples of one call."""
    if isinstance(value, str):
        return []
    return [
        [c.get("function", c) if isinstance(c, dict) else c for c in m.get("tool_calls") or []]
        for m in value or []
        if m["role"] != "system"
    ]
