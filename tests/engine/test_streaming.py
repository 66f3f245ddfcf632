"""The streaming executor (engine.streaming): rows steps batch by batch over Parquet shards.
Every shipped recipe's byte-identical exports at small batches are in tests/recipes; here, what
a build at one or two rows a batch does with failures, empty inputs, column types that a batch
cannot see, and the batch size setting."""

from __future__ import annotations

import polars as pl
import pytest

from dataforge.engine.runner import build
from dataforge.engine.step import REGISTRY, Context, StepConfig, StepResult, per_table, step
from dataforge.engine.store import Store
from dataforge.engine.streaming import BATCH_ROWS_ENV, batch_rows_setting
from dataforge.errors import DataforgeError, StepError


class FailOnConfig(StepConfig):
    fail_on: str | None = None  # a row id that makes the batch holding it fail


if "test.fail_on" not in REGISTRY:

    @step("test.fail_on", version=1, inputs=None, per_table_columns=lambda cfg, cols, info: cols, partition="rows")
    def _fail_on(inputs: dict[str, pl.DataFrame], cfg: FailOnConfig, ctx: Context) -> StepResult:
        def one(name: str, df: pl.DataFrame) -> StepResult:
            if cfg.fail_on is not None and cfg.fail_on in df["_id"].to_list():
                raise ValueError(f"row {cfg.fail_on} on purpose")
            return StepResult({name: df})

        return per_table(inputs, one)


def _with_failing_step(recipe, fail_on: str | None) -> None:
    text = recipe.read_text().replace(
        "  sft:\n    kind: format\n    type: prompt_completion\n    inputs: {data: parsed}",
        "  checked:\n    kind: test.fail_on\n    inputs: {data: parsed}\n"
        + (f"    fail_on: '{fail_on}'\n" if fail_on else "")
        + "  sft:\n    kind: format\n    type: prompt_completion\n    inputs: {data: checked}",
    )
    recipe.write_text(text)


def test_a_batch_that_fails_leaves_no_artifact_and_the_rest_is_reused(qa):
    ws, recipe = qa
    _with_failing_step(recipe, "raw:3")  # the second batch at two rows a batch (raw:2 was filtered)
    with pytest.raises(StepError, match="step 'checked': ValueError: row raw:3 on purpose"):
        build(recipe, ws.out, show_progress=False, batch_rows=2)
    assert not any((ws.out / "artifacts" / "checked").glob("*/meta.json"))
    assert not (ws.out / ".tmp" / "checked").exists()  # the first batch's shards went too
    recipe.write_text(recipe.read_text().replace("    fail_on: 'raw:3'\n", ""))
    report = build(recipe, ws.out, show_progress=False, batch_rows=2)
    assert report.executed == ["checked", "sft"]
    # one shard per batch, in row order
    (art,) = (ws.out / "artifacts" / "checked").iterdir()
    shards = sorted((art / "data").iterdir())
    assert [pl.read_parquet(s)["_id"].to_list() for s in shards] == [["raw:0", "raw:1"], ["raw:3"]]


def test_counts_and_decisions_are_summed_over_batches(qa, tmp_path):
    _ws, recipe = qa
    one = build(recipe, tmp_path / "one", show_progress=False, batch_rows=0)
    many = build(recipe, tmp_path / "many", show_progress=False, batch_rows=1)
    for a, b in zip(one.steps, many.steps, strict=True):
        assert (a.name, a.rows_in, a.rows_out, a.drops, a.inputs, a.outputs) == (
            b.name,
            b.rows_in,
            b.rows_out,
            b.drops,
            b.inputs,
            b.outputs,
        )
    assert many.steps[2].drops == {"filter:min_length": 1}
    (clean,) = (tmp_path / "many" / "artifacts" / "clean").iterdir()
    assert len(list((clean / "data").glob("part-*.parquet"))) == 4  # a shard per batch of one row
    (filtered,) = (tmp_path / "many" / "artifacts" / "filtered").iterdir()
    assert [p.name for p in (filtered / "lineage").iterdir()] == ["events-00002.parquet"]  # raw:2's batch


def test_an_input_filtered_to_nothing_gives_an_empty_shard_with_the_columns(qa):
    ws, recipe = qa
    recipe.write_text(recipe.read_text().replace("min_length: 10", "min_length: 1000"))
    report = build(recipe, ws.out, show_progress=False, batch_rows=2)
    assert report.datasets == {"qa_sft": {"train": 0}}
    sft = report.steps[-1]
    (art,) = (ws.out / "artifacts" / "sft").iterdir()
    assert sft.rows_in == 0 and pl.read_parquet(art / "data" / "part-00000.parquet").columns == [
        "_id",
        "prompt",
        "completion",
    ]


def test_a_column_null_in_one_batch_reads_with_the_type_the_others_give(tmp_path):
    store = Store.open(tmp_path / "build")
    with store.writer("s", "f" * 16, "run") as w:
        w.add(StepResult({"data": pl.DataFrame({"_id": ["a"], "note": [None]})}))  # Null type
        w.add(StepResult({"data": pl.DataFrame({"_id": ["b"], "note": ["text"]})}))
        w.finish()
    batches = list(store.iter_batches("s", "f" * 16, "data", 10))
    assert [b.schema["note"] for b in batches] == [pl.String, pl.String]
    whole = store.read_table("s", "f" * 16, "data")
    assert whole.schema["note"] == pl.String and whole["note"].to_list() == [None, "text"]


