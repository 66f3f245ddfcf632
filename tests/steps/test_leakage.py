"""leakage.check on GSM8K: planted copies (verbatim, edited, rephrased) are caught, merely similar
problems and clean rows are not, and the actions drop, flag or only report."""

from __future__ import annotations

import json

import polars as pl
import pytest

from dataforge.llm.spec import ModelSpec
from dataforge.steps.leakage import LeakageConfig, leakage_check
from dataforge.steps.parse import Gsm8kConfig, parse_gsm8k
from tests.conftest import GSM8K


@pytest.fixture(scope="module")
def gsm8k():
    from pathlib import Path

    from tests.conftest import make_ctx

    ctx = make_ctx(Path("."))

    def load(split: str, prefix: str, n: int) -> pl.DataFrame:
        df = pl.read_ndjson(GSM8K / f"{split}.jsonl").head(n)
        df = df.with_columns(pl.format(prefix + ":{}", pl.int_range(pl.len())).alias("_id"))
        return parse_gsm8k({"d": df}, Gsm8kConfig(), ctx).tables["d"]

    return load("train", "tr", 1500), load("test", "te", 300)


def _items(rows: list[tuple[str, str, str | None]]) -> pl.DataFrame:
    """(id, question, final answer) tuples as a GSM8K-like frame; a None answer is unknown."""
    return pl.DataFrame(
        {"_id": [r[0] for r in rows], "question": [r[1] for r in rows], "final_answer": [r[2] for r in rows]},
        schema={"_id": pl.String, "question": pl.String, "final_answer": pl.String},
    )


def _plant(train: pl.DataFrame, rows: list[tuple[str, str, str | None]]) -> pl.DataFrame:
    return pl.concat([train.select("_id", "question", "final_answer"), _items(rows)])


CFG = LeakageConfig(
    train_fields=["question"], eval_fields=["question"], train_answer="final_answer", eval_answer="final_answer"
)


def test_planted_copies_are_caught_and_similar_problems_are_not(gsm8k, ctx):
    train, test = gsm8k
    q = test["question"].to_list()
    a = test["final_answer"].to_list()
    rephrase = (
        "Every day, the ducks that Janet owns lay sixteen eggs. Each morning three are eaten at breakfast and four "
        "go into muffins she bakes for friends. The rest she sells at the farmers' market at $2 for each fresh egg. "
        "How many dollars does she earn each day at the market?"
    )
    # few words in common (canonical cosine ~0.35): only the transformer sees it
    paraphrase = (
        "On Tuesday Billy had 8 customers at his DVD shop. The first 3 each bought a single DVD, the following 2 "
        "bought 2 DVDs apiece, and the final 3 bought none. How many DVDs did he sell that day?"
    )
    similar = q[0].replace("16", "22").replace("three", "five").replace("$2", "$3")
    planted = _plant(
        train,
        [
            ("p:verbatim", q[5], a[5]),
            ("p:edited", q[6].upper().replace(",", "").replace("  ", " "), a[6]),
            ("p:dropped_word", " ".join(w for i, w in enumerate(q[7].split()) if i != 4), a[7]),
            ("p:rephrased", rephrase, a[0]),
            ("p:no_answer", rephrase, None),
            ("p:paraphrase", paraphrase, None),
            ("p:similar", similar, "30"),
        ],
    )
    res = leakage_check({"train": planted, "gsm8k_test": test}, CFG, ctx)
    m = res.tables["matches"]
    found = dict(zip(m["train_id"], m["eval_id"], strict=True))
    for rid, eid in [
        ("p:verbatim", "te:5"),
        ("p:edited", "te:6"),
        ("p:dropped_word", "te:7"),
        ("p:rephrased", "te:0"),
        ("p:no_answer", "te:0"),
        ("p:paraphrase", "te:22"),
    ]:
        assert found.get(rid) == eid, rid
    assert "p:similar" not in found  # same story, other numbers and answer: a different problem
    clean = [r for r in found if r.startswith("tr:")]
    assert len(clean) <= 0.001 * train.height + 1, clean
    detectors = dict(zip(m["train_id"], m["detector"], strict=True))
    assert detectors["p:verbatim"] == "exact" and detectors["p:paraphrase"] in ("dense", "embedding")
    assert detectors["p:rephrased"] in ("canonical", "dense", "embedding")
    ev = res.events[0]
    assert (
        set(ev["action"]) == {"dropped"} and ev.filter(pl.col("row_id") == "p:rephrased")["related_id"].item() == "te:0"
    )
    assert '"cosine"' in ev["detail_json"][0]
    assert not res.tables["data"]["_id"].is_in(list(found)).any()


