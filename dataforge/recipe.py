"""Recipe files: YAML → frozen pydantic models, with the YAML line of every key kept for errors.

A recipe::

    name: gsm8k_reasoning
    steps:                       # an ordered mapping: step name → kind, inputs and config
      train_raw:
        kind: source
        path: data/gsm8k/train.jsonl
      clean:
        kind: clean.normalize
        inputs: {train: train_raw}   # input name → "step" or "step.output"
        fields: [question, answer]   # every other key is the step's config
    datasets:                    # what is exported: dataset → split → "step.output"
      gsm8k_sft:
        splits: {train: sft.train, validation: sft.validation}
    models:                      # optional: model name → ModelSpec; steps say `model: <name>`
      policy: {backend: vllm, model: Qwen/Qwen2.5-Math-1.5B-Instruct}
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dataforge.errors import RecipeError
from dataforge.yamlpos import Path_, load_yaml_with_lines

Executor = Literal["local", "ray"]  # where a build's steps run (engine.runner.executor_setting)
EXECUTORS: tuple[str, ...] = typing.get_args(Executor)

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
RESERVED_STEP_KEYS = ("kind", "inputs", "resources")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskResources(_Frozen):
    """What each Ray task of a step asks the cluster for (``resources:`` on a step): Ray's own
    ``num_cpus``, ``num_gpus`` and ``memory`` (bytes) task options. A step holding a model on a GPU
    asks ``num_gpus: 1``, so each GPU runs one of its tasks at a time (one model per GPU); more
    ``num_cpus`` runs fewer of them at once. Placement only: the rows and the step's fingerprint do
    not depend on it, and the local executor runs the step in its own process as always."""

    num_cpus: float | None = Field(default=None, gt=0)
    num_gpus: float | None = Field(default=None, ge=0)
    memory: int | None = Field(default=None, gt=0)

    def ray_options(self) -> dict[str, float | int]:
        """The task options Ray takes (the keys given)."""
        return self.model_dump(exclude_none=True)


class StepSpec(_Frozen):
    """One step as written: its kind, named inputs (input name → "step[.output]"), raw config and
    the resources its Ray tasks ask for."""

    kind: str
    inputs: dict[str, str] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    resources: TaskResources = Field(default_factory=TaskResources)


class DatasetSpec(_Frozen):
    """An exported dataset: split name → "step[.output]", optional column selection, a description,
    and what the Hub card says of it (licence, language, tags)."""

    splits: dict[str, str]
    columns: list[str] | None = None
    description: str = ""
    license: str | list[str] | None = None  # the Hub licence id(s); default: from the sources' LICENSE files
    language: list[str] = []  # the Hub's language codes, e.g. [en]
    tags: list[str] = []  # extra Hub tags
    tokenizer: str | None = None  # the card's token counts: a hub id or a path (relative to the recipe)

    @field_validator("splits")
    @classmethod
    def _non_empty(cls, v: dict[str, str]) -> dict[str, str]:
        if not v:
            raise ValueError("a dataset needs at least one split")
        for name in v:
            if not NAME_RE.match(name):
                raise ValueError(f"split name {name!r} must be letters, digits, '_' or '-'")
        return v


class Recipe(_Frozen):
    name: str
    description: str = ""
    steps: dict[str, StepSpec]
    datasets: dict[str, DatasetSpec] = Field(default_factory=dict)
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)  # validated as ModelSpec by the planner
    executor: Executor | None = None  # where steps run (--executor and $DATAFORGE_EXECUTOR win)


class LoadedRecipe:
    """A parsed recipe plus where it came from, for errors and for the lineage ``runs`` row."""

    def __init__(self, recipe: Recipe, path: Path, text: str, lines: dict[Path_, int]):
        self.recipe, self.path, self.text, self.lines = recipe, path, text, lines

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def line(self, *at: str | int) -> int | None:
        """The line of the deepest known key along ``at``."""
        for n in range(len(at), 0, -1):
            if at[:n] in self.lines:
                return self.lines[at[:n]]
        return None

    def error(self, message: str, *, step: str | None = None, key: str | None = None) -> RecipeError:
        at: list[str | int] = ["steps", step] if step else []
        if key:
            at.extend(_split_key(key))
        return RecipeError(message, file=str(self.path), line=self.line(*at), step=step, key=key)


def _split_key(key: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in key.split(".")]


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Read and validate the recipe's own structure (step configs are validated by the planner)."""
    path = Path(path)
    data, lines = load_yaml_with_lines(path)
    text = path.read_text(encoding="utf-8")
    file = str(path)
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping with 'name', 'steps' and 'datasets'", file=file, line=1)
    steps_raw = data.get("steps")
    if not isinstance(steps_raw, dict) or not steps_raw:
        raise RecipeError(
            "'steps' must be a non-empty mapping of step name → step", file=file, line=lines.get(("steps",), 1)
        )
    steps: dict[str, Any] = {}
    for name, body in steps_raw.items():
        at = ("steps", name)
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise RecipeError(
                f"step name {name!r} must start with a letter and use letters, digits, '_' or '-'",
                file=file,
                line=lines.get(at),
            )
        if not isinstance(body, dict):
            raise RecipeError("a step must be a mapping with a 'kind'", file=file, line=lines.get(at), step=name)
        if "kind" not in body:
            raise RecipeError("missing 'kind'", file=file, line=lines.get(at), step=name, key="kind")
        inputs = body.get("inputs", {})
        if isinstance(inputs, str):
            inputs = {"data": inputs}
        if not isinstance(inputs, dict) or not all(isinstance(v, str) for v in inputs.values()):
            raise RecipeError(
                "'inputs' must map input names to step references ('step' or 'step.output'), or be one reference",
                file=file,
                line=lines.get((*at, "inputs")),
                step=name,
                key="inputs",
            )
        config = {k: v for k, v in body.items() if k not in RESERVED_STEP_KEYS}
        steps[name] = {"kind": body["kind"], "inputs": inputs, "config": config}
        if body.get("resources") is not None:
            steps[name]["resources"] = body["resources"]
    try:
        recipe = Recipe.model_validate({**data, "steps": steps})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [p for p in err["loc"]]
        step = loc[1] if len(loc) > 1 and loc[0] == "steps" else None
        key = ".".join(str(p) for p in loc)
        raise RecipeError(err["msg"], file=file, line=_line_of(lines, tuple(loc)), step=step, key=key) from None
    return LoadedRecipe(recipe, path, text, lines)


def _line_of(lines: dict[Path_, int], loc: tuple[Any, ...]) -> int | None:
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def parse_ref(ref: str) -> tuple[str, str]:
    """``"step"`` → (step, "data"); ``"step.output"`` → (step, output)."""
    step, _, output = ref.partition(".")
    return step, output or "data"
