"""Graders: plain functions ``grader(completion, **row_columns) -> float`` in [0, 1].

The ``verify`` step scores rows with them, and ``trainers/grpo.py`` hands the very same functions
to TRL's ``GRPOTrainer`` as reward functions (through ``as_trl_reward``), so what filtered the
data is what rewards the policy.

Built in:

- ``math`` reads ``answer`` (the reference): the stated final answer equal to it → 1.0;
  relative error < 1% → 1.0, < 10% → 0.8, < 30% → 0.5, else 0.
- ``format``: 1.0 when the completion is exactly ``<think>…</think><answer>…</answer>``, else 0.
- ``language`` (option ``script``: latin, cyrillic, greek, arabic, hebrew, devanagari, cjk,
  hangul): the share of the completion's letters written in that script.
- ``length`` (options ``min_words``, ``max_words``): 1.0 inside the bounds, falling linearly to 0
  at twice the distance.

A user grader is named ``package.module:function`` and is imported and run as trusted code.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from dataforge.text.numbers import parse_number
from dataforge.text.reasoning import REASONING_RE

Grader = Callable[..., float]

_ANSWER_TAG = re.compile(r"(?s)<answer>(.*?)</answer>")
_GSM8K_FINAL = re.compile(r"####\s*([^\n]*)")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_THE_ANSWER_IS = re.compile(r"(?i)answer is[:\s]*([^\n]*)")
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def completion_text(value: Any) -> str:
    """A completion as text: a string, or the content of the last message of a messages list."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple) and value:
        last = value[-1]
        return str(last.get("content", "")) if isinstance(last, dict) else str(last)
    return "" if value is None else str(value)


def extract_answer(text: str) -> str | None:
    """The final answer a completion states: the last ``<answer>…</answer>``, else GSM8K's
    ``#### N``, else ``\\boxed{N}``, else "the answer is N", else the last number in the text."""
    for pattern in (_ANSWER_TAG, _GSM8K_FINAL, _BOXED, _THE_ANSWER_IS):
        found = pattern.findall(text)
        if found:
            return found[-1].strip()
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def relative_error_score(predicted: float, reference: float) -> float:
    """The numeric tolerance ladder: < 1% → 1.0, < 10% → 0.8, < 30% → 0.5, else 0."""
    if predicted == reference:
        return 1.0
    if reference == 0 or not math.isfinite(predicted):
        return 0.0
    err = abs(predicted - reference) / abs(reference)
    return 1.0 if err < 0.01 else 0.8 if err < 0.10 else 0.5 if err < 0.30 else 0.0


def math_answer(completion: Any, answer: Any) -> float:
    """Final-answer match with numeric tolerance (see the module table)."""
    stated = extract_answer(completion_text(completion))
    if stated is None or answer is None:
        return 0.0
    ref_text = str(answer).strip()
    if stated.strip().lower() == ref_text.lower():
        return 1.0
    predicted, reference = parse_number(stated.replace("$", "")), parse_number(ref_text)
    if predicted is None or reference is None:
        return 0.0
    return relative_error_score(predicted, reference)


def format_reward(completion: Any) -> float:
    """1.0 when the completion is exactly the reasoning format, else 0."""
    return 1.0 if re.match(REASONING_RE, completion_text(completion)) else 0.0


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


def language_consistency(completion: Any, script: str = "latin") -> float:
    """Share of letters written in ``script`` (DeepSeek-R1's language-consistency reward, by
    script); a completion without letters scores 1.0."""
    if script not in _SCRIPTS:
        raise ValueError(f"unknown script '{script}'; one of {', '.join(_SCRIPTS)}")
    prefixes = _SCRIPTS[script]
    letters = [c for c in completion_text(completion) if c.isalpha()]
    if not letters:
        return 1.0
    inside = sum(1 for c in letters if unicodedata.name(c, "").startswith(prefixes))
    return inside / len(letters)


def length_reward(completion: Any, min_words: int = 0, max_words: int | None = None) -> float:
    """1.0 when the word count is within [min_words, max_words], falling linearly to 0 at twice
    the distance outside."""
    words = len(completion_text(completion).split())
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


def as_trl_reward(fn: Grader, columns: dict[str, str] | None = None, **options: Any) -> Callable[..., list[float]]:
    """The grader as a TRL reward function ``(prompts, completions, **dataset_columns) -> list[float]``.

    ``columns`` maps a grader parameter to the dataset column that feeds it (default: the same
    name); ``options`` are constants (e.g. ``max_words=400``)."""
    columns = columns or {}
    params = [p for p in grader_parameters(fn) if p not in options]

    def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        scores = []
        for i, completion in enumerate(completions):
            row = {p: kwargs[columns.get(p, p)][i] for p in params if columns.get(p, p) in kwargs}
            scores.append(float(fn(completion, **row, **options)))
        return scores

    reward.__name__ = getattr(fn, "__name__", "grader")
    return reward