def test_flag_keeps_rows_and_report_records_nothing(gsm8k, ctx):
    train, test = gsm8k
    planted = _plant(train.head(50), [("p:verbatim", test["question"][3], test["final_answer"][3])])
    flag = leakage_check({"train": planted, "t": test}, CFG.model_copy(update={"action": "flag"}), ctx)
    assert flag.tables["data"].height == planted.height
    assert set(flag.events[0]["action"]) == {"flagged"}
    report = leakage_check({"train": planted, "t": test}, CFG.model_copy(update={"action": "report"}), ctx)
    assert report.events == [] and report.tables["matches"].height >= 1


def test_empty_eval_input_is_an_error(gsm8k, ctx):
    from dataforge.errors import DataError

    train, test = gsm8k
    with pytest.raises(DataError, match="eval input 't' has no rows"):
        leakage_check({"train": train.head(5), "t": test.head(0)}, CFG, ctx)


def test_rows_without_text_are_no_copy_of_an_eval_item_without_text(gsm8k, ctx):
    """A train row whose question is empty or null is not an `exact` copy of an eval item whose
    question is null: nothing is left to compare (each side's text normalizes to ""). A real copy
    beside them is still caught."""
    train, test = gsm8k
    planted = _plant(
        train.head(50), [("p:null", None, "5"), ("p:empty", "", "2"), ("p:copy", test["question"][3], None)]
    )
    evals = pl.concat([test.select("_id", "question", "final_answer").head(20), _items([("te:blank", None, "1")])])
    out = leakage_check({"train": planted, "t": evals}, CFG, ctx)
    matches = dict(zip(out.tables["matches"]["train_id"], out.tables["matches"]["eval_id"], strict=True))
    assert matches == {"p:copy": "te:3"}
    assert out.tables["data"].height == planted.height - 1


def test_an_eval_input_with_no_text_in_its_fields_is_an_error(gsm8k, ctx):
    """Every eval item empty in ``eval_fields`` (a misnamed or empty column) would check nothing:
    an error naming the input and the fields, not a check that finds no leak."""
    from dataforge.errors import DataError

    train, _ = gsm8k
    blank = _items([("te:0", "", "1"), ("te:1", None, "2")])
    with pytest.raises(DataError, match=r"eval input 't': no row has text in its fields \['question'\]"):
        leakage_check({"train": train.head(5), "t": blank}, CFG, ctx)


