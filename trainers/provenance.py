"""From a trained model back to its data: read ``dataforge_provenance.json`` in a training output
directory and check it against the build it names (``dataforge trace MODEL_DIR``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataforge.errors import DataforgeError


@dataclass
class Trace:
    provenance: dict[str, Any]
    build_dir: Path | None
    findings: list[tuple[str, str]] = field(default_factory=list)  # (check, what was found)

    @property
    def run_id(self) -> str | None:
        return self.provenance["dataset"].get("run_id")


def trace(model_dir: str | Path) -> Trace:
    """The provenance of a training output directory, checked against the build it names: is the
    run still in the lineage, and is the dataset on disk still the one that was trained on?"""
    path = Path(model_dir) / "dataforge_provenance.json"
    if not path.exists():
        raise DataforgeError(f"{model_dir}: no dataforge_provenance.json (not trained with `dataforge train`?)")
    prov = json.loads(path.read_text())
    ds = prov["dataset"]
    data_dir = Path(ds["path"])
    build_dir = data_dir.parent.parent if data_dir.parent.name == "datasets" else None
    t = Trace(prov, build_dir)
    if not ds.get("built_by_dataforge"):
        t.findings.append(("dataset", f"{data_dir}: not built by dataforge; no lineage to follow"))
        return t
    lineage = Path(ds["lineage"]) if ds.get("lineage") else None
    if lineage is None or not lineage.exists():
        t.findings.append(("lineage", "missing: the build directory was moved or deleted"))
    else:
        from dataforge.lineage import open_read

        con = open_read(lineage.parent)
        row = con.execute("SELECT status, recipe_path FROM runs WHERE run_id = ?", [t.run_id]).fetchone()
        latest = con.execute("SELECT run_id FROM latest_run").fetchone()
        con.close()
        if row is None:
            t.findings.append(("lineage", f"run {t.run_id} is not in {lineage}"))
        else:
            newer = " (a newer build exists: the latest_* views show it, query the runs table for this one)"
            t.findings.append(
                ("lineage", f"run {t.run_id} ({row[0]}) in {lineage}" + ("" if latest[0] == t.run_id else newer))
            )
    meta_path = data_dir / "dataforge.json"
    if not meta_path.exists():
        t.findings.append(("dataset", f"{data_dir}: gone"))
    else:
        now = json.loads(meta_path.read_text())
        changed = _changed_splits(data_dir, ds.get("splits", {}))
        if changed:
            t.findings.append(
                (
                    "dataset",
                    f"{data_dir}: the bytes of split(s) {', '.join(changed)} differ from those trained on "
                    "(sha256 of the data files); the training data is the run's artifacts",
                )
            )
        elif now.get("fingerprint") == ds.get("fingerprint"):
            t.findings.append(
                ("dataset", f"{data_dir}: unchanged since training (fingerprint {ds['fingerprint']}, bytes checked)")
            )
        else:
            t.findings.append(
                (
                    "dataset",
                    f"{data_dir}: rebuilt since training (fingerprint {ds.get('fingerprint')} → "
                    f"{now.get('fingerprint')}); the training data is the run's artifacts",
                )
            )
    return t


def _changed_splits(data_dir: Path, splits: dict[str, Any]) -> list[str]:
    """The splits whose data files on disk no longer hash to the sha256 recorded at training."""
    from dataforge.engine.store import files_sha256

    changed = []
    for split, info in sorted(splits.items()):
        files = sorted((data_dir / split).glob("*.arrow"))
        if not files or files_sha256(files) != info.get("sha256"):
            changed.append(split)
    return changed
