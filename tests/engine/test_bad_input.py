"""Every bad input stops with a message naming the file, line, step or key — before any row
is processed where it can be found at plan time."""

from __future__ import annotations

import gzip
import json

import duckdb
import polars as pl
import pytest

from dataforge.cli import main
from dataforge.engine.plan import plan_recipe
from dataforge.engine.runner import build
from dataforge.errors import OutputDirError, RecipeError, StepError
from tests.conftest import QA_RECIPE


def _plan_error(ws, text: str) -> RecipeError:
    ws.jsonl("qa.jsonl", [{"question": "q" * 20, "answer": "a\n#### 1"}])
    recipe = ws.recipe(text)
    with pytest.raises(RecipeError) as exc:
        plan_recipe(recipe)
    return exc.value


def test_yaml_syntax_error_names_line(ws):
    err = _plan_error(ws, "name: x\nsteps:\n  a:\n    kind: source\n   path: [unclosed\n")
    assert err.file.endswith("recipe.yaml") and err.line == 5
    assert "YAML syntax error" in str(err)


def test_unknown_kind_suggests(ws):
    err = _plan_error(ws, QA_RECIPE.replace("kind: clean.normalize", "kind: clean.normalise"))
    assert err.step == "clean" and err.key == "kind" and err.line == 7
    assert "did you mean 'clean.normalize'" in str(err)


def test_unknown_config_key_names_key_and_line(ws):
    err = _plan_error(ws, QA_RECIPE.replace("min_length: 10", "min_lenght: 10"))
    assert (err.step, err.key, err.line) == ("filtered", "min_lenght", 14)
    assert "did you mean 'min_length'" in str(err)
    assert str(err).startswith(f"{err.file}:14: step 'filtered', key 'min_lenght'")


def test_bad_config_value(ws):
    err = _plan_error(ws, QA_RECIPE.replace("min_length: 10", "min_length: ten"))
    assert err.key == "min_length" and "integer" in str(err)


def test_missing_input_step(ws):
    err = _plan_error(ws, QA_RECIPE.replace("inputs: {data: filtered}", "inputs: {data: filterd}"))
    assert err.step == "parsed" and err.key == "inputs.data"
    assert "no step named 'filterd'" in str(err) and "did you mean 'filtered'" in str(err)


def test_missing_output_of_input_step(ws):
    err = _plan_error(ws, QA_RECIPE.replace("inputs: {data: filtered}", "inputs: {data: filtered.train}"))
    assert "step 'filtered' has no output 'train'" in str(err)


def test_cyclic_inputs(ws):
    text = QA_RECIPE.replace("inputs: {data: raw}", "inputs: {data: sft}")
    err = _plan_error(ws, text)
    assert "cycle" in str(err) and "clean" in str(err) and "sft" in str(err)


def test_step_fed_missing_column(ws):
    err = _plan_error(ws, QA_RECIPE.replace("fields: [question]", "fields: [questoin]"))
    assert (err.step, err.key) == ("filtered", "fields")
    assert "needs column 'questoin'" in str(err) and "it has: _id, question, answer" in str(err)


def test_missing_column_found_through_the_chain(ws):
    err = _plan_error(ws, QA_RECIPE.replace("completion: reasoning", "completion: solution"))
    assert err.step == "sft" and "needs column 'solution'" in str(err)


def test_missing_file(ws):
    err = _plan_error(ws, QA_RECIPE.replace("path: qa.jsonl", "path: nope.jsonl"))
    assert (err.step, err.key) == ("raw", "path") and "file not found" in str(err)


def test_dataset_names_unknown_output(ws):
    err = _plan_error(ws, QA_RECIPE.replace("splits: {train: sft}", "splits: {train: sft.test}"))
    assert err.key == "datasets.qa_sft.splits.train" and "has no output 'test'" in str(err)


def test_split_fractions_must_sum_to_one(ws):
    text = QA_RECIPE + "  # unused\n"
    text = text.replace(
        "datasets:",
        "  sp:\n    kind: split\n    inputs: sft\n    by: random\n    fractions: {train: 0.8, test: 0.3}\ndatasets:",
    )
    err = _plan_error(ws, text.replace("datasets:\n  qa_sft", "datasets:\n  qa_sft"))
    assert err.step == "sp" and err.key == "fractions" and "sum to 1" in str(err)