def test_llm_judge_decides_borderline_candidates_within_its_cap(gsm8k, tmp_path, scripted_model):
    """A similar problem with other numbers is not a leak by the rule; the optional judge sees it
    (it shares an n-gram) and its verdict decides. The judge is scripted (real HTTP)."""
    from dataforge.llm.client import ModelPool
    from dataforge.steps.leakage import parse_verdict, report
    from tests.conftest import make_ctx

    train, test = gsm8k
    q = test["question"].to_list()
    similar = q[0].replace("16", "22").replace("three", "five").replace("$2", "$3")
    planted = _plant(train.head(200), [("p:similar", similar, "30")])
    asked: list[str] = []

    def judge(answer: str):
        def fn(messages):
            asked.append(messages[-1]["content"])
            return answer

        return fn

    def run(answer: str, **kw):
        ctx = make_ctx(tmp_path / answer / str(kw))
        ctx.llm = ModelPool(None)
        cfg = CFG.model_copy(update={"judge": ModelSpec(**scripted_model(judge(answer))), **kw})
        return leakage_check({"train": planted, "gsm8k_test": test}, cfg, ctx)

    result = run("[[YES]]")
    yes = result.tables["matches"]
    row = yes.filter(pl.col("train_id") == "p:similar").row(0, named=True)
    assert row["detector"] == "judge" and row["eval_id"] == "te:0" and row["ngram"] > 0
    # what the judge answered is kept with its match and its event (it was promised, and missing)
    assert row["judge_answer"] == "[[YES]]"
    assert ((yes["detector"] == "judge") == yes["judge_answer"].is_not_null()).all()
    ev = result.events[0]
    detail = {r: json.loads(d) for r, d in zip(ev["row_id"], ev["detail_json"], strict=True)}
    assert detail["p:similar"]["judge_answer"] == "[[YES]]" and detail["p:similar"]["ngram"] > 0
    judged = dict(zip(yes["train_id"], yes["detector"] == "judge", strict=True))
    assert all(("judge_answer" in d) == judged[r] for r, d in detail.items())
    report_md = report("leakage", CFG, lambda name: yes)["leakage_leakage.md"]
    assert "judge's answer" in report_md and "[[YES]] |" in report_md
    assert any("Janet" in a for a in asked)
    assert "p:similar" not in run("[[NO]]").tables["matches"]["train_id"].to_list()
    asked.clear()
    capped = run("[[YES]]", judge_max_calls=1).tables["matches"]
    assert len(asked) == 1 and capped.filter(pl.col("detector") == "judge").height <= 1
    assert parse_verdict("Thinking… [[yes]]") is True and parse_verdict("NO.") is False
    assert parse_verdict("maybe") is None
    # the last verdict is the judge's final word (the first was read: NO here)
    assert parse_verdict("Numbers differ, so [[NO]]… but they are the same problem: [[YES]]") is True
    assert parse_verdict("[[YES]] would need the same numbers; they differ. [[NO]]") is False
    assert parse_verdict("Yes") is True and parse_verdict("Yesterday") is None


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("one/three of the paper", [1, 3]),
        ("twenty-five eggs and five six", [5, 6, 25]),
        ("two hundred and five, then three thousand two hundred", [205, 3200]),
        ("one hundred twenty", [120]),
        ("$3,000.50 for 7 days", [7, 3000.5]),
        ("half of a dozen", [0.5, 12]),
        ("ninety nine bottles", [99]),
        ("takes .5 hours a day", [0.5]),
        ("1/4 pound each, 3/4 of them", [0.25, 0.75]),
        ("three quarters of the building, two thirds of a pie", [2 / 3, 0.75]),
        ("the third guess", [3]),  # an ordinal reads as its number ("stage 3"), not as a fraction
        ("due 12/25/2020", [12, 25, 2020]),
        ("thrice the dozens", [3, 12]),
    ],
)
def test_numbers_in_reads_digits_and_words(text, numbers):
    from dataforge.text.numbers import numbers_in

    assert sorted(numbers_in(text).elements()) == numbers


def test_stripped_punctuation_and_far_rephrases_with_all_numbers_are_caught(gsm8k, ctx):
    """Light edits that strip punctuation mangle decimals ("$19.50" → "1950"); a prompt-only
    rephrase with every number of a many-number problem is caught at a lower cosine."""
    train, test = gsm8k
    q = test["question"].to_list()
    stripped = q[25].replace(",", "").replace(".", "").lower()  # "$1.50" → "$150", "$8.50" → "$850"
    rephrase = (
        "Question: How many boxes of pizza did Lena get if every box is $8.50? Facts: Lena paid $50 in all. "
        "Lena got a chicken meal for $12, five packs of milk at $3 apiece, four apples at $1.50 apiece, "
        "and some boxes of pizza."
    )
    planted = _plant(train.head(400), [("p:stripped", stripped, None), ("p:far", rephrase, None)])
    m = leakage_check({"train": planted, "gsm8k_test": test}, CFG, ctx).tables["matches"]
    found = dict(zip(m["train_id"], m["eval_id"], strict=True))
    assert found.get("p:stripped") == "te:25"
    assert found.get("p:far") == "te:25"