def test_an_empty_output_reads_as_one_empty_batch(tmp_path):
    """A per-table step streams every input when one of them is larger than a batch; an empty
    one then still gives its step one (empty) batch, so its output has its columns."""
    store = Store.open(tmp_path / "build")
    with store.writer("s", "f" * 16, "run") as w:
        w.add(StepResult({"data": pl.DataFrame(schema={"_id": pl.String, "n": pl.Int64})}))
        w.finish()
    (batch,) = store.iter_batches("s", "f" * 16, "data", 10)
    assert batch.height == 0 and batch.schema == {"_id": pl.String, "n": pl.Int64}


def test_a_step_whose_input_fits_one_batch_runs_on_the_whole_table(qa):
    ws, recipe = qa
    build(recipe, ws.out, show_progress=False, batch_rows=4)  # the source's 4 rows: one batch
    (art,) = (ws.out / "artifacts" / "clean").iterdir()
    assert [p.name for p in (art / "data").iterdir()] == ["part-00000.parquet"]


def test_the_batch_size_setting(monkeypatch):
    monkeypatch.delenv(BATCH_ROWS_ENV, raising=False)
    assert batch_rows_setting() == 100_000
    monkeypatch.setenv(BATCH_ROWS_ENV, "5000")
    assert batch_rows_setting() == 5000 and batch_rows_setting(7) == 7 and batch_rows_setting(0) == 0
    monkeypatch.setenv(BATCH_ROWS_ENV, "many")
    with pytest.raises(DataforgeError, match="DATAFORGE_BATCH_ROWS='many' is not a whole number"):
        batch_rows_setting()
    with pytest.raises(DataforgeError, match="batch rows must be 0"):
        batch_rows_setting(-1)


def test_cli_batch_rows(qa, capsys):
    from dataforge.cli import main

    ws, recipe = qa
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet", "--batch-rows", "1"]) == 0
    (art,) = (ws.out / "artifacts" / "sft").iterdir()
    assert len(list((art / "data").glob("part-*.parquet"))) == 3
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet", "--batch-rows", "-1"]) == 1
    assert "batch rows must be 0" in capsys.readouterr().err


PARQUET_RECIPE = """
name: pq
steps:
  raw:
    kind: source
    path: rows.parquet
    id_column: key
    timestamp_column: {ts}
    rename: {{q: question}}
    columns: [question, answer, key, {ts}]
    limit: 2300
  sft:
    kind: format
    type: prompt_completion
    inputs: {{data: raw}}
    prompt: question
    completion: answer
datasets:
  pq_sft:
    splits: {{train: sft.data}}
"""


def _parquet_source(root, n: int = 2500, text_time: bool = False, repeat: bool = False):
    from tests.conftest import GSM8K

    df = pl.read_ndjson(GSM8K / "train.jsonl").head(n).rename({"question": "q"})
    keys = [f"k{i}" for i in range(n)]
    if repeat:
        keys[1500] = "k3"  # a repeat in another batch than the first
    start = pl.datetime(2024, 1, 1)
    ts = pl.datetime_range(start, start + pl.duration(hours=n - 1), "1h", eager=True)
    df = df.with_columns(pl.Series("key", keys), ts.alias("when"), ts.dt.strftime("%Y-%m-%d %H:%M").alias("stamp"))
    df.write_parquet(root / "rows.parquet", row_group_size=700)
    return root / "rows.parquet"


@pytest.mark.parametrize("ids", ["key", "ordinal"])
def test_a_parquet_source_is_read_in_batches_and_gives_the_same_rows(ids, ws, tmp_path):
    from tests.engine.test_runner import _tree_hashes

    _parquet_source(ws.root)
    text = PARQUET_RECIPE.format(ts="when")
    recipe = ws.recipe(text if ids == "key" else text.replace("    id_column: key\n", ""))
    whole = build(recipe, tmp_path / "whole", show_progress=False, batch_rows=0)
    streamed = build(recipe, tmp_path / "streamed", show_progress=False, batch_rows=1000)
    assert _tree_hashes(tmp_path / "whole" / "datasets") == _tree_hashes(tmp_path / "streamed" / "datasets")
    fp = whole.steps[0].fingerprint
    a, b = Store(tmp_path / "whole"), Store(tmp_path / "streamed")
    assert a.read_table("raw", fp, "data").equals(b.read_table("raw", fp, "data"))
    assert [f.name for f in b.output_files("raw", fp, "data")] == [f"part-0000{i}.parquet" for i in range(3)]
    last = "raw:k2299" if ids == "key" else "raw:2299"  # ordinals go on across batches
    assert streamed.steps[0].rows_out == 2300 and b.read_table("raw", fp, "data")["_id"][-1] == last


