"""`dataforge inspect`: the form a data file is in, and a starter recipe that builds it. Each
recipe it writes is built here, and the dataset it exports is checked for its TRL type and rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_from_disk

from dataforge.cli import main
from dataforge.engine.runner import build
from dataforge.formats import trl_dataset_type
from tests.conftest import GSM8K, HH


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


QUESTIONS = [f"What is {i} times {i + 1}?" for i in range(40)]
ANSWERS = [f"It is {i * (i + 1)}." for i in range(40)]

FORMS = {
    "sharegpt": (
        "conversations",
        "ShareGPT",
        [
            {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
            for q, a in zip(QUESTIONS, ANSWERS, strict=True)
        ],
    ),
    "parts": (
        "conversations",
        "lists of parts",
        [
            {"messages": [{"role": "user", "content": [{"type": "text", "text": q}]}, _assistant(a)]}
            for q, a in zip(QUESTIONS, ANSWERS, strict=True)
        ],
    ),
    "chatml": (
        "chat_text",
        "(chatml)",
        [
            {"text": f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n"}
            for q, a in zip(QUESTIONS, ANSWERS, strict=True)
        ],
    ),
    "ultrafeedback": (
        "preference",
        "prompt 'prompt'",
        [
            {"prompt": q, "chosen": [_user(q), _assistant(a)], "rejected": [_user(q), _assistant("No idea.")]}
            for q, a in zip(QUESTIONS, ANSWERS, strict=True)
        ],
    ),
    "implicit": (
        "preference",
        "no prompt column",
        [
            {"chosen": [_user(q), _assistant(a)], "rejected": [_user(q), _assistant("No.")]}
            for q, a in zip(QUESTIONS, ANSWERS, strict=True)
        ],
    ),
    "alpaca": (
        "alpaca",
        "Alpaca",
        [
            {"instruction": q, "input": "" if i % 2 else "Show your work.", "output": a}
            for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS, strict=True))
        ],
    ),
    "prompt_completion": (
        "prompt_completion",
        "responses 'response'",
        [{"prompt": q, "response": a} for q, a in zip(QUESTIONS, ANSWERS, strict=True)],
    ),
    "prompt_only": ("prompt_only", "prompts alone", [{"query": q, "source": "math"} for q in QUESTIONS]),
}
TRL_TYPES = {"preference": "preference", "prompt_completion": "prompt_completion", "prompt_only": "prompt_only"}


def _inspect(path: Path | None, recipe: Path, capsys, *more: str) -> tuple[int, str]:
    code = main(["inspect", *([str(path)] if path else []), "--recipe", str(recipe), *more])
    return code, capsys.readouterr().out


def _built(recipe: Path, out: Path) -> dict:
    build(recipe, out, show_progress=False)
    (folder,) = (out / "datasets").iterdir()
    return load_from_disk(str(folder))


@pytest.mark.parametrize("name", sorted(FORMS))
def test_inspect_names_the_form_and_its_recipe_builds_a_trl_dataset(name, tmp_path, capsys):
    form, said, rows = FORMS[name]
    data = tmp_path / "data" / f"{name}.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "recipes" / "start.yaml"
    recipe.parent.mkdir()
    code, out = _inspect(data, recipe, capsys)
    assert code == 0 and f"form: {form}:" in out and said in out, out
    splits = _built(recipe, tmp_path / "build")
    assert sorted(splits) == ["test", "train"]
    assert sum(s.num_rows for s in splits.values()) == len(rows)  # no row lost, none repeated
    assert trl_dataset_type(splits["train"].column_names) == TRL_TYPES.get(form, "language_modeling")
    first = splits["train"][0]
    if form in ("conversations", "chat_text", "alpaca"):
        assert [t["role"] for t in first["messages"]] == ["user", "assistant"]
        assert first["messages"][0]["content"] in QUESTIONS or first["messages"][0]["content"].endswith(
            "Show your work."
        )
    if form == "preference":  # the prompt's turn is in the prompt only
        assert [t["role"] for t in first["prompt"]] == ["user"] and [t["role"] for t in first["chosen"]] == [
            "assistant"
        ]


def test_inspect_reads_the_shipped_gsm8k_and_hh_files(tmp_path, capsys):
    code, out = _inspect(GSM8K / "test.jsonl", tmp_path / "gsm.yaml", capsys)
    assert code == 0 and "form: gsm8k:" in out and "1,319" not in out  # it read 200 rows, not the file
    splits = _built(tmp_path / "gsm.yaml", tmp_path / "gsm")
    assert sum(s.num_rows for s in splits.values()) == 1319
    assert "<think>" in splits["train"][0]["messages"][1]["content"]

    code, out = _inspect(HH / "test.jsonl.gz", tmp_path / "hh.yaml", capsys)
    assert code == 0 and "form: hh_pairs:" in out
    splits = _built(tmp_path / "hh.yaml", tmp_path / "hh")
    assert trl_dataset_type(splits["train"].column_names) == "preference"
    assert 2000 < sum(s.num_rows for s in splits.values()) < 2312  # malformed pairs and repeats dropped, with reasons
    # a built dataset (a save_to_disk folder of splits) is read split by split
    (folder,) = (tmp_path / "hh" / "datasets").iterdir()
    assert main(["inspect", str(folder)]) == 2 and "holds splits train, test: name one" in capsys.readouterr().err
    code, out = _inspect(folder, tmp_path / "again.yaml", capsys, "--split", "test")
    assert code == 0 and "form: preference:" in out and "split: test" in (tmp_path / "again.yaml").read_text()
    assert len(_built(tmp_path / "again.yaml", tmp_path / "again")["train"]) > 0


def test_inspect_says_when_it_recognizes_no_form(tmp_path, capsys):
    data = tmp_path / "odd.jsonl"
    data.write_text("".join(json.dumps({"a": i, "b": "x"}) + "\n" for i in range(5)))
    code = main(["inspect", str(data)])
    out = capsys.readouterr().out
    assert code == 1 and "form: none recognized" in out and "Int64" in out
    assert main(["inspect", str(tmp_path / "missing.jsonl")]) == 2
    assert "file not found: " in capsys.readouterr().err


def test_inspect_reads_the_first_rows_only(tmp_path, capsys):
    """A large file is not read whole to look at its start: a malformed line past the rows read
    is not reached (the whole read would fail on it) in a JSONL, CSV or JSON file, and a Parquet
    file is read a batch at a time."""
    import polars as pl

    lines = [json.dumps({"prompt": q, "response": a}) for q, a in zip(QUESTIONS * 10, ANSWERS * 10, strict=True)]
    data = tmp_path / "big.jsonl"
    data.write_text("\n".join([*lines, "{not json"]) + "\n")
    assert main(["inspect", str(data), "--rows", "50"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # (the table's title wraps)
    assert "the first 50 rows" in out and "form: prompt_completion:" in out
    assert main(["inspect", str(data), "--rows", "500"]) == 1  # the rows asked for reach the bad line
    assert f"{data}:401: malformed JSON line" in capsys.readouterr().err.replace("\n", "")
    table = pl.DataFrame({"prompt": QUESTIONS * 10, "response": ANSWERS * 10})
    csv = tmp_path / "big.csv"
    csv.write_bytes(table.write_csv().encode() + b'"\xff not UTF-8",x\n')
    document = tmp_path / "big.json"
    document.write_text("[" + ",\n".join(lines) + ",\n{not json]")
    for data in (csv, document):
        assert main(["inspect", str(data), "--rows", "50"]) == 0, capsys.readouterr().err
        out = " ".join(capsys.readouterr().out.split())
        assert "the first 50 rows" in out and "form: prompt_completion:" in out
        assert main(["inspect", str(data), "--rows", "500"]) == 1  # the whole file, bad line and all
        capsys.readouterr()
    pl.DataFrame({"prompt": QUESTIONS * 10}).write_parquet(tmp_path / "p.parquet")
    assert main(["inspect", str(tmp_path / "p.parquet"), "--rows", "30"]) == 0
    assert "the first 30 rows" in " ".join(capsys.readouterr().out.split())


def test_inspect_streams_a_hub_dataset_and_its_recipe_reads_it_from_the_hub(tmp_path, capsys):
    """--hub reads a Hub dataset's first rows streamed (here the json builder on a local file, as
    the source tests load the Hub offline); the recipe names the same hub, data files and split."""
    data = tmp_path / "ultra.jsonl"
    rows = FORMS["ultrafeedback"][2]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "hub.yaml"
    args = ["--hub", "json", "--data-files", str(data), "--split", "train", "--rows", "10"]
    code, out = _inspect(None, recipe, capsys, *args)
    assert code == 0 and "form: preference:" in out and "the first 10 rows" in " ".join(out.split())
    text = recipe.read_text()
    assert "hub: json" in text and f"data_files: {data}" in text and "split: train" in text
    splits = _built(recipe, tmp_path / "build")
    assert sum(s.num_rows for s in splits.values()) == len(rows)
    assert main(["inspect", str(data), "--hub", "json"]) == 2
    assert "give a data file, or --hub NAME, not both" in capsys.readouterr().err
