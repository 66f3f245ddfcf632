"""What the Hugging Face Hub reads of an exported dataset: the YAML front matter of its card
(``configs`` with ``data_files`` per split, ``dataset_info`` with features and split sizes,
``license``, ``task_categories``, ``language``, ``size_categories``, ``tags``) and the Hub's
folder layout (``data/<split>-NNNNN-of-NNNNN.parquet`` beside ``README.md``).

Consumes the exported Arrow tables and what the recipe says of the dataset; produces text and
files. ``datasets.load_dataset(folder)`` reads the layout back with the same splits and rows."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from dataforge.card_stats import SplitSummary
from dataforge.engine.store import atomic_directory

# the first line of a LICENSE file → the Hub's licence id
_LICENSE_IDS = (
    ("mit license", "mit"),
    ("apache license", "apache-2.0"),
    ("creative commons attribution-sharealike 4.0", "cc-by-sa-4.0"),
    ("creative commons attribution 4.0", "cc-by-4.0"),
    ("bsd 3-clause", "bsd-3-clause"),
    ("bsd 2-clause", "bsd-2-clause"),
)
# TRL dataset type → the Hub's task categories
_TASKS = {
    "messages": ["text-generation"],
    "prompt_completion": ["text-generation"],
    "prompt_only": ["text-generation", "reinforcement-learning"],
    "preference": ["text-generation", "reinforcement-learning"],
}


def license_id(license_file: Path) -> str:
    """The Hub licence id a LICENSE file's opening names, ``other`` when it is not a known one."""
    head = " ".join(license_file.read_text(errors="replace").split()[:12]).lower()
    return next((spdx for words, spdx in _LICENSE_IDS if words in head), "other")


def source_licenses(paths: Iterable[Path]) -> list[str]:
    """The licences of local source files: a ``LICENSE`` (or ``LICENSE.txt``/``LICENSE.md``) in
    the file's folder, sorted and without repeats; sources without one add nothing."""
    found = set()
    for path in paths:
        folder = path if path.is_dir() else path.parent
        for name in ("LICENSE", "LICENSE.txt", "LICENSE.md"):
            if (folder / name).is_file():
                found.add(license_id(folder / name))
                break
    return sorted(found)


def size_category(rows: int) -> str:
    """The Hub's ``size_categories`` bucket for a row count."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]
    bounds += [(10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
    return next((label for bound, label in bounds if rows < bound), "n>1B")


def front_matter(
    tables: dict[str, pa.Table | SplitSummary],
    trl_type: str | None,
    licenses: list[str],
    language: list[str],
    tags: list[str],
) -> str:
    """The card's YAML front matter (between ``---`` lines) for splits ``tables`` (the tables, or
    their summaries: schema, rows and Arrow bytes are what it reads). Several
    licences (sources under different terms) are all listed."""
    import datasets

    first = next(iter(tables.values()))
    splits = datasets.SplitDict(
        {s: datasets.SplitInfo(s, num_bytes=t.nbytes, num_examples=t.num_rows) for s, t in tables.items()}
    )
    info = datasets.DatasetInfo(features=datasets.Features.from_arrow_schema(first.schema), splits=splits)
    meta: dict = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": s, "path": f"data/{s}-*"} for s in tables],
            }
        ],
        "dataset_info": info._to_yaml_dict(),
    }
    if licenses:
        meta["license"] = licenses[0] if len(licenses) == 1 else licenses
    meta["task_categories"] = _TASKS.get(trl_type or "", ["text-generation"])
    if language:
        meta["language"] = language
    meta["size_categories"] = [size_category(sum(t.num_rows for t in tables.values()))]
    meta["tags"] = sorted({"dataforge", *([f"trl-{trl_type}"] if trl_type else []), *tags})
    # json round trip: plain types only, so the YAML has no Python tags
    return "---\n" + yaml.safe_dump(json.loads(json.dumps(meta)), sort_keys=False, allow_unicode=True) + "---\n"


def write_hub_layout(target: Path, tables: dict[str, pa.Table], card: str, images: Iterable[Path] = ()) -> None:
    """``target`` as the Hub lays a dataset out: one Parquet file per split under ``data/``, the
    card as ``README.md`` and the images it links beside it; written into a temporary folder and
    renamed into place."""
    with atomic_directory(target) as tmp:
        (tmp / "data").mkdir()
        for split, table in tables.items():
            pq.write_table(table, tmp / "data" / f"{split}-00000-of-00001.parquet")
        (tmp / "README.md").write_text(card)
        for image in images:
            shutil.copyfile(image, tmp / image.name)


def export_hub(build: Path, target: Path, names: list[str] | None = None) -> list[tuple[str, str, int, Path]]:
    """Every dataset exported under ``build/datasets`` (or those ``names``) in the Hub layout at
    ``target/<dataset>``; returns (dataset, split, rows, parquet path) per split."""
    from datasets import load_from_disk

    from dataforge.errors import DataError

    root = build / "datasets"
    found = sorted(p.parent.name for p in root.glob("*/dataforge.json")) if root.is_dir() else []
    if not found:
        raise DataError(f"no exported dataset under {root}: build the recipe first (dataforge build … --out {build})")
    unknown = sorted(set(names or []) - set(found))
    if unknown:
        raise DataError(f"no dataset {', '.join(unknown)} under {root} (there: {', '.join(found)})")
    written = []
    for name in names or found:
        dd = load_from_disk(str(root / name))
        tables = {split: dd[split].data.table for split in dd}
        card = (root / name / "card.md").read_text()
        write_hub_layout(target / name, tables, card, sorted((root / name).glob("*.png")))
        for split, table in tables.items():
            written.append((name, split, table.num_rows, target / name / "data" / f"{split}-00000-of-00001.parquet"))
    return written