@pytest.mark.parametrize("origin", ["hf_disk", "hub"])
def test_a_datasets_source_is_read_in_batches_and_gives_the_same_rows(origin, ws, tmp_path, monkeypatch):
    """A ``save_to_disk`` folder and a hub dataset (``load_dataset``, here the parquet builder on a
    local file) are memory-mapped Arrow: read a batch at a time, never whole, with the same rows
    and bytes as a whole read."""
    from datasets import Dataset

    import dataforge.steps.sources
    from tests.engine.test_runner import _tree_hashes

    path = _parquet_source(ws.root)
    if origin == "hf_disk":
        Dataset.from_parquet(str(path)).save_to_disk(str(ws.root / "hfds"))
        where = "    path: hfds\n"
    else:
        where = f"    hub: parquet\n    data_files: {path}\n    split: train\n"
    recipe = ws.recipe(PARQUET_RECIPE.format(ts="when").replace("    path: rows.parquet\n", where))
    whole = build(recipe, tmp_path / "whole", show_progress=False, batch_rows=0)
    real = dataforge.steps.sources._arrow_frame
    monkeypatch.setattr(dataforge.steps.sources, "_arrow_frame", lambda ds: pytest.fail("read whole"))
    streamed = build(recipe, tmp_path / "streamed", show_progress=False, batch_rows=1000)
    monkeypatch.setattr(dataforge.steps.sources, "_arrow_frame", real)
    assert _tree_hashes(tmp_path / "whole" / "datasets") == _tree_hashes(tmp_path / "streamed" / "datasets")
    fp = whole.steps[0].fingerprint
    a, b = Store(tmp_path / "whole"), Store(tmp_path / "streamed")
    assert a.read_table("raw", fp, "data").equals(b.read_table("raw", fp, "data"))
    assert [f.name for f in b.output_files("raw", fp, "data")] == [f"part-0000{i}.parquet" for i in range(3)]
    assert streamed.steps[0].rows_out == 2300 and b.read_table("raw", fp, "data")["_id"][-1] == "raw:k2299"


def test_a_csv_source_is_read_in_batches_typed_as_the_whole_file(ws, tmp_path, monkeypatch):
    """A UTF-8 CSV file (quoted multi-line answers, a column empty in the first batch) is read a
    batch at a time with the types a whole read infers, and gives the same rows and bytes."""
    import dataforge.steps.sources
    from tests.engine.test_runner import _tree_hashes

    df = pl.read_parquet(_parquet_source(ws.root)).select("q", "answer", "key")
    late = pl.when(pl.int_range(pl.len()) >= 2000).then(pl.int_range(pl.len()) / 4).alias("late")
    df.with_columns(late).write_csv(ws.root / "rows.csv")
    text = (
        PARQUET_RECIPE.format(ts="late").replace("rows.parquet", "rows.csv").replace("    timestamp_column: late\n", "")
    )
    recipe = ws.recipe(text)
    whole = build(recipe, tmp_path / "whole", show_progress=False, batch_rows=0)
    monkeypatch.setattr(dataforge.steps.sources, "_read_csv", lambda *a: pytest.fail("read whole"))
    report = build(recipe, tmp_path / "streamed", show_progress=False, batch_rows=1000)
    fp = whole.steps[0].fingerprint
    a, b = Store(tmp_path / "whole"), Store(tmp_path / "streamed")
    assert [f.name for f in b.output_files("raw", fp, "data")] == [f"part-0000{i}.parquet" for i in range(3)]
    assert a.read_table("raw", fp, "data").schema["late"] == pl.Float64
    assert a.read_table("raw", fp, "data").equals(b.read_table("raw", fp, "data"))
    assert "\n####" in b.read_table("raw", fp, "data")["answer"][0] and report.steps[0].rows_out == 2300
    assert _tree_hashes(tmp_path / "whole" / "datasets") == _tree_hashes(tmp_path / "streamed" / "datasets")


def test_an_id_repeated_in_another_batch_fails_the_source(ws):
    _parquet_source(ws.root, repeat=True)
    recipe = ws.recipe(PARQUET_RECIPE.format(ts="when"))
    with pytest.raises(StepError, match="id column 'key' repeats value 'k3'"):
        build(recipe, ws.out, show_progress=False, batch_rows=1000)
    assert not any((ws.out / "artifacts" / "raw").glob("*/meta.json"))


def test_a_text_timestamp_source_streams_and_reads_as_a_whole_read(ws, tmp_path):
    """A source whose timestamp column is text was read whole (polars inferred one format from the
    values, which a batch would do on its own rows). Each value is now read alone, so it streams, and
    its batches read every timestamp as the whole read does."""
    _parquet_source(ws.root)
    recipe = ws.recipe(PARQUET_RECIPE.format(ts="stamp"))
    report = build(recipe, ws.out, show_progress=False, batch_rows=1000)
    fp = report.steps[0].fingerprint
    assert len(Store(ws.out).output_files("raw", fp, "data")) > 1
    whole = build(recipe, tmp_path / "whole", show_progress=False)
    assert whole.steps[0].fingerprint == fp
    streamed, read_whole = (
        Store(ws.out).read_table("raw", fp, "data"),
        Store(tmp_path / "whole").read_table("raw", fp, "data"),
    )
    assert streamed["_ts"].null_count() == 0 and streamed.equals(read_whole)


