"""Export: the recipe's datasets → ``<out>/datasets/<name>/`` (a ``datasets.DatasetDict`` laid
out as ``save_to_disk`` lays it out), with ``card.md`` and ``dataforge.json`` (fingerprint, run
id, recipe hash).

Each split is written from its step output a batch at a time (``write_split``: ``datasets``'
``ArrowWriter``, record batches of 1,000 rows, a new ``.arrow`` file every ``EXPORT_SHARD_ROWS``
rows, each file a job the executor may run on a worker), and the card's statistics are gathered
from the same blocks (``SplitSummary``), so no split is held whole. The bytes depend only on the
rows, not on how the step output was stored or where the files were written.

A dataset directory is written under a temporary name and renamed into place. One whose
fingerprint (its split artifacts and column selection) is unchanged is left as it is, so an
unchanged rebuild rewrites nothing. Exported splits keep ``_id`` (the lineage key) and the
user's columns; other ``_`` columns stay in the artifacts.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from dataforge import __version__
from dataforge.card import card_tokenizer, dataset_licenses, render_card
from dataforge.card_plots import write_plots
from dataforge.card_stats import SplitSummary
from dataforge.engine.fingerprint import canonical_json, hash_text, output_fingerprint, path_fingerprint
from dataforge.engine.plan import Plan, PlannedDataset, Ref
from dataforge.engine.store import Store, atomic_directory, file_stamp, files_sha256, step_scratch, verify_files
from dataforge.engine.table import Mapper, Part, Table, shard_slices
from dataforge.errors import DataError
from dataforge.steps.audit import dataset_audit

# 2: cards open with the Hub's YAML front matter; 3: statistics; 4: plots; 5: leakage and audit plots,
# token counts; 6: the funnel counts the rows that lead on to the dataset; 7: time order only for time
# splits; 8: splits written batch by batch (shards by rows, not bytes); 9: the split audit's counts in
# dataforge.json, and a warning for splits that share prompts; a card names its empty splits; 10: the audit's
# exact overlaps are found without the spaces beside punctuation; 11: a turn's tool calls are its text too
EXPORT_VERSION = 11
EXPORT_SHARD_ROWS = 1_000_000  # rows per .arrow file of a split
EXPORT_BLOCK_ROWS = 10_000  # rows handed to the writer at once (a multiple of its 1,000-row record batches)


def dataset_fingerprint(plan: Plan, ds: PlannedDataset) -> str:
    by_name = plan.by_name
    splits = {s: output_fingerprint(by_name[r.step].fingerprint, r.output) for s, r in ds.splits.items()}
    card = {"description": ds.description, "licenses": dataset_licenses(plan, ds), "language": ds.language}
    card["tags"] = ds.tags
    if ds.tokenizer is not None:  # a local tokenizer by its files, so a changed one redraws the card
        local = Path(ds.tokenizer)
        card["tokenizer"] = path_fingerprint(local) if local.exists() else ds.tokenizer
    payload = {"splits": splits, "columns": ds.columns, "card": card, "export_version": EXPORT_VERSION}
    return hash_text(canonical_json(payload))[:16]


def export_datasets(
    plan: Plan,
    store: Store,
    load: Callable[[Ref], Table],
    reports: list,
    record: Callable[[str, str, list[tuple[str, str, int, str]]], None],
    run_id: str,
    peek: Callable[[Ref], pl.DataFrame],
    forced: set[str] | frozenset[str] = frozenset(),
    recorded: Callable[[str, str], dict[str, str]] | None = None,
    full_verify: bool = False,
    warn: Callable[[str], None] | None = None,
    mapper: Mapper | None = None,
) -> dict[str, dict[str, int]]:
    """Write every dataset of the plan, reading split tables through ``load`` (a batch at a time)
    and reporting each export's (split, path, rows, sha256) through ``record``; returns rows per
    split per dataset. ``peek`` reads any step output whole without releasing it (cards read other
    steps' tables).

    A dataset already on disk with the same fingerprint is kept only if none of its steps is in
    ``forced`` and every split's files are the ones recorded (``recorded(name, fingerprint)``:
    split → sha256 from the lineage; size and mtime first, the sha256 where they changed or with
    ``full_verify``); otherwise it is rewritten, and ``warn`` is told why. ``mapper``: where the
    split audit's divided work runs (the executor's workers; ``audit.audit_frames``), staged
    under ``<out>/scratch/export``."""
    exported: dict[str, dict[str, int]] = {}
    for ds in plan.datasets.values():
        fp = dataset_fingerprint(plan, ds)
        target = store.out / "datasets" / ds.name
        meta = _reusable_export(plan, ds, fp, target, forced, recorded, full_verify, warn or (lambda _: None))
        if meta is None:
            meta = _write_dataset(plan, ds, fp, target, run_id, reports, load, peek, mapper, store.out)
        exported[ds.name] = {s: v["rows"] for s, v in meta["splits"].items()}
        for line in dataset_warnings(ds.name, meta):
            (warn or (lambda _: None))(line)
        record(ds.name, fp, [(s, str(target / s), v["rows"], v["sha256"]) for s, v in meta["splits"].items()])
    return exported


AUDIT_COUNTS = ("split_a", "split_b", "exact_overlap", "same_prompt_different_target", "near_overlap", "time_order")


def dataset_warnings(dataset: str, meta: dict[str, Any]) -> list[str]:
    """What a build says of an exported dataset (its ``dataforge.json``, so a reused export says it
    too): a line per split with no row (an empty eval split reads as a clean score), and per pair
    of splits that share prompts (the split audit's exact and near-duplicate overlap: one prompt in
    two splits of what a team trains and evaluates on)."""
    out = [
        f"dataset '{dataset}' split '{split}' is empty: no row reached it (the build's summary says where rows "
        "were dropped)"
        for split, v in meta["splits"].items()
        if v["rows"] == 0
    ]
    for pair in meta.get("audit", []):
        exact, near = pair["exact_overlap"] + pair["same_prompt_different_target"], pair["near_overlap"]
        if exact or near:
            out.append(
                f"dataset '{dataset}': splits '{pair['split_a']}' and '{pair['split_b']}' share {exact:,} prompt(s) "
                f"and {near:,} near-duplicate prompt(s) (see its card's split audit)"
            )
    return out


def _reusable_export(
    plan: Plan,
    ds: PlannedDataset,
    fp: str,
    target: Path,
    forced: set[str] | frozenset[str],
    recorded: Callable[[str, str], dict[str, str]] | None,
    full_verify: bool,
    warn: Callable[[str], None],
) -> dict | None:
    """The dataset's ``dataforge.json`` if what is on disk can be kept as it is, else None."""
    meta_path = target / "dataforge.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        splits = meta["splits"]
    except (OSError, ValueError, KeyError) as exc:
        warn(f"dataset '{ds.name}': {meta_path} is damaged ({exc}); writing it again")
        return None
    if meta.get("fingerprint") != fp:
        return None
    if forced & plan.ancestors({r.step for r in ds.splits.values()}):
        return None
    expected = recorded(ds.name, fp) if recorded is not None else {}
    for split, info in splits.items():
        problems = _verify_split(target / split, info, expected.get(split, info.get("sha256", "")), full_verify)
        if problems:
            warn(f"dataset '{ds.name}' split '{split}': {problems[0]}; writing the dataset again")
            return None
    return meta