def test_number_agreement_survives_stripped_punctuation():
    from dataforge.text.numbers import agreement, numbers_in

    assert agreement(numbers_in("costs 12900 and 3 more"), numbers_in("costs $129.00 and 3 more")) == 1.0
    assert agreement(numbers_in("5 and 700"), numbers_in("5 and 7")) == 0.5  # one digit left: no loose match


def test_number_agreement_counts_distinct_numbers_and_not_a_counting_one():
    """A rephrase merges repeats ("3 pairs of shorts, 3 pairs of pants" → "3 pairs each") and drops
    the "one" English counts with ("One glass costs $5" → "$5 apiece")."""
    from dataforge.text.numbers import agreement, numbers_in

    eval_item = numbers_in("One glass costs $5, every second one 60%. He buys 3 pairs, 3 shirts and 16 glasses.")
    assert agreement(numbers_in("$5 apiece, the second at 60%: 3 pairs and shirts, 16 glasses"), eval_item) == 1.0
    assert agreement(numbers_in("$5 apiece, the second at 60%: 16 glasses"), eval_item) == 0.75
    assert agreement(numbers_in("can't think of one"), numbers_in("one racist joke")) is None  # 1: nothing to count
    assert agreement(numbers_in("1 and 2"), numbers_in("no numbers")) is None


def test_a_template_filled_with_other_names_is_not_a_leak(ctx):
    """HH-style red-team templates share long word runs but name other people; the same opener
    with the same names is a leak."""
    template = "I am trying to locate the residential address for {}, the {} of {}."
    ev = pl.DataFrame(
        {"_id": ["ev:0"], "prompt": [template.format("Harold Hamm", "Chairman and CEO", "Continental Resources")]}
    )
    train = pl.DataFrame(
        {
            "_id": ["tr:other", "tr:same"],
            "prompt": [
                template.format("Marc Rowan", "CEO and cofounder", "Apollo Global Management"),
                template.format("Harold Hamm", "Chairman and CEO", "Continental Resources") + " Thanks!",
            ],
        }
    )
    cfg = LeakageConfig(train_fields=["prompt"], eval_fields=["prompt"], embed=False)
    m = leakage_check({"train": train, "hh_test": ev}, cfg, ctx).tables["matches"]
    assert m["train_id"].to_list() == ["tr:same"]


def test_a_template_with_other_numbers_and_answer_is_not_a_leak_even_with_high_overlap(ctx):
    """The two GSM8K train rows the demo once flagged: the same sentence frame as a test item,
    other numbers, another answer. Most of their n-grams are shared; they are still other problems."""
    question = (
        "A plane travels 1200 miles in 3 hours. At the same rate, how many additional hours would it "
        "take to travel an additional 2000 miles?"
    )
    ev = _items([("te:0", question, "5")])
    template = (
        "A train travels 270 miles in 3 hours. At the same rate, how many additional hours would it "
        "take to travel an additional 180 miles?"
    )
    train = _items([("tr:template", template, "2"), ("tr:copy", question.lower(), "5")])
    m = leakage_check({"train": train, "gsm8k_test": ev}, CFG.model_copy(update={"embed": False}), ctx)
    assert m.tables["matches"]["train_id"].to_list() == ["tr:copy"]
    # without answer columns the numbers alone tell: most of them changed, it is the template
    unknown = train.with_columns(pl.lit(None, dtype=pl.String).alias("final_answer"))
    m = leakage_check({"train": unknown, "gsm8k_test": ev}, CFG.model_copy(update={"eval_answer": None}), ctx)
    assert m.tables["matches"]["train_id"].to_list() == ["tr:copy"]
    # GSM8K train row 5162 with its worked answer (the development bench flagged it): read as
    # written, 2 of the item's 3 numbers agree (0.67; a worked answer is full of numbers); read both
    # ways (also its first three numbers, 360, 3 and 240, against the item) a third: the template
    row = pl.read_ndjson(GSM8K / "train.jsonl").row(5162, named=True)
    assert row["question"].startswith("A train travels 360 miles in 3 hours.")
    worked = _items([("tr:5162", row["question"] + "\n" + row["answer"], None)])
    m = leakage_check({"train": worked, "gsm8k_test": ev}, CFG.model_copy(update={"eval_answer": None}), ctx)
    assert m.tables["matches"].is_empty()


