"""What of a text a leakage check compares, by the kind of text: the parts a rephrase keeps.

- ``code`` (Python): the natural-language part (docstrings and comments without their doctest
  examples, identifiers split into words, signature types) and an identifier-anonymized token
  stream (names → ``ID``, numbers → ``NUM``, strings → ``STR``; keywords, builtins and operators
  kept), so a function renamed and re-documented still reads alike in both.
- ``chat``: the user turns only ("Human:" turns of an HH transcript, ``user`` messages, the user
  turns of a conversation written out in a chat format: ChatML, Llama 2 and 3, Mistral, Gemma,
  Phi-3, Zephyr): the request is what an eval item is; the assistant's answer is free to differ.
- ``choice``: a multiple-choice item as its question and its correct choice (``choice_view``).
- ``text``: the text itself.

``kind_of`` chooses per text when the view is ``auto``.
"""

from __future__ import annotations

import builtins
import io
import keyword
import re
import tokenize
from typing import Literal

from dataforge.text.chat_text import read_chat_text

View = Literal["auto", "text", "code", "chat"]

_CODE_LINE = re.compile(r"^\s*(?:def|class)\s+\w+\s*[(:]|^\s*(?:from\s+\w[\w.]*\s+)?import\s+\w", re.MULTILINE)
_KEEP_NAMES = (
    frozenset(keyword.kwlist)
    | frozenset(dir(builtins))
    | frozenset(
        "append extend pop insert remove sort sorted items keys values get join split strip lower upper "
        "startswith endswith replace find count index add update self cls".split()
    )
)
_SPLIT_IDENT = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def _user_contents(text: str) -> list[str]:
    """The contents of the user turns of a conversation written out as text (``text.chat_text``:
    a chat format's turns, or a Human/Assistant transcript); none for text in no format it reads."""
    return [t["content"] for t in read_chat_text(text) or [] if t["role"] == "user"]


def kind_of(text: str) -> Literal["text", "code", "chat"]:
    """``code`` for text with a Python ``def``/``class``/``import`` line, ``chat`` for a
    conversation written out as text with a user turn (``text.chat_text``: a Human/Assistant
    transcript, ChatML, Llama 2 and 3, Mistral, Gemma, Phi-3, Zephyr), else ``text``."""
    return viewed(text)[0]


def viewed(text: str, view: View = "auto") -> tuple[Literal["text", "code", "chat"], str]:
    """The kind of ``text`` (``view``, or ``kind_of`` for ``auto``) and what of it is compared
    (a conversation's user turns, ``user_turns``; else the text), the text read once."""
    if view == "auto":
        if _CODE_LINE.search(text or ""):
            return "code", text
        turns = _user_contents(text or "")
        return ("chat", "\n".join(turns)) if turns else ("text", text)
    return view, user_turns(text) if view == "chat" else text


def user_turns(text: str) -> str:
    """The user turns of a conversation written out as text, one per line, as ``parse.chat``
    reads them (``text.chat_text``); the whole text when it has none. (A ChatML or Llama 3 text
    was read whole, system prompt first, and its rephrased request went unseen past the
    transformer's window.)"""
    turns = _user_contents(text or "")
    return "\n".join(turns) if turns else text


def split_identifier(name: str) -> str:
    """``has_close_elements`` → "has close elements", ``maxValue`` → "max value"."""
    return " ".join(w.lower() for w in _SPLIT_IDENT.findall(name))


def _without_examples(doc: str) -> str:
    """A docstring without its doctest examples (``>>>`` lines and the output after them) and
    ``Example:``-style lines of values: a rewrite changes the values, not the description."""
    out, in_example = [], False
    for line in doc.splitlines():
        s = line.strip()
        if s.startswith(">>>"):
            in_example = True
            continue
        if in_example and s and not re.match(r"^[A-Za-z][a-z]+(?:\s+[a-z]+){3,}", s):
            continue  # the example's output
        in_example = False
        if re.search(r"[=(\[]", s) and not re.search(r"[a-z]{3,}\s+[a-z]{3,}", s):
            continue  # "f([1, 2]) == 3", "[1, 2] => 3": values, not words
        out.append(line)
    return "\n".join(out)


