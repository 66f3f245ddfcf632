"""Shingles: the word or character n-grams of a normalized text, as the sets MinHash estimates
Jaccard similarity over."""

from __future__ import annotations

import re
from typing import Literal

_WORD = re.compile(r"\w+", re.UNICODE)


def shingles(text: str, n: int = 3, unit: Literal["word", "char"] = "word") -> set[str]:
    """The set of n-grams of ``text`` (lowercased; words are runs of letters and digits). A text
    shorter than n units gives one shingle, itself, so it still matches its exact copies."""
    text = text.lower()
    if unit == "char":
        t = " ".join(text.split())
        return {t[i : i + n] for i in range(max(1, len(t) - n + 1))} if t else set()
    words = _WORD.findall(text)
    if len(words) <= n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}
