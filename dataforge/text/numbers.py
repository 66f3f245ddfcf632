"""Numbers in text, digits or words ("twenty-five", "3,000", "1.5", "a dozen"), as the agreement
signal that tells a rephrased problem (same numbers) from a merely similar one (other numbers)."""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable

Readings = tuple[Counter[float], Counter[float]]  # a text's numbers as written and with punctuation joined

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
# never part of a compound
_ALONE = {
    "dozen": 12,
    "dozens": 12,
    "twice": 2,
    "double": 2,
    "doubled": 2,
    "doubles": 2,
    "triple": 3,
    "tripled": 3,
    "triples": 3,
    "thrice": 3,
    "quadruple": 4,
    "quadrupled": 4,
    "quadruples": 4,
    "half": 0.5,
    "quarter": 0.25,
    "quarters": 0.25,
    "fortnight": 14,
}
# a number only after an article or a distributive word: "a decade old", not "the nineteenth century"
_COUNTED_ALONE = {"decade": 10, "century": 100}
_COUNTING = {"a", "an", "one", "per", "each", "every"}
# ordinal words read as their number ("the third phase" = "stage 3", "nineteenth" = "19th"), unless
# a fraction ("a third", "two thirds"); "first" and "second" are left out (order words, a time unit)
_ORDINALS = {
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "eleventh": 11,
    "twelfth": 12,
    "thirteenth": 13,
    "fourteenth": 14,
    "fifteenth": 15,
    "sixteenth": 16,
    "seventeenth": 17,
    "eighteenth": 18,
    "nineteenth": 19,
    "twentieth": 20,
}
# after a number, a fraction of it: "three quarters" = 0.75 (as "3/4" reads), "two thirds", "one half"
_DENOMINATORS = {
    "half": 2,
    "halves": 2,
    "third": 3,
    "thirds": 3,
    "quarter": 4,
    "quarters": 4,
    "fourth": 4,
    "fourths": 4,
    "fifth": 5,
    "fifths": 5,
    "sixth": 6,
    "sixths": 6,
    "seventh": 7,
    "sevenths": 7,
    "eighth": 8,
    "eighths": 8,
    "ninth": 9,
    "ninths": 9,
    "tenth": 10,
    "tenths": 10,
}
_TENS = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000}
_MONEY_SCALES = {"k": 1e3, "m": 1e6, "b": 1e9, "bn": 1e9}  # "$2.5k", "$32M", "$1.2bn"
_PER_CENT = re.compile(r"\bper\s+cent\b", re.IGNORECASE)  # read as "percent"
_SPANS = {"decade": 10, "decades": 10, "century": 100, "centuries": 100}  # of years, after a number word
_TOKEN = re.compile(r"(?<![\d/])\d+/\d+(?![\d/]|[.,]\d)|\d+(?:,\d{3})*(?:\.\d+)?|(?<![\d.])\.\d+|[a-z]+", re.IGNORECASE)


class _WordNumber:
    """English number words read left to right: "two hundred and five" → 205, "twenty five" → 25,
    "three thousand two hundred" → 3200, while "one three" or "five six" are two numbers. Each
    number read is passed to ``found``."""

    def __init__(self, found: Callable[[float], None]):
        self.found = found
        self.total = 0.0  # the thousands / millions read so far
        self.group: float | None = None  # the part under the last thousand / million
        self.last = ""  # "unit", "tens", "hundred", "scale"

    @property
    def value(self) -> float | None:
        return None if self.group is None and not self.total else self.total + (self.group or 0)

    def emit(self) -> None:
        if self.value is not None:
            self.found(self.value)
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

    def fraction(self, denominator: int) -> None:
        """ "three quarters": the number just read, divided."""
        self.group = (self.group or 0) / denominator
        self.emit()

    def scale(self, v: float) -> None:
        if v == 100:
            self.group = (self.group or 1) * 100
            self.last = "hundred"
        else:
            self.total += (self.group or 1) * v
            self.group = None
            self.last = "scale"


@functools.lru_cache(maxsize=1 << 14)
def _digits_value(token: str) -> float:
    """ "3,000" → 3000, ".5" → 0.5, "3/4" → 0.75 (a fraction as its value: "1/4 pound" reads as
    "a quarter of a pound" does)."""
    top, _, bottom = token.replace(",", "").partition("/")
    return float(top) / float(bottom) if bottom and float(bottom) else float(top)


_QUANTITY = r"(\d+(?:\.\d+)?|" + "|".join(sorted(_UNITS, key=len, reverse=True)) + ")"
_PLURAL_PARTS = "|".join(d for d in _DENOMINATORS if d.endswith("s"))


def _quantity(token: str) -> float:
    return float(_UNITS[token.lower()]) if token.lower() in _UNITS else float(token)


