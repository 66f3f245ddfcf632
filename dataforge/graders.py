"""Graders: plain functions ``grader(completion, **row_columns) -> float`` in [0, 1], or None for
a row the grader cannot grade (``math`` without a reference answer): its score is null, not 0,
which would call the answer wrong; ``filter`` drops such a row as ``<reason>:missing`` and TRL's
GRPO trainer leaves it out of the reward.

The ``verify`` step scores rows with them, and ``trainers/grpo.py`` hands the very same functions
to TRL's ``GRPOTrainer`` as reward functions (through ``as_trl_reward``), so what filtered the
data is what rewards the policy.

Built in:

- ``math`` reads ``answer`` (the reference): 1.0 when the stated final answer equals it exactly
  (numbers as exact rationals, LaTeX and expressions through math-verify), else 0. Options:
  ``extract`` (``auto``, ``answer_tag``, ``boxed``, ``gsm8k``, ``answer_is``, ``last_number``)
  and ``partial_credit`` (reward shaping only: near misses score by relative error).
- ``format``: 1.0 when the completion is exactly ``<think>…</think><answer>…</answer>`` with an
  answer that is not blank, else 0.
- ``language`` (option ``script``: latin, cyrillic, greek, arabic, hebrew, devanagari, cjk,
  hangul): the share of the completion's letters written in that script; None for a blank
  completion.
- ``length`` (options ``min_words``, ``max_words``): 1.0 inside the bounds, falling linearly to 0
  at twice the distance; None for a blank completion.

A user grader is named ``package.module:function`` and is imported and run as trusted code.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import unicodedata
from collections.abc import Callable
from typing import Any, Literal, get_args

from dataforge.formats import message_content
from dataforge.text.answers import answers_equal, exact_number
from dataforge.text.reasoning import THINK_CLOSE, split_reasoning

Grader = Callable[..., float | None]

_ANSWER_TAG = re.compile(r"(?s)<answer>(.*?)</answer>")
_GSM8K_FINAL = re.compile(r"####\s*([^\n]*)")
_THE_ANSWER_IS = re.compile(r"(?i)\banswer is[:\s]*([^\n]*)")
# "Answer: 5", "Final answer: 5", "**Answer:** 5", "**Final Answer**: 5": the label opens a line or
# follows a sentence's end ("Wait, that was wrong. Answer: 6"); "My answer: 5" is no label
_ANSWER_LABEL = re.compile(
    r"(?im)(?:^|(?<=[.!?])[ \t]+)[ \t>#*_]*(?:final[ \t]+)?answer[*_]*[ \t]*:[ \t*_]*(\S[^\n]*)$"
)
# the sentence the Minerva / lm-eval MATH prompt ends every answer with ("Final Answer: The final
# answer is $5$. I hope it is correct."): part of the format, not of the answer
_MINERVA_TRAILER = re.compile(r"(?i)\s*I hope it is correct\.?\s*$")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")
_ANSWER_TAGS = re.compile(r"</?answer>")
_THINK_TAGS = re.compile(r"</?think>")

Extraction = Literal["auto", "answer_tag", "boxed", "gsm8k", "answer_is", "last_number"]
EXTRACTIONS: tuple[str, ...] = get_args(Extraction)


def completion_text(value: Any) -> str:
    """A completion as text: a string, or the content of the last message of a messages list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and value:
        last = value[-1]
        return message_content(last) if isinstance(last, dict) else str(last)
    return "" if value is None else str(value)


def _last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}`` (nested braces allowed), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None


def _last(pattern: re.Pattern[str], text: str) -> str | None:
    found = pattern.findall(text)
    return found[-1].strip() if found else None


def _stated(text: str) -> str | None:
    """What the last statement of the answer in words says: "the answer is X" or a line labelled
    "Answer: X" / "Final answer: X" (in Markdown bold too), whichever is read later (in "Final
    Answer: The final answer is $5$." the inner statement); without the Minerva format's closing
    "I hope it is correct."."""
    found = [(m.start(1), m.group(1)) for m in _THE_ANSWER_IS.finditer(text)]
    for m in _ANSWER_LABEL.finditer(text):  # ("**Answer: 5**": the label took the opening "**")
        found.append((m.start(1), m.group(1).rstrip().removesuffix("**").removesuffix("__")))
    if not found:
        return None
    return _MINERVA_TRAILER.sub("", max(found)[1]).strip()