def _tokens(text: str) -> list[tokenize.TokenInfo]:
    """Python tokens of ``text``, as far as they read (a fragment that stops tokenizing keeps the
    tokens before the error)."""
    out: list[tokenize.TokenInfo] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            out.append(tok)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def code_views(text: str) -> tuple[str, str]:
    """(natural language, anonymized tokens) of Python source."""
    words: list[str] = []
    anon: list[str] = []
    prev = ""
    for tok in _tokens(text):
        if tok.type == tokenize.COMMENT:
            words.append(tok.string.lstrip("#").strip())
        elif tok.type == tokenize.STRING:
            body = tok.string.strip("rRbBuUfF").strip("'\"")
            if len(body.split()) >= 3:  # prose: a docstring or a message
                words.append(_without_examples(body))
            anon.append("STR")
        elif tok.type == tokenize.NAME:
            if tok.string in _KEEP_NAMES:
                anon.append(tok.string)
            else:
                anon.append("ID")
                if prev in ("def", "class", "->", ":") or tok.string[:1].isupper():
                    words.append(split_identifier(tok.string))  # names and types of the signature
        elif tok.type == tokenize.NUMBER:
            anon.append("NUM")
        elif tok.type == tokenize.OP:
            anon.append(tok.string)
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT):
            prev = tok.string
    prose = "\n".join(w for w in words if w.strip())
    return (prose or text), " ".join(anon)


def prose_view(text: str, kind: str) -> str:
    """The part of ``text`` compared as language for its kind."""
    if kind == "code":
        return code_views(text)[0]
    if kind == "chat":
        return user_turns(text)
    return text


def choice_view(question: str, choices: list[str] | None, answer: str | int | None) -> str:
    """A multiple-choice item as its question and its correct choice (the answer as a letter
    A–J, a 0-based index, or the choice's text); the question alone when the answer is unknown."""
    if not choices or answer is None:
        return question
    a = str(answer).strip()
    if len(a) == 1 and a.upper() in "ABCDEFGHIJ" and "ABCDEFGHIJ".index(a.upper()) < len(choices):
        correct = choices["ABCDEFGHIJ".index(a.upper())]
    elif a.isdigit() and int(a) < len(choices):
        correct = choices[int(a)]
    else:
        correct = a
    return f"{question}\n{correct}"


def choice_views(question: str, choices: list[str] | None, answer: str | int | None) -> list[str]:
    """The texts a copied multiple-choice item can be recognised by: its question with the
    correct choice (``choice_view``), the question alone, and the question with its lettered
    choices. A train row is compared with each; a match to any is a match to the item."""
    views = [choice_view(question, choices, answer), question]
    if choices:
        views.append(question + "\n" + lettered_choices(choices))
    stem = question.strip().rsplit("\n", 1)[-1].strip()
    if stem != question.strip() and len(stem.split()) >= STEM_MIN_WORDS:
        # a question after a passage: a rewrite often keeps only the question
        views += [choice_view(stem, choices, answer), stem]
    return list(dict.fromkeys(views))


def lettered_choices(choices: list[str]) -> str:
    """The choice block of a multiple-choice item as a copy shows it: "A. …" a line each (A–J)."""
    return "\n".join(f"{'ABCDEFGHIJ'[k]}. {c}" for k, c in enumerate(choices[:10]))


CHOICE_NGRAM_WORDS = 4  # words of a lettered choice block a shared n-gram may take (half the short n-gram)


def ngram_view(view: str, choices: list[str] | None) -> str:
    """What of a multiple-choice view a shared word n-gram may come from: a view ending in the
    item's lettered choices keeps only their first ``CHOICE_NGRAM_WORDS`` words, so an n-gram is
    mostly the item's own words. Choice blocks repeat across items ("A. True, True B. False,
    False …", "A. 1 B. 2 C. 3 D. 4"): with one word of the question before them they would make a
    13-gram that two different items share. Any other view is returned as it is."""
    if not choices:
        return view
    block = lettered_choices(choices)
    if not view.endswith("\n" + block):
        return view
    return view[: len(view) - len(block)] + " ".join(block.split()[:CHOICE_NGRAM_WORDS])


STEM_MIN_WORDS = 8  # a question's last line shorter than this ("Which of these is true?") says too little