EXACT_RECIPE = """
name: ex
steps:
  raw:
    kind: source
    path: rows.parquet
    id_column: key
  exact:
    kind: dedup.exact
    inputs: {data: raw}
    fields: [question]
datasets:
  ex:
    splits: {train: exact.data}
"""


def test_exact_dedup_runs_bucket_by_bucket_and_keeps_input_order(ws, tmp_path):
    """``dedup.exact`` (a key step that keeps input rows) on an input of several batches: rows
    partitioned by their text into buckets, copies planted far apart (first and last batch) meet
    in one bucket, and the kept rows come back in input order — the same bytes as a whole call."""
    from tests.conftest import GSM8K
    from tests.engine.test_runner import _tree_hashes

    df = pl.read_ndjson(GSM8K / "train.jsonl").head(2400)
    copies = pl.concat([df.head(40), df.slice(1200, 40)])  # copies of early and middle rows, at the end
    df = pl.concat([df, copies]).with_columns(pl.format("k{}", pl.int_range(pl.len())).alias("key"))
    df.write_parquet(ws.root / "rows.parquet")
    recipe = ws.recipe(EXACT_RECIPE)
    whole = build(recipe, tmp_path / "whole", show_progress=False, batch_rows=0)
    streamed = build(recipe, tmp_path / "streamed", show_progress=False, batch_rows=700)
    assert streamed.steps[1].drops == whole.steps[1].drops == {"exact_duplicate": 80}
    assert _tree_hashes(tmp_path / "whole" / "datasets") == _tree_hashes(tmp_path / "streamed" / "datasets")
    fp = whole.steps[1].fingerprint
    a, b = Store(tmp_path / "whole"), Store(tmp_path / "streamed")
    assert a.read_table("exact", fp, "data").equals(b.read_table("exact", fp, "data"))
    shards = b.artifact_dir("exact", fp) / "lineage"
    assert len(list(shards.glob("events-*.parquet"))) > 1  # decisions stored bucket by bucket
    query = "SELECT row_id, reason, related_id, score FROM latest_events ORDER BY ALL"
    from dataforge.lineage import open_read

    assert (
        open_read(tmp_path / "whole").execute(query).fetchall()
        == open_read(tmp_path / "streamed").execute(query).fetchall()
    )
    assert not (tmp_path / "streamed" / ".tmp" / "exact").exists()  # the buckets are gone


NEAR_RECIPE = """
name: near
steps:
  raw:
    kind: source
    path: rows.parquet
    id_column: key
  held:
    kind: source
    path: held.parquet
    id_column: key
  near:
    kind: dedup.minhash
    inputs: {data: raw, against: held}
    fields: [question]
    threshold: 0.7
    cluster_columns: true
datasets:
  near:
    splits: {train: near.data}
"""


def _near_copies(ws):
    """2,400 GSM8K questions with near copies of early and middle rows planted at the end, and
    a held-out table holding near copies of some others."""
    from tests.conftest import GSM8K

    df = pl.read_ndjson(GSM8K / "train.jsonl").head(2400).select("question")
    edit = pl.col("question").str.replace(r"\?$", " then?")
    copies = pl.concat([df.head(40), df.slice(1200, 40)]).with_columns(edit)
    df = pl.concat([df, copies]).with_columns(pl.format("k{}", pl.int_range(pl.len())).alias("key"))
    df.write_parquet(ws.root / "rows.parquet", row_group_size=500)
    held = df.slice(600, 30).with_columns(edit, pl.format("h{}", pl.int_range(pl.len())).alias("key"))
    held.write_parquet(ws.root / "held.parquet")


def test_minhash_dedup_reads_its_input_out_of_core_and_gives_the_same_rows(ws, tmp_path, monkeypatch):
    """``dedup.minhash`` (an out-of-core global step) on inputs larger than a batch reads them
    through ``Table``s over the stored shards: the compared text a batch at a time and for
    candidate pairs only, never a whole text column; its kept rows are written batch by batch.
    The same bytes and the same decisions as a whole-table build."""
    from dataforge.engine.table import Table
    from dataforge.lineage import open_read
    from tests.engine.test_runner import _tree_hashes

    _near_copies(ws)
    recipe = ws.recipe(NEAR_RECIPE)
    whole = build(recipe, tmp_path / "whole", show_progress=False, batch_rows=0)
    selected, taken = [], []
    real_select, real_take = Table.select, Table.take
    monkeypatch.setattr(Table, "select", lambda self, cols: selected.append(list(cols)) or real_select(self, cols))
    monkeypatch.setattr(
        Table, "take", lambda self, index, cols=None: taken.append(len(index)) or real_take(self, index, cols)
    )
    streamed = build(recipe, tmp_path / "streamed", show_progress=False, batch_rows=700)
    assert whole.steps[2].drops == streamed.steps[2].drops
    assert streamed.steps[2].drops["near_duplicate"] >= 100  # 80 planted copies + 30 matching held rows
    assert _tree_hashes(tmp_path / "whole" / "datasets") == _tree_hashes(tmp_path / "streamed" / "datasets")
    assert all("question" not in cols for cols in selected) and ["_id"] in selected
    assert taken and sum(taken) < 2430 / 4  # the text of candidate rows only
    query = "SELECT row_id, action, reason, related_id, score FROM latest_events ORDER BY ALL"
    assert (
        open_read(tmp_path / "whole").execute(query).fetchall()
        == open_read(tmp_path / "streamed").execute(query).fetchall()
    )
    fp = streamed.steps[2].fingerprint
    shards = Store(tmp_path / "streamed").output_files("near", fp, "data")
    assert len(shards) == 4 and all(pl.read_parquet_schema(s)["_cluster_id"] == pl.String for s in shards)


