"""Constitutions for critique → revise loops (Constitutional AI, Bai et al. 2022): a YAML file of
principles, each with a critique request and a revision request.

    name: harmless
    no_violation: "(?i)^\\W*no (violation|issues?|problems?) (found|detected)"   # optional: stop early
    principles:
      - id: harmful
        critique: Identify specific ways in which the assistant's last response is harmful …
        revision: Please rewrite the assistant response to remove any harmful … content.

``no_violation`` is searched in each critique (``re.search``): anchor it at the start (``^``)
unless a critique that names a harm and then says "no violation" elsewhere should stop the loop.

Validated when a recipe is planned: a missing field, an empty principle list, repeated ids or an
invalid ``no_violation`` regex is a ``RecipeError`` naming the file, its line and the principle.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dataforge.errors import RecipeError
from dataforge.text.reasoning import after_thinking
from dataforge.yamlpos import load_yaml_with_lines

ID_RE = r"^[A-Za-z0-9_.-]+$"


class Principle(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=ID_RE)
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)


class Constitution(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "constitution"
    no_violation: str | None = None  # a regex: a critique matching it found nothing to revise
    principles: list[Principle] = Field(min_length=1)

    @field_validator("principles")
    @classmethod
    def _unique_ids(cls, v: list[Principle]) -> list[Principle]:
        ids = [p.id for p in v]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ValueError(f"principle ids repeat: {', '.join(repeated)}")
        return v

    @field_validator("no_violation")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return v

    def by_id(self, pid: str) -> Principle:
        for p in self.principles:
            if p.id == pid:
                return p
        raise KeyError(pid)

    def found_no_violation(self, critique: str) -> bool:
        """Whether the critique, past a thinking model's reasoning, says ``no_violation``."""
        said = after_thinking(critique)
        return bool(self.no_violation and said is not None and re.search(self.no_violation, said))


def load_constitution(path: Path) -> Constitution:
    """Read and validate a constitution file; errors name the file, line and principle."""
    if not path.is_file():
        raise RecipeError(f"constitution file not found: {path}", key="constitution")
    data, lines = load_yaml_with_lines(path)
    if not isinstance(data, dict):
        raise RecipeError(f"{path}:1: a constitution is a mapping with 'principles'", key="constitution")
    try:
        return Constitution.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), 1)
        where = ".".join(str(p) for p in loc) or "(top level)"
        if len(loc) >= 2 and loc[0] == "principles" and isinstance(loc[1], int):
            pid = (data.get("principles") or [{}])[loc[1]]
            pid = pid.get("id") if isinstance(pid, dict) else None
            where = (
                f"principle {loc[1] + 1}" + (f" ('{pid}')" if pid else "") + (f", '{loc[2]}'" if len(loc) > 2 else "")
            )
        msg = "required but missing" if err["type"] == "missing" else err["msg"]
        raise RecipeError(f"{path}:{line}: {where}: {msg}", key="constitution") from None
