"""The CLI is a thin, documented layer: every command and option is in the README."""

from __future__ import annotations

import argparse
import json
import re

import pytest

from dataforge.cli import main, make_parser
from tests.conftest import REPO


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = make_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_and_option_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for name, sub in _subcommands().items():
        assert re.search(rf"`dataforge {name}\b", readme), f"command {name} is not in the README"
        for action in sub._actions:
            for opt in action.option_strings:
                if opt.startswith("--") and opt != "--help":
                    assert opt in readme, f"option {opt} of {name} is not in the README"


@pytest.mark.parametrize("command", ["build", "plan", "why", "query"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "--out" in capsys.readouterr().out


def test_plan_shows_fingerprints_and_cache_state(qa, capsys):
    ws, recipe = qa
    assert main(["plan", str(recipe), "--out", str(ws.out)]) == 0
    first = capsys.readouterr().out
    assert "filtered" in first and "no" in first and not ws.out.exists()  # plan runs nothing
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["plan", str(recipe), "--out", str(ws.out)]) == 0
    table = capsys.readouterr().out
    assert table.count("yes") == 5


def test_build_summary_and_cached_message(qa, capsys):
    ws, recipe = qa
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "filter:min_length: 1" in text and "5 step(s) executed" in text
    assert "rows/s" in text and f"report: {ws.out / 'report.html'}" in text
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 0
    assert "Nothing to execute" in capsys.readouterr().out


def test_an_empty_split_is_named_in_a_warning_and_in_the_card(qa, capsys):
    """A filter that drops every row bound for a split exported it empty without a word; an empty
    evaluation split reads as a clean score."""
    ws, recipe = qa
    recipe.write_text(recipe.read_text().replace("min_length: 10", "min_length: 1000"))
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: dataset 'qa_sft' split 'train' is empty" in " ".join(err.split())
    card = (ws.out / "datasets" / "qa_sft" / "card.md").read_text()
    assert "**Empty: `train`.** No row reached it" in card
    recipe.write_text(recipe.read_text().replace("min_length: 1000", "min_length: 10"))
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 0
    assert "is empty" not in capsys.readouterr().err
    assert "**Empty" not in (ws.out / "datasets" / "qa_sft" / "card.md").read_text()


def test_splits_that_share_prompts_are_named_in_a_warning_and_one_output_in_two_splits_is_refused(qa, capsys):
    """A dataset whose train split is built from all rows and whose test split from some of them
    exported one prompt in both without a word (the card's audit counted them); two splits naming
    one output are refused when the recipe is planned."""
    ws, recipe = qa
    text = recipe.read_text().replace(
        "datasets:\n  qa_sft:\n    splits: {train: sft}\n",
        "  some:\n    kind: split\n    inputs: sft\n    group: prompt\n    fractions: {a: 0.5, b: 0.5}\n"
        "datasets:\n  qa_sft:\n    splits: {train: sft, test: some.b}\n",
    )
    recipe.write_text(text)
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "dataset 'qa_sft': splits 'train' and 'test' share" in err
    meta = json.loads((ws.out / "datasets" / "qa_sft" / "dataforge.json").read_text())
    shared = meta["audit"][0]
    assert shared["exact_overlap"] == meta["splits"]["test"]["rows"] > 0
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 0  # reused: still said
    assert "share" in capsys.readouterr().err
    recipe.write_text(text.replace("splits: {train: sft, test: some.b}", "splits: {train: some.a, test: some.b}"))
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 0
    assert "share" not in capsys.readouterr().err
    recipe.write_text(text.replace("splits: {train: sft, test: some.b}", "splits: {train: sft, test: sft}"))
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 2
    assert "splits 'train' and 'test' both read sft.data" in " ".join(capsys.readouterr().err.split())


def test_splits_of_one_dataset_must_share_their_columns_and_types(qa, capsys):
    """A train split in prompt-completion form and a test split in messages form were exported as one
    dataset (its card describing the first); so were splits whose prompt was text in one and
    messages in the other."""
    ws, recipe = qa
    text = recipe.read_text().replace(
        "datasets:\n  qa_sft:\n    splits: {train: sft}\n",
        "  some:\n    kind: split\n    inputs: parsed\n    group: question\n    fractions: {a: 0.5, b: 0.5}\n"
        "  fa:\n    kind: format\n    type: prompt_completion\n    inputs: {data: some.a}\n"
        "    prompt: question\n    completion: reasoning\n"
        "  fb:\n    kind: format\n    type: messages\n    inputs: {data: some.b}\n"
        "    prompt: question\n    completion: reasoning\n"
        "datasets:\n  qa_sft:\n    splits: {train: fa, test: fb}\n",
    )
    recipe.write_text(text)
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "splits 'train' and 'test' have different columns" in err and "datasets.qa_sft.splits.test" in err
    styled = text.replace("    type: messages\n", "    type: prompt_completion\n    style: standard\n")
    recipe.write_text(styled)  # the same names, but the prompt is messages in train and text in test
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) != 0
    err = " ".join(capsys.readouterr().err.split())
    assert "dataset 'qa_sft': column 'prompt' is List" in err and "String in split 'test'" in err
    assert not (ws.out / "datasets" / "qa_sft").exists()  # nothing written
    recipe.write_text(
        styled.replace(
            "    type: prompt_completion\n    inputs: {data: some.a}",
            "    type: prompt_completion\n    style: standard\n    inputs: {data: some.a}",
        )
    )
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 0


