"""Jinja2 prompt templates over row columns, checked at plan time.

Templates render in a sandbox with ``StrictUndefined``: a variable that is not a column of the
input is a plan-time error (``template_variables`` + the column contract), never an empty string.
A null value the template prints (a row whose ``question`` is null) is a ``DataError`` naming the
row, never the text "None" sent to a model; a template may still test for it (``{% if x %}``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from dataforge.errors import DataError, RecipeError


class _NullPrinted(Exception):
    """A template printed a null value."""


def _not_null(value: Any) -> Any:
    if value is None:
        raise _NullPrinted
    return value


_ENV = SandboxedEnvironment(
    undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False, finalize=_not_null
)


def template_variables(source: str, key: str = "template") -> set[str]:
    """The row columns a template reads; a syntax error is a RecipeError on ``key``."""
    try:
        return set(meta.find_undeclared_variables(_ENV.parse(source)))
    except jinja2.TemplateSyntaxError as exc:
        raise RecipeError(f"template syntax error on its line {exc.lineno}: {exc.message}", key=key) from None


@lru_cache(maxsize=64)
def compile_template(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def render(source: str, row: dict[str, Any]) -> str:
    """``source`` rendered over the row's columns; a printed null is a DataError naming the row and
    its null columns."""
    try:
        return compile_template(source).render(**row)
    except _NullPrinted:
        nulls = sorted(v for v in template_variables(source) if row.get(v) is None)
        raise DataError(
            f"row {row.get('_id', '?')}: the template prints a null value ({', '.join(nulls) or 'an expression'}); "
            f"drop such rows before this step (clean.filter with required: [{', '.join(nulls)}]) or test for it "
            "in the template ({% if … %})"
        ) from None
