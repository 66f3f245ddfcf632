"""Planning: a loaded recipe → a validated DAG of steps with configs, columns and fingerprints.

Everything a recipe can get wrong is found here, before any row is read: unknown kinds and
keys, missing or cyclic inputs, inputs without the columns a step needs, datasets that name
unknown outputs or columns.
"""

from __future__ import annotations

import difflib
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dataforge.embed import is_local_path, resolve_model
from dataforge.engine.fingerprint import file_sha256, output_fingerprint, step_fingerprint
from dataforge.engine.step import ColumnContractError, Columns, PlanInfo, StepConfig, StepDef, get_step
from dataforge.errors import DataforgeError, RecipeError
from dataforge.recipe import LoadedRecipe, load_recipe, parse_ref


@dataclass(frozen=True)
class Ref:
    step: str
    output: str

    def __str__(self) -> str:
        return f"{self.step}.{self.output}"


@dataclass(frozen=True)
class PlannedStep:
    name: str
    stepdef: StepDef
    cfg: StepConfig
    inputs: dict[str, Ref]
    outputs: tuple[str, ...]
    columns: dict[str, Columns]
    fingerprint: str
    resources: dict[str, float | int] = field(default_factory=dict)  # its Ray tasks' options (not fingerprinted)

    @property
    def kind(self) -> str:
        return self.stepdef.kind

    def config_json(self) -> dict[str, Any]:
        return self.cfg.model_dump(mode="json")


@dataclass(frozen=True)
class PlannedDataset:
    name: str
    splits: dict[str, Ref]
    columns: list[str] | None
    description: str
    license: list[str] | None = None  # None: from the sources' LICENSE files
    language: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    tokenizer: str | None = None  # resolved: a local path made absolute, or a hub id


@dataclass
class Plan:
    loaded: LoadedRecipe
    steps: list[PlannedStep]  # topological order
    datasets: dict[str, PlannedDataset]

    @property
    def by_name(self) -> dict[str, PlannedStep]:
        return {s.name: s for s in self.steps}

    @functools.cached_property
    def recipe_sha256(self) -> str:
        return file_sha256(self.loaded.path)

    def ancestors(self, names: set[str]) -> set[str]:
        """``names`` and every step upstream of them."""
        out = set(names)
        for s in reversed(self.steps):
            if s.name in out:
                out.update(r.step for r in s.inputs.values())
        return out

    def descendants(self, names: set[str]) -> set[str]:
        """``names`` and every step downstream of them."""
        out = set(names)
        for s in self.steps:  # topological order: one pass suffices
            if any(r.step in out for r in s.inputs.values()):
                out.add(s.name)
        return out

    def consumers(self) -> dict[str, int]:
        """How many steps and dataset splits read each step output (the runner frees a table
        held in memory after its last reader)."""
        counts: dict[str, int] = {}
        refs = [r for s in self.steps for r in s.inputs.values()]
        refs += [r for d in self.datasets.values() for r in d.splits.values()]
        for r in refs:
            counts[str(r)] = counts.get(str(r), 0) + 1
        return counts


def plan_recipe(
    path: str | Path, models: dict[str, dict[str, Any]] | None = None, settings: list[str] | None = None
) -> Plan:
    """Load and plan a recipe file; raises RecipeError naming file, line, step and key.

    ``models`` replaces entries of the recipe's ``models:`` (name → ModelSpec fields);
    ``settings`` are ``STEP.KEY=VALUE`` strings (VALUE in YAML) that replace step config keys."""
    return build_plan(load_recipe(path), models, settings)


