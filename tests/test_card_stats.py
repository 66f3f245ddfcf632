"""The card's statistics: lengths per split, turns per conversation, the chosen − rejected gap of
preference data and the kinds of answers, computed on small tables whose figures are known."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from datasets import load_from_disk

from dataforge.card_stats import row_texts, statistics_section
from dataforge.steps.audit import dataset_audit


def _msgs(*texts: str) -> list[dict]:
    return [{"role": "user" if k % 2 == 0 else "assistant", "content": t} for k, t in enumerate(texts)]


def test_lengths_turns_and_the_preference_length_gap():
    train = pa.Table.from_pylist(
        [
            {"_id": "a", "chosen": _msgs("hi", "a long helpful answer"), "rejected": _msgs("hi", "no")},
            {"_id": "b", "chosen": _msgs("x", "ok"), "rejected": _msgs("x", "a much longer refusal text")},
            {"_id": "c", "chosen": _msgs("q", "yes sir", "more", "fine"), "rejected": _msgs("q", "nah")},
        ]
    )
    text = "\n".join(statistics_section({"train": train}))
    # row a: "hi\na long helpful answer" (24) + "\n" + "hi\nno" (5) = 30 characters, 7 words
    assert "| train | 3 | 25 / 30 / 33 / 33 | 7 / 7 / 8 / 8 |" in text
    assert "Turns per conversation in `chosen`" in text and "- train: 2 / 2 / 4 / 4" in text
    # gaps: 24 − 5 = +19, 4 − 28 = −24, 19 − 5 = +14 → median +14, chosen longer in 2 of 3
    assert "- train: median +14, chosen longer in 67% of pairs" in text


def test_answer_kinds_of_a_grpo_set():
    grpo = pa.Table.from_pylist(
        [{"_id": str(k), "prompt": "p", "answer": a} for k, a in enumerate(["72", "-3", "1,200", "0.5", "3/4", "x"])]
    )
    text = "\n".join(statistics_section({"test": grpo}))
    assert "- test: decimal 1, fraction 1, integer 3, text 1" in text


def test_summaries_of_a_splits_files_joined_in_order_say_what_the_whole_split_says():
    """The export summarizes each file of a split apart (a task each on Ray) and joins them in
    file order: the same statistics section, row for row, as one summary of the whole split."""
    from dataforge.card_stats import SplitSummary

    rows = [{"_id": str(k), "prompt": "p " * (k % 7), "answer": a} for k, a in enumerate(["1", "x", "0.5", "3/4"] * 5)]
    whole = pa.Table.from_pylist(rows)
    joined = SplitSummary(whole.schema)
    for first in range(0, 20, 6):  # files of 6, 6, 6 and 2 rows
        joined.join(SplitSummary.of(whole.slice(first, 6)))
    alone = SplitSummary.of(whole)
    assert joined.num_rows == 20 and (joined.values("chars") == alone.values("chars")).all()
    assert statistics_section({"test": joined}) == statistics_section({"test": alone})
    assert "- test: decimal 5, fraction 5, integer 5, text 5" in statistics_section({"test": joined})


def test_plots_are_pngs_with_the_same_bytes_for_the_same_data(tmp_path):
    from dataforge.card_plots import write_plots
    from dataforge.engine.runner import StepReport

    tables = {"train": pa.Table.from_pylist([{"_id": str(k), "text": "word " * (k + 1)} for k in range(50)])}
    common = {"fingerprint": "0" * 16, "seconds": 0.0, "cache_hit": False}
    reports = [
        StepReport(name="raw", kind="source", rows_in=0, rows_out=60, **common),
        StepReport(name="clean", kind="clean.filter", rows_in=60, rows_out=50, drops={"filter:min": 10}, **common),
    ]
    scores = pl.DataFrame(
        {"margin": [-0.4, -0.2, -0.01, 0.05, 0.3], "detector": [None, None, None, "embedding", "exact"]},
        schema={"margin": pl.Float64, "detector": pl.String},
    )
    splits = {
        "train": pl.DataFrame({"_id": ["t1", "t2"], "prompt": ["What is 2 + 2?", "Name a colour."]}),
        "test": pl.DataFrame({"_id": ["e1"], "prompt": ["what is 2 +  2?"]}),  # the same prompt, normalized
    }
    audit = dataset_audit(splits)
    assert audit is not None and audit.summary() == [["train", "test", 1, 0, 0, 0]]
    lines = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        lines.append(write_plots(tmp_path / folder, tables, reports, {"leak": scores}, audit))
    assert (
        lines[0]
        == lines[1]
        == [
            "![Characters per row, by split](lengths.png)",
            "",
            "![Rows through the steps, with the rows each dropped](funnel.png)",
            "",
            "![Leakage check leak: closest eval item per train row, against the threshold](leakage_leak.png)",
            "",
            "![Prompts shared between splits (split audit)](split_audit.png)",
            "",
        ]
    )
    for name in ("lengths.png", "funnel.png", "leakage_leak.png", "split_audit.png"):
        first, again = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert first[:8] == b"\x89PNG\r\n\x1a\n" and first == again


def test_token_counts_with_the_named_tokenizer_and_a_missing_one_names_its_key(ws):
    """`tokenizer:` on a dataset: the card counts tokens with it (here MiniLM's WordPiece, saved
    beside the recipe); a path that is not there stops the plan, naming the recipe key."""
    import shutil

    from dataforge.embed import model_path
    from dataforge.engine.plan import plan_recipe
    from dataforge.engine.runner import build
    from dataforge.errors import RecipeError
    from tests.conftest import QA_RECIPE, QA_ROWS

    tok_dir = ws.root / "tok"
    tok_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (Path(model_path(None)) / name).exists():
            shutil.copy(Path(model_path(None)) / name, tok_dir / name)
    ws.jsonl("qa.jsonl", QA_ROWS)
    build(ws.recipe(QA_RECIPE + "    tokenizer: ./tok\n"), ws.out)
    card = (ws.out / "datasets" / "qa_sft" / "card.md").read_text()
    assert "| split | rows | characters | words | tokens (`tok`) |" in card
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    texts = row_texts(load_from_disk(str(ws.out / "datasets" / "qa_sft"))["train"].data.table)
    counts = sorted(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert len(counts) == 3 and counts[0] < counts[-1]
    stats = card.split("### Statistics")[1].splitlines()
    row = next(line for line in stats if line.startswith("| train | 3 |"))
    assert row.endswith(f"| {counts[0]} / {counts[1]} / {counts[2]} / {counts[2]} |")  # min / median / p95 / max
    with pytest.raises(RecipeError) as exc:
        plan_recipe(bad := ws.recipe(QA_RECIPE + "    tokenizer: ./nowhere\n", "bad.yaml"))
    line = bad.read_text().splitlines().index("    tokenizer: ./nowhere") + 1
    assert exc.value.key == "datasets.qa_sft.tokenizer" and exc.value.line == line


def test_card_licence_from_each_source_key_or_licence_file_and_a_change_rebuilds_only_the_card(ws):
    """A source's `license:` names its data's licence; a source without one is read from the
    LICENSE file beside it; different ones are all listed. The key changes no row: editing it
    re-executes no step but writes the card again."""
    import yaml

    from dataforge.engine.runner import build
    from tests.conftest import QA_ROWS

    (ws.root / "a").mkdir()
    (ws.root / "b").mkdir()
    ws.jsonl("a/qa.jsonl", QA_ROWS)
    ws.jsonl("b/qa.jsonl", [{**r, "question": r["question"] + " (b)"} for r in QA_ROWS])
    (ws.root / "b" / "LICENSE").write_text("MIT License\n\nCopyright (c) 2021 someone\n")
    text = """
        name: two
        steps:
          a:
            kind: source
            path: a/qa.jsonl
            license: cc-by-4.0
          b:
            kind: source
            path: b/qa.jsonl
        datasets:
          qa:
            splits: {train: a, test: b}
        """

    def licence() -> object:
        card = (ws.out / "datasets" / "qa" / "card.md").read_text()
        return yaml.safe_load(card.split("---\n")[1])["license"]

    first = build(ws.recipe(text), ws.out, show_progress=False)
    assert licence() == ["cc-by-4.0", "mit"]
    again = build(ws.recipe(text.replace("cc-by-4.0", "mit")), ws.out, show_progress=False)
    assert not again.executed and [s.fingerprint for s in again.steps] == [s.fingerprint for s in first.steps]
    assert licence() == "mit"