def test_malformed_jsonl_line_stops_build_with_line_number(ws):
    path = ws.root / "qa.jsonl"
    path.write_text('{"question": "a fine question here", "answer": "x\\n#### 1"}\n{"question": broken\n')
    recipe = ws.recipe(QA_RECIPE)
    with pytest.raises(StepError) as exc:
        build(recipe, ws.out, show_progress=False)
    assert f"{path}:2: malformed JSON line" in str(exc.value) and "step 'raw'" in str(exc.value)
    con = duckdb.connect(str(ws.out / "lineage.duckdb"), read_only=True)
    assert con.execute("SELECT status FROM runs").fetchone() == ("failed",)


def test_malformed_jsonl_line_skipped_and_recorded(ws):
    good = {"question": "What is one plus one, in digits?", "answer": "1+1=2\n#### 2"}
    path = ws.root / "qa.jsonl.gz"
    lines = [json.dumps(good), "", '{"question": broken', json.dumps({**good, "question": good["question"] + " Now?"})]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    recipe = ws.recipe(QA_RECIPE.replace("path: qa.jsonl", "path: qa.jsonl.gz\n    on_error: skip"))
    build(recipe, ws.out, show_progress=False)
    con = duckdb.connect(str(ws.out / "lineage.duckdb"), read_only=True)
    row = con.execute("SELECT row_id, reason, detail_json FROM events WHERE step = 'raw'").fetchone()
    assert row[0] == "raw:1" and row[1] == "parse_error"
    assert json.loads(row[2])["line"] == 3
    # ids keep the record ordinals: the row after the bad line is raw:2
    (path,) = con.execute("SELECT path FROM artifacts WHERE step = 'raw'").fetchone()
    assert pl.read_parquet(path)["_id"].to_list() == ["raw:0", "raw:2"]


def test_empty_input(ws):
    (ws.root / "qa.jsonl").write_text("\n")
    recipe = ws.recipe(QA_RECIPE)
    with pytest.raises(RecipeError) as exc:
        build(recipe, ws.out, show_progress=False)
    assert (exc.value.step, exc.value.key) == ("raw", "path") and "has no rows" in str(exc.value)


def test_a_file_of_lines_that_are_no_json_object_is_named_not_called_empty(ws):
    """A JSONL file whose only line is not JSON (or not an object) was "has no rows": the plan-time
    peek passed such lines by, and the message pointed away from the bad line."""
    (ws.root / "qa.jsonl").write_text("garbage")
    with pytest.raises(RecipeError) as exc:
        build(ws.recipe(QA_RECIPE), ws.out, show_progress=False)
    assert (exc.value.step, exc.value.key) == ("raw", "path")
    assert "qa.jsonl:1: malformed JSON line" in str(exc.value) and "has no rows" not in str(exc.value)
    (ws.root / "qa.jsonl").write_text("\n[1, 2]\n")
    with pytest.raises(RecipeError, match=r"qa.jsonl:2: a JSON list, not an object"):
        build(ws.recipe(QA_RECIPE), ws.out, show_progress=False)
    skip = QA_RECIPE.replace("path: qa.jsonl", "path: qa.jsonl\n    on_error: skip")
    with pytest.raises(RecipeError, match=r"has no rows once the lines that are no JSON object are skipped"):
        build(ws.recipe(skip), ws.out, show_progress=False)


