"""The card's statistics: lengths per split, turns per conversation, the chosen − rejected gap of
preference data and the kinds of answers, computed on small tables whose figures are known."""

from __future__ import annotations

import pyarrow as pa

from dataforge.card_stats import statistics_section


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


def test_plots_are_pngs_with_the_same_bytes_for_the_same_data(tmp_path):
    from dataforge.card_plots import write_plots
    from dataforge.engine.runner import StepReport

    tables = {"train": pa.Table.from_pylist([{"_id": str(k), "text": "word " * (k + 1)} for k in range(50)])}
    common = {"fingerprint": "0" * 16, "seconds": 0.0, "cache_hit": False}
    reports = [
        StepReport(name="raw", kind="source", rows_in=0, rows_out=60, **common),
        StepReport(name="clean", kind="clean.filter", rows_in=60, rows_out=50, drops={"filter:min": 10}, **common),
    ]
    lines = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        lines.append(write_plots(tmp_path / folder, tables, reports))
    assert (
        lines[0]
        == lines[1]
        == [
            "![Characters per row, by split](lengths.png)",
            "",
            "![Rows through the steps, with the rows each dropped](funnel.png)",
            "",
        ]
    )
    for name in ("lengths.png", "funnel.png"):
        first, again = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert first[:8] == b"\x89PNG\r\n\x1a\n" and first == again
