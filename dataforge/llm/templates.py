"""Jinja2 prompt templates over row columns, checked at plan time.

Templates render in a sandbox with ``StrictUndefined``: a variable that is not a column of the
input is a plan-time error (``template_variables`` + the column contract), never an empty string.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from dataforge.errors import RecipeError

_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


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
    return compile_template(source).render(**row)