def _verify_split(folder: Path, info: dict, sha256: str, full: bool) -> list[str]:
    """[] if a split's data files are the ones exported, else what differs (``verify_files``)."""
    files = sorted(folder.glob("*.arrow"))
    return verify_files(folder, files, info.get("files"), sha256, lambda: files_sha256(files), full)


def write_reports(plan: Plan, store: Store, load: Callable[[Ref], pl.DataFrame]) -> None:
    """``<out>/reports/<name>``: what each step's ``report(step, cfg, load)`` returns (markdown
    text or a table, written as Parquet; ``load(output)`` reads only the outputs it needs), each
    file written under a temporary name and renamed."""
    for ps in plan.steps:
        make = getattr(ps.stepdef.fn, "report", None)
        if make is None:
            continue
        root = store.out / "reports"
        root.mkdir(parents=True, exist_ok=True)
        for name, content in make(ps.name, ps.cfg, lambda o, ps=ps: load(Ref(ps.name, o))).items():
            tmp = root / f".tmp-{name}"
            if isinstance(content, pl.DataFrame):
                content.write_parquet(tmp)
            else:
                tmp.write_text(content + "\n")
            tmp.replace(root / name)


def export_columns(df: pl.DataFrame, columns: list[str] | None) -> list[str]:
    if columns is not None:
        return ["_id"] + [c for c in columns if c != "_id"]
    return ["_id"] + [c for c in df.columns if not c.startswith("_")]