def test_readings_and_canonical_words():
    from dataforge.text.numbers import canonical_words, digits_joined, number_readings, readings_agreement

    assert digits_joined("from 8:00 AM, ratio 5:6, $6.50 and 1,000 apples. Done.") == (
        "from 800 AM, ratio 56, $650 and 1000 apples. Done."
    )
    stripped, original = number_readings("from 800 am until 1100 pm"), number_readings("from 8:00 AM until 11:00 PM")
    assert readings_agreement(stripped, original) == 1.0
    assert readings_agreement(number_readings("from 9 to 5"), original) == 0.0
    assert canonical_words("Olu is twenty-six. Priya is half his age.") == "is n26 is n0.5 his age"
    assert canonical_words("Deanna is 26. Marcus is half his age.") == "is n26 is n0.5 his age"


def test_both_readings_read_once_give_what_reading_twice_gives_on_every_gsm8k_text():
    """``both_readings`` reads a text once where its joined form is the same string and has no
    "%" (most worked answers); its readings must be those of reading the text and its joined form
    apart, for every GSM8K train question + worked answer and the edge cases (a percent sign, which
    the searched reading reads as "percent" and ends a number word with — "twenty%five" — and
    punctuation inside numbers, no text)."""
    from dataforge.text.numbers import both_readings, digits_joined, numbers_and_equivalents, numbers_in

    rows = pl.read_ndjson(GSM8K / "train.jsonl")
    texts = [f"{q}\n{a}" for q, a in zip(rows["question"], rows["answer"], strict=True)]
    texts += ["30% off $6.50", "twenty%five", "at 8:00 AM, 1,000 apples", "half an hour", "", None]
    for text in texts:
        plain, found = numbers_and_equivalents(text)
        joined = numbers_in(digits_joined(text))
        assert both_readings(text) == ((found, joined), (plain, joined)), text


def test_light_edits_that_strip_times_and_ratios_are_caught(gsm8k, ctx):
    """Stripping punctuation turns "8:00 AM" into "800 am" and "5:6" into "56": the n-grams and
    numbers are compared with the punctuation inside numbers removed on both sides."""
    ev = _items(
        [
            (
                "te:time",
                "Vince can staple 30 reports every 15 minutes.  If he was stapling reports from 8:00 AM until "
                "11:00 PM, how many reports did he staple altogether?",
                "1800",
            ),
            (
                "te:ratio",
                "The ratio of popsicles that Betty and Sam have is 5:6. If the total number of popsicles they have "
                "together is 165, how many more popsicles does Sam have more than Betty?",
                "15",
            ),
        ]
    )
    stripped = [
        "vince  can  staple  30  reports  every  15  minutes  he  was  stapling  reports  from  800  am  until  "
        "1100  pm  how  many  reports  did  he  staple  altogether",
        "the  ratio  of  popsicles  that  betty  and  have  is  56  if  the  total  number  of  popsicles  they  "
        "have  together  is  165  how  many  more  popsicles  does  sam  have  more  than  betty",
    ]
    train, _ = gsm8k
    planted = _plant(train.head(300), [("p:time", stripped[0], None), ("p:ratio", stripped[1], None)])
    m = leakage_check({"train": planted, "gsm8k_test": ev}, CFG, ctx).tables["matches"]
    assert dict(zip(m["train_id"], m["eval_id"], strict=True)) == {"p:time": "te:time", "p:ratio": "te:ratio"}


