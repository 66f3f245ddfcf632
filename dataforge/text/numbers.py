"""Numbers in text, digits or words ("twenty-five", "3,000", "1.5", "a dozen"), as the agreement
signal that tells a rephrased problem (same numbers) from a merely similar one (other numbers)."""

from __future__ import annotations

import re
from collections import Counter

_UNITS = {
    "zero": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "dozen": 12,
    "twice": 2,
    "double": 2,
    "triple": 3,
    "half": 0.5,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_TOKEN = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|[a-z]+", re.IGNORECASE)


def numbers_in(text: str) -> Counter[float]:
    """The multiset of numbers a text mentions, digits and English number words alike."""
    found: Counter[float] = Counter()
    current: float | None = None
    for tok in _TOKEN.findall(text or ""):
        low = tok.lower()
        if tok[0].isdigit():
            if current is not None:
                found[current] += 1
                current = None
            found[float(tok.replace(",", ""))] += 1
        elif low in _UNITS or low in _TENS:
            value = _UNITS.get(low, _TENS.get(low, 0))
            current = value if current is None or current % 10 or value >= 10 else current + value
        elif low in _SCALES and current is not None:
            current *= _SCALES[low]
        elif low == "and" and current is not None and current >= 100:
            continue
        elif current is not None:
            found[current] += 1
            current = None
    if current is not None:
        found[current] += 1
    return found


def agreement(train: Counter[float], reference: Counter[float]) -> float | None:
    """Share of the reference's numbers (with repeats) that the train text also has; None when the
    reference mentions no number (the signal says nothing then)."""
    total = sum(reference.values())
    if not total:
        return None
    return sum((train & reference).values()) / total


def parse_number(text: str | None) -> float | None:
    """A final answer as a number ("1,234", "$5", "3.50"), or None."""
    if text is None:
        return None
    m = re.search(r"-?\d+(?:,\d{3})*(?:\.\d+)?", text)
    return float(m.group(0).replace(",", "")) if m else None
