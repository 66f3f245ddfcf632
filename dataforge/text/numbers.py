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
}
_ALONE = {"dozen": 12, "twice": 2, "double": 2, "triple": 3, "half": 0.5}  # never part of a compound
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_TOKEN = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?|[a-z]+", re.IGNORECASE)


class _WordNumber:
    """English number words read left to right: "two hundred and five" → 205, "twenty five" → 25,
    "three thousand two hundred" → 3200, while "one three" or "five six" are two numbers."""

    def __init__(self, found: Counter[float]):
        self.found = found
        self.total = 0.0  # the thousands / millions read so far
        self.group: float | None = None  # the part under the last thousand / million
        self.last = ""  # "unit", "tens", "hundred", "scale"

    @property
    def value(self) -> float | None:
        return None if self.group is None and not self.total else self.total + (self.group or 0)

    def emit(self) -> None:
        if self.value is not None:
            self.found[self.value] += 1
        self.total, self.group, self.last = 0.0, None, ""

    def unit(self, v: float) -> None:
        if self.last in ("hundred", "scale") or (self.last == "tens" and v < 10):
            self.group = (self.group or 0) + v
        else:
            self.emit()
            self.group = v
        self.last = "unit"

    def tens(self, v: float) -> None:
        if self.last in ("hundred", "scale"):
            self.group = (self.group or 0) + v
        else:
            self.emit()
            self.group = v
        self.last = "tens"

    def scale(self, v: float) -> None:
        if v == 100:
            self.group = (self.group or 1) * 100
            self.last = "hundred"
        else:
            self.total += (self.group or 1) * v
            self.group = None
            self.last = "scale"


def numbers_in(text: str) -> Counter[float]:
    """The multiset of numbers a text mentions, digits and English number words alike."""
    found: Counter[float] = Counter()
    words = _WordNumber(found)
    for tok in _TOKEN.findall(text or ""):
        low = tok.lower()
        if tok[0].isdigit():
            words.emit()
            found[float(tok.replace(",", ""))] += 1
        elif low in _UNITS:
            words.unit(_UNITS[low])
        elif low in _TENS:
            words.tens(_TENS[low])
        elif low in _SCALES and words.value is not None:
            words.scale(_SCALES[low])
        elif low in _ALONE:
            words.emit()
            found[_ALONE[low]] += 1
        elif low == "and" and words.last in ("hundred", "scale"):
            continue
        else:
            words.emit()
    words.emit()
    return found


def digit_key(x: float) -> str:
    """The digits of a number without sign, decimal point, leading or trailing zeros: 129.00, 12900
    and 129 share "129"; 1.5 and 15 share "15"; 0.8 and 08 share "8" — what is left of a number
    when punctuation is stripped."""
    text = f"{abs(x):.6f}".rstrip("0").rstrip(".").replace(".", "")
    return text.strip("0") or "0"


def agreement(train: Counter[float], reference: Counter[float]) -> float | None:
    """Share of the reference's numbers (with repeats) that the train text also has; None when the
    reference mentions no number (the signal says nothing then). A number the train text only has
    with its punctuation stripped ("$129.00" → "12900", "$0.8" → "08") still counts, when it is a
    decimal or at least two digits are left to compare (so 1, 10 and 100 stay apart)."""
    total = sum(reference.values())
    if not total:
        return None
    same = train & reference
    rest_ref = Counter(digit_key(x) for x in (reference - same).elements() if x != int(x) or len(digit_key(x)) >= 2)
    rest_train = Counter(digit_key(x) for x in (train - same).elements())
    return (sum(same.values()) + sum((rest_ref & rest_train).values())) / total


def parse_number(text: str | None) -> float | None:
    """A final answer as a number ("1,234", "$5", "3.50"), or None."""
    if text is None:
        return None
    m = re.search(r"-?\d+(?:,\d{3})*(?:\.\d+)?", text)
    return float(m.group(0).replace(",", "")) if m else None
