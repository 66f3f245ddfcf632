"""The ``dataforge`` command: a thin layer that parses arguments, calls the library and renders
with rich. Every command and option is documented in its ``--help`` and in the README."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dataforge import __version__
from dataforge.errors import DataforgeError, RecipeError


def _console(stderr: bool = False) -> Console:
    """Rich console; piped output (CI logs, files) gets 140 columns rather than rich's 80."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=140)


out_console = _console()
err_console = _console(stderr=True)


def _fmt_drops(drops: dict[str, int]) -> str:
    return ", ".join(f"{r}: {n}" for r, n in sorted(drops.items())) or "-"


def cmd_build(args: argparse.Namespace) -> int:
    from dataforge.engine.runner import build

    report = build(
        args.recipe,
        out=args.out,
        force=args.force or (),
        console=err_console,
        show_progress=not args.quiet,
        models=_model_overrides(args.model),
        settings=args.set or [],
    )
    table = Table(title=f"build {report.run_id} → {report.out}")
    for col in ("step", "kind", "rows in", "rows out", "dropped", "seconds", "cached"):
        table.add_column(col, justify="right" if col in ("rows in", "rows out", "seconds") else "left")
    for s in report.steps:
        table.add_row(
            s.name,
            s.kind,
            f"{s.rows_in:,}",
            f"{s.rows_out:,}",
            _fmt_drops(s.drops),
            f"{s.seconds:.2f}",
            "yes" if s.cache_hit else "no",
        )
    out_console.print(table)
    ds_table = Table(title="datasets")
    for col in ("dataset", "split", "rows", "path"):
        ds_table.add_column(col)
    for name, splits in report.datasets.items():
        for split, rows in splits.items():
            ds_table.add_row(name, split, f"{rows:,}", str(report.out / "datasets" / name))
    out_console.print(ds_table)
    if report.executed:
        out_console.print(
            f"{len(report.executed)} step(s) executed, {len(report.steps) - len(report.executed)} reused from cache."
        )
    else:
        out_console.print("Nothing to execute: every step was reused from cache.")
    return 0


def _model_overrides(items: list[str] | None) -> dict[str, dict[str, str]]:
    from dataforge.llm.spec import parse_model_override

    out = {}
    for item in items or []:
        try:
            name, fields = parse_model_override(item)
        except ValueError as exc:
            raise RecipeError(str(exc)) from None
        out[name] = fields
    return out


def _add_override_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME=BACKEND:MODEL",
        help="replace the recipe's model NAME, e.g. policy=transformers:/models/qwen or "
        "judge=openai:my-judge@http://localhost:8000/v1 (repeatable)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="STEP.KEY=VALUE",
        help="replace a step's config key with a YAML value, e.g. solve.n=8 (repeatable)",
    )


