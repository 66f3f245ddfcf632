"""Text normalization as polars expressions: Unicode form, whitespace, case.

``collapse`` keeps line structure (worked solutions and code need their newlines) but folds
runs of spaces and tabs, trims each line, turns CRLF into LF and at most one blank line.
"""

from __future__ import annotations

from typing import Literal

import polars as pl

UnicodeForm = Literal["NFC", "NFKC", "NFD", "NFKD"]
Whitespace = Literal["collapse", "strip", "keep"]

_HSPACE = r"[ \t\f\v\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+"


def comparable_expr(expr: pl.Expr) -> pl.Expr:
    """The text two rows are compared by for equality: NFKC, lowercase, every run of whitespace
    (line breaks included) folded to one space."""
    return normalize_expr(expr, lowercase=True).str.replace_all(r"\s+", " ")


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