def _same_types_in_every_split(ds: PlannedDataset, frames: dict[str, Table]) -> None:
    """Each exported column has one type in every split of a dataset (the plan checked their
    names): a ``prompt`` that is text in train and messages in test is a DataError naming both,
    raised before anything is written."""
    first: dict[str, tuple[str, Any]] = {}
    for split, table in frames.items():
        empty = table.empty()
        for c in export_columns(empty, ds.columns):
            dtype = empty.schema[c]
            seen = first.setdefault(c, (split, dtype))
            if seen[1] != dtype and pl.Null not in (dtype, seen[1]):
                raise DataError(
                    f"dataset '{ds.name}': column '{c}' is {seen[1]} in split '{seen[0]}' and {dtype} in split "
                    f"'{split}'; the splits of a dataset share their columns' types (shape both with one format step)"
                )


def _write_dataset(
    plan: Plan,
    ds: PlannedDataset,
    fp: str,
    target: Path,
    run_id: str,
    reports: list,
    load: Callable[[Ref], Table],
    peek: Callable[[Ref], pl.DataFrame],
    mapper: Mapper | None,
    out: Path,
) -> dict:
    by_name = plan.by_name
    tokenizer = card_tokenizer(ds)
    frames = {split: load(ref) for split, ref in ds.splits.items()}
    _same_types_in_every_split(ds, frames)
    with atomic_directory(target) as tmp:
        summaries: dict[str, SplitSummary] = {}
        splits = {}
        for s, table in frames.items():
            columns = export_columns(table.empty(), ds.columns)
            summaries[s] = write_split(tmp / s, table, columns, hash_text(f"{fp}:{s}")[:16], tokenizer, mapper)
            files = sorted((tmp / s).glob("*.arrow"))
            stamps = {f.name: file_stamp(f) for f in files}
            rows = summaries[s].num_rows
            splits[s] = {"rows": rows, "sha256": files_sha256(files), "from": str(ds.splits[s]), "files": stamps}
        (tmp / "dataset_dict.json").write_text(json.dumps({"splits": list(frames)}))
        ancestors = sorted(plan.ancestors({r.step for r in ds.splits.values()}))
        meta = {
            "dataset": ds.name,
            "fingerprint": fp,
            "run_id": run_id,
            "recipe": str(plan.loaded.path),
            "recipe_sha256": plan.recipe_sha256,
            "dataforge_version": __version__,
            "splits": splits,
            "steps": {n: by_name[n].fingerprint for n in ancestors},
        }
        leakage = {
            s.name: peek(Ref(s.name, "scores")) for s in plan.steps if s.name in ancestors and s.kind == "leakage.check"
        }
        by_time = any(s.kind == "split" and getattr(s.cfg, "time", None) for s in plan.steps if s.name in ancestors)
        audit = dataset_audit(frames, by_time, mapper, step_scratch(out, "export")) if len(frames) > 1 else None
        meta["audit"] = [dict(zip(AUDIT_COUNTS, row, strict=True)) for row in audit.summary()] if audit else []
        flow: dict[str, set[str]] = {}  # the outputs on the way to this dataset, for the funnel
        for ref in [*ds.splits.values(), *(r for s in plan.steps if s.name in ancestors for r in s.inputs.values())]:
            flow.setdefault(ref.step, set()).add(ref.output)
        plots = write_plots(tmp, summaries, [r for r in reports if r.name in ancestors], leakage, audit, flow)
        (tmp / "card.md").write_text(render_card(plan, ds, summaries, reports, frames, audit, peek, plots))
        (tmp / "dataforge.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta


def write_split(
    folder: Path,
    table: Table,
    columns: list[str],
    fingerprint: str,
    tokenizer: Any = None,
    mapper: Mapper | None = None,
) -> SplitSummary:
    """Write ``columns`` of ``table`` into ``folder`` as ``Dataset.save_to_disk`` lays a split out
    (``data-NNNNN-of-NNNNN.arrow`` files, ``state.json``, ``dataset_info.json``), reading it a
    batch at a time; returns its ``SplitSummary`` (token counts with ``tokenizer``). Files hold
    ``EXPORT_SHARD_ROWS`` rows at most (an empty split: one file with the schema).

    Each file is one job (``write_file``): its rows, read from the table's shards, in blocks of
    ``EXPORT_BLOCK_ROWS`` counted from the file's first row, so its bytes depend on its rows alone.
    ``mapper`` runs the jobs where the executor has workers (Ray tasks; ``folder`` must then be on
    storage they reach); without one, here in order. The summaries of the files are joined in
    file order."""
    from datasets import Dataset
    from datasets.table import InMemoryTable

    schema = plain_arrow(table.empty().select(columns).to_arrow()).schema
    rows = table.height
    count = max(1, -(-rows // EXPORT_SHARD_ROWS))
    bounds = [i * rows // count for i in range(count + 1)]  # contiguous, as Dataset.shard(contiguous=True)
    names = [f"data-{i:05d}-of-{count:05d}.arrow" for i in range(count)]
    folder.mkdir(parents=True)
    jobs = [(str(folder / names[i]), _rows_between(table, columns, bounds[i], bounds[i + 1])) for i in range(count)]
    types = {c: table.schema[c] for c in columns}
    write = functools.partial(write_file, schema=schema, types=types, tokenizer=tokenizer)
    summary = SplitSummary(schema, tokenizer)
    for part in (mapper or map)(write, jobs):
        summary.join(part)
    # state.json and dataset_info.json as save_to_disk writes them for this dataset
    shell = Dataset(InMemoryTable(schema.empty_table()), fingerprint=fingerprint)
    keys = ("_fingerprint", "_format_columns", "_format_kwargs", "_format_type", "_output_all_columns")
    state = {k: shell.__dict__[k] for k in keys} | {"_split": None, "_data_files": [{"filename": n} for n in names]}
    (folder / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    info = asdict(shell.info)
    (folder / "dataset_info.json").write_text(json.dumps({k: info[k] for k in sorted(info)}, indent=2))
    return summary


def _rows_between(table: Table, columns: list[str], first: int, last: int) -> pl.DataFrame | list[Part]:
    """Rows ``first`` to ``last`` of ``table`` as a worker reads them: slices of its stored shards
    (``shard_slices`` cut to the range), or the rows themselves where the table is a frame."""
    if table.frame is not None:
        return table.frame.select(columns).slice(first, last - first)
    parts, at = [], 0
    for part in shard_slices(table, table.batch_rows):
        lo, hi = max(first, at), min(last, at + part.rows)
        if lo < hi:
            parts.append(Part(part.path, part.offset + lo - at, hi - lo))
        at += part.rows
    return parts


def write_file(
    job: tuple[str, pl.DataFrame | list[Part]],
    schema: pa.Schema,
    types: dict[str, pl.DataType],
    tokenizer: Any = None,
) -> SplitSummary:
    """One ``.arrow`` file of a split (``write_split``): the rows of ``job`` (its path, and its
    rows or the shard slices that hold them, read as ``types``) written with ``datasets``'
    ``ArrowWriter`` in blocks of ``EXPORT_BLOCK_ROWS`` as ``schema``; returns the summary of its
    rows (without the tokenizer, which stays with the caller)."""
    from datasets import Features
    from datasets.arrow_writer import ArrowWriter

    path, rows = job
    batches = [rows] if isinstance(rows, pl.DataFrame) else (part.read(types, list(types)) for part in rows)
    summary = SplitSummary(schema, tokenizer)
    writer = ArrowWriter(features=Features.from_arrow_schema(schema), path=path, embed_local_files=True)
    pending: list[pa.Table] = []
    held = 0

    def write(size: int) -> None:
        nonlocal pending, held
        joined = pa.concat_tables(pending)
        rest = joined.slice(size)
        pending, held = ([rest] if rest.num_rows else []), held - size
        # a copy, not a slice: a sliced list column writes its unused child values too, so the
        # bytes would depend on how the rows were batched
        block = joined.take(np.arange(size)).combine_chunks()
        writer.write_table(block)
        summary.add(block)

    for batch in batches:
        pending.append(plain_arrow(batch.to_arrow()).cast(schema))
        held += batch.height
        while held >= EXPORT_BLOCK_ROWS:
            write(EXPORT_BLOCK_ROWS)
    if held:
        write(held)
    writer.finalize()
    summary.tokenizer = None
    return summary


def plain_arrow(table: pa.Table) -> pa.Table:
    """Large string/list types (polars' defaults) → the plain ones every consumer reads."""

    def plain(t: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(t) or pa.types.is_string_view(t):
            return pa.string()
        if pa.types.is_large_list(t) or pa.types.is_list(t):
            return pa.list_(plain(t.value_type))
        if pa.types.is_struct(t):
            return pa.struct([pa.field(f.name, plain(f.type), f.nullable) for f in t])
        return t

    schema = pa.schema([pa.field(f.name, plain(f.type), f.nullable) for f in table.schema])
    return table.cast(schema)