def parse_settings(loaded: LoadedRecipe, settings: list[str]) -> dict[str, dict[str, Any]]:
    """``["solve.n=2", "questions.limit=8"]`` → {"solve": {"n": 2}, "questions": {"limit": 8}}."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in settings:
        target, eq, raw = item.partition("=")
        step_name, dot, key = target.partition(".")
        if not (eq and dot and key):
            raise RecipeError(f"--set {item!r}: expected STEP.KEY=VALUE (e.g. solve.max_tokens=64)")
        if step_name not in loaded.recipe.steps:
            close = difflib.get_close_matches(step_name, list(loaded.recipe.steps), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise RecipeError(
                f"--set {item!r}: the recipe has no step '{step_name}' ({hint}its steps: "
                f"{', '.join(loaded.recipe.steps)})",
                file=str(loaded.path),
            )
        if key in ("kind", "inputs"):
            raise RecipeError(f"--set {item!r}: '{key}' cannot be set from the command line")
        try:
            out.setdefault(step_name, {})[key] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise RecipeError(f"--set {item!r}: the value is not YAML: {exc}") from None
    return out


def _model_specs(loaded: LoadedRecipe, overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The recipe's ``models:`` with overrides applied, each validated as a ModelSpec."""
    from dataforge.llm.spec import ModelSpec

    specs: dict[str, dict[str, Any]] = {}
    unknown = sorted(set(overrides) - set(loaded.recipe.models))
    if unknown:
        known = ", ".join(sorted(loaded.recipe.models)) or "none"
        close = difflib.get_close_matches(unknown[0], list(loaded.recipe.models), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise RecipeError(
            f"--model {unknown[0]}=…: the recipe has no model '{unknown[0]}'{hint}; its models: {known}",
            file=str(loaded.path),
        )
    for name, raw in {**loaded.recipe.models, **overrides}.items():
        where = "the --model option" if name in overrides else None
        try:
            specs[name] = ModelSpec.model_validate(raw).model_dump(mode="json")
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(["models", name, *(str(p) for p in err["loc"])])
            if where:
                raise RecipeError(f"{where}, model '{name}': {key}: {err['msg']}") from None
            line = loaded.line(*key.split("."))
            raise RecipeError(err["msg"], file=str(loaded.path), line=line, key=key) from None
    return specs


def model_keys(config: type[StepConfig]) -> list[str]:
    """The config keys of a step that hold a ModelSpec (a recipe names a model there)."""
    from dataforge.llm.spec import ModelSpec

    return [k for k, f in config.model_fields.items() if ModelSpec in (f.annotation, *typing.get_args(f.annotation))]


def _resolve_models(
    loaded: LoadedRecipe, name: str, sd: StepDef, raw: dict[str, Any], specs: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """A step's ``model: <name>`` (any ModelSpec key) replaced by that model's spec, so the spec
    is validated and fingerprinted. Keys that name other models (embeddings) are left alone."""
    out = dict(raw)
    for key in model_keys(sd.config):
        ref = raw.get(key)
        if not isinstance(ref, str):
            continue
        if ref not in specs:
            known = ", ".join(sorted(specs)) or "none"
            raise loaded.error(f"unknown model '{ref}' (the recipe's models: {known})", step=name, key=key)
        out[key] = specs[ref]
    return out


def build_plan(
    loaded: LoadedRecipe, models: dict[str, dict[str, Any]] | None = None, settings: list[str] | None = None
) -> Plan:
    recipe = loaded.recipe
    specs = _model_specs(loaded, models or {})
    overrides = parse_settings(loaded, settings or [])
    defs: dict[str, StepDef] = {}
    cfgs: dict[str, StepConfig] = {}
    refs: dict[str, dict[str, Ref]] = {}
    for name, spec in recipe.steps.items():
        sd = get_step(spec.kind)
        if sd is None:
            from dataforge.engine.step import REGISTRY

            close = difflib.get_close_matches(spec.kind, sorted(REGISTRY), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; known kinds: {', '.join(sorted(REGISTRY))}"
            raise loaded.error(f"unknown step kind '{spec.kind}'{hint}", step=name, key="kind")
        defs[name] = sd
        raw = {**spec.config, **overrides.get(name, {})}
        cfgs[name] = _validate_config(loaded, name, sd, _resolve_models(loaded, name, sd, raw, specs))
        refs[name] = _parse_inputs(loaded, name, sd, spec.inputs, recipe.steps)

    _check_source_names(loaded, defs, cfgs)
    order = _toposort(loaded, refs)
    info_base = loaded.base_dir
    planned: dict[str, PlannedStep] = {}
    for name in order:
        sd, cfg = defs[name], cfgs[name]
        in_cols: dict[str, Columns] = {}
        in_fps: dict[str, str] = {}
        for in_name, ref in refs[name].items():
            up = planned[ref.step]
            if ref.output not in up.outputs:
                raise loaded.error(
                    f"step '{ref.step}' has no output '{ref.output}' (its outputs: {', '.join(up.outputs)})",
                    step=name,
                    key=f"inputs.{in_name}",
                )
            in_cols[in_name] = up.columns.get(ref.output)
            in_fps[in_name] = output_fingerprint(up.fingerprint, ref.output)
        info = PlanInfo(base_dir=info_base, step=name)
        outputs = sd.outputs(cfg, tuple(refs[name]))
        try:
            out_cols = sd.columns(cfg, in_cols, info)
            data_fp = sd.data_fingerprint(cfg, info) if sd.data_fingerprint else None
        except ColumnContractError as exc:
            via = f" (input '{exc.input_name}' = {refs[name][exc.input_name]})" if exc.input_name else ""
            raise loaded.error(f"{exc}{via}", step=name, key=exc.key) from None
        except RecipeError as exc:  # a columns function that found a bad key value (e.g. a missing file)
            raise loaded.error(exc.detail, step=name, key=exc.key) from None
        except DataforgeError as exc:
            raise loaded.error(str(exc), step=name) from None
        fp = step_fingerprint(sd.kind, sd.version, cfg.fingerprint_json(), in_fps, data_fp)
        planned[name] = PlannedStep(
            name=name,
            stepdef=sd,
            cfg=cfg,
            inputs=refs[name],
            outputs=outputs,
            columns={o: out_cols.get(o) for o in outputs},
            fingerprint=fp,
            resources=recipe.steps[name].resources.ray_options(),
        )

    datasets = {dn: _plan_dataset(loaded, dn, planned) for dn in recipe.datasets}
    return Plan(loaded=loaded, steps=[planned[n] for n in order], datasets=datasets)


def _check_source_names(loaded: LoadedRecipe, defs: dict[str, StepDef], cfgs: dict[str, StepConfig]) -> None:
    """Two sources with one ``name`` would give two different rows the same ``_id``."""
    seen: dict[str, str] = {}
    for step_name, sd in defs.items():
        if sd.kind != "source":
            continue
        prefix = getattr(cfgs[step_name], "name", None) or step_name
        if prefix in seen:
            raise loaded.error(
                f"source name '{prefix}' is already used by step '{seen[prefix]}': their rows would share "
                f"ids ({prefix}:0, {prefix}:1, …); give each source its own 'name'",
                step=step_name,
                key="name",
            )
        seen[prefix] = step_name


def _validate_config(loaded: LoadedRecipe, name: str, sd: StepDef, raw: dict[str, Any]) -> StepConfig:
    try:
        return sd.config.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            known = ", ".join(sd.config.model_fields)
            close = difflib.get_close_matches(str(err["loc"][0]), list(sd.config.model_fields), n=1)
            msg = f"unknown key for kind '{sd.kind}'" + (
                f" (did you mean '{close[0]}'?)" if close else f"; it takes: {known}"
            )
        elif err["type"] == "missing":
            msg = f"required by kind '{sd.kind}' but missing"
        raise loaded.error(msg, step=name, key=key) from None


def _parse_inputs(
    loaded: LoadedRecipe, name: str, sd: StepDef, raw: dict[str, str], steps: dict[str, Any]
) -> dict[str, Ref]:
    if sd.inputs is not None:
        missing = [i for i in sd.inputs if i not in raw]
        unknown = [i for i in raw if i not in sd.inputs]
        if unknown:
            takes = ", ".join(sd.inputs) if sd.inputs else "none (it is a source)"
            raise loaded.error(
                f"kind '{sd.kind}' has no input '{unknown[0]}'; it takes: {takes}",
                step=name,
                key=f"inputs.{unknown[0]}",
            )
        if missing:
            raise loaded.error(f"kind '{sd.kind}' needs input '{missing[0]}'", step=name, key="inputs")
    elif not raw:
        raise loaded.error(f"kind '{sd.kind}' needs at least one input", step=name, key="inputs")
    out: dict[str, Ref] = {}
    for in_name, ref in raw.items():
        up, output = parse_ref(ref)
        if up not in steps:
            close = difflib.get_close_matches(up, list(steps), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise loaded.error(f"no step named '{up}'{hint}", step=name, key=f"inputs.{in_name}")
        twin = next((n for n, r in out.items() if r == Ref(up, output)), None)
        if twin is not None:  # a leakage check or audit of a table against itself, a dedup against itself
            raise loaded.error(
                f"inputs '{twin}' and '{in_name}' both read {up}.{output}: a step keeps its inputs apart (it compares "
                "them, or writes each its own output); feed each its own table",
                step=name,
                key=f"inputs.{in_name}",
            )
        out[in_name] = Ref(up, output)
    return out


def _toposort(loaded: LoadedRecipe, refs: dict[str, dict[str, Ref]]) -> list[str]:
    """Kahn's algorithm, ties broken by recipe order so the plan is stable."""
    order_index = {n: i for i, n in enumerate(refs)}
    deps = {n: {r.step for r in rs.values()} for n, rs in refs.items()}
    done: list[str] = []
    ready = [n for n in refs if not deps[n]]
    while ready:
        ready.sort(key=order_index.__getitem__)
        n = ready.pop(0)
        done.append(n)
        for m in refs:
            if n in deps[m]:
                deps[m].discard(n)
                if not deps[m] and m not in done and m not in ready:
                    ready.append(m)
    if len(done) < len(refs):
        stuck = [n for n in refs if n not in done]
        cycle = _find_cycle(stuck, refs)
        raise loaded.error(f"inputs form a cycle: {' → '.join(cycle)}", step=cycle[0], key="inputs")
    return done


def _find_cycle(stuck: list[str], refs: dict[str, dict[str, Ref]]) -> list[str]:
    start = stuck[0]
    path = [start]
    seen = {start}
    node = start
    while True:
        node = next(r.step for r in refs[node].values() if r.step in stuck)
        if node in seen:
            return [*path[path.index(node) :], node]
        path.append(node)
        seen.add(node)


def _same_columns_in_every_split(loaded: LoadedRecipe, name: str, columns: dict[str, list[str] | None]) -> None:
    """The splits of one dataset hold the same columns (``_`` columns aside), as a ``DatasetDict``
    a trainer reads train and eval from must: a train split in prompt-completion form and a test
    split in messages form was exported, its card describing the first one only."""
    known = {s: [c for c in cols if not c.startswith("_")] for s, cols in columns.items() if cols is not None}
    if len(known) < 2:
        return
    (first, cols), *rest = known.items()
    for split, other in rest:
        if set(other) != set(cols):
            only = sorted(set(cols) ^ set(other))
            raise RecipeError(
                f"splits '{first}' and '{split}' have different columns ({', '.join(cols)} against "
                f"{', '.join(other)}; {', '.join(only)} in one only): the splits of a dataset share its columns",
                file=str(loaded.path),
                line=loaded.line("datasets", name, "splits", split),
                key=f"datasets.{name}.splits.{split}",
            )


def _plan_dataset(loaded: LoadedRecipe, name: str, planned: dict[str, PlannedStep]) -> PlannedDataset:
    spec = loaded.recipe.datasets[name]
    splits: dict[str, Ref] = {}
    for split, ref_text in spec.splits.items():
        at = ["datasets", name, "splits", split]
        up, output = parse_ref(ref_text)
        if up not in planned or output not in planned[up].outputs:
            what = f"no step named '{up}'" if up not in planned else f"step '{up}' has no output '{output}'"
            raise RecipeError(what, file=str(loaded.path), line=loaded.line(*at), key=f"datasets.{name}.splits.{split}")
        cols = planned[up].columns.get(output)
        for c in spec.columns or []:
            if cols is not None and c not in cols:
                raise RecipeError(
                    f"column '{c}' is not produced by {up}.{output} (it has: {', '.join(cols)})",
                    file=str(loaded.path),
                    line=loaded.line("datasets", name, "columns"),
                    key=f"datasets.{name}.columns",
                )
        twin = next((s for s, r in splits.items() if r == Ref(up, output)), None)
        if twin is not None:
            raise RecipeError(
                f"splits '{twin}' and '{split}' both read {up}.{output}: every row would be in both (a train "
                "split that holds its test rows); give each split its own output (a split step's)",
                file=str(loaded.path),
                line=loaded.line(*at),
                key=f"datasets.{name}.splits.{split}",
            )
        splits[split] = Ref(up, output)
    if spec.columns is None:  # (with `columns:` every split is exported with those, checked above)
        planned_columns = {s: planned[r.step].columns.get(r.output) for s, r in splits.items()}
        _same_columns_in_every_split(loaded, name, planned_columns)
    licenses = [spec.license] if isinstance(spec.license, str) else spec.license
    tokenizer = resolve_model(spec.tokenizer, loaded.base_dir)
    if is_local_path(spec.tokenizer) and not Path(str(tokenizer)).exists():
        raise RecipeError(
            f"tokenizer '{spec.tokenizer}' not found at {tokenizer}",
            file=str(loaded.path),
            line=loaded.line("datasets", name, "tokenizer"),
            key=f"datasets.{name}.tokenizer",
        )
    return PlannedDataset(
        name=name,
        splits=splits,
        columns=spec.columns,
        description=spec.description,
        license=licenses,
        language=list(spec.language),
        tags=list(spec.tags),
        tokenizer=tokenizer,
    )