# quantities written in two or more words, read as one number before the words are read:
# "three and a half" = 3.5, "2 dozen" = 24, "half a dozen" = 6, "fourfold" = 4, "3 quarters" = 0.75;
# each pattern with the words one of which it needs (tried only where the text has one)
def _plain(v: float) -> str:
    """``v`` in digits as ``_TOKEN`` reads them back: no exponent ("1500000", not "1.5e+06")."""
    return f"{round(v, 6):.6f}".rstrip("0").rstrip(".")


def _number(value: Callable[[re.Match[str]], float]) -> Callable[[re.Match[str]], str]:
    """A ``_COMPOUNDS`` replacement: the quantity ``value`` reads from the match, in digits."""
    return lambda m: f" {_plain(value(m))} "


_COMPOUNDS: list[tuple[tuple[str, ...], re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (("dozen",), re.compile(r"\bhalf an? dozen\b", re.IGNORECASE), _number(lambda m: 6.0)),
    (("dozen",), re.compile(rf"\b{_QUANTITY}\s+dozens?\b", re.IGNORECASE), _number(lambda m: _quantity(m[1]) * 12)),
    (
        ("half",),
        re.compile(rf"\b{_QUANTITY}\s+and\s+an?\s+half\b", re.IGNORECASE),
        _number(lambda m: _quantity(m[1]) + 0.5),
    ),
    (
        ("quarter",),
        re.compile(rf"\b{_QUANTITY}\s+and\s+an?\s+quarter\b", re.IGNORECASE),
        _number(lambda m: _quantity(m[1]) + 0.25),
    ),
    (("fold",), re.compile(rf"\b{_QUANTITY}-?fold\b", re.IGNORECASE), _number(lambda m: _quantity(m[1]))),
    # "an hour and a half" = 1.5 hours, "a year and a half" = 1.5 years (the word stays: its unit)
    (("half",), re.compile(r"\ban?\s+([a-z]+)\s+and\s+an?\s+half\b", re.IGNORECASE), lambda m: f" 1.5 {m[1]} "),
    # ("a pair of shoes" is left as written: one pair, or two shoes; "a score of" is a test's too)
    (("couple",), re.compile(r"\ba\s+couple\s+of\b", re.IGNORECASE), _number(lambda m: 2.0)),
    # digits with a scale: "1.5 million" = 1500000, "3 thousand" = 3000, "$2.5k" = 2500, "$32M"
    # (a letter after a dollar sign only: a "5k run" is 5 km)
    (
        tuple(_SCALES),
        re.compile(r"(?<![\d.,])(\d+(?:\.\d+)?)\s+(hundred|thousand|million|billion)\b", re.IGNORECASE),
        _number(lambda m: float(m[1]) * _SCALES[m[2].lower()]),
    ),
    (
        ("$",),
        re.compile(r"\$\s*(\d+(?:\.\d+)?)(k|m|bn|b)\b", re.IGNORECASE),
        _number(lambda m: float(m[1]) * _MONEY_SCALES[m[2].lower()]),
    ),
    (
        tuple(d for d in _DENOMINATORS if d.endswith("s")),
        re.compile(rf"\b(\d+)\s+({_PLURAL_PARTS})\b", re.IGNORECASE),
        _number(lambda m: float(m[1]) / _DENOMINATORS[m[2].lower()]),
    ),
]


def _compounds(text: str) -> str:
    """``text`` with each quantity of ``_COMPOUNDS`` written as its digits."""
    low = text.lower()
    for needs, pattern, replace in _COMPOUNDS:
        if any(word in low for word in needs) and pattern.search(text):
            text = pattern.sub(replace, text)
    return text


# every word ``_read`` may read as (part of) a number; any other word is passed on as a word
_NUMBER_WORDS = frozenset(
    [*_UNITS, *_TENS, *_SCALES, *_SPANS, *_DENOMINATORS, *_ALONE, *_COUNTED_ALONE, *_ORDINALS, "and"]
)


def _read(text: str, number: Callable[[float], None], word: Callable[[str], None]) -> None:
    """Read ``text`` in order, passing each number (digits or words) to ``number`` and every other
    word to ``word``."""
    words = _WordNumber(number)
    prev = ""
    for tok in _TOKEN.findall(_compounds(text or "")):
        low = tok.lower()
        if low not in _NUMBER_WORDS and tok[0].isalpha():  # most words: the last branch below, sooner
            if words.last:
                words.emit()
            word(tok)
        elif not tok[0].isalpha():
            words.emit()
            number(_digits_value(tok))
        elif low in _UNITS:
            words.unit(_UNITS[low])
        elif low in _TENS:
            words.tens(_TENS[low])
        elif low in _SCALES and words.value is not None:
            words.scale(_SCALES[low])
        elif low in _SCALES and prev in ("a", "an"):  # "a hundred and twenty" → 120
            words.unit(1)
            words.scale(_SCALES[low])
        elif low in _SPANS and words.value is not None:  # "four decades" → 40
            words.scale(_SPANS[low])
        elif low in _DENOMINATORS and words.last in ("unit", "tens") and not words.total:
            words.fraction(_DENOMINATORS[low])
        elif low in _DENOMINATORS and prev in ("a", "an") and low not in ("half", "quarter"):  # "a third"
            words.emit()
            number(1 / _DENOMINATORS[low])
        elif low in _ALONE:
            words.emit()
            number(_ALONE[low])
        elif low in _COUNTED_ALONE and prev in _COUNTING:
            words.emit()
            number(_COUNTED_ALONE[low])
        elif low in _ORDINALS and words.value is None:
            number(_ORDINALS[low])
        elif low == "and" and words.last in ("hundred", "scale"):
            continue
        else:
            words.emit()
            word(tok)
        prev = low
    words.emit()


# a number followed by one of these words is also read in the related unit: "half an hour" agrees
# with "30 minutes", "2 feet" with "24 inches", "6 times older" with "one-sixth of"
_CONVERSIONS: dict[str, tuple[float, ...]] = {
    "hour": (60,),
    "minute": (1 / 60, 60),
    "second": (1 / 60,),
    "day": (24, 1 / 7),
    "week": (7,),
    "month": (1 / 12,),
    "year": (12,),
    "foot": (12,),
    "feet": (12,),
    "inch": (1 / 12,),
    "inches": (1 / 12,),
    "dozen": (12,),
    "percent": (1 / 100,),
    "%": (1 / 100,),
    "cent": (1 / 100,),
    "dollar": (100,),
    "time": ("reciprocal",),  # type: ignore[dict-item]
}
_FILLER = frozenset("a an of the".split())


def _unit(word: str) -> str:
    w = word.lower()
    return w[:-1] if w.endswith("s") and w[:-1] in _CONVERSIONS else w


def equivalents(text: str) -> Counter[float]:
    """The numbers of ``text`` (``numbers_in``) and what each is in a related unit or form, read
    from the word after it: hours ↔ minutes ↔ seconds, days ↔ weeks, years ↔ months, feet ↔
    inches, percent → fraction, dollars ↔ cents, "N times" → 1/N; a fraction 1/N also reads as N
    and a decimal under 1 as a percentage. For the side whose numbers are searched (the train
    text), so a rephrase that writes a quantity another way still agrees."""
    return numbers_and_equivalents(text)[1]


def numbers_and_equivalents(text: str) -> tuple[Counter[float], Counter[float]]:
    """(``numbers_in(text)``, ``equivalents(text)``) from one reading of the text."""
    plain: Counter[float] = Counter()
    found: Counter[float] = Counter()
    pending: list[float] = []

    def number(v: float) -> None:
        plain[v] += 1
        found[v] += 1
        if 0 < v < 1:
            found[round(v * 100, 6)] += 1
            if abs(1 / v - round(1 / v)) < 1e-9:
                found[float(round(1 / v))] += 1
        pending.append(v)

    def word(w: str) -> None:
        if w.lower() in _FILLER or not pending:
            return
        if w.lower() == "s":  # a decade: "the 80s" is "the 1980s"
            for v in pending:
                if v % 10 == 0 and 10 <= v < 100:
                    found[1900 + v] += 1
                elif v % 10 == 0 and 1900 <= v < 2000:
                    found[v - 1900] += 1
        for factor in _CONVERSIONS.get(_unit(w), ()):
            for v in pending:
                if factor == "reciprocal":
                    if v:
                        found[round(1 / v, 6)] += 1
                else:
                    found[round(v * factor, 6)] += 1
        pending.clear()

    _read(_PER_CENT.sub("percent", (text or "").replace("%", " percent")), number, word)
    return plain, found


def numbers_in(text: str) -> Counter[float]:
    """The multiset of numbers a text mentions, digits and English number words alike."""
    found: Counter[float] = Counter()

    def number(v: float) -> None:
        found[v] += 1

    _read(text, number, lambda w: None)
    return found


def canonical_words(text: str) -> str:
    """The text as a rephrase leaves it recognisable: lowercase words, every number (digits or
    words) as ``n<value>`` ("twenty-six" and "26" → "n26"), capitalized words (names, which a
    rephrase changes, and sentence starts) left out. For candidate search, not for display."""
    out: list[str] = []
    _read(text, lambda v: out.append(f"n{v:g}"), lambda w: None if w[0].isupper() else out.append(w.lower()))
    return " ".join(out)


@functools.lru_cache(maxsize=1 << 16)
def digit_key(x: float) -> str:
    """The digits of a number without sign, decimal point, leading or trailing zeros: 129.00, 12900
    and 129 share "129"; 1.5 and 15 share "15"; 0.8 and 08 share "8" — what is left of a number
    when punctuation is stripped."""
    text = f"{abs(x):.6f}".rstrip("0").rstrip(".").replace(".", "")
    return text.strip("0") or "0"


def counted(reference: Counter[float]) -> set[float]:
    """The numbers ``agreement`` counts: distinct, and never 1, which English uses to count and
    refer ("One glass costs $5", "can't think of one") more than as a quantity."""
    return set(reference) - {1.0}


def distinctive(reference: Counter[float]) -> set[float]:
    """The numbers unlikely to agree by chance: not a whole number up to 12 (counts, "twice", "a
    dozen" appear in most word problems) and not a half or a quarter."""
    return {x for x in counted(reference) if not (x == int(x) and 0 <= x <= 12) and x not in (0.5, 0.25, 0.75)}


def distinctive_agreeing(train: Readings, reference: Readings) -> int:
    """How many of the reference's ``distinctive`` numbers the train text has (either reading)."""
    return max(len(distinctive(reference[k]) & set(train[k])) for k in (0, 1))


def leading_agreement(train: Counter[float], reference: Counter[float], k: int) -> float | None:
    """Share of the train text's first ``k`` distinct numbers (a 1 left out) that the reference
    has: the other direction of ``agreement``. A worked answer repeats many numbers, so the eval
    item's few are often somewhere in it by chance; the numbers a text opens with are its own
    problem's, and a rephrase opens with the eval item's."""
    first = [x for x in train if x != 1.0][:k]
    found = sum(x in reference or (0 < x < 1 and round(1 / x, 6) in reference) for x in first)  # 1/N reads as N
    return found / len(first) if first and k else None


def agreement(train: Counter[float], reference: Counter[float]) -> float | None:
    """Share of the reference's distinct numbers that the train text also has; None when the
    reference mentions no number (the signal says nothing then). Distinct, because a rephrase
    merges repeats ("3 pairs of shorts, 3 pairs of pants" → "3 pairs each of shorts and pants");
    a 1 is left out, because English counts with it ("One glass costs $5" → "$5 apiece"). A
    number the train text only has with its punctuation stripped ("$129.00" → "12900", "$0.8" →
    "08") still counts, when it is a decimal or at least two digits are left to compare (so 1, 10
    and 100 stay apart)."""
    values = counted(reference)
    if not values:
        return None
    missing = [x for x in values if x not in train]  # (the few numbers of the reference looked up)
    eligible = [x for x in missing if x != int(x) or len(digit_key(x)) >= 2]
    recovered = 0
    if eligible:  # the stripped keys are read only when a missing number could be found by them
        stripped = {digit_key(x) for x in train if x not in values}
        recovered = sum(1 for x in eligible if digit_key(x) in stripped)
    return (len(values) - len(missing) + recovered) / len(values)


_INSIDE_NUMBER = re.compile(r"(?<=\d)[.,:](?=\d)")


def digits_joined(text: str) -> str:
    """The text with the punctuation inside numbers removed ("8:00" → "800", "$6.50" → "$650",
    "5:6" → "56", "1,000" → "1000"): what a light edit that strips punctuation leaves."""
    return _INSIDE_NUMBER.sub("", text or "")


def number_readings(text: str, searched: bool = False) -> Readings:
    """The numbers of a text read as written and read from ``digits_joined(text)``; for the
    ``searched`` side (train), with their ``equivalents`` in related units."""
    read = equivalents if searched else numbers_in
    return read(text), numbers_in(digits_joined(text))


def both_readings(text: str) -> tuple[Readings, Readings]:
    """(``number_readings(text, searched=True)``, ``number_readings(text)``) — except that the
    plain reading reads a "%" as the word "percent" — from two readings instead of four, and one
    where ``digits_joined`` leaves the text as it is and it has no "%" (then the joined reading
    reads the same string as the plain one)."""
    plain, found = numbers_and_equivalents(text)
    joined_text = digits_joined(text)
    joined = Counter(plain) if joined_text == (text or "") and "%" not in joined_text else numbers_in(joined_text)
    return (found, joined), (plain, joined)


def readings_agreement(train: Readings, reference: Readings) -> float | None:
    """``agreement`` of the two texts read alike, the better of the two readings: a copy whose
    punctuation was stripped ("800 am" for "8:00 AM") agrees in full on the joined reading."""
    found = [a for a in (agreement(train[0], reference[0]), agreement(train[1], reference[1])) if a is not None]
    return max(found) if found else None


def parse_number(text: str | None) -> float | None:
    """A final answer as a number ("1,234", "$5", "3.50"), or None."""
    if text is None:
        return None
    m = re.search(r"-?\d+(?:,\d{3})*(?:\.\d+)?", text)
    return float(m.group(0).replace(",", "")) if m else None