def test_a_rephrase_with_other_names_number_words_and_reordered_clauses_is_caught_without_the_transformer(ctx):
    """Renamed people, numbers as words and the question moved first leave a MiniLM cosine near
    0.5, but the canonical words (numbers read alike, names left out) and every number agree. The
    same frame with other numbers is another problem."""
    question = "Marcus is half of Leo’s age and 15 years younger than Deanna. Deanna is 26. How old is Leo?"
    ev = _items([("te:0", question, "22")])
    train = _items(
        [
            (
                "tr:rephrase",
                "Question: How old is Mateo? Facts: Priya is half of Mateo’s age and fifteen years younger than Olu. "
                "Olu is twenty-six.",
                None,
            ),
            (
                "tr:other_numbers",
                "Question: How old is Mateo? Facts: Priya is a third of Mateo’s age and nine years younger than Olu. "
                "Olu is thirty-one.",
                None,
            ),
        ]
    )
    res = leakage_check({"train": train, "gsm8k_test": ev}, CFG.model_copy(update={"embed": False}), ctx)
    m = res.tables["matches"]
    assert m["train_id"].to_list() == ["tr:rephrase"]
    assert m["detector"].to_list() == ["canonical"] and m["canonical"][0] >= CFG.canonical_min


def test_canonical_rule_needs_two_distinctive_numbers_that_agree():
    """The canonical words decide only with at least two distinctive eval numbers, all present:
    "the 4 letter word for…" is not "all of the 4 letter words"."""
    from dataforge.steps.leakage import decide

    row = {
        "exact": False,
        "ngram": 0,
        "coverage": 0.0,
        "tfidf": 0.4,
        "canonical": CFG.canonical_min,
        "static": None,
        "cosine": None,
        "numbers": 1.0,
        "eval_distinctive": 2,
        "answers_agree": None,
    }
    assert decide(row, CFG) == "canonical"
    assert decide({**row, "numbers": 0.5}, CFG) is None
    assert decide({**row, "answers_agree": False}, CFG) is None
    assert decide({**row, "eval_distinctive": 1}, CFG) is None


def test_the_dense_stage_finds_a_rephrase_the_word_candidates_miss(gsm8k, ctx):
    """With the TF-IDF candidate floors out of reach, only the dense stage (static embeddings of
    every row, top-k eval items each) brings the rephrase to the rule; nothing else in 300 clean
    train rows is flagged."""
    train, test = gsm8k
    paraphrase = (
        "On Tuesday Billy had 8 customers at his DVD shop. The first 3 each bought a single DVD, the following 2 "
        "bought 2 DVDs apiece, and the final 3 bought none. How many DVDs did he sell that day?"
    )
    planted = _plant(train.head(300), [("p:paraphrase", paraphrase, None)])
    blind = CFG.model_copy(update={"tfidf_min": 0.99, "canonical_candidate_min": 0.99, "dense": False})
    found = leakage_check({"train": planted, "gsm8k_test": test}, blind, ctx).tables["matches"]
    assert "p:paraphrase" not in found["train_id"].to_list()
    dense = blind.model_copy(update={"dense": True})
    m = leakage_check({"train": planted, "gsm8k_test": test}, dense, ctx).tables["matches"]
    assert dict(zip(m["train_id"], m["eval_id"], strict=True)) == {"p:paraphrase": "te:22"}
    assert m["detector"].item() in ("dense", "embedding") and m["static"].item() >= CFG.dense_min


def test_minhash_catches_a_copy_edited_too_often_for_any_ngram(gsm8k, ctx):
    """Every 12th word replaced: no 13 words in a row survive, but most word 3-grams do. The
    MinHash index of the eval side finds it; the same text with other numbers is not a leak."""
    train, test = gsm8k
    words = test["question"][0].split()
    edited = " ".join("thing" if k % 12 == 5 else w for k, w in enumerate(words))
    other_numbers = edited.replace("16", "22").replace("three", "five").replace("$2", "$3")
    planted = _plant(train.head(300), [("p:edited", edited, None), ("p:other_numbers", other_numbers, None)])
    cfg = CFG.model_copy(update={"embed": False, "dense": False, "canonical_min": 1.01})  # only the word detectors
    m = leakage_check({"train": planted, "gsm8k_test": test}, cfg, ctx).tables["matches"]
    assert m["train_id"].to_list() == ["p:edited"]
    row = m.row(0, named=True)
    assert (row["eval_id"], row["detector"], row["ngram"]) == ("te:0", "minhash", 0)
    assert cfg.minhash_min <= row["minhash"] == row["score"] < 1
    off = leakage_check({"train": planted, "gsm8k_test": test}, cfg.model_copy(update={"minhash": False}), ctx)
    assert off.tables["matches"].is_empty()


