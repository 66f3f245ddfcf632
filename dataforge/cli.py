"""The ``dataforge`` command: a thin layer that parses arguments, calls the library and renders
with rich. Every command and option is documented in its ``--help`` and in the README."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from dataforge import __version__
from dataforge.engine.ray_llm import MODES as RAY_LLM_MODES
from dataforge.errors import DataforgeError, RecipeError
from dataforge.recipe import EXECUTORS


def _console(stderr: bool = False) -> Console:
    """Rich console; piped output (CI logs, files) gets 140 columns rather than rich's 80.

    Everything printed is literal text: no rich markup, no emoji codes, no highlighting, so
    user data (``[/INST]``, ``[bold]``, ``:x:``, ``pip install 'dataforge[vllm]'``) prints as it
    is. Styles are given as ``style=`` or ``Text`` spans, never as markup in a string."""
    literal = {"markup": False, "emoji": False, "highlight": False}
    console = Console(stderr=stderr, **literal)
    return console if console.is_terminal else Console(stderr=stderr, width=140, **literal)


def _bold(label: str, rest: str = "") -> Text:
    return Text.assemble((label, "bold"), rest)


out_console = _console()
err_console = _console(stderr=True)


def _fmt_drops(drops: dict[str, int]) -> str:
    return ", ".join(f"{r}: {n}" for r, n in sorted(drops.items())) or "-"


def _fmt_rows(per_name: dict[str, int], total: int) -> str:
    """Rows of one table as a number; of several (data and eval inputs, data and failed outputs)
    each by name, so eval rows and failed generations are never counted as data."""
    if len(per_name) <= 1:
        return f"{total:,}"
    return " · ".join(f"{name} {n:,}" for name, n in per_name.items())


def cmd_build(args: argparse.Namespace) -> int:
    from dataforge.engine.remote import without_query
    from dataforge.engine.runner import build

    report = build(
        args.recipe,
        out=args.out,
        force=args.force or (),
        console=err_console,
        show_progress=not args.quiet,
        models=_model_overrides(args.model),
        settings=args.set or [],
        wait=args.wait,
        verify=args.verify,
        batch_rows=args.batch_rows,
        executor=args.executor,
        ray_llm=args.ray_llm,
        ray_llm_replicas=args.ray_llm_replicas,
    )
    where = report.out if report.published is None else without_query(report.published)
    table = Table(title=f"build {report.run_id} → {where}")
    for col in ("step", "kind", "rows in", "rows out", "dropped", "flagged", "seconds", "rows/s", "cached"):
        table.add_column(col, justify="right" if col in ("rows in", "rows out", "seconds", "rows/s") else "left")
    for s in report.steps:
        # throughput of the steps that ran long enough to measure (rows in per second)
        rate = f"{s.rows_in / s.seconds:,.0f}" if not s.cache_hit and s.seconds >= 0.5 and s.rows_in else "-"
        table.add_row(
            s.name,
            s.kind,
            _fmt_rows(s.inputs, s.rows_in),
            _fmt_rows(s.outputs, s.rows_out),
            _fmt_drops(s.drops),
            _fmt_drops(s.flags),
            f"{s.seconds:.2f}",
            rate,
            "yes" if s.cache_hit else "no",
        )
    out_console.print(table)
    ds_table = Table(title="datasets")
    for col in ("dataset", "split", "rows", "path"):
        ds_table.add_column(col)
    for name, splits in report.datasets.items():
        for split, rows in splits.items():
            ds_table.add_row(name, split, f"{rows:,}", f"{where}/datasets/{name}")
    out_console.print(ds_table)
    if report.executed:
        out_console.print(
            f"{len(report.executed)} step(s) executed, {len(report.steps) - len(report.executed)} reused from cache."
        )
    else:
        out_console.print("Nothing to execute: every step was reused from cache.")
    if report.node_answers:
        out_console.print(
            f"{report.node_answers:,} model answer(s) the cluster's tasks logged stored in the request cache "
            "by the driver"
        )
    if report.cluster is not None:
        tasks = ", ".join(f"{kind} {n:,}" for kind, n in report.tasks.items()) or "none"
        out_console.print(f"Ray cluster {report.cluster}: tasks run by kind: {tasks}")
        if len(report.nodes) > 1:
            spread = ", ".join(f"{node} {n:,}" for node, n in report.nodes.items())
            out_console.print(f"tasks run by node: {spread}")
        if report.nodes_checked:
            out_console.print(
                f"{report.nodes_checked} node(s) besides the driver's checked before the build: each sees the "
                "build folder and the recipe's folder"
            )
        if report.relayed:
            moved = report.relayed
            out_console.print(
                f"{moved['nodes']} node(s) that do not mount the build folder: files passed through the store, "
                f"{moved['to_nodes']['copied']:,} to them ({moved['to_nodes']['nbytes'] / 1e6:,.1f} MB), "
                f"{moved['back']['copied']:,} back ({moved['back']['nbytes'] / 1e6:,.1f} MB); "
                f"{moved['swept'] / 1e6:,.1f} MB of scratch removed from their copies"
            )
        placed = {s: r for s, r in report.assigned.items() if r != {"CPU": 1.0}}  # Ray's default, left out
        if placed:
            given = "; ".join(f"{s} {', '.join(f'{k} {v:g}' for k, v in sorted(r.items()))}" for s, r in placed.items())
            out_console.print(f"resources Ray gave a task, by step: {given}")
        for name, sent in report.llm.items():
            failed = ", ".join(f"{why} {n:,}" for why, n in sent["failed"].items())
            left = ", ".join(f"{why} {n:,}" for why, n in sent["left"].items())
            out_console.print(
                f"ray.data.llm, step {name}: {sent['sent']:,} requests in {sent['rounds']} round(s), "
                f"{sent['stored']:,} answers stored"
                + (f"; failed there: {failed}" if failed else "")
                + (f"; left to the step's own backend: {left}" if left else "")
            )
    copy = f" (and {report.out / 'report.html'})" if report.published else ""
    out_console.print(f"report: {where}/report.html{copy}")
    if report.published is not None and report.sent is not None:
        sent = report.sent
        out_console.print(
            f"published to {report.published}: {sent.copied:,} file(s) sent ({sent.nbytes / 1e6:,.1f} MB), "
            f"{sent.unchanged:,} already there, {sent.deleted:,} deleted (staging folder {report.out})"
        )
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
    from dataforge.engine.remote import RemoteBuild, without_query
    from dataforge.engine.store import Store, finished_marker, is_uri

    plan = plan_recipe(args.recipe, _model_overrides(args.model), args.set or [])
    out, published = args.out, {}
    if is_uri(out):  # what the published build holds, from its manifest: nothing is brought down
        published = RemoteBuild(str(out)).published_files()
        where = without_query(str(out))

        def cached(step: str, fingerprint: str) -> bool:
            return finished_marker(step, fingerprint) in published
    else:
        where, cached = str(out), Store(Path(out)).has

    table = Table(title=f"plan of {plan.loaded.path} (out: {where})")
    for col in ("step", "kind", "inputs", "outputs", "fingerprint", "cached"):
        table.add_column(col)
    for s in plan.steps:
        inputs = ", ".join(f"{k}←{v}" for k, v in s.inputs.items()) or "-"
        hit = "yes" if cached(s.name, s.fingerprint) else "no"
        table.add_row(s.name, s.kind, inputs, ", ".join(s.outputs), s.fingerprint, hit)
    out_console.print(table)
    if is_uri(out) and not published:
        out_console.print(f"no finished build is published at {where}: every step would run")
    for d in plan.datasets.values():
        out_console.print(
            Text.assemble("dataset ", _bold(d.name), ": " + ", ".join(f"{k}←{v}" for k, v in d.splits.items()))
        )
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    from dataforge.engine.remote import readable
    from dataforge.why import describe_event, row_history

    h = row_history(readable(args.out, err_console), args.row_id)
    if args.json:
        out_console.print_json(json.dumps(h.__dict__, default=str))
        return 0
    out_console.print(_bold(h.row_id, f"  (build {h.run_id})"))
    derived = any(e["child_id"] == h.row_id for e in h.edges)
    origin = h.source or ("derived from other rows (see the edges below)" if derived else "unknown")
    out_console.print(f"source: {origin}")
    out_console.print(_bold("history", " (steps of the newest build that hold or decided about this row):"))
    for s in h.steps:
        if not s["outputs"] and not s["events"]:
            continue
        held = f"in {', '.join(s['outputs'])}" if s["outputs"] else "not in its output"
        cached = " (reused)" if s["cache_hit"] else ""
        out_console.print(Text.assemble("  ", _bold(s["step"]), f" ({s['kind']}){cached}: {held}"))
        for e in s["events"]:
            out_console.print("    → " + describe_event(e))
    for e in h.edges:
        out_console.print(f"edge ({e['step']}): {e['child_id']} ← {e['parent_id']} [{e['relation']}]")
    if h.related:
        out_console.print(f"{len(h.related)} decision(s) about other rows name this row, e.g.:")
        for r in h.related[:5]:
            out_console.print(f"  {r['row_id']}: {r['action']} by {r['step']} ({r['reason']})")
    out_console.print(_bold("fate:", f" {h.fate}"))
    if h.content:
        out_console.print(_bold("content", " (as last stored):"))
        for k, v in h.content.items():
            text = str(v)
            out_console.print(f"  {k}: {text[:300] + '…' if len(text) > 300 else text}")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    from dataforge.engine.remote import readable
    from dataforge.lineage import check_read_only, open_read

    con = open_read(readable(args.out, err_console))
    check_read_only(con, args.sql)
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


_TRAIN_FLAGS = {  # flag → TrainConfig key
    "learning_rate": "learning_rate",
    "epochs": "epochs",
    "max_steps": "max_steps",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "max_length": "max_length",
    "seed": "seed",
    "output_dir": "output_dir",
    "eval_split": "eval_split",
    "eval_steps": "eval_steps",
    "eval_rows": "eval_rows",
    "save_steps": "save_steps",
}


def cmd_train(args: argparse.Namespace) -> int:
    from dataforge.engine.remote import readable_dataset
    from dataforge.engine.store import is_uri
    from trainers.config import load_train_config
    from trainers.run import preflight, train

    overrides: dict[str, Any] = {k: getattr(args, f) for f, k in _TRAIN_FLAGS.items() if getattr(args, f) is not None}
    if args.bf16:
        overrides["bf16"] = True
    if args.resume:
        overrides["resume"] = True
    lora = {k: v for k, v in (("r", args.lora_r), ("alpha", args.lora_alpha)) if v is not None}
    if args.lora_target_modules:
        mods = args.lora_target_modules.split(",")
        lora["target_modules"] = mods[0] if mods == ["all-linear"] else mods
    if lora or args.lora:
        overrides["lora"] = lora
    cfg = load_train_config(args.config, overrides)
    if is_uri(args.data):  # a published dataset: its build brought down, trained on from the staging folder
        args.data = str(readable_dataset(args.data, err_console))
    report, _, meta = preflight(args.trainer, args.data, args.model, cfg)
    table = Table(title=f"pre-flight: {args.trainer} on {args.data}")
    table.add_column("check")
    table.add_column("result")
    for name, found in report.checks:
        table.add_row(name, found)
    if meta:
        table.add_row("built by", f"run {meta['run_id']} of {meta['recipe']}")
    out_console.print(table)
    sizes = Table(title=f"token lengths (max_length {cfg.max_length})")
    for col in ("split", "rows", "min", "median", "p95", "max", f"> {cfg.max_length} (truncated)"):
        sizes.add_column(col, justify="right")
    for name, st in report.splits.items():
        sizes.add_row(
            name,
            f"{st.rows:,}",
            str(st.min_tokens),
            f"{st.median_tokens:.0f}",
            f"{st.p95_tokens:.0f}",
            str(st.max_tokens),
            f"{st.over_max_length:,}",
        )
    out_console.print(sizes)
    for line in report.warnings:
        err_console.print(Text(f"warning: {line}", style="yellow"))
    if args.check:
        out_console.print("pre-flight passed; nothing trained (--check).")
        return 0
    result = train(args.trainer, args.data, args.model, cfg)
    summary = Table(title=f"trained {args.trainer} → {result.output_dir}")
    for col in ("steps", "train loss", "eval", "trainable params", "total params", "provenance"):
        summary.add_column(col)
    measured = result.eval_metrics or {}
    evaluated = "no eval split" if result.eval_split is None else f"— ({result.eval_split})"
    if "eval_reward" in measured:  # grpo: the mean reward of its generations says more than its loss
        evaluated = f"reward {measured['eval_reward']:.4f} ({result.eval_split})"
    elif "eval_loss" in measured:
        evaluated = f"{measured['eval_loss']:.4f} ({result.eval_split})"
    summary.add_row(
        str(result.steps),
        f"{result.train_loss:.4f}",
        evaluated,
        f"{result.trainable_params:,}",
        f"{result.total_params:,}",
        str(result.provenance),
    )
    out_console.print(summary)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from dataforge.engine.remote import readable
    from dataforge.hub import export_hub

    written = export_hub(readable(args.out, err_console), Path(args.hub), args.dataset)
    table = Table("dataset", "split", "rows", "file")
    for name, split, rows, path in written:
        table.add_row(name, split, f"{rows:,}", str(path))
    out_console.print(table)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from dataforge.engine.remote import rewrite, without_query
    from dataforge.engine.store import is_uri
    from dataforge.report import REPORT_NAME, write_report

    if not is_uri(args.out):
        out_console.print(f"report: {write_report(Path(args.out))}")
        return 0
    path, sent = rewrite(str(args.out), write_report, err_console)
    out_console.print(
        f"report: {path} (staging folder), published to {without_query(str(args.out))}/{REPORT_NAME} "
        f"({sent.copied} file(s) sent)"
    )
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from trainers.provenance import trace

    t = trace(args.model_dir)
    p, ds = t.provenance, t.provenance["dataset"]
    table = Table(title=f"trace of {args.model_dir}")
    table.add_column("what")
    table.add_column("value")
    loss = p.get("metrics", {}).get("train_loss")
    table.add_row(
        "trained", f"{p['trainer']} from {p['model']}" + (f", train loss {loss:.4f}" if loss is not None else "")
    )
    table.add_row("dataset", f"{ds.get('dataset', '?')} at {ds['path']}")
    if ds.get("built_by_dataforge"):
        table.add_row("build", f"run {ds['run_id']} of {ds['recipe']} (recipe sha256 {ds['recipe_sha256'][:16]}…)")
        splits = ", ".join(f"{k}: {v['rows']:,} rows" for k, v in ds["splits"].items())
        table.add_row("splits", splits)
        table.add_row("steps", ", ".join(f"{k}={v}" for k, v in sorted(ds["steps"].items())))
    for check, found in t.findings:
        table.add_row(check, found)
    out_console.print(table)
    if t.build_dir is not None and ds.get("built_by_dataforge"):
        out_console.print(
            f"Ask the lineage: dataforge query --out {t.build_dir} "
            f'"SELECT e.step, e.action, e.reason, count(*) FROM steps s JOIN events e USING (step, fingerprint) '
            f"WHERE s.run_id = '{t.run_id}' GROUP BY ALL ORDER BY ALL\"",
        )
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import tempfile

    from dataforge.data_forms import recognize, source_of, starter_recipe
    from dataforge.engine.step import Context
    from dataforge.steps.sources import SourceConfig, first_rows

    if (args.file is None) == (args.hub is None):
        raise RecipeError("inspect: give a data file, or --hub NAME, not both")
    path = Path(args.file).resolve() if args.file else None
    hub = {"hub": args.hub, "hub_config": args.hub_config, "data_files": args.data_files} if args.hub else None
    recipe_dir = Path(args.recipe).resolve().parent if args.recipe else Path.cwd()
    name, source = source_of(path, recipe_dir, hub, args.split)
    read = {"path": str(path)} if path else hub
    with tempfile.TemporaryDirectory(prefix="dataforge-inspect-") as scratch:
        ctx = Context(step="inspect", fingerprint="0" * 16, base_dir=Path.cwd(), scratch_dir=Path(scratch))
        try:
            rows = first_rows(SourceConfig(**read, name="inspect", split=args.split), ctx, args.rows)
        except RecipeError as exc:  # (a source key's error, without the file when it does not name it)
            said = exc.detail if path and str(path) in exc.detail else f"{args.file or args.hub}: {exc.detail}"
            raise RecipeError(said) from None
    table = Table(title=f"{args.file or args.hub}: the first {rows.height:,} rows")
    for name in ("column", "type", "first value"):
        table.add_column(name, overflow="fold")
    for name, dtype in rows.schema.items():
        if name != "_id":
            first = rows[name][0] if rows.height else None
            table.add_row(name, str(dtype), _cell(first.to_list() if hasattr(first, "to_list") else first))
    out_console.print(table)
    form = recognize(rows)
    if form is None:
        out_console.print(
            "form: none recognized. Name the columns to shape in a `format` step (see README, Step kinds); "
            "a conversation column of other fields, or text in another chat format, needs a step of its own."
        )
        return 1
    out_console.print(f"form: {form.name}: {form.summary}")
    recipe = starter_recipe(name, source, form)
    if args.recipe:
        Path(args.recipe).write_text(recipe)
        out_console.print(f"wrote {args.recipe}: dataforge build {args.recipe}")
    else:
        out_console.print(Text(recipe))
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
    b.add_argument("--out", default="build", type=_folder("the build folder", uri=True), help=OUT_HELP)
    b.add_argument(
        "--force", action="append", metavar="STEP", help="re-execute STEP and every step downstream of it (repeatable)"
    )
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.add_argument(
        "--wait",
        action="store_true",
        help="if another build is writing to --out, wait for it; for an object-store --out, a publish stopped by "
        "another machine's also waits, brings that one down and builds on it (default: stop at once)",
    )
    b.add_argument(
        "--verify",
        action="store_true",
        help="check the sha256 of every reused artifact and exported split (default: only those whose size or "
        "modification time changed)",
    )
    b.add_argument(
        "--batch-rows",
        type=int,
        metavar="N",
        help="rows per batch of the steps that stream (rows steps): bounds their memory; changes no output "
        "(default: $DATAFORGE_BATCH_ROWS or 100000; 0: every step on whole tables)",
    )
    b.add_argument(
        "--executor",
        choices=EXECUTORS,
        help="where the steps that divide into batches run: in this process (local) or as tasks on a Ray cluster "
        "($RAY_ADDRESS, a cluster `ray start` began on this machine, else a new local one; needs "
        "dataforge[ray]); changes no output (default: $DATAFORGE_EXECUTOR, else the recipe's `executor:`, "
        "else local)",
    )
    b.add_argument(
        "--ray-llm",
        choices=RAY_LLM_MODES,
        help="on Ray, which models' requests go through ray.data.llm (the generating steps', gathered from "
        "every batch, and those of steps run in the driver, such as leakage.check's judge): vllm (vLLM engine "
        "replicas), all (OpenAI-compatible servers too), off; answers are stored in the request cache as "
        "without it (default: $DATAFORGE_RAY_LLM, else vllm)",
    )
    b.add_argument(
        "--ray-llm-replicas",
        type=int,
        metavar="N",
        help="ray.data.llm replicas per model: vLLM engines (one GPU each) or HTTP actors "
        "(default: $DATAFORGE_RAY_LLM_REPLICAS, else the cluster's GPUs, at least 1)",
    )
    _add_override_options(b)
    b.set_defaults(fn=cmd_build)

    pl_ = sub.add_parser(
        "plan",
        help="show the step DAG, fingerprints and cache state; runs nothing",
        description="Validate a recipe and print its steps in execution order with fingerprints "
        "and whether each is cached in --out.",
    )
    pl_.add_argument("recipe", help="the recipe YAML file")
    pl_.add_argument(
        "--out",
        default="build",
        type=_folder("the build folder", uri=True),
        help="build directory, or the object-store URI of a published build, to check the cache in (default: build/)",
    )
    _add_override_options(pl_)
    pl_.set_defaults(fn=cmd_plan)

    w = sub.add_parser(
        "why",
        help="the history of one row",
        description="Print a row's source, every step that touched it, its fate with reason, score and related row.",
    )
    w.add_argument("row_id", help="a row id (the _id column), e.g. gsm8k_train:17")
    w.add_argument("--out", default="build", type=_folder("the build folder", uri=True), help=OUT_HELP)
    w.add_argument("--json", action="store_true", help="print the history as JSON")
    w.set_defaults(fn=cmd_why)

    q = sub.add_parser(
        "query",
        help="run SQL over the lineage, artifacts and datasets",
        description="Run SQL on <out>/lineage.duckdb (tables runs, steps, artifacts; events and edges, views over "
        "each step's Parquet shards; views latest_run, latest_steps, latest_events, latest_edges, "
        "latest_artifacts) plus views "
        "artifact_<step>_<output> over the newest build's Parquet artifacts and dataset_<name>_<split> "
        "over the exported datasets.",
    )
    q.add_argument("sql", help="the SQL query")
    q.add_argument("--out", default="build", type=_folder("the build folder", uri=True), help=OUT_HELP)
    q.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format (default: table)")
    q.add_argument("--limit", type=int, default=0, help="print at most this many rows (default: all)")
    q.set_defaults(fn=cmd_query)

    t = sub.add_parser(
        "train",
        help="train on a built dataset with TRL (sft, dpo, grpo, reward); pre-flight first",
        description="Run TRL's SFT, DPO, GRPO or reward-model trainer on a dataset built by dataforge. "
        "A pre-flight check (dataset type, chat template, doubled BOS, token lengths) runs first; "
        "the output directory gets the checkpoint and dataforge_provenance.json.",
    )
    t.add_argument("trainer", choices=("sft", "dpo", "grpo", "reward"), help="which TRL trainer")
    t.add_argument(
        "--data",
        required=True,
        help="a built dataset directory (build/datasets/gsm8k_sft) or a published one (<build URI>/datasets/<name>)",
    )
    t.add_argument("--model", required=True, help="model path or hub name to start from")
    t.add_argument("--config", help="a YAML training config (keys of trainers.config.TrainConfig); flags win")
    t.add_argument("--output-dir", help="where the checkpoint goes (default: runs/<trainer>-<dataset>)")
    t.add_argument("--learning-rate", type=float, help="learning rate (default 2e-5)")
    t.add_argument("--epochs", type=float, help="epochs (default 1)")
    t.add_argument("--max-steps", type=int, help="optimizer steps; overrides --epochs when > 0")
    t.add_argument("--batch-size", type=int, help="per-device batch size (default 4)")
    t.add_argument("--grad-accum", type=int, help="gradient accumulation steps (default 1)")
    t.add_argument("--max-length", type=int, help="max tokens per example (default 1024)")
    t.add_argument("--lora", action="store_true", help="train LoRA adapters (r 16, alpha 32, all linear layers)")
    t.add_argument("--lora-r", type=int, help="LoRA rank (implies --lora)")
    t.add_argument("--lora-alpha", type=int, help="LoRA alpha (implies --lora)")
    t.add_argument("--lora-target-modules", help="comma-separated module names, or all-linear (implies --lora)")
    t.add_argument("--bf16", action="store_true", help="train in bfloat16 (GPU)")
    t.add_argument("--seed", type=int, help="random seed (default 0)")
    t.add_argument(
        "--eval-split",
        help="the split evaluated on after training: a split's name, none, or auto (default: validation, else test)",
    )
    t.add_argument("--eval-steps", type=int, help="also evaluate every N steps (default: once, after training)")
    t.add_argument("--eval-rows", type=int, help="evaluate on at most N rows of the eval split, a seeded sample")
    t.add_argument("--save-steps", type=int, help="write a checkpoint every N steps (default: at the end only)")
    t.add_argument(
        "--resume",
        action="store_true",
        help="go on from the last checkpoint in the output directory (the same trainer, model and dataset)",
    )
    t.add_argument("--check", action="store_true", help="run the pre-flight check only; train nothing")
    t.set_defaults(fn=cmd_train)

    tr = sub.add_parser(
        "trace",
        help="from a trained model back to its data: run, recipe, dataset, lineage",
        description="Read dataforge_provenance.json in a training output directory and check it against "
        "the build it names: is the run still in the lineage, is the dataset unchanged since training.",
    )
    tr.add_argument("model_dir", help="a training output directory written by `dataforge train`")
    tr.set_defaults(fn=cmd_trace)

    i = sub.add_parser(
        "inspect",
        help="the form a data file is in, and a recipe to start from",
        description="Read the first rows of a data file (JSONL, JSON, Parquet, CSV or a save_to_disk folder) as a "
        "source step does, show its columns, say which form they are in (chat conversations, ShareGPT, a chat "
        "template written out as text, preference pairs, Alpaca, GSM8K, prompts and responses) and print a recipe "
        "that builds it into a TRL dataset: the parse step it needs, format, exact dedup and a split by prompt.",
    )
    i.add_argument("file", nargs="?", help="a data file or save_to_disk folder")
    i.add_argument(
        "--hub", help="a Hub dataset instead, streamed (datasets.load_dataset): only its first rows are read"
    )
    i.add_argument("--hub-config", help="the Hub dataset's config")
    i.add_argument("--data-files", help="the Hub dataset's data files (e.g. --hub json --data-files x.jsonl)")
    i.add_argument("--rows", type=int, default=200, help="how many rows to read (default: 200)")
    i.add_argument("--split", help="the split to read, of a save_to_disk folder or Hub dataset that holds several")
    i.add_argument("--recipe", metavar="FILE", help="write the recipe to FILE instead of printing it")
    i.set_defaults(fn=cmd_inspect)

    x = sub.add_parser(
        "export",
        help="write built datasets in the Hugging Face Hub layout (data/*.parquet + README.md card)",
    )
    x.add_argument(
        "--hub",
        required=True,
        metavar="DIR",
        type=_folder("the hub folder"),
        help="folder to write DIR/<dataset>/ into",
    )
    x.add_argument("--out", default="build", type=_folder("the build folder", uri=True), help=OUT_HELP)
    x.add_argument("--dataset", action="append", help="only this dataset (repeatable; default: all)")
    x.set_defaults(fn=cmd_export)

    r = sub.add_parser(
        "report",
        help="write <out>/report.html again: the newest build, every dataset's card, example rows and their history",
        description="Every build writes <out>/report.html (one self-contained page: inline CSS and images, no "
        "network); this writes it again from the lineage and the exported datasets, e.g. after a dataset "
        "was exported by another recipe into the same --out.",
    )
    r.add_argument("--out", default="build", type=_folder("the build folder", uri=True), help=OUT_HELP)
    r.set_defaults(fn=cmd_report)
    return p


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM ends a build like Ctrl-C: the run is recorded as interrupted, finished artifacts stay."""
    raise KeyboardInterrupt


