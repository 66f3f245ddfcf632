"""Jinja2 prompt templates over row columns, checked at plan time.

Templates render in a sandbox with ``StrictUndefined``: a variable that is not a column of the
input is a plan-time error (``template_variables`` + the column contract), never an empty string.
A null value the template prints (a row whose ``question`` is null) is a ``DataError`` naming the
row, never the text "None" sent to a model; a template may still test for it (``{% if x %}``).
A messages column prints as its text (``role: content`` lines), never as a Python list of dicts.
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


class Conversation(list):
    """A messages column's value in a template: printed (``{{ prompt }}``) as its text
    (``formats.conversation_text``: one turn's content, several as ``role: content`` lines), not as
    a Python list of dicts sent to the model; still a list to loop over (``{% for m in prompt %}``)."""

    def __str__(self) -> str:
        from dataforge.formats import conversation_text

        return conversation_text(self)


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) and "role" in m for m in value)


def render(source: str, row: dict[str, Any]) -> str:
    """``source`` rendered over the row's columns (a messages value printed as its text:
    ``Conversation``); a printed null is a DataError naming the row and its null columns."""
    row = {k: Conversation(v) if _is_messages(v) else v for k, v in row.items()}
    try:
        return compile_template(source).render(**row)
    except _NullPrinted:
        nulls = sorted(v for v in template_variables(source) if row.get(v) is None)
        raise DataError(
            f"row {row.get('_id', '?')}: the template prints a null value ({', '.join(nulls) or 'an expression'}); "
            f"drop such rows before this step (clean.filter with required: [{', '.join(nulls)}]) or test for it "
            "in the template ({% if … %})"
        ) from None