@pytest.mark.parametrize("batch_rows", [None, 100])
def test_a_corrupt_parquet_or_csv_file_is_an_error_naming_the_file(ws, batch_rows):
    """A Parquet file with a bad footer failed planning with polars' traceback; one with corrupt
    pages, and a CSV field that does not parse, failed the step with polars' message alone."""
    path = ws.root / "qa.parquet"
    path.write_bytes(b"not parquet at all")
    recipe = ws.recipe(QA_RECIPE.replace("qa.jsonl", "qa.parquet"))
    with pytest.raises(RecipeError) as exc:
        build(recipe, ws.out, show_progress=False, batch_rows=batch_rows)
    assert (exc.value.step, exc.value.key) == ("raw", "path") and "qa.parquet: not a readable Parquet file" in str(
        exc.value
    )
    questions = [f"question number {i} " * 20 for i in range(1_000)]
    pl.DataFrame({"question": questions, "answer": ["x\n#### 1"] * 1_000}).write_parquet(path, compression="zstd")
    data = bytearray(path.read_bytes())
    for i in range(100, len(data) - 2_000, 97):  # the pages, not the footer
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StepError, match=r"step 'raw'.*qa.parquet: cannot be read as PARQUET: .*"):
        build(recipe, ws.out, show_progress=False, batch_rows=batch_rows)
    rows = "".join(f"q{i},a{i}\n" for i in range(300))
    (ws.root / "qa.csv").write_text(f'question,answer\n{rows}"broken,4\n')
    with pytest.raises(StepError, match=r"step 'raw'.*qa.csv: cannot be read as CSV: could not parse"):
        build(ws.recipe(QA_RECIPE.replace("qa.jsonl", "qa.csv")), ws.out, show_progress=False, batch_rows=batch_rows)


def test_a_folder_that_is_no_saved_dataset_is_a_plan_error(ws):
    (ws.root / "notds").mkdir()
    (ws.root / "notds" / "x.txt").write_text("hi")
    with pytest.raises(RecipeError) as exc:
        build(ws.recipe(QA_RECIPE.replace("qa.jsonl", "notds")), ws.out, show_progress=False)
    assert (exc.value.step, exc.value.key) == ("raw", "path") and "notds: not a dataset saved with save_to_disk" in str(
        exc.value
    )


def test_empty_parquet_input_fails_at_run_time(ws):
    pl.DataFrame({"question": [], "answer": []}, schema={"question": pl.String, "answer": pl.String}).write_parquet(
        ws.root / "qa.parquet"
    )
    recipe = ws.recipe(QA_RECIPE.replace("qa.jsonl", "qa.parquet"))
    with pytest.raises(StepError, match=r"step 'raw'.*has no rows"):
        build(recipe, ws.out, show_progress=False)


def test_output_directory_not_dataforges(qa):
    ws, recipe = qa
    ws.out.mkdir()
    (ws.out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputDirError, match="not made by dataforge"):
        build(recipe, ws.out, show_progress=False)
    assert (ws.out / "precious.txt").read_text() == "keep me"


def test_force_unknown_step(qa):
    ws, recipe = qa
    with pytest.raises(RecipeError, match="--force names no step"):
        build(recipe, ws.out, force=["nope"], show_progress=False)


