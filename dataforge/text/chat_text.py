"""Conversations written out as text in a chat format, read back into messages (``parse.chat``).

An SFT set is often one ``text`` column with a model's chat template applied. Read back into
``{role, content}`` turns, it can be deduplicated by turn, split by its requests and shaped again
for another model's template. Formats read:

- ``chatml``: ``<|im_start|>user\\n…<|im_end|>`` (Qwen, OpenHermes);
- ``llama3``: ``<|start_header_id|>user<|end_header_id|>\\n\\n…<|eot_id|>``;
- ``gemma``: ``<start_of_turn>user\\n…<end_of_turn>`` (its ``model`` is the assistant);
- ``phi3`` / ``zephyr``: ``<|user|>\\n…<|end|>`` or ``…</s>``;
- ``llama2`` / ``mistral``: ``[INST] (<<SYS>>…<</SYS>>) … [/INST] answer</s>``;
- ``transcript``: ``Human: … Assistant: …`` turns opening a paragraph (HH-RLHF's
  ``\n\nHuman: ``), else a line (``Human: …\nAssistant: …``), or ``### Human: … ### Assistant:
  …`` anywhere (Guanaco).

Each turn's content is the text between its header and the next one, without the format's end of
turn and outer whitespace. A final assistant header with nothing after it (a generation prompt)
is no turn. ``read_chat_text`` gives None for text in no format or with text before its first
turn (a format it does not know), never a guess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from dataforge.text.fields import role_names

ChatFormat = Literal["auto", "chatml", "llama3", "gemma", "phi3", "zephyr", "llama2", "mistral", "transcript"]

_TRANSCRIPT = r"(?:^|{opens})[ \t]*(Human|Assistant|System):[ \t]*|###[ \t]*(Human|Assistant|System):[ \t]*"
_HEADERS = {
    "chatml": re.compile(r"<\|im_start\|>(\w+)[ \t]*\n?"),
    "llama3": re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>[ \t]*\n{0,2}"),
    "gemma": re.compile(r"<start_of_turn>(\w+)[ \t]*\n?"),
    "phi3": re.compile(r"<\|(user|assistant|system)\|>[ \t]*\n?"),
    # HH-RLHF's labels open a paragraph ("\n\nHuman: "); Guanaco's "### Human: " stand anywhere
    "transcript": re.compile(_TRANSCRIPT.format(opens=r"\n\n")),
}
# a transcript of a turn a line ("Human: …\nAssistant: …"), read so only where no paragraph opens
# with both labels: HH-RLHF's turns hold lines that open with one ("…\nAssistant: By the way…")
_LINE_TRANSCRIPT = re.compile(_TRANSCRIPT.format(opens=r"\n"))
_HEADERS["zephyr"] = _HEADERS["phi3"]
_PHI3_TURN = re.compile(r"<\|(?:user|assistant)\|>")  # (a system header alone is no conversation)
# what a format writes around its turns: beginnings of text, ends of turns and of text
_AROUND = re.compile(
    r"<\|im_end\|>|<\|eot_id\|>|<\|begin_of_text\|>|<\|end_of_text\|>|<end_of_turn>|<bos>|<eos>|<\|end\|>"
    r"|<\|endoftext\|>|</?s>"
)
# a content given as a list of parts that polars wrote as JSON text (other rows held plain text)
PARTS_AS_TEXT = re.compile(r'^\s*\[\s*\{\s*"type"\s*:')
_INSTRUCTION = re.compile(r"\[INST\](.*?)\[/INST\]", re.DOTALL)
_SYSTEM_BLOCK = re.compile(r"^\s*<<SYS>>(.*?)<</SYS>>", re.DOTALL)


def format_of(text: str) -> str | None:
    """The chat format ``text`` is written in (the first whose markers it holds), or None."""
    return _format_and_header(text)[0]


def _format_and_header(text: str) -> tuple[str | None, re.Pattern[str] | None]:
    """``format_of``, and the pattern of its turn headers (a transcript's: by paragraph, HH-RLHF's,
    else by line; None for Llama 2 / Mistral, read by their instructions)."""
    if "<|im_start|>" in text:
        return "chatml", _HEADERS["chatml"]
    if "<|start_header_id|>" in text:
        return "llama3", _HEADERS["llama3"]
    if "<start_of_turn>" in text:
        return "gemma", _HEADERS["gemma"]
    if "[INST]" in text and "[/INST]" in text:
        return "llama2", None
    if _PHI3_TURN.search(text):
        return "phi3", _HEADERS["phi3"]
    header = _transcript_header(text)
    return ("transcript", header) if header is not None else (None, None)


def _transcript_header(text: str) -> re.Pattern[str] | None:
    """The labels ``text``'s transcript turns open with: by paragraph (HH-RLHF's), else by line;
    None where neither gives both a Human and an Assistant label."""
    if "Human" not in text or "Assistant" not in text:
        return None
    for header in (_HEADERS["transcript"], _LINE_TRANSCRIPT):
        if {"Human", "Assistant"} <= {next(g for g in m.groups() if g) for m in header.finditer(text)}:
            return header
    return None


def _content(text: str) -> str:
    return (_AROUND.sub("", text) if "<" in text else text).strip()  # (every marker opens with "<")


def _headed(text: str, header: re.Pattern[str], roles: Mapping[str, str]) -> list[dict[str, str]] | None:
    pieces = header.split(text)  # the text before the first header, then each header's names and turn
    if len(pieces) == 1 or _content(pieces[0]):
        return None  # no turn, or text before the first one
    width = header.groups + 1
    turns = []
    for k in range(1, len(pieces), width):
        name = pieces[k] if width == 2 else next(g for g in pieces[k : k + width - 1] if g)
        role = roles.get(name.lower())
        if role is None:
            return None
        turns.append({"role": role, "content": _content(pieces[k + width - 1])})
    if turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns.pop()  # a generation prompt: the answer it asks for is not written
    return turns or None


def _instructed(text: str) -> list[dict[str, str]] | None:
    """Llama 2 / Mistral: each ``[INST] … [/INST]`` a user turn (the first may open with a
    ``<<SYS>>`` block, the system turn), the text up to the next one the assistant's answer."""
    spans = list(_INSTRUCTION.finditer(text))
    if not spans or _content(text[: spans[0].start()]):
        return None
    turns = []
    for k, span in enumerate(spans):
        asked = span.group(1)
        system = _SYSTEM_BLOCK.match(asked) if k == 0 else None
        if system:
            turns.append({"role": "system", "content": system.group(1).strip()})
            asked = asked[system.end() :]
        turns.append({"role": "user", "content": _content(asked)})
        end = spans[k + 1].start() if k + 1 < len(spans) else len(text)
        answer = _content(text[span.end() : end])
        if answer or k + 1 < len(spans):
            turns.append({"role": "assistant", "content": answer})
    return turns


def read_chat_text(
    text: str | None, chat_format: str = "auto", roles: Mapping[str, str] | None = None
) -> list[dict[str, str]] | None:
    """``text`` as messages, read in ``chat_format`` (``auto``: ``format_of``), or None when it is
    not written in it; a header's role is named by ``roles`` (lowercase name → role; default
    ``text.fields.role_names()``), and one it does not name means the text is in no format read."""
    if text is None:
        return None
    kind, header = _format_and_header(text)
    if chat_format not in ("auto", kind):  # a format named is the one read
        kind = chat_format
        header = (_transcript_header(text) if kind == "transcript" else None) or _HEADERS.get(kind)
    if kind is None:
        return None
    if kind in ("llama2", "mistral"):
        return _instructed(text)
    assert header is not None
    return _headed(text, header, role_names() if roles is None else roles)