def extract_answer(text: str, extract: str = "auto") -> str | None:
    """The final answer a completion states, read as ``extract`` says:

    - ``answer_tag``: the last ``<answer>…</answer>``; ``boxed``: the last ``\\boxed{…}``;
      ``gsm8k``: ``#### N``; ``answer_is``: what follows "the answer is" or an "Answer:" /
      "Final answer:" label opening a line, whichever comes last; ``last_number``: the
      last number anywhere (a guess: only on request, never a default);
    - ``auto`` (the default): a completion that uses the answer tags is held to them (its
      ``<answer>`` or nothing); one that thinks in ``<think>…</think>`` without them (DeepSeek-R1,
      Qwen3, whose chat templates may open the think block in the prompt, leaving only
      ``</think>``) is read after its last ``</think>`` and never inside it, where answers are
      tried and dropped; an open ``<think>`` that never closes has no answer. Otherwise ``#### N``,
      then ``\\boxed{…}``, then "the answer is …". A completion that states no answer in any of
      these forms has none (None), whatever numbers it mentions."""
    if extract == "answer_tag" or (extract == "auto" and _ANSWER_TAGS.search(text)):
        return _last(_ANSWER_TAG, text)
    if extract == "auto" and _THINK_TAGS.search(text):
        _, closed, text = text.rpartition(THINK_CLOSE)
        if not closed:
            return None
    if extract == "boxed":
        return _last_boxed(text)
    if extract == "gsm8k":
        return _last(_GSM8K_FINAL, text)
    if extract == "answer_is":
        return _stated(text)
    if extract == "last_number":
        numbers = _NUMBER.findall(text)
        return numbers[-1] if numbers else None
    if extract != "auto":
        raise ValueError(f"unknown extract '{extract}'; one of {', '.join(EXTRACTIONS)}")
    for found in (_last(_GSM8K_FINAL, text), _last_boxed(text), _stated(text)):
        if found:
            return found
    return None


def relative_error_score(predicted: float, reference: float) -> float:
    """The reward-shaping ladder of ``partial_credit``: < 1% → 1.0, < 10% → 0.8, < 30% → 0.5, else 0."""
    if predicted == reference:
        return 1.0
    if reference == 0 or not math.isfinite(predicted):
        return 0.0
    err = abs(predicted - reference) / abs(reference)
    return 1.0 if err < 0.01 else 0.8 if err < 0.10 else 0.5 if err < 0.30 else 0.0


def reference_answer(answer: Any) -> str:
    """The reference's final answer: the one it states in a marked form (``#### N``, ``\\boxed{…}``,
    ``<answer>…</answer>``, "the answer is …", as :func:`extract_answer` reads them), so that a
    whole worked solution (GSM8K's ``answer`` column) is a reference; else the reference itself."""
    text = str(answer)
    return extract_answer(text) or text


def math_answer(completion: Any, answer: Any, extract: str = "auto", partial_credit: bool = False) -> float | None:
    """1.0 when the stated final answer equals the reference ``answer`` exactly, else 0; None when
    there is no reference (null, NaN or blank): nothing to check the answer against.

    Equal means the same number (exact rational arithmetic: ``1,000`` = ``1000.00`` = ``$1000``,
    ``0.5`` = ``1/2``; ``1005`` ≠ ``1000``), the same mathematical object for LaTeX and
    expressions (``\\frac{1}{2}`` = ``0.5``, ``x^2+1`` = ``1+x^2``, through math-verify), or the
    same text (a choice letter, a word). A reference that is a worked solution is read as the
    final answer it states (:func:`reference_answer`). ``extract`` says where the answer is read
    (:func:`extract_answer`). ``partial_credit: true`` is for reward shaping only: a numeric
    answer near the reference then scores by :func:`relative_error_score`."""
    if answer is None or (isinstance(answer, float) and math.isnan(answer)) or not str(answer).strip():
        return None  # (a NaN is a float column's missing value: it scored 0, and "#### nan" 1.0)
    stated = extract_answer(completion_text(completion), extract)
    if stated is None or not stated.strip():
        return 0.0
    reference = reference_answer(answer)
    if answers_equal(stated, reference):
        return 1.0
    if partial_credit:
        predicted, reference = exact_number(stated), exact_number(reference)
        if predicted is not None and reference is not None:
            return relative_error_score(float(predicted), float(reference))
    return 0.0


def format_reward(completion: Any) -> float:
    """1.0 when the completion is exactly the reasoning format (``split_reasoning``: one think
    block, then one answer block that is not blank), else 0."""
    return 1.0 if split_reasoning(completion_text(completion))[0] is not None else 0.0