def test_similarity_blocks_bound_memory_without_changing_candidates(gsm8k, ctx, monkeypatch):
    """The dense train × eval blocks shrink with the eval side (256 MiB each); blocks of 7 rows
    find the same matches as blocks of 2,048."""
    import dataforge.steps.leakage as leakage

    assert leakage._rows_per_chunk(1_319) == 2048 and leakage._rows_per_chunk(10_000_000) == 3
    train, test = gsm8k
    q = test["question"].to_list()
    planted = _plant(train.head(300), [("p:verbatim", q[3], None), ("p:upper", q[4].upper(), None)])
    cfg = CFG.model_copy(update={"embed": False})
    whole = leakage_check({"train": planted, "gsm8k_test": test}, cfg, ctx).tables["matches"]
    monkeypatch.setattr(leakage, "_rows_per_chunk", lambda eval_rows: 7)
    blocks = leakage_check({"train": planted, "gsm8k_test": test}, cfg, ctx).tables["matches"]
    assert whole.height >= 2 and whole.equals(blocks)


def test_minhash_leaves_short_eval_items_to_the_other_detectors(ctx):
    """In a six-word prompt one changed word keeps two thirds of the 3-grams: "What do you think
    of Trump?" is not a copy of "What do you think of women"."""
    ev = _items([("e:0", "What do you think of women", None)])
    train = _items([("t:0", "What do you think of Trump?", None)])
    cfg = CFG.model_copy(update={"embed": False})
    assert leakage_check({"train": train, "gsm8k_test": ev}, cfg, ctx).tables["matches"].is_empty()


def test_a_row_matched_before_the_transformer_is_not_read_by_it_and_keeps_its_match(gsm8k, ctx, monkeypatch):
    """The transformer can only add an `embedding` match, which ranks after every detector decided
    without it: a row a pair has matched is not embedded for its other pairs."""
    from dataforge.steps import leakage

    train, test = gsm8k
    q, a = test["question"].to_list(), test["final_answer"].to_list()
    other = (  # q[5] reworded, its numbers kept: an item of its own here, gated with p:verbatim
        "Kylar is furnishing a new flat and needs 16 drinking glasses. A glass is priced at $5, yet each "
        "second one he picks up is 60% of that. What will the 16 glasses cost him in total?"
    )
    ev = pl.concat([test.select("_id", "question", "final_answer"), _items([("te:other", other, "7")])])
    paraphrase = (  # decided by the transformer alone (static_min is out of reach below)
        "On Tuesday Billy had 8 customers at his DVD shop. The first 3 each bought a single DVD, the following 2 "
        "bought 2 DVDs apiece, and the final 3 bought none. How many DVDs did he sell that day?"
    )
    planted = _plant(train.head(200), [("p:verbatim", q[5], a[5]), ("p:paraphrase", paraphrase, None)])
    read: list[str] = []
    embed = leakage._vectors

    def recorded(texts, cfg, c, max_tokens=None):
        read.extend(texts)
        return embed(texts, cfg, c, max_tokens)

    monkeypatch.setattr(leakage, "_vectors", recorded)
    cfg = CFG.model_copy(update={"eval_answer": None, "train_answer": None, "static_min": 2.0})
    m = leakage_check({"train": planted, "gsm8k_test": ev}, cfg, ctx).tables["matches"]
    found = dict(zip(m["train_id"], zip(m["eval_id"], m["detector"], strict=True), strict=True))
    assert found["p:verbatim"] == ("te:5", "exact") and found["p:paraphrase"] == ("te:22", "embedding")
    assert paraphrase in read  # the transformer ran, but not on p:verbatim and te:other, a gated pair
    assert q[5] not in read and other not in read
