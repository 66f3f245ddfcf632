"""Text normalization as polars expressions: Unicode form, whitespace, case.

``collapse`` keeps line structure (worked solutions and code need their newlines) but folds
runs of spaces and tabs, trims each line, turns CRLF into LF and at most one blank line.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Literal

import numpy as np
import polars as pl

UnicodeForm = Literal["NFC", "NFKC", "NFD", "NFKD"]
Whitespace = Literal["collapse", "strip", "keep"]

_HSPACE = r"[ \t\f\v\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+"
# a whitespace run other than one plain space: replacing these with " " folds every run as
# ``\s+`` → " " does, with a match only where something changes (5x faster on chat text)
_UNFOLDED = r"\s\s+|[^\S ]"
# characters that print as nothing: the soft hyphen, zero-width spaces, joiners and non-joiners, the
# word joiner, the byte-order mark, bidirectional marks and isolates. NFKC keeps them, so
# "What is 2+2?\u200b" (a copy from a web page) and "What is 2+2?" were two prompts to every
# comparison; they are dropped from comparison keys only, never from the text a step emits (a
# joiner shapes Persian, Indic scripts and emoji sequences).
INVISIBLE = "[\u00ad\u034f\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff]"


def comparable_expr(expr: pl.Expr) -> pl.Expr:
    """The text two rows are compared by for equality: without invisible characters (``INVISIBLE``),
    NFKC, lowercase, every run of whitespace (line breaks included) folded to one space."""
    return normalize_expr(expr.str.replace_all(INVISIBLE, ""), lowercase=True).str.replace_all(_UNFOLDED, " ")


def normalize_expr(
    expr: pl.Expr, form: UnicodeForm | None = "NFKC", whitespace: Whitespace = "collapse", lowercase: bool = False
) -> pl.Expr:
    """An expression that normalizes the string column ``expr``."""
    if form is not None:
        expr = expr.str.normalize(form)
    if whitespace == "collapse":
        expr = (
            expr.str.replace_all(r"\r\n?", "\n")
            .str.replace_all(_HSPACE, " ")
            .str.replace_all(r" ?\n ?", "\n")
            .str.replace_all(r"\n{3,}", "\n\n")
            .str.strip_chars()
        )
    elif whitespace == "strip":
        expr = expr.str.strip_chars()
    if lowercase:
        expr = expr.str.to_lowercase()
    return expr


_NON_ASCII_RUN = r"[\x00-\x7f]?[^\x00-\x7f]+"  # a run of non-ASCII characters and the character before it


def changed_by_nfkc(text: pl.Series, lowercase: bool = True) -> pl.Series:
    """Which texts NFKC (with ``lowercase``, NFKC + lowercasing) would change beyond the ASCII
    lowercasing that is cheap everywhere. Decided per distinct non-ASCII run (with the character
    before it, the only one a combining mark can compose with), not per row, and only in texts
    with more bytes than characters: ASCII never changes under NFKC, so a text changes only where
    one of its runs does. On the dedup benchmark's corpus 42 % of the rows hold non-ASCII text
    and 0.1 % need normalizing."""
    changed = np.zeros(len(text), dtype=bool)
    wide = np.nonzero((text.str.len_bytes() != text.str.len_chars()).fill_null(False).to_numpy())[0]
    if not len(wide):
        return pl.Series(changed)
    runs = text.gather(wide).str.extract_all(_NON_ASCII_RUN)
    distinct = runs.explode().drop_nulls().unique().to_list()

    def changes(run: str) -> bool:
        if not lowercase:
            return unicodedata.normalize("NFKC", run) != run
        head = run[0].lower() if run[0].isascii() else run[0]
        return unicodedata.normalize("NFKC", run).lower() != head + run[1:]

    changing = [run for run in distinct if changes(run)]
    if changing:
        changed[wide] = runs.list.eval(pl.element().is_in(changing)).list.any().fill_null(False).to_numpy()
    return pl.Series(changed)


# superscripts, subscripts and vulgar fractions: NFKC turns "5²" into "52" and "x₂" into "x2"
_MATH_COMPAT = re.compile("([\u00b2\u00b3\u00b9\u00bc-\u00be\u2070-\u209f\u2150-\u215f\u2189]+)")


def nfkc_keeping_math(text: str) -> str:
    """NFKC of ``text`` except its superscripts, subscripts and vulgar fractions, whose folding
    changes what the text says ("5² = 25" would read "52 = 25", "½" "1⁄2"); the rest is folded
    as NFKC folds it (full-width digits, ligatures, no-break spaces)."""
    parts = _MATH_COMPAT.split(text)  # (the pattern's group keeps the runs, at odd positions)
    return "".join(part if k % 2 else unicodedata.normalize("NFKC", part) for k, part in enumerate(parts))


def nfkc_where_needed(
    text: pl.Series, lowercase: bool = True, lowercase_rest: bool | None = None, keep_math: bool = False
) -> pl.Series:
    """NFKC (+ lowercase) of the texts ``changed_by_nfkc`` finds — CPython's unicodedata, ~3x
    faster than polars' str.normalize here (measured) — and the rest lowercased (ASCII case only,
    so the same as NFKC + lowercase) when ``lowercase_rest`` (default: ``lowercase``), else left
    as they are (the MinHash kernel lowercases ASCII itself). ``keep_math``: superscripts,
    subscripts and vulgar fractions are kept (``nfkc_keeping_math``)."""
    rest = lowercase if lowercase_rest is None else lowercase_rest
    idx = changed_by_nfkc(text, lowercase).arg_true()
    out = text.str.to_lowercase() if rest else text
    if len(idx):
        texts = text.gather(idx).to_list()
        fold = nfkc_keeping_math if keep_math else lambda t: unicodedata.normalize("NFKC", t)
        normalized = [fold(t) for t in texts]
        out = out.scatter(idx, pl.Series([t.lower() for t in normalized] if lowercase else normalized, dtype=pl.String))
    return out


def normalize_text(
    text: pl.Series,
    form: UnicodeForm | None = "NFKC",
    whitespace: Whitespace = "collapse",
    lowercase: bool = False,
    keep_math: bool = False,
    keep_code: bool = False,
) -> pl.Series:
    """``normalize_expr`` of a column, computed faster for NFKC: only the texts it changes are
    normalized (most are ASCII). The same result (tested). ``keep_math`` (NFKC only): superscripts,
    subscripts and vulgar fractions are kept as they are (``nfkc_keeping_math``). ``keep_code``
    (for text a step emits, not for comparison keys): ``collapse`` keeps indentation and fenced
    code blocks (``collapse_keeping_code``) in the texts that have either."""
    if form == "NFKC":
        text = nfkc_where_needed(text, lowercase, keep_math=keep_math)
    else:
        text = pl.select(normalize_expr(pl.lit(text), form, "keep", lowercase)).to_series()
    if whitespace == "keep":
        return text
    if whitespace == "strip":
        return text.str.strip_chars()
    coded = pl.Series([False] * len(text), dtype=pl.Boolean)
    if keep_code:
        coded = text.str.contains(_CODE_LAYOUT).fill_null(False)
    # collapse: its four regex passes only over the texts they would change
    folded = _where(
        text,
        text.str.contains(_COLLAPSES) & ~coded,
        lambda t: pl.select(normalize_expr(pl.lit(t), None)).to_series(),
    )
    return _where(folded, coded, lambda t: pl.Series([collapse_keeping_code(x) for x in t], dtype=pl.String))


# a text with layout that whitespace carries: an indented line after the first, or a fenced code block
_CODE_LAYOUT = r"\n[ \t]+\S|(?m)^[ \t]*(?:```|~~~)"
_FENCE = re.compile(r"^[ \t]*(```|~~~)")
_LINE_HSPACE = re.compile(_HSPACE)
# a string literal on one line: its spaces are its value ('a   b' is not 'a b')
_QUOTED = re.compile(r"""("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')""")