_SCRIPTS = {
    "latin": "LATIN",
    "cyrillic": "CYRILLIC",
    "greek": "GREEK",
    "arabic": "ARABIC",
    "hebrew": "HEBREW",
    "devanagari": "DEVANAGARI",
    "cjk": ("CJK", "HIRAGANA", "KATAKANA"),
    "hangul": "HANGUL",
}


def language_consistency(completion: Any, script: str = "latin") -> float | None:
    """Share of letters written in ``script`` (DeepSeek-R1's language-consistency reward, by
    script); a completion without letters ("42") scores 1.0: nothing in it is in another script.
    A blank completion has nothing to grade: None (a null score; as a GRPO reward it is left out,
    so an empty completion earns no reward for consistency)."""
    if script not in _SCRIPTS:
        raise ValueError(f"unknown script '{script}'; one of {', '.join(_SCRIPTS)}")
    prefixes = _SCRIPTS[script]
    text = completion_text(completion)
    if not text.strip():
        return None
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1.0
    inside = sum(1 for c in letters if unicodedata.name(c, "").startswith(prefixes))
    return inside / len(letters)


def length_reward(completion: Any, min_words: int = 0, max_words: int | None = None) -> float | None:
    """1.0 when the word count is within [min_words, max_words], falling linearly to 0 at twice
    the distance outside. A blank completion has nothing to grade: None, as ``language`` (under a
    bare ``max_words`` it scored 1.0, so a GRPO policy was paid for brevity by saying nothing)."""
    words = len(completion_text(completion).split())
    if not words:
        return None
    if words < min_words:
        return max(0.0, words / min_words * 2 - 1) if min_words else 1.0
    if max_words is not None and words > max_words:
        return max(0.0, 1 - (words - max_words) / max_words) if max_words else 0.0
    return 1.0


BUILTIN: dict[str, Grader] = {
    "math": math_answer,
    "format": format_reward,
    "language": language_consistency,
    "length": length_reward,
}


def load_grader(name: str) -> Grader:
    """A built-in grader by name, or ``package.module:function`` (imported: trusted code)."""
    if name in BUILTIN:
        return BUILTIN[name]
    module, colon, attr = name.partition(":")
    if not colon:
        raise ValueError(f"unknown grader '{name}'; built in: {', '.join(BUILTIN)}, or 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import grader '{name}': {exc}") from None
    if not callable(fn):
        raise ValueError(f"grader '{name}' is not a function")
    return fn


def grader_parameters(fn: Grader) -> list[str]:
    """The parameters a grader takes besides the completion (its first)."""
    return list(inspect.signature(fn).parameters)[1:]


def grader_columns(
    fn: Grader, inputs: dict[str, str] | None = None, options: dict[str, Any] | None = None
) -> dict[str, str]:
    """Grader parameter → the row column that feeds it: every parameter without a default that is
    not an option (read from the column of its own name unless ``inputs`` names another), and
    every parameter ``inputs`` names. Parameters with defaults (``extract``, ``partial_credit``)
    are never read from a column by accident."""
    inputs, options = inputs or {}, options or {}
    params = list(inspect.signature(fn).parameters.values())[1:]
    return {
        p.name: inputs.get(p.name, p.name)
        for p in params
        if p.name not in options and (p.name in inputs or p.default is inspect.Parameter.empty)
    }


def as_score(value: Any) -> float | None:
    """A grader's return value as a score: a float, or None (the row could not be graded; a NaN
    says the same, and would pass every ``filter`` bound as polars orders NaN above all)."""
    if value is None:
        return None
    score = float(value)
    return None if math.isnan(score) else score


def as_trl_reward(
    fn: Grader, columns: dict[str, str] | None = None, **options: Any
) -> Callable[..., list[float | None]]:
    """The grader as a TRL reward function ``(prompts, completions, **dataset_columns) -> list``:
    a float per completion, None where the grader cannot grade it (TRL leaves it out).

    ``columns`` maps a grader parameter to the dataset column that feeds it (default: the same
    name); ``options`` are constants (e.g. ``max_words=400``)."""
    feeds = grader_columns(fn, columns, options)

    def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
        scores: list[float | None] = []
        for i, completion in enumerate(completions):
            row = {p: kwargs[c][i] for p, c in feeds.items() if c in kwargs}
            scores.append(as_score(fn(completion, **row, **options)))
        return scores

    reward.__name__ = getattr(fn, "__name__", "grader")
    return reward