def _semantic_copies(ws):
    """A recipe deduplicating 650 GSM8K questions, 30 of them planted again lightly edited, with
    ``dedup.semantic`` against 10 held-out edited copies of others."""
    _near_copies(ws)
    rows = pl.read_parquet(ws.root / "rows.parquet")
    pl.concat([rows.head(620), rows.slice(2400, 30)]).write_parquet(ws.root / "rows.parquet", row_group_size=200)
    pl.read_parquet(ws.root / "held.parquet").head(10).write_parquet(ws.root / "held.parquet")
    text = NEAR_RECIPE.replace("kind: dedup.minhash", "kind: dedup.semantic").replace(
        "threshold: 0.7", "threshold: 0.9"
    )
    return ws.recipe(text)


def test_semantic_dedup_embeds_out_of_core_and_gives_the_same_rows(ws, tmp_path, monkeypatch):
    """``dedup.semantic`` on inputs larger than a batch embeds the text a batch at a time (never
    the whole text column) and writes its kept rows batch by batch: the same bytes and decisions
    as a whole-table build (a text's vector does not depend on its batch)."""
    from dataforge.engine.table import Table
    from dataforge.lineage import open_read
    from tests.engine.test_runner import _tree_hashes

    recipe = _semantic_copies(ws)
    whole = build(recipe, tmp_path / "whole", show_progress=False, batch_rows=0)
    selected = []
    real_select = Table.select
    monkeypatch.setattr(Table, "select", lambda self, cols: selected.append(list(cols)) or real_select(self, cols))
    streamed = build(recipe, tmp_path / "streamed", show_progress=False, batch_rows=250)
    assert whole.steps[2].drops == streamed.steps[2].drops
    assert streamed.steps[2].drops["semantic_duplicate"] >= 30 + 10  # the planted copies, the held ones
    assert _tree_hashes(tmp_path / "whole" / "datasets") == _tree_hashes(tmp_path / "streamed" / "datasets")
    assert selected and all("question" not in cols for cols in selected)
    query = "SELECT row_id, action, reason, related_id, score FROM latest_events ORDER BY ALL"
    assert (
        open_read(tmp_path / "whole").execute(query).fetchall()
        == open_read(tmp_path / "streamed").execute(query).fetchall()
    )
    shards = Store(tmp_path / "streamed").output_files("near", streamed.steps[2].fingerprint, "data")
    assert len(shards) == 3


SPLIT_RECIPE = """
name: sp
steps:
  raw:
    kind: source
    path: rows.parquet
    id_column: key
  split:
    kind: split
    inputs: raw
    fractions: {train: 0.8, test: 0.2}
    group: group
    cluster: {fields: [answer], threshold: 0.7}
    seed: 3
  audit:
    kind: split.audit
    inputs: {train: split.train, test: split.test}
    prompt: question
    target: answer
  sft:
    kind: format
    type: prompt_completion
    inputs: {train: split.train, test: split.test}
    prompt: question
    completion: answer
datasets:
  sp:
    splits: {train: sft.train, test: sft.test}
"""