def cmd_plan(args: argparse.Namespace) -> int:
    from dataforge.engine.plan import plan_recipe
    from dataforge.engine.store import Store

    plan = plan_recipe(args.recipe, _model_overrides(args.model), args.set or [])
    out = Path(args.out)
    store = Store(out) if out.exists() else None
    table = Table(title=f"plan of {plan.loaded.path} (out: {out})")
    for col in ("step", "kind", "inputs", "outputs", "fingerprint", "cached"):
        table.add_column(col)
    for s in plan.steps:
        cached = store is not None and store.has(s.name, s.fingerprint)
        inputs = ", ".join(f"{k}←{v}" for k, v in s.inputs.items()) or "-"
        table.add_row(s.name, s.kind, inputs, ", ".join(s.outputs), s.fingerprint, "yes" if cached else "no")
    out_console.print(table)
    for d in plan.datasets.values():
        out_console.print(f"dataset [bold]{d.name}[/]: " + ", ".join(f"{k}←{v}" for k, v in d.splits.items()))
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    from dataforge.why import row_history

    h = row_history(args.out, args.row_id)
    if args.json:
        out_console.print_json(json.dumps(h.__dict__, default=str))
        return 0
    out_console.print(f"[bold]{h.row_id}[/]  (build {h.run_id})")
    out_console.print(f"source: {h.source or 'unknown'}")
    out_console.print("[bold]history[/] (steps of the newest build that hold or decided about this row):")
    for s in h.steps:
        if not s["outputs"] and not s["events"]:
            continue
        held = f"in {', '.join(s['outputs'])}" if s["outputs"] else "not in its output"
        cached = " (reused)" if s["cache_hit"] else ""
        out_console.print(f"  [bold]{s['step']}[/] ({s['kind']}){cached}: {held}", highlight=False)
        for e in s["events"]:
            parts = [f"{e['action']}: {e['reason']}"]
            if e["score"] is not None:
                parts.append(f"score {e['score']:g}")
            if e["related_id"]:
                parts.append(f"related {e['related_id']}")
            if e["detail_json"]:
                parts.append(e["detail_json"])
            out_console.print("    → " + " · ".join(parts), markup=False, highlight=False)
    for e in h.edges:
        out_console.print(f"edge ({e['step']}): {e['child_id']} ← {e['parent_id']} [{e['relation']}]")
    if h.related:
        out_console.print(f"{len(h.related)} decision(s) about other rows name this row, e.g.:")
        for r in h.related[:5]:
            out_console.print(f"  {r['row_id']}: {r['action']} by {r['step']} ({r['reason']})")
    out_console.print(f"[bold]fate:[/] {h.fate}")
    if h.content:
        out_console.print("[bold]content[/] (as last stored):")
        for k, v in h.content.items():
            text = str(v)
            out_console.print(f"  {k}: {text[:300] + '…' if len(text) > 300 else text}", markup=False)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    from dataforge.lineage import open_read

    con = open_read(Path(args.out))
    try:
        cur = con.execute(args.sql)
    except duckdb.Error as exc:
        raise DataforgeError(f"query failed: {exc}") from None
    cols = [d[0] for d in cur.description] if cur.description else []
    rows = cur.fetchmany(args.limit) if args.limit else cur.fetchall()
    if args.format == "json":
        out_console.print_json(json.dumps([dict(zip(cols, r, strict=True)) for r in rows], default=str))
    elif args.format == "csv":
        import csv

        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(rows)
    else:
        table = Table()
        for c in cols:
            table.add_column(c)
        for r in rows:
            table.add_row(*[_cell(v) for v in r])
        out_console.print(table)
    return 0


def _cell(v: Any) -> str:
    text = "NULL" if v is None else str(v)
    return text if len(text) <= 200 else text[:200] + "…"


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dataforge", description="Build LLM post-training datasets from YAML recipes.")
    p.add_argument("--version", action="version", version=f"dataforge {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser(
        "build",
        help="build every dataset of a recipe",
        description="Run a recipe: execute the steps whose fingerprint is not stored, reuse the rest, "
        "export its datasets.",
    )
    b.add_argument("recipe", help="the recipe YAML file")
    b.add_argument("--out", default="build", help="build directory (default: build/)")
    b.add_argument(
        "--force", action="append", metavar="STEP", help="re-execute STEP and every step downstream of it (repeatable)"
    )
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_override_options(b)
    b.set_defaults(fn=cmd_build)

    pl_ = sub.add_parser(
        "plan",
        help="show the step DAG, fingerprints and cache state; runs nothing",
        description="Validate a recipe and print its steps in execution order with fingerprints "
        "and whether each is cached in --out.",
    )
    pl_.add_argument("recipe", help="the recipe YAML file")
    pl_.add_argument("--out", default="build", help="build directory to check the cache in (default: build/)")
    _add_override_options(pl_)
    pl_.set_defaults(fn=cmd_plan)

    w = sub.add_parser(
        "why",
        help="the history of one row",
        description="Print a row's source, every step that touched it, its fate with reason, score and related row.",
    )
    w.add_argument("row_id", help="a row id (the _id column), e.g. gsm8k_train:17")
    w.add_argument("--out", default="build", help="build directory (default: build/)")
    w.add_argument("--json", action="store_true", help="print the history as JSON")
    w.set_defaults(fn=cmd_why)

    q = sub.add_parser(
        "query",
        help="run SQL over the lineage, artifacts and datasets",
        description="Run SQL on <out>/lineage.duckdb (tables runs, steps, events, edges, artifacts; "
        "views latest_run, latest_steps, latest_events, latest_edges, latest_artifacts) plus views "
        "artifact_<step>_<output> over the newest build's Parquet artifacts and dataset_<name>_<split> "
        "over the exported datasets.",
    )
    q.add_argument("sql", help="the SQL query")
    q.add_argument("--out", default="build", help="build directory (default: build/)")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format (default: table)")
    q.add_argument("--limit", type=int, default=0, help="print at most this many rows (default: all)")
    q.set_defaults(fn=cmd_query)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.fn(args)
    except DataforgeError as exc:
        if args.debug:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        return 2 if isinstance(exc, RecipeError) else 1
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