def _fold_outside_quotes(body: str) -> str:
    """A line's runs of spaces folded to one, but not inside a string literal on it (an apostrophe
    in prose may open one: such a line keeps some runs, never loses a literal's value)."""
    if "'" not in body and '"' not in body:
        return _LINE_HSPACE.sub(" ", body)
    parts = _QUOTED.split(body)  # literals at odd positions
    return "".join(part if k % 2 else _LINE_HSPACE.sub(" ", part) for k, part in enumerate(parts))


def collapse_keeping_code(text: str) -> str:
    """``collapse`` for a text whose whitespace is layout (code, nested Markdown lists): CRLF → LF,
    at most one blank line, each line's trailing whitespace trimmed and its inner runs of spaces
    folded outside string literals, but every line's indentation kept, and the lines of a fenced
    code block (```` ``` ```` or ``~~~``) kept exactly. The text's leading blank lines and
    trailing whitespace are trimmed; its first line's indentation is kept when a later line is
    indented (the body of a function written from its first statement), else trimmed. Folding
    indentation turned Python code into text that no longer parses ("def f(x):\n    return x" →
    "def f(x):\nreturn x")."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    fence: str | None = None
    for line in lines:
        opened = _FENCE.match(line)
        if fence is not None:  # inside a fenced block: verbatim, up to its closing fence
            out.append(line)
            if opened and opened.group(1) == fence and not line.strip()[3:].strip(" `~"):
                fence = None
            continue
        if opened:
            fence = opened.group(1)
        body = line.lstrip(" \t")
        indent = line[: len(line) - len(body)]
        body = _fold_outside_quotes(body).rstrip()
        if not body and out and not out[-1]:
            continue  # at most one blank line
        out.append(indent + body if body else "")
    while out and not out[0].strip():
        out.pop(0)
    while out and not out[-1].strip():
        out.pop()
    if out and not any(line[:1] in (" ", "\t") and line.strip() for line in out[1:]):
        out[0] = out[0].lstrip()
    return "\n".join(out).rstrip()


def visible_text(text: pl.Series) -> pl.Series:
    """``text`` without its invisible characters (``INVISIBLE``), touching only the texts that hold
    one: the first step of every comparison key."""
    wide = np.nonzero((text.str.len_bytes() != text.str.len_chars()).fill_null(False).to_numpy())[0]
    if not len(wide):  # (every invisible character is outside ASCII: most texts are read no further)
        return text
    holds = np.zeros(len(text), dtype=bool)
    holds[wide] = text.gather(wide).str.contains(INVISIBLE).fill_null(False).to_numpy()
    return _where(text, pl.Series(holds), lambda t: t.str.replace_all(INVISIBLE, ""))


def comparable_text(text: pl.Series) -> pl.Series:
    """``comparable_expr`` of a column, computed faster: invisible characters dropped and NFKC
    only in the texts they are in (NFKC: most texts are ASCII), then every whitespace run folded to
    one space and the ends trimmed (only in the texts where that changes something)."""
    text = nfkc_where_needed(visible_text(text))
    return _where(text, text.str.contains(_FOLDS), lambda t: t.str.replace_all(_UNFOLDED, " ").str.strip_chars())


# texts that the whitespace rules change: a CR, a run of horizontal space or one that is not " ",
# a space beside a line break, three line breaks, or whitespace at either end
_ODD_HSPACE = r"[\t\f\v\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]"
_COLLAPSES = rf"\r|{_HSPACE[:-1]}{{2,}}|{_ODD_HSPACE}| \n|\n |\n{{3}}|^\s|\s$"
_FOLDS = r"\s{2}|[^\S ]|^\s|\s$"  # a whitespace run, whitespace other than " ", or at an end


def _where(text: pl.Series, mask: pl.Series, fn: Callable[[pl.Series], pl.Series]) -> pl.Series:
    """``text`` with ``fn`` applied to the rows ``mask`` marks (null: left as they are)."""
    idx = mask.fill_null(False).arg_true()
    if len(idx) == 0:
        return text
    return text.scatter(idx, fn(text.gather(idx)))