def test_split_audit_and_export_run_out_of_core_with_the_same_bytes(ws, tmp_path, monkeypatch):
    """``split`` and ``split.audit`` on inputs larger than a batch: the split reads its ids and
    group keys hashed a batch at a time, the cluster text a batch at a time (and for candidate pairs), and writes
    each split batch by batch; the audit keeps hashes of prompts and targets; the export writes
    each split from its shards a batch at a time, in files of ``EXPORT_SHARD_ROWS`` rows. Same
    assignment, findings, card and bytes as a whole-table build."""
    import dataforge.export
    from dataforge.engine.table import Table
    from dataforge.lineage import open_read
    from tests.conftest import GSM8K
    from tests.engine.test_runner import _tree_hashes

    df = pl.read_ndjson(GSM8K / "train.jsonl").head(2400)
    # near copies of answers (clustered: they stay in one split), and copies of questions with
    # another answer (not clustered: the audit finds those that land in two splits)
    near = df.head(60).with_columns(pl.col("answer").str.replace(r"\n####", " then.\n####"))
    asked = df.slice(100, 60).with_columns(df.slice(900, 60)["answer"])
    df = pl.concat([df, near, asked]).with_columns(
        pl.format("k{}", pl.int_range(pl.len())).alias("key"), (pl.int_range(pl.len()) % 1000).alias("group")
    )
    df.write_parquet(ws.root / "rows.parquet", row_group_size=500)
    recipe = ws.recipe(SPLIT_RECIPE)
    monkeypatch.setattr(dataforge.export, "EXPORT_SHARD_ROWS", 1000)
    whole = build(recipe, tmp_path / "whole", show_progress=False, batch_rows=0)
    selected = []
    real_select = Table.select
    monkeypatch.setattr(Table, "select", lambda self, cols: selected.append(list(cols)) or real_select(self, cols))
    streamed = build(recipe, tmp_path / "streamed", show_progress=False, batch_rows=700)
    assert [s.outputs for s in whole.steps] == [s.outputs for s in streamed.steps]
    assert whole.steps[2].flags == streamed.steps[2].flags and sum(whole.steps[2].flags.values()) > 0
    assert _tree_hashes(tmp_path / "whole" / "datasets") == _tree_hashes(tmp_path / "streamed" / "datasets")
    # group keys are hashed a batch at a time, never selected whole; nor are texts
    assert ["_id"] in selected and all(not {"group", "question", "answer"} & set(c) for c in selected)
    placed = dict(
        open_read(tmp_path / "streamed")
        .execute("SELECT row_id, detail_json FROM latest_events WHERE step = 'split'")
        .fetchall()
    )
    assert all(placed[f"raw:k{i}"] == placed[f"raw:k{2400 + i}"] for i in range(60))  # clusters kept together
    query = "SELECT row_id, action, reason, related_id, score, detail_json FROM latest_events ORDER BY ALL"
    assert (
        open_read(tmp_path / "whole").execute(query).fetchall()
        == open_read(tmp_path / "streamed").execute(query).fetchall()
    )
    from datasets import load_from_disk

    train = tmp_path / "streamed" / "datasets" / "sp" / "train"
    files = sorted(p.name for p in train.glob("*.arrow"))
    rows = streamed.datasets["sp"]["train"]
    assert len(files) == -(-rows // 1000) and files[0] == f"data-00000-of-{len(files):05d}.arrow"
    loaded = load_from_disk(str(tmp_path / "streamed" / "datasets" / "sp"))
    split_fp = streamed.steps[3].fingerprint
    expected = Store(tmp_path / "streamed").read_table("sft", split_fp, "train")
    assert loaded["train"]["_id"] == expected["_id"].to_list() and loaded["train"].num_rows == rows


JSONL_RECIPE = """
name: js
steps:
  raw:
    kind: source
    path: rows.jsonl
  sft:
    kind: format
    type: prompt_completion
    inputs: {data: raw}
    prompt: question
    completion: answer
datasets:
  js:
    splits: {train: sft.data}
"""


def _jsonl_rows(root, n: int = 2500) -> list[dict]:
    """GSM8K rows as JSONL with a column that only later rows have (a batch of the first rows
    cannot see its type), nested lists, and blank lines between records."""
    import json

    from tests.conftest import GSM8K

    rows = pl.read_ndjson(GSM8K / "train.jsonl").head(n).to_dicts()
    for i, row in enumerate(rows):
        if i > 2000:
            row["late"] = {"score": i / 7, "tags": [f"t{i}", "x"]}
    text = "".join(json.dumps(r) + ("\n\n" if i % 500 == 3 else "\n") for i, r in enumerate(rows))
    (root / "rows.jsonl").write_text(text)
    return rows


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzipped"])
def test_a_jsonl_source_is_read_in_batches_typed_as_the_whole_file(gz, ws, tmp_path, monkeypatch):
    """Plain or gzipped (decompressed, streaming, to a scratch file removed afterwards), a JSONL
    file is read a batch at a time with the schema of the whole file."""
    import gzip

    import dataforge.steps.sources
    from tests.engine.test_runner import _tree_hashes

    _jsonl_rows(ws.root)
    text = JSONL_RECIPE
    if gz:
        (ws.root / "rows.jsonl.gz").write_bytes(gzip.compress((ws.root / "rows.jsonl").read_bytes()))
        (ws.root / "rows.jsonl").unlink()
        text = text.replace("rows.jsonl", "rows.jsonl.gz")
    recipe = ws.recipe(text)
    whole = build(recipe, tmp_path / "whole", show_progress=False, batch_rows=0)
    monkeypatch.setattr(dataforge.steps.sources, "_read_jsonl", lambda *a: pytest.fail("read whole"))
    streamed = build(recipe, tmp_path / "streamed", show_progress=False, batch_rows=1000)
    assert not list((tmp_path / "streamed").rglob("*.plain"))  # the decompressed copy is gone
    fp = whole.steps[0].fingerprint
    a, b = Store(tmp_path / "whole"), Store(tmp_path / "streamed")
    assert [f.name for f in b.output_files("raw", fp, "data")] == [f"part-0000{i}.parquet" for i in range(3)]
    first = pl.read_parquet(b.output_files("raw", fp, "data")[0])
    assert first.schema["late"] == pl.Struct({"score": pl.Float64, "tags": pl.List(pl.String)})  # all null here
    assert a.read_table("raw", fp, "data").equals(b.read_table("raw", fp, "data"))
    assert b.read_table("raw", fp, "data")["_id"][-1] == "raw:2499"  # ordinals over records, not lines
    assert _tree_hashes(tmp_path / "whole" / "datasets") == _tree_hashes(tmp_path / "streamed" / "datasets")
    assert streamed.steps[0].rows_out == 2500


@pytest.mark.parametrize("bad", ["not json at all", '["a list"]', b"\xff\xfe broken"])
def test_a_jsonl_source_with_a_bad_line_is_read_whole_and_says_where(bad, ws):
    rows = _jsonl_rows(ws.root)
    path = ws.root / "rows.jsonl"
    data = path.read_bytes().split(b"\n")
    data[1700] = bad.encode() if isinstance(bad, str) else bad
    path.write_bytes(b"\n".join(data))
    recipe = ws.recipe(JSONL_RECIPE)
    with pytest.raises(StepError, match=r"rows.jsonl:1701"):
        build(recipe, ws.out, show_progress=False, batch_rows=1000)
    recipe.write_text(
        recipe.read_text().replace("    path: rows.jsonl\n", "    path: rows.jsonl\n    on_error: skip\n")
    )
    report = build(recipe, ws.out, show_progress=False, batch_rows=1000)
    assert report.steps[0].rows_out == len(rows) - 1 and sum(report.steps[0].drops.values()) == 1


ROLLOUT_RECIPE = """
name: ro
steps:
  raw:
    kind: source
    path: samples.parquet
  rollouts:
    kind: rollout
    inputs: {data: raw}
    group: question
    prompt: question
    completion: answer
    k: [1, 2]
  pairs:
    kind: preference.pairs
    inputs: {data: raw}
    rule: scores
    column: reward
    group: question
    prompt: question
    completion: answer
datasets:
  ro:
    splits: {train: rollouts.data}
  ro_groups:
    splits: {train: rollouts.groups}
  ro_pairs:
    splits: {train: pairs.data}
"""


def test_key_steps_with_group_outputs_run_by_buckets_of_whole_groups(ws, tmp_path, monkeypatch):
    """``rollout`` and ``preference.pairs`` on inputs larger than a batch run on buckets of whole
    groups in order of each group's first row: rows of the input come back in input order and
    the groups and pairs in the order a whole call makes them — the same bytes."""
    import dataforge.engine.runner
    from tests.conftest import GSM8K
    from tests.engine.test_runner import _tree_hashes

    gsm = pl.read_ndjson(GSM8K / "train.jsonl").head(600)
    # three samples a question, interleaved (a group's rows are far apart), rewards 0 / 0.5 / 1
    rows = pl.concat([gsm.with_columns(pl.lit(r).alias("reward")) for r in (0.0, 0.5, 1.0)])
    rows = rows.with_columns(pl.format("{} (v{})", "answer", (pl.col("reward") * 2).cast(pl.Int64)).alias("answer"))
    rows.write_parquet(ws.root / "samples.parquet")
    recipe = ws.recipe(ROLLOUT_RECIPE)
    whole = build(recipe, tmp_path / "whole", show_progress=False, batch_rows=0)
    bucketed: list[int] = []
    real = dataforge.engine.runner.group_buckets
    monkeypatch.setattr(
        dataforge.engine.runner,
        "group_buckets",
        lambda *a: bucketed.append(1) or real(*a),  # type: ignore[func-returns-value]
    )
    streamed = build(recipe, tmp_path / "streamed", show_progress=False, batch_rows=250)
    assert len(bucketed) == 2  # both key steps ran by bucket
    assert [s.outputs for s in whole.steps] == [s.outputs for s in streamed.steps]
    assert _tree_hashes(tmp_path / "whole" / "datasets") == _tree_hashes(tmp_path / "streamed" / "datasets")
    pairs = Store(tmp_path / "streamed").read_table("pairs", streamed.steps[2].fingerprint, "data")
    assert pairs.height == 600 and streamed.steps[1].outputs["groups"] == 600  # a pair and a group a question


def test_appended_files_keep_every_part_when_a_later_part_has_other_types(tmp_path):
    """The keyed runner's bucket and window files: parts appended to one number come back in
    order, an all-null column of the first part and text in a later one included, and the files
    are gone once taken."""
    from dataforge.engine.streaming import AppendedFiles

    files = AppendedFiles(tmp_path / "w")
    files.append(3, pl.DataFrame({"a": [1, 2], "b": [None, None]}))
    files.append(3, pl.DataFrame({"a": [3], "b": ["x"]}))
    files.append(3, pl.DataFrame({"a": [4], "b": [None]}, schema={"a": pl.Int64, "b": pl.String}))
    files.append(5, pl.DataFrame({"a": [9], "b": ["y"]}))
    files.close()
    assert files.take(3).to_dict(as_series=False) == {"a": [1, 2, 3, 4], "b": [None, None, "x", None]}
    assert files.take(4) is None and files.take(5)["b"].to_list() == ["y"]
    assert not list((tmp_path / "w").iterdir())


@pytest.mark.parametrize("shape", ["list", "wrapped-gzipped"])
def test_a_json_document_is_read_in_batches_typed_as_the_whole_file(shape, ws, tmp_path, monkeypatch):
    """A JSON document — a list of objects, pretty-printed so records span lines and the reader's
    chunks, or an object whose one key holds the list, gzipped — is rewritten one record a line
    to a scratch file (removed afterwards) and read a batch at a time with the types of the
    whole document: the same rows and bytes as a whole read."""
    import functools
    import gzip
    import json

    import dataforge.steps.sources as sources
    from tests.engine.test_runner import _tree_hashes

    rows = _jsonl_rows(ws.root)
    rows[7]["question"] = 'Ünïcode, "quotes", a backslash \\ and a newline\n inside'
    name = "rows.json"
    if shape == "list":
        (ws.root / name).write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    else:
        name += ".gz"
        (ws.root / name).write_bytes(gzip.compress(json.dumps({"data": rows}).encode()))
    recipe = ws.recipe(JSONL_RECIPE.replace("rows.jsonl", name).replace("path:", "format: json\n    path:"))
    whole = build(recipe, tmp_path / "whole", show_progress=False, batch_rows=0)
    monkeypatch.setattr(sources, "_json_records", lambda *a: pytest.fail("read whole"))
    monkeypatch.setattr(sources, "_json_lines", functools.partial(sources._json_lines, chunk=997))
    streamed = build(recipe, tmp_path / "streamed", show_progress=False, batch_rows=1000)
    assert not list((tmp_path / "streamed").rglob("*.jsonl"))  # the rewritten copy is gone
    fp = whole.steps[0].fingerprint
    a, b = Store(tmp_path / "whole"), Store(tmp_path / "streamed")
    assert [f.name for f in b.output_files("raw", fp, "data")] == [f"part-0000{i}.parquet" for i in range(3)]
    assert a.read_table("raw", fp, "data").equals(b.read_table("raw", fp, "data"))
    assert b.read_table("raw", fp, "data")["question"][7] == rows[7]["question"]
    assert streamed.steps[0].rows_out == 2500
    assert _tree_hashes(tmp_path / "whole" / "datasets") == _tree_hashes(tmp_path / "streamed" / "datasets")


@pytest.mark.parametrize(
    ("document", "error"),
    [
        ('{"data": [{"question": "q", "answer": "a"}], "more": 1}', "a JSON source must hold a list of objects"),
        ('[{"question": "q", "answer": "a"}, 3]', "a JSON source must hold a list of objects"),
        ('[{"question": "q", "answer": "a"}, {"question": "r"', "malformed JSON"),
    ],
    ids=["two-keys", "not-an-object", "cut-short"],
)
def test_a_json_document_of_another_shape_is_read_whole_and_its_error_named(document, error, ws):
    (ws.root / "rows.json").write_text(document)
    recipe = ws.recipe(JSONL_RECIPE.replace("rows.jsonl", "rows.json"))
    with pytest.raises(DataforgeError, match=rf"rows\.json: {error}"):
        build(recipe, ws.out, show_progress=False, batch_rows=1)
    assert not list(ws.out.rglob("*.jsonl"))


def test_key_hashes_are_the_same_everywhere_and_tell_keys_apart():
    """Key hashes are XXH3-128 of the key's UTF-8 text, pinned here to the values of the
    algorithm's reference implementation, so buckets and compared hashes do not depend on the
    machine or on polars' build (whose own hash may differ between them). A null key is a value
    of its own, apart from the empty text; a number hashes as its text; a list as its JSON."""
    from dataforge.engine.streaming import key_hashes

    h = key_hashes(pl.Series(["a", None, "a", "", "naïve"]))
    assert (h["h0"][0], h["h1"][0]) == (12209170011921672244, 16629034431890738719)  # XXH3-128("a")
    assert h.row(0) == h.row(2) and len(set(h.rows())) == 4  # null, "" and "a" all apart
    assert h.schema == {"h0": pl.UInt64, "h1": pl.UInt64}
    assert key_hashes(pl.Series([7, None])).row(0) == key_hashes(pl.Series(["7"])).row(0)
    assert key_hashes(pl.Series([7, None])).row(1) == h.row(1)
    assert key_hashes(pl.Series([[1, 2], [3]])).row(0) == key_hashes(pl.Series(['{"k":[1,2]}'])).row(0)
    assert key_hashes(pl.Series([], dtype=pl.String)).height == 0
    # the compiled kernel against the xxhash package, over every length path of XXH3 (0, 1-3, 4-8,
    # 9-16, 17-128, 129-240, longer) and non-ASCII text, from a slice of a larger array too
    from xxhash import xxh3_128_digest

    from tests.conftest import GSM8K

    questions = pl.read_ndjson(GSM8K / "train.jsonl")["question"].head(300).to_list()
    texts = ["", "é", "abc", "abcdefgh", "x" * 16, "naïve café " * 10, "y" * 239, "z" * 241]
    texts += [q[: (i * 7) % (len(q) + 1)] for i, q in enumerate(questions)] + questions
    series = pl.Series(["before", *texts, None]).slice(1, len(texts))
    digests = [xxh3_128_digest(t.encode()) for t in texts]
    expected = [(int.from_bytes(d[:8], "big"), int.from_bytes(d[8:], "big")) for d in digests]
    assert key_hashes(series).rows() == expected
