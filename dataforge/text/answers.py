"""Final answers compared exactly: the equality behind the ``math`` grader.

- A numeric answer is read as an exact rational (``fractions.Fraction``): ``1,000`` = ``1000.00``
  = ``$1000`` = ``1000 dollars``; ``0.5`` = ``1/2`` = ``50%``-free ``.5``; ``1005`` ≠ ``1000`` and
  ``0.3333333`` ≠ ``1/3``; a mixed number is its value (``5 1/2`` = ``5.5`` = ``11/2``, with a
  proper fraction only: ``5 6/3`` is no number). A percent sign is read as the number before it (GSM8K's "what percent"
  answers are bare numbers). Scientific notation is read exactly too: ``1.5e2`` = ``1.5E+02`` =
  ``150``; the typeset minus sign (U+2212) is a minus, and LaTeX's ``\\%`` a percent sign. What only
  typesets an answer is read past: Markdown emphasis around it (``**5**``), inline math
  delimiters (``$5$``, ``\\(5\\)``, ``$150$ dollars``), a unit in ``\\text{…}`` (``18\\text{ dollars}``,
  ``150\\text{ cm}^2``) or after the number (``5 cm²``), a degree
  sign, LaTeX's thin space between thousands (``1\\,500``) and a sentence's closing period.
- An answer written as mathematics (LaTeX, an expression with variables or operators) is parsed
  with math-verify, the field's library; numbers it yields are compared exactly, never by
  rounding; expressions symbolically.
- Anything else (a choice letter, a word) is compared as text, case and spacing aside; a choice
  letter in parentheses is the letter (``(B)`` = ``B``).

Text that mixes words and numbers ("not 6 but 5", "18 or 20") is none of these and equals
nothing but the same text: a verifier never guesses which number was meant.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from functools import lru_cache
from typing import Any

_MINUS_SIGN = "\u2212"  # "−5", as typeset text writes it, is -5
_EMPHASIS = re.compile(r"^(\*\*|__|\*|_)(.+?)\1$", re.DOTALL)  # Markdown: "**5**", "*5*"
_INLINE_MATH = re.compile(r"^(?:\$\$(.+)\$\$|\$([^$]+)\$|\\\((.+)\\\)|\\\[(.+)\\\])$", re.DOTALL)  # "$5$", "\\(5\\)"
_CHOICE_LETTER = re.compile(r"^\(([A-Za-z])\)$")  # "(B)", as multiple-choice answers are written
_THIN_SPACE_THOUSANDS = re.compile(r"(?<=\d)\\,(?=\d{3}(?!\d))")  # LaTeX "1\,500"
# "18\text{ dollars}", "150\text{ cm}^2": a unit (its power too)
_TEXT_COMMAND = re.compile(r"\\(?:text|textrm|mathrm|mbox)\{([^{}]*)\}(?:\^\{?[23]\}?)?")
_TEXT_ANSWER = re.compile(r"^\\(?:text|textrm|textbf|textit|mathrm|mathbf|mbox)\{([^{}]*)\}$")  # "\text{yes}": yes
_CURRENCY = re.compile(r"^(?:\\?\$|€|£|¥|USD|EUR)\s*")
_PLAIN = re.compile(r"^[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:(?<=\d)[eE][-+]?\d+)?$")  # "1.5e2" = 150
_RATIO = re.compile(r"^([-+]?\d+)\s*/\s*(\d+)$")
# "5 1/2", "-2 3/4 cups": a whole number and a proper fraction (a unit word may follow)
_MIXED = re.compile(r"^([-+]?)(\d+)\s+(\d+)/(\d+)(?:\s+[A-Za-z]+[²³]?\.?)?$")
_UNIT = re.compile(r"^([^\sA-Za-z]+)\s+[A-Za-z]+[²³]?\.?$")  # "18 dollars", "5 cm", "5 cm²"
_MATH_THEN_UNIT = re.compile(r"^\$([^$]+)\$(\s+[A-Za-z]+[²³]?\.?)$")  # "$150$ dollars": 150 dollars
_LATEX_COMMAND = re.compile(r"\\(?:[A-Za-z]+|[{}%,;:! ])")  # "\frac", and "\{" "\," (a set's braces, spaces)
_MATH_CHARS = re.compile(r"^[\w\s+\-*/^().,{}\[\]=<>|!'√π∞·×÷]+$")


def exact_number(text: str) -> Fraction | None:
    """``text`` as an exact rational if it is just a number (with an optional currency sign,
    thousands separators, a percent sign or one unit word), else None."""
    return _number(_unwrapped(text))


def _number(answer: str) -> Fraction | None:
    """``exact_number`` of an answer already ``_unwrapped``."""
    s = answer.rstrip(".").strip()
    s = _CURRENCY.sub("", _MATH_THEN_UNIT.sub(r"\1\2", _TEXT_COMMAND.sub(r" \1", s))).strip()
    mixed = _MIXED.match(s)
    if mixed:
        sign, whole, num, den = mixed.group(1), int(mixed.group(2)), int(mixed.group(3)), int(mixed.group(4))
        if not 0 < num < den:  # "5 6/3" is no mixed number: two numbers, never guessed
            return None
        value = whole + Fraction(num, den)
        return -value if sign == "-" else value
    unit = _UNIT.match(s)
    if unit:
        s = unit.group(1)
    s = s.removesuffix("\\%").removesuffix("%").removesuffix("°").strip()  # (LaTeX's "\%" first: "5\%" is 5)
    s = _THIN_SPACE_THOUSANDS.sub(",", s)
    ratio = _RATIO.match(s)
    if ratio:
        den = int(ratio.group(2))
        return Fraction(int(ratio.group(1)), den) if den else None
    if not s or not _PLAIN.match(s) or not any(c.isdigit() for c in s):
        return None
    return Fraction(s.replace(",", ""))


def looks_mathematical(text: str) -> bool:
    """Whether ``text`` is written as mathematics: LaTeX, or operators and one-letter variables,
    with no English words (which would make math-verify pick one number out of a sentence)."""
    s = text.strip().strip("$").strip()
    if not s or not _MATH_CHARS.match(_LATEX_COMMAND.sub(" ", s)):
        return False
    words = re.findall(r"[A-Za-z]+", _LATEX_COMMAND.sub(" ", s))
    return all(len(w) == 1 for w in words)


def _plain_text(text: str) -> str:
    return " ".join(text.strip().rstrip(".").split()).casefold()


def _unwrapped(answer: str) -> str:
    """An answer without what only typesets it: the typeset minus sign read as "-", Markdown
    emphasis ("**5**" is 5; chat models bold their answers), inline math delimiters ("$5$",
    "\\(5\\)": the Minerva MATH format), a text command ("\\text{yes}" is yes) and a choice
    letter's parentheses ("(B)" is B) around the whole answer, and the period that ends the
    sentence ("$\\frac{1}{2}$." is one half)."""
    s = answer.replace(_MINUS_SIGN, "-").strip().removesuffix(".").rstrip()
    for wrapper in (_EMPHASIS, _INLINE_MATH, _TEXT_ANSWER, _CHOICE_LETTER):
        found = wrapper.match(s)
        if found:  # what it wraps: its last group that matched
            s = next(g for g in reversed(found.groups()) if g is not None).strip().removesuffix(".").rstrip()
    return s


def answers_equal(stated: str, reference: str) -> bool:
    """Whether a stated final answer equals the reference answer exactly (see the module doc)."""
    stated, reference = _unwrapped(stated), _unwrapped(reference)
    a, b = _number(stated), _number(reference)
    if a is not None and b is not None:
        return a == b
    if _plain_text(stated) == _plain_text(reference):
        return True
    if (a is not None or looks_mathematical(stated)) and (b is not None or looks_mathematical(reference)):
        return _math_equal(stated, reference, a, b)
    return False


def _math_equal(stated: str, reference: str, a: Fraction | None, b: Fraction | None) -> bool:
    import sympy

    left = _as_sympy(stated, a)
    right = _as_sympy(reference, b)
    if left is None or right is None:
        return False
    try:
        if getattr(left, "is_number", False) and getattr(right, "is_number", False):
            return bool(
                sympy.simplify(sympy.nsimplify(left, rational=True) - sympy.nsimplify(right, rational=True)) == 0
            )
        from math_verify import verify

        return bool(verify(right, left, timeout_seconds=_timeout()))
    except Exception:  # sympy cannot compare these objects: not equal, never a crash of the build
        return False


def _timeout() -> int | None:
    """math-verify's timeouts use signals, which only the main thread can set."""
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=65536)
def _parse(text: str) -> Any:
    from math_verify import LatexExtractionConfig, parse

    s = text.strip()
    if not s.startswith("$"):
        s = f"${s}$"
    found = parse(s, extraction_config=[LatexExtractionConfig()], parsing_timeout=_timeout())
    return found[0] if found else None


def _as_sympy(text: str, number: Fraction | None) -> Any:
    import sympy

    if number is not None:
        return sympy.Rational(number.numerator, number.denominator)
    return _parse(text)