def test_cli_prints_error_without_traceback(qa, capsys):
    ws, recipe = qa
    recipe.write_text(QA_RECIPE.replace("min_length: 10", "min_lenght: 10"))
    assert main(["build", str(recipe), "--out", str(ws.out)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "min_lenght" in err and "Traceback" not in err
    assert not ws.out.exists()  # nothing ran, nothing was written


def test_split_unknown_group_column_is_a_plan_error(ws):
    text = QA_RECIPE.replace(
        "datasets:",
        "  sp:\n    kind: split\n    inputs: sft\n    group: questoin\n    fractions: {a: 0.5, b: 0.5}\ndatasets:",
    )
    err = _plan_error(ws, text)
    assert (err.step, err.key) == ("sp", "group") and "needs column 'questoin'" in str(err)


def test_dedup_unknown_input_name_is_a_plan_error(ws):
    text = QA_RECIPE.replace(
        "datasets:",
        "  dd:\n    kind: dedup.minhash\n    inputs: {data: sft, againts: raw}\n    fields: [prompt]\ndatasets:",
    )
    err = _plan_error(ws, text)
    assert (err.step, err.key) == ("dd", "inputs.againts") and "it takes: data, against, signatures" in str(err)


@pytest.mark.parametrize(
    "step",
    [
        "kind: leakage.check\n    inputs: {train: parsed, eval: clean}\n    train_fields: [question]\n"
        "    eval_fields: [question]",
        "kind: dedup.semantic\n    inputs: {data: parsed}\n    fields: [question]",
    ],
)
def test_an_embedding_model_path_that_does_not_exist_is_a_plan_error(ws, step):
    """A local model path is resolved against the recipe's folder and checked before any row is
    read; the bundled default passes."""
    text = QA_RECIPE.replace("datasets:", f"  check:\n    {step}\n    model: ./models/minilm\ndatasets:")
    err = _plan_error(ws, text)
    assert (err.step, err.key) == ("check", "model")
    assert "embedding model './models/minilm' not found at" in str(err) and str(ws.root) in str(err)
    ws.jsonl("qa.jsonl", [{"question": "q" * 20, "answer": "a\n#### 1"}])
    plan_recipe(ws.recipe(text.replace("    model: ./models/minilm\n", "")))  # the bundled MiniLM
    from dataforge.embed import model_path, resolve_model

    (ws.root / "models").mkdir()
    (ws.root / "models" / "minilm").symlink_to(model_path(None))
    plan_recipe(ws.recipe(text))
    assert resolve_model("./models/minilm", ws.root) == str(ws.root / "models" / "minilm")
    assert resolve_model("org/name", ws.root) == "org/name"  # a hub id stays as given


def test_synthetic_timestamps_over_real_ones_are_a_plan_error(ws):
    """time.synthetic overwrote the _ts a source read from its timestamp_column: real times lost,
    and a time split cut on hashes, without a word."""
    ws.jsonl("dated.jsonl", [{"question": "q" * 20, "answer": "a\n#### 1", "at": "2024-05-01T00:00:00Z"}])
    text = (
        "name: t\nsteps:\n  raw:\n    kind: source\n    path: dated.jsonl\n    timestamp_column: at\n"
        "  dated:\n    kind: time.synthetic\n    inputs: raw\n    start: 2021-01-01\n    end: 2022-01-01\n"
        "datasets:\n  d:\n    splits: {train: dated.data}\n"
    )
    with pytest.raises(RecipeError) as exc:
        plan_recipe(ws.recipe(text))
    assert (exc.value.step, exc.value.key) == ("dated", "inputs") and "already has timestamps" in str(exc.value)
    plan_recipe(ws.recipe(text.replace("    timestamp_column: at\n", "")))  # without them: planned


@pytest.mark.parametrize(
    "rename, message",
    [
        ("{question: answer}", "renames column 'question' to 'answer', which column 'answer' of the source already is"),
        (
            "{question: x, answer: x}",
            "renames column 'question' to 'x', which column 'answer' of the source is renamed",
        ),
    ],
)
def test_a_rename_onto_another_column_is_a_plan_error(ws, rename, message):
    """The read failed on polars' DuplicateError, naming neither the key nor the columns."""
    err = _plan_error(
        ws,
        f"name: r\nsteps:\n  raw:\n    kind: source\n    path: qa.jsonl\n    rename: {rename}\n"
        "datasets:\n  d:\n    splits: {train: raw}\n",
    )
    assert (err.step, err.key) == ("raw", "rename.question") and message in str(err)


@pytest.mark.parametrize(
    "step, key, ref",
    [
        (
            "kind: leakage.check\n    inputs: {train: parsed, test: parsed.data}\n    train_fields: [question]\n"
            "    eval_fields: [question]",
            "test",
            "parsed",
        ),
        ("kind: dedup.exact\n    inputs: {data: parsed, against: parsed}\n    fields: [question]", "against", "parsed"),
        ("kind: split.audit\n    inputs: {a: sft, b: sft}\n    prompt: [prompt]", "b", "sft"),
    ],
)
def test_a_step_fed_one_table_under_two_input_names_is_a_plan_error(ws, step, key, ref):
    """A leakage check of a table against itself dropped every row as a leak; a dedup against itself
    dropped every row; an audit of a table against itself found every prompt in both."""
    err = _plan_error(ws, QA_RECIPE.replace("datasets:", f"  twice:\n    {step}\ndatasets:"))
    assert (err.step, err.key) == ("twice", f"inputs.{key}")
    assert f"both read {ref}.data" in str(err)