OUT_HELP = (
    "build directory, or an object-store URI (s3://bucket/prefix, gs://…) the build is published to from a local "
    "staging folder (default: build/)"
)


def _folder(what: str, uri: bool = False) -> Callable[[str], Path | str]:
    """An argparse type: a folder path; a URI (``scheme://…``) kept as it is with ``uri`` (the
    commands that take an object-store build, ``engine.remote``), else refused
    (``store.local_folder``) as a usage error."""
    from dataforge.engine.store import is_uri, local_folder

    def parse(value: str) -> Path | str:
        try:
            if uri and is_uri(value):
                return value
            return local_folder(value, what)
        except DataforgeError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def main(argv: list[str] | None = None) -> int:
    import signal

    args = make_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.fn(args)
    except DataforgeError as exc:
        if args.debug:
            raise
        err_console.print(Text.assemble(("error: ", "bold red"), str(exc)))
        return 2 if isinstance(exc, RecipeError) else 1
    except KeyboardInterrupt:
        err_console.print(Text("interrupted", style="bold red"))
        return 130
    except OSError as exc:  # the disk, not dataforge: say which file and what the system said
        if args.debug:
            raise
        where = f" ({exc.filename})" if exc.filename else ""
        err_console.print(Text.assemble(("error: ", "bold red"), f"{exc.strerror or exc}{where}"))
        return 1


if __name__ == "__main__":
    sys.exit(main())
