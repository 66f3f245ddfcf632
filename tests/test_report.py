"""report.html without a browser: data is escaped (a row cannot inject markup), drops are named,
and `dataforge report` writes the same page again from the lineage and the datasets."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from dataforge.cli import main
from dataforge.engine.runner import build
from tests.conftest import QA_RECIPE, QA_ROWS


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)


def test_report_escapes_data_names_drops_and_is_rewritten_the_same(ws, capsys):
    hostile = "<script>window.pwned = 1</script><img src=x onerror=alert(1)> How many apples are in two boxes?"
    ws.jsonl("qa.jsonl", [*QA_ROWS, {"question": hostile, "answer": "2*3=<<2*3=6>>6\n#### 6"}])
    result = build(ws.recipe(QA_RECIPE), ws.out, show_progress=False)
    assert result.timings["report"] >= 0
    page = (ws.out / "report.html").read_text()
    parser = _Tags()
    parser.feed(page)
    assert "script" not in parser.tags
    assert parser.tags.count("img") == page.count('src="data:image/png;base64,')  # every image inline
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "filter:min_length: 1" in page  # the run table names what each step dropped, and why
    assert page.count('<details class="history">') == 4  # four rows exported, each with its history
    first = page
    (ws.out / "report.html").unlink()
    assert main(["report", "--out", str(ws.out)]) == 0
    assert str(ws.out / "report.html") in capsys.readouterr().out
    assert (ws.out / "report.html").read_text() == first


def test_report_names_a_dataset_removed_after_the_build(ws):
    import shutil

    ws.jsonl("qa.jsonl", QA_ROWS)
    build(ws.recipe(QA_RECIPE), ws.out, show_progress=False)
    shutil.rmtree(ws.out / "datasets" / "qa_sft")
    assert main(["report", "--out", str(ws.out)]) == 0
    page = (ws.out / "report.html").read_text()
    assert "the dataset was removed after the build" in page and '<details class="history">' not in page


def test_a_group_split_with_timestamps_is_not_audited_for_time_order(ws):
    """Rows with timestamps split by group: the card's audit does not report every test row as a
    time-order leak (that promise belongs to time splits only)."""
    rows = [{**r, "when": f"2024-0{k % 9 + 1}-01T00:00:00"} for k, r in enumerate(QA_ROWS * 3)]
    rows = [{**r, "question": r["question"] + f" (variant {k})"} for k, r in enumerate(rows)]
    ws.jsonl("qa.jsonl", rows)
    recipe = QA_RECIPE.replace("    path: qa.jsonl\n", "    path: qa.jsonl\n    timestamp_column: when\n")
    recipe = recipe.replace(
        "  sft:\n    kind: format\n    type: prompt_completion\n    inputs: {data: parsed}",
        "  split:\n    kind: split\n    inputs: parsed\n    fractions: {train: 0.5, test: 0.5}\n    group: question\n"
        "    seed: 1\n  sft:\n    kind: format\n    type: prompt_completion\n"
        "    inputs: {train: split.train, test: split.test}",
    ).replace("splits: {train: sft}", "splits: {train: sft.train, test: sft.test}")
    build(ws.recipe(recipe), ws.out, show_progress=False)
    card = (ws.out / "datasets" / "qa_sft" / "card.md").read_text()
    assert "time order not checked" in card and re.search(r"\| train \| test \| 0 \| 0 \| \d+ \| — \|", card)