def test_why_unknown_row(qa, capsys):
    ws, recipe = qa
    main(["build", str(recipe), "--out", str(ws.out), "--quiet"])
    capsys.readouterr()
    assert main(["why", "raw:999", "--out", str(ws.out)]) == 1
    assert "does not appear" in capsys.readouterr().err


def test_query_error_is_clean(qa, capsys):
    ws, recipe = qa
    main(["build", str(recipe), "--out", str(ws.out), "--quiet"])
    capsys.readouterr()
    assert main(["query", "--out", str(ws.out), "SELECT nope FROM events"]) == 1
    assert "query failed" in capsys.readouterr().err


def test_query_without_build(tmp_path, capsys):
    assert main(["query", "--out", str(tmp_path / "none"), "SELECT 1"]) == 1
    assert "no lineage database" in capsys.readouterr().err


@pytest.fixture
def built(qa):
    ws, recipe = qa
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 0
    return ws


@pytest.mark.parametrize(
    "sql",
    [
        "COPY (SELECT 1) TO 'OUT/datasets/qa_sft/card.md'",
        "COPY runs TO 'OUT/x.csv'",
        "EXPORT DATABASE 'OUT/dump'",
        "ATTACH 'OUT/other.duckdb' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "PRAGMA memory_limit = '1GB'",
        "CREATE TABLE t AS SELECT 1",
        "INSERT INTO runs SELECT * FROM runs",
        "UPDATE runs SET status = 'x'",
        "DELETE FROM events",
        "DROP TABLE runs",
        "CALL pragma_table_info('runs')",
        "EXPLAIN ANALYZE COPY (SELECT 1) TO 'OUT/x.csv'",
        "SELECT 1; COPY (SELECT 1) TO 'OUT/x.csv'",
    ],
)
def test_query_refuses_every_statement_that_is_not_a_read(built, capsys, sql):
    out = built.out
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    card = (out / "datasets" / "qa_sft" / "card.md").read_bytes()
    assert main(["query", "--out", str(out), sql.replace("OUT", str(out))]) == 1
    assert "query is read-only" in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / "datasets" / "qa_sft" / "card.md").read_bytes() == card


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM runs",
        "WITH x AS (SELECT * FROM steps) SELECT count(*) FROM x",
        "DESCRIBE runs",
        "SHOW TABLES",
        "SUMMARIZE steps",
        "EXPLAIN SELECT * FROM events",
        "PRAGMA table_info('runs')",
        "FROM latest_run",
    ],
)
def test_query_runs_reads(built, capsys, sql):
    assert main(["query", "--out", str(built.out), sql]) == 0, capsys.readouterr().err


def test_query_reads_no_file_outside_the_build(built, capsys):
    assert main(["query", "--out", str(built.out), "SELECT * FROM read_csv('/etc/passwd')"]) == 1
    assert "Permission Error" in capsys.readouterr().err


def test_text_is_printed_literally(qa, capsys):
    ws, recipe = qa
    ws.jsonl(
        "qa.jsonl",
        [{"question": "[/INST] [bold]not bold[/bold] :x: pip install 'dataforge[vllm]'", "answer": "x\n#### 1"}],
    )
    assert main(["build", str(recipe), "--out", str(ws.out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["query", "--out", str(ws.out), "SELECT question FROM artifact_raw_data"]) == 0
    out = capsys.readouterr().out
    assert "[/INST] [bold]not bold[/bold] :x: pip install 'dataforge[vllm]'" in out
    assert main(["why", "raw:0", "--out", str(ws.out)]) == 0
    assert ":x: pip install 'dataforge[vllm]'" in capsys.readouterr().out
    # an error whose text holds markup prints it as it is
    assert main(["build", str(ws.recipe("name: x\nsteps: [/INST]\n", "bad[bold].yaml")), "--out", str(ws.out)]) == 2
    assert "bad[bold].yaml" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "--hub", "s3://bucket/hub", "--out", "OUT"],
        ["export", "--hub", "gs://bucket/hub", "--out", "OUT"],
    ],
)
def test_an_object_store_uri_as_a_folder_is_refused_naming_it_and_makes_no_folder(
    argv, qa, tmp_path, monkeypatch, capsys
):
    """A URI given for a folder (``s3://…``, ``gs://…``) where a command takes only a folder is a
    usage error naming the option, the URI and the commands that take one (``build``, ``query``,
    ``why``, ``plan``, ``export``, ``report``, ``train``: tests/engine/test_remote.py); before,
    ``build`` made a local folder named ``s3:`` and failed in DuckDB."""
    ws, recipe = qa
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    argv = [str(recipe) if a == "RECIPE" else str(ws.out) if a == "OUT" else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    uri = next(a for a in argv if "://" in a)
    err = capsys.readouterr().err
    assert f"{uri}: a URI is not supported" in err and ("argument --out" in err or "argument --hub" in err)
    said = " ".join(err.split())
    assert "`dataforge build`, `query`, `why`, `plan`, `export` and `report` take an object-store URI" in said
    assert list((tmp_path / "cwd").iterdir()) == []
