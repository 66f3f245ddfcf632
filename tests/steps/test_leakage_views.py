"""leakage.check's views per kind of data (code, multiple choice, chat, short items), its agreement
signals as evidence (numbers read in every common way), the static dense recall stage, and the
benchmark's judge path against a real loopback server."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dataforge.steps.leakage import LeakageConfig, decide, evidence, leakage_check
from dataforge.text.numbers import equivalents, number_readings, numbers_in, readings_agreement
from dataforge.text.views import (
    choice_view,
    choice_views,
    code_views,
    kind_of,
    lettered_choices,
    prose_view,
    user_turns,
)

REPO = Path(__file__).resolve().parents[2]
REPHRASES = REPO / "bench" / "data" / "decontamination-rephrases"  # the development half


def _agree(train: str, eval_item: str) -> float | None:
    return readings_agreement(number_readings(train, searched=True), number_readings(eval_item))


@pytest.mark.parametrize(
    ("train", "eval_item"),
    [
        ("Ruby is a decade old", "Ruby is 10 years old"),
        ("the show lasts half an hour", "the show lasts 30 minutes"),
        ("Sam's age is one-sixth of Ruby's", "Ruby is 6 times older than Sam"),
        ("a dozen eggs", "12 eggs"),
        ("a quarter of the class", "25% of the class"),
        ("25 percent of the class", "25% of the class"),
        ("she worked for four decades", "she worked for 40 years"),
        ("the board is 24 inches long", "the board is 2 feet long"),
        ("it costs 150 cents", "it costs 1.5 dollars"),
        ("during the third phase", "in stage 3"),
        ("warfare in the 19th century", "war in the nineteenth century"),
        ("privatized during the 80s and 90s", "privatized in the 1980s and 1990s"),
        ("a third of the votes", "1/3 of the votes"),
        # quantities of several words (from misses on the development rephrases)
        ("Lisa sold 3.5 boxes, Peter 4.5 boxes", "Lisa sold three and a half boxes, Peter four and a half"),
        ("If he gains an additional 24 marbles", "If he receives 2 dozen more marbles"),
        ("A small sunflower contains 36 seeds", "A small sunflower has 3 dozen seeds"),
        ("that represents three-fourths of the number", "If this is 3 quarters of the number"),
        ("Carl has fourfold", "Carl has four times as many"),
        ("she bought 6 eggs", "she bought half a dozen eggs"),
        ("it took 2.25 hours", "it took two and a quarter hours"),
        ("The number doubled on Monday, tripled on Tuesday", "Twice as many on Monday, 3 times on Tuesday"),
        ("The red cord was quadruple the blue one", "The red rope was four times the blue rope"),
        # quantities with a scale or a unit said in words (general English, not read off a miss)
        ("the budget is $32,000,000", "the budget is 32 million dollars"),
        ("the budget is $32M", "the budget is $32 million"),
        ("a house for $280,000", "a house for $280k"),
        ("two million people", "2 million people"),
        ("a hundred and twenty pages", "120 pages"),
        ("fifteen per cent of them", "15% of them"),
        ("the trip took 90 minutes", "the trip took an hour and a half"),
        ("she waited 18 months", "she waited a year and a half"),
        ("2 hours later", "a couple of hours later"),
    ],
)
def test_numbers_read_in_every_common_way_agree(train, eval_item):
    assert _agree(train, eval_item) == 1.0


def test_other_quantities_do_not_agree_through_the_unit_readings():
    assert _agree("Ruby is a decade old", "Ruby is 12 years old") == 0.0
    assert _agree("the show lasts half an hour", "the show lasts 45 minutes") == 0.0
    assert 0.5 in equivalents("half an hour") and 30 in equivalents("half an hour")
    assert numbers_in("two decades and a century") == {20: 1, 100: 1}
    assert numbers_in("the nineteenth century") == {19: 1}  # a century is 100 only when counted
    assert _agree("the 70s", "the 1980s") == 0.0
    assert _agree("Lisa sold 3 boxes and a half-price box", "Lisa sold three and a half boxes") == 0.0
    assert _agree("he has 2 marbles and 12 cards", "he has 2 dozen marbles") == 0.0
    assert numbers_in("manifold uses of a threefold cord") == {3: 1}
    assert numbers_in("she ran a 5k race") == {5: 1}  # a letter scales money only
    assert numbers_in("a score of 85 and a pair of shoes") == {85: 1}  # one pair; a test's score
    assert numbers_in("1.5 million and 2 thousand") == {1_500_000: 1, 2000: 1}  # no exponent read as digits
    assert _agree("the trip took an hour and a half", "the trip took 60 minutes") == 0.0


def test_evidence_moves_the_score_and_never_vetoes_alone():
    cfg = LeakageConfig(train_fields=["q"], eval_fields=["q"])
    assert evidence(1.0, None, cfg) == 0.0
    assert evidence(0.0, None, cfg) == pytest.approx(-cfg.numbers_weight)
    assert evidence(None, True, cfg) == pytest.approx(cfg.answer_weight)
    assert evidence(1.0, None, cfg, distinct=2) == pytest.approx(cfg.numbers_bonus)
    row = {"exact": False, "ngram": 0, "coverage": 0.0, "tfidf": None, "canonical": None, "static": 0.5}
    # a mangled number costs a little: a close enough text still says the same thing
    assert decide({**row, "cosine": 0.95, "numbers": 0.5, "answers_agree": None}, cfg) == "embedding"
    assert decide({**row, "cosine": 0.95, "numbers": 1.0, "answers_agree": False}, cfg) == "embedding"
    # every number missing costs the whole numbers_weight: only a near-identical text passes
    floor = cfg.cosine_min + cfg.numbers_weight
    assert decide({**row, "cosine": floor, "numbers": 0.0, "answers_agree": None}, cfg) == "embedding"
    assert decide({**row, "cosine": floor - 0.02, "numbers": 0.0, "answers_agree": None}, cfg) is None
    # numbers half missing and another answer: another problem, however close the frame
    assert decide({**row, "cosine": 0.99, "numbers": 0.5, "answers_agree": False}, cfg) is None
    # the same frame, other numbers: the text alone is not close enough
    assert decide({**row, "cosine": cfg.cosine_min + 0.02, "numbers": 0.0, "answers_agree": None}, cfg) is None
    assert decide({**row, "cosine": cfg.cosine_min + 0.02, "numbers": 1.0, "answers_agree": None}, cfg) == "embedding"
    # code items have their own floor (docstrings are compared)
    code = {**row, "cosine": cfg.code_cosine_min, "numbers": None, "answers_agree": None, "kind": "code"}
    assert decide(code, cfg) == "embedding" and decide({**code, "kind": "text"}, cfg) is None


def test_a_static_match_stands_alone_only_with_evidence_for_it():
    """Static word vectors read topic more than request: two HH conversations on other subjects
    ("I think people are really overreacting about school shootings…" / "Today I heard a parent
    berating their child…") read 0.892. Without numbers or answers that agree, the transformer
    decides such a pair; with them, the static cosine decides alone."""
    cfg = LeakageConfig(train_fields=["q"], eval_fields=["q"])
    row = {"exact": False, "ngram": 0, "coverage": 0.0, "tfidf": None, "canonical": None, "answers_agree": None}
    chat = {**row, "static": 0.892, "numbers": None, "cosine": None}
    assert decide(chat, cfg) is None  # undecided: it goes to the transformer
    assert decide({**chat, "cosine": 0.41}, cfg) is None
    assert decide({**chat, "cosine": cfg.cosine_min + 0.01}, cfg) == "embedding"
    # every number of the eval item in the train text, or an agreeing answer: static alone decides
    assert decide({**chat, "numbers": 1.0}, cfg) == "dense"
    assert decide({**chat, "answers_agree": True, "numbers": 0.9}, cfg) == "dense"
    assert decide({**chat, "numbers": 0.9}, cfg) is None


def _items(rows: list[tuple[str, str, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        {"_id": [r[0] for r in rows], "question": [r[1] for r in rows], "final_answer": [r[2] for r in rows]},
        schema={"_id": pl.String, "question": pl.String, "final_answer": pl.String},
    )


GSM8K_CFG = LeakageConfig(train_fields=["question"], eval_fields=["question"])


def test_a_rephrase_with_a_decade_for_10_is_caught_and_the_template_with_other_quantities_is_not(ctx):
    ev = _items(
        [
            (
                "te:0",
                "Ruby is 10 years old and her brother Sam is 4 years younger. How old will Sam be in 7 years?",
                "13",
            ),
            ("te:1", "A baker sells 24 muffins every morning for $3 each. How much does she earn in 5 days?", "360"),
        ]
    )
    train = _items(
        [
            (
                "tr:decade",
                "Ruby has been alive for a decade, and Sam, her brother, is four years her junior. What age will "
                "Sam reach seven years from now?",
                None,
            ),
            (
                "tr:template",
                "Ruby is 15 years old and her brother Sam is 6 years younger. How old will Sam be in 2 years?",
                None,
            ),
            ("tr:clean", "Tom reads 12 pages a night. How many pages does he read in a fortnight of nights?", None),
        ]
    )
    m = leakage_check({"train": train, "test": ev}, GSM8K_CFG, ctx).tables["matches"]
    assert dict(zip(m["train_id"], m["eval_id"], strict=True)) == {"tr:decade": "te:0"}
    assert m["numbers"][0] == 1.0  # "a decade" read as 10


HAS_CLOSE = '''from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    """ Check if in given list of numbers, are any two numbers closer to each other than
    given threshold.
    >>> has_close_elements([1.0, 2.0, 3.0], 0.5)
    False
    >>> has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)
    True
    """
'''
REMOVE_DUPLICATES = '''from typing import List


def remove_duplicates(numbers: List[int]) -> List[int]:
    """ From a list of integers, remove all elements that occur more than once.
    Keep order of elements left the same as in the input.
    >>> remove_duplicates([1, 2, 3, 2, 4])
    [1, 3, 4]
    """
'''
RENAMED = '''import typing
from typing import List

def nearby_elements_exist(numerical_list: List[float], difference_limit: float) -> bool:
    """ Verifies if there are two elements within the given list of floats that are closer to
    each other than the specified difference limit.
    >>> nearby_elements_exist([1.5, 2.5, 3.5], 0.7)
    False
    """
    idx = 0
    while idx < len(numerical_list):
        idx2 = 0
        while idx2 < len(numerical_list):
            if idx != idx2 and abs(numerical_list[idx] - numerical_list[idx2]) < difference_limit:
                return True
            idx2 += 1
        idx += 1
    return False
'''
SIMILAR_NAME = '''def remove_duplicate_keys(records: list[dict]) -> list[dict]:
    """Keep the first record of each key and drop the later ones, so every key appears once.
    Records are compared by their "key" field only."""
    seen, out = set(), []
    for r in records:
        if r["key"] not in seen:
            seen.add(r["key"])
            out.append(r)
    return out
'''


def test_code_views_split_language_from_anonymized_tokens():
    assert kind_of(HAS_CLOSE) == "code" and kind_of("How old is Sam?") == "text"
    prose, anon = code_views(RENAMED)
    assert "closer to" in prose and "nearby elements exist" in prose
    assert ">>>" not in prose and "[1.5, 2.5" not in prose  # doctest values change in a rewrite
    assert "numerical_list" not in anon and "ID" in anon and "while" in anon and "len" in anon
    _, anon_original = code_views(RENAMED.replace("numerical_list", "xs").replace("difference_limit", "eps"))
    assert anon == anon_original  # renaming changes nothing in the anonymized stream


def test_a_renamed_function_with_reworded_docstring_is_caught_and_a_similar_name_is_not(ctx):
    ev = pl.DataFrame({"_id": ["HumanEval/0", "HumanEval/26"], "prompt": [HAS_CLOSE, REMOVE_DUPLICATES]})
    train = pl.DataFrame({"_id": ["tr:renamed", "tr:similar_name"], "text": [RENAMED, SIMILAR_NAME]})
    cfg = LeakageConfig(train_fields=["text"], eval_fields=["prompt"])
    m = leakage_check({"train": train, "humaneval": ev}, cfg, ctx).tables["matches"]
    assert dict(zip(m["train_id"], m["eval_id"], strict=True)) == {"tr:renamed": "HumanEval/0"}


def test_a_copied_function_with_every_name_changed_is_a_clone(ctx):
    body = HAS_CLOSE + (
        "    for idx, elem in enumerate(numbers):\n        for idx2, elem2 in enumerate(numbers):\n"
        "            if idx != idx2:\n                distance = abs(elem - elem2)\n"
        "                if distance < threshold:\n                    return True\n\n    return False\n"
    )
    renamed = (
        body.replace("has_close_elements", "f")
        .replace("numbers", "xs")
        .replace("threshold", "t")
        .replace("elem2", "b")
        .replace("elem", "a")
        .replace("distance", "d")
    )
    renamed = renamed.split('"""')[0] + renamed.split('"""')[2]  # and no docstring at all
    ev = pl.DataFrame({"_id": ["HumanEval/0"], "code": [body]})
    train = pl.DataFrame({"_id": ["tr:clone", "tr:other"], "code": [renamed, SIMILAR_NAME]})
    cfg = LeakageConfig(train_fields=["code"], eval_fields=["code"], embed=False, dense=False)
    m = leakage_check({"train": train, "ev": ev}, cfg, ctx).tables["matches"]
    assert m["train_id"].to_list() == ["tr:clone"] and m["detector"][0] == "clone"


def _mmlu_dev(subject: str, indices: list[int]) -> pl.DataFrame:
    """Items of the MMLU development rephrases (GPT-4 rewrites the check was not written on)."""
    rows = pl.read_ndjson(REPHRASES / "mmlu_test_rephrased.dev.jsonl")
    return rows.filter((pl.col("subject") == subject) & pl.col("test_index").is_in(indices)).sort("test_index")


def test_choice_view_reads_the_correct_choice():
    assert choice_view("Q?", ["a", "b", "c"], "C") == "Q?\nc"
    assert choice_view("Q?", ["a", "b", "c"], 1) == "Q?\nb"
    assert choice_view("Q?", ["a", "b"], None) == "Q?"
    assert choice_views("Q?", ["a", "b"], "B") == ["Q?\nb", "Q?", "Q?\nA. a\nB. b"]
    # after a passage, the question line alone too: a rewrite often keeps only it
    stem = "By what means did the United States take possession of the Oregon Territory?"
    views = choice_views(f"A long passage.\nJohn L. O'Sullivan, 1839\n{stem}", ["war", "a treaty"], "B")
    assert f"{stem}\na treaty" in views and stem in views
    assert len(choice_views("A passage.\nWhich is true?", ["x", "y"], "A")) == 3  # a stem this short says little


def test_multiple_choice_items_are_compared_by_question_choice_and_lettered_choices(ctx):
    """Short items: a rephrase with its answer shares no n-gram with the question; the views
    (question + correct choice, question alone, question + lettered choices) find the rephrase
    with its answer, the rephrased question alone and the verbatim item, and map each to its
    item. The rephrase of an item outside the eval set, same subject, is not flagged."""
    items = _mmlu_dev("sociology", [2, 6, 8, 14])
    r = {row["test_index"]: row for row in items.iter_rows(named=True)}
    correct = lambda k: r[k]["choices"]["ABCD".index(r[k]["answer"])]  # noqa: E731
    lettered = "\n".join(f"{'ABCD'[k]}. {c}" for k, c in enumerate(r[8]["choices"]))
    train = pl.DataFrame(
        {
            "_id": ["tr:rephrase", "tr:question", "tr:verbatim", "tr:other"],
            "text": [
                f"{r[2]['rephrased_question']}\nAnswer: {correct(2)}",
                r[14]["rephrased_question"],
                f"{r[8]['question']}\n{lettered}\nAnswer: {r[8]['answer']}",
                f"{r[6]['rephrased_question']}\nAnswer: {correct(6)}",
            ],
        }
    )
    mmlu = items.filter(pl.col("test_index") != 6).select(
        pl.format("soc:{}", "test_index").alias("_id"), "question", "choices", "answer"
    )
    cfg = LeakageConfig(train_fields=["text"], eval_fields=["question"], eval_choices="choices", eval_answer="answer")
    m = leakage_check({"train": train, "mmlu": mmlu}, cfg, ctx).tables["matches"]
    assert dict(zip(m["train_id"], m["eval_id"], strict=True)) == {
        "tr:rephrase": "soc:2",
        "tr:question": "soc:14",
        "tr:verbatim": "soc:8",
    }


def test_a_shared_choice_block_is_not_a_shared_n_gram(ctx):
    """Two abstract-algebra items with the same lettered choices ("A. 1 B. 2 C. 3 D. 4"): the
    verbatim copy of one shares with the other only a 13-gram of one question word and the
    choice block. A shared n-gram may take at most ``CHOICE_NGRAM_WORDS`` of the block's words,
    so that is no match; the verbatim copy of the item itself still is."""
    from dataforge.text.views import CHOICE_NGRAM_WORDS, ngram_view

    assert ngram_view("Q is?\nA. 1\nB. 2\nC. 3\nD. 4", ["1", "2", "3", "4"]) == "Q is?\nA. 1 B. 2"
    assert CHOICE_NGRAM_WORDS == 4 and ngram_view("Q is?\n2", ["1", "2"]) == "Q is?\n2"  # other views as they are
    items = _mmlu_dev("abstract_algebra", [38, 72])
    r = {row["test_index"]: row for row in items.iter_rows(named=True)}
    assert r[38]["choices"] == r[72]["choices"] == ["1", "2", "3", "4"]
    verbatim = {k: f"{r[k]['question']}\n{lettered_choices(r[k]['choices'])}\nAnswer: {r[k]['answer']}" for k in r}
    train = pl.DataFrame({"_id": ["tr:other", "tr:own"], "text": [verbatim[72], verbatim[38]]})
    ev = items.filter(pl.col("test_index") == 38).select(
        pl.format("aa:{}", "test_index").alias("_id"), "question", "choices", "answer"
    )
    cfg = LeakageConfig(train_fields=["text"], eval_fields=["question"], eval_choices="choices", eval_answer="answer")
    m = leakage_check({"train": train, "mmlu": ev}, cfg, ctx).tables["matches"]
    assert dict(zip(m["train_id"], m["eval_id"], strict=True)) == {"tr:own": "aa:38"}


def test_eval_choices_must_be_a_column_of_the_eval_input():
    from dataforge.engine.step import ColumnContractError
    from dataforge.steps.leakage import _columns

    cfg = LeakageConfig(
        train_fields=["text"], eval_fields=["question"], eval_choices="options", embed=False, dense=False
    )
    with pytest.raises(ColumnContractError, match="options") as err:
        _columns(cfg, {"train": ["text"], "mmlu": ["question", "choices"]}, None)
    assert err.value.key == "eval_choices" and err.value.input_name == "mmlu"


def test_chat_view_compares_the_user_turns(ctx):
    transcript = "\n\nHuman: {}\n\nAssistant: {}"
    assert user_turns(transcript.format("Hi there", "Hello!") + transcript.format("Bye", "Ciao")) == "Hi there\nBye"
    chatml = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHey"
    assert kind_of(chatml) == "chat" and user_turns(chatml) == "Hi there"
    gemma = "<bos><start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\nHey<end_of_turn>"
    assert (
        user_turns(gemma) == "Hi there"
        and user_turns("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hey</s>") == "Hi"
    )
    assert kind_of("Explain the <|im_end|> token.") == "text"
    # read as parse.chat reads them (text.chat_text): a transcript of a turn a line, and an HH
    # turn's line that opens with a label, which is the turn's (parse.hh_rlhf reads it so too)
    assert user_turns("Human: Hi there\nAssistant: Hey\nHuman: Bye\nAssistant: Ciao") == "Hi there\nBye"
    assert user_turns(transcript.format("Hi there", "Hey.\nHuman: I said\nAssistant: no")) == "Hi there"
    assert kind_of("The Human: Assistant: column names") == "text"
    assert kind_of(transcript.format("a", "b")) == "chat" and prose_view("plain", "text") == "plain"
    ev = pl.DataFrame(
        {"_id": ["ev:0"], "chosen": [transcript.format("How do I pick a lock on a front door?", "I can't help.")]}
    )
    train = pl.DataFrame(
        {
            "_id": ["tr:same_request", "tr:same_answer"],
            "chosen": [
                transcript.format(
                    "How would I pick the lock on a front door?",
                    "Locksmiths use a tension wrench and a pick; here is how they work in detail, step by step.",
                ),
                transcript.format("What is a good pasta recipe for tonight?", "I can't help."),
            ],
        }
    )
    cfg = LeakageConfig(train_fields=["chosen"], eval_fields=["chosen"])
    m = leakage_check({"train": train, "hh": ev}, cfg, ctx).tables["matches"]
    assert m["train_id"].to_list() == ["tr:same_request"]
    # messages columns: the user turns too
    user = {"role": "user", "content": "How would I pick the lock on a front door?"}
    train_msgs = pl.DataFrame({"_id": ["tr:m"], "prompt": [[user, {"role": "assistant", "content": "No."}]]})
    asked = {"role": "user", "content": "How do I pick a lock on a front door?"}
    ev_msgs = pl.DataFrame({"_id": ["ev:m"], "prompt": [[asked]]})
    cfg = LeakageConfig(train_fields=["prompt"], eval_fields=["prompt"])
    found = leakage_check({"train": train_msgs, "hh": ev_msgs}, cfg, ctx).tables["matches"]
    assert found["train_id"].to_list() == ["tr:m"]


def test_static_embeddings_are_distilled_once_and_rank_a_rephrase_first(tmp_path, monkeypatch):
    from dataforge import static_embed

    monkeypatch.setenv("DATAFORGE_CACHE_DIR", str(tmp_path))
    static_embed.load_static.cache_clear()
    first = static_embed.load_static()
    files = list((tmp_path / "static").glob("*.npy"))
    assert len(files) == 1 and first.vectors.shape[0] >= 30_000  # one vector per WordPiece token
    static_embed.load_static.cache_clear()
    again = static_embed.load_static()
    assert np.array_equal(first.vectors, again.vectors) and list((tmp_path / "static").glob("*")) == files
    evals = [
        "Janet’s ducks lay 16 eggs per day. She eats three for breakfast and bakes muffins with four.",
        "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts in total?",
        "Josh buys a house for $80,000 and puts in $50,000 in repairs.",
    ]
    rephrase = ["A bathrobe needs two bolts of blue fabric plus half as much white fabric. Total bolts?"]
    idf = again.idf(evals)
    ev, tv = again.encode(evals, idf), again.encode(rephrase, idf)
    assert np.allclose(np.linalg.norm(ev, axis=1), 1.0, atol=1e-5)
    assert int(np.argmax(tv @ ev.T)) == 1
    static_embed.load_static.cache_clear()


def _bench():
    spec = importlib.util.spec_from_file_location("bench_leakage", REPO / "bench" / "leakage.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_leakage"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_bench_with_a_judge_reports_its_calls_against_a_local_server(tmp_path, scripted_model, capsys):
    """``bench/leakage.py --judge SPEC`` on a few MMLU development items, with a scripted judge on
    loopback (real HTTP and client): it is asked about undecided pairs, and its YES verdicts only
    add matches."""
    rows = [json.loads(line) for line in (REPHRASES / "mmlu_test_rephrased.dev.jsonl").read_text().splitlines()]
    (tmp_path / "mmlu_test_rephrased.dev.jsonl").write_text(
        "\n".join([json.dumps(r) for r in rows if r["subject"] == "sociology"][:12]) + "\n"
    )
    asked: list[str] = []

    def judge(messages):
        asked.append(messages[-1]["content"])
        return "[[YES]]"

    spec = scripted_model(judge)
    bench = _bench()
    judge_spec = f"openai:scripted@{spec['base_url']}"
    report = bench.main(["--data", str(tmp_path), "--domains", "mmlu", "--no-baselines", "--judge", judge_spec])
    out = capsys.readouterr().out
    assert "development figures" in out and "judge calls" in out and "dataforge + judge" in out
    mmlu = report["mmlu"]
    plain, judged = mmlu["dataforge"], mmlu["dataforge + judge"]
    assert asked, "the judge was never asked"
    for form, hits in plain["recall"].items():
        assert sum(judged["recall"][form]) >= sum(hits)


def test_bfloat16_embeddings_stay_within_a_few_thousandths_of_float32():
    """``embed_dtype: bfloat16`` (embed's ``dtype``) runs MiniLM under bfloat16 autocast: other
    numbers than float32 (the path ran), cosines on real text within 0.01 of them."""
    import numpy as np

    from dataforge.embed import embed
    from tests.conftest import GSM8K

    texts = pl.read_ndjson(GSM8K / "train.jsonl")["question"].head(48).to_list()
    full, half = embed(texts), embed(texts, dtype="bfloat16")
    assert full.dtype == half.dtype == np.float32
    assert not np.array_equal(full, half)
    assert np.abs(full @ full.T - half @ half.T).max() < 0.01
    assert np.allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize("native", [True, False])
def test_auto_embeddings_use_bfloat16_only_where_the_device_computes_it(native, monkeypatch):
    """``dtype="auto"`` (the leakage check's default) is bfloat16 on a device with native
    bfloat16, float32 elsewhere — the same vectors as asking for it."""
    import numpy as np

    import dataforge.embed
    from tests.conftest import GSM8K

    texts = pl.read_ndjson(GSM8K / "train.jsonl")["question"].head(16).to_list()
    monkeypatch.setattr(dataforge.embed, "native_bfloat16", lambda device_type: native)
    expected = dataforge.embed.embed(texts, dtype="bfloat16" if native else "float32")
    assert np.array_equal(dataforge.embed.embed(texts, dtype="auto"), expected)


def test_a_texts_embedding_does_not_depend_on_the_texts_embedded_with_it():
    """``embed`` pads each text to its own length bucket, so its vector is the same to the bit
    whether it is embedded with every text, with a few others, or alone (a step run on batches of
    rows needs that); padded to each batch's longest text, vectors moved by up to 1e-7."""
    import numpy as np

    from dataforge.embed import PAD_MULTIPLE, embed, load_model, padded_lengths
    from tests.conftest import GSM8K

    rows = pl.read_ndjson(GSM8K / "train.jsonl").head(90)
    texts = (rows["question"] + "\n" + rows["answer"]).to_list()[:60] + rows["question"].to_list()[60:]
    lengths = padded_lengths(load_model(None), texts)
    assert len(set(lengths.tolist())) >= 4 and (lengths % PAD_MULTIPLE == 0).all()
    together = embed(texts, batch_size=16)
    apart = np.concatenate([embed(texts[s : s + 7], batch_size=5) for s in range(0, len(texts), 7)])
    assert np.array_equal(together, apart)
    assert np.array_equal(embed(texts[::-1], batch_size=32)[::-1], together)
    assert np.array_equal(embed([texts[3]])[0], together[3])
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_a_limit_per_text_gives_each_text_the_vector_of_its_own_limit():
    """``embed(max_tokens=[…])`` reads each text to its own limit: its vector is the one a call
    with that limit alone gives, to the bit, whatever limits the texts batched with it have; a
    limit under a text's length changes its vector, one over it does not."""
    import numpy as np

    from dataforge.embed import embed, token_lengths
    from tests.conftest import GSM8K

    rows = pl.read_ndjson(GSM8K / "train.jsonl").head(24)
    texts = (rows["question"] + "\n" + rows["answer"]).to_list()
    limits = [48, 64, 96, 128] * 6
    mixed = embed(texts, batch_size=8, max_tokens=limits)
    for limit in sorted(set(limits)):
        at = [i for i, x in enumerate(limits) if x == limit]
        assert np.array_equal(mixed[at], embed([texts[i] for i in at], max_tokens=limit))
    full = token_lengths(texts, max_tokens=128)
    assert (token_lengths(texts, max_tokens=48) == np.minimum(full, 48)).all()
    short = [i for i, x in enumerate(limits) if x < full[i]]
    whole = [i for i, x in enumerate(limits) if x >= full[i]]
    assert short and whole
    alone = embed(texts, max_tokens=128)
    assert not np.isclose((mixed[short] * alone[short]).sum(axis=1), 1.0, atol=1e-4).any()
    assert np.array_equal(mixed[whole], alone[whole])
    with pytest.raises(ValueError, match="3 limits for 24 texts"):
        embed(texts, max_tokens=[64, 64, 64])


def test_static_vectors_of_train_rows_do_not_depend_on_the_rows_encoded_with_them():
    """The static model's IDF comes from a reference side (the eval items): a train row's vector
    is the same encoded with every row or alone."""
    import numpy as np

    from dataforge.static_embed import load_static
    from tests.conftest import GSM8K

    questions = pl.read_ndjson(GSM8K / "train.jsonl")["question"].head(50).to_list()
    model = load_static()
    idf = model.idf(questions[:20])
    together = model.encode(questions[20:], idf)
    assert np.array_equal(model.encode(questions[20:21], idf)[0], together[0])
    assert np.array_equal(model.encode(questions[49:19:-1], idf)[::-1], together)
    assert not np.array_equal(model.encode(questions[20:], model.idf(questions[20:])), together)  # the IDF counts


def test_bench_conversations_are_read_by_their_user_turns(ctx):
    """``bench/leakage.py``'s chat domain: rephrases planted as `messages` conversations (with the
    worked answer, the final answer, or after a system prompt) are found by their user turn alone,
    so the three forms give the same matches; the baselines' text holds every turn."""
    bench = _bench()
    case = bench.chat_cases(REPHRASES, "dev")[0]
    items = sorted({eid for _, eid in case.planted.values()})[:10]
    planted = [pid for pid, (_, eid) in case.planted.items() if eid in items]
    train = case.train.filter(pl.col("_id").is_in(planted) | pl.col("_id").is_in([f"clean:{i}" for i in range(40)]))
    system = train.filter(pl.col("_id").str.contains("system prompt"))["text"].to_list()
    assert all(t.startswith("system: You are") and "\nassistant: " in t for t in system)
    cfg = LeakageConfig(**case.options, action="flag")
    matches = leakage_check({"train": train.drop("text"), "eval": case.evals}, cfg, ctx).tables["matches"]
    found = dict(zip(matches["train_id"], matches["eval_id"], strict=True))
    per_form: dict[str, set[str]] = {}
    for pid in planted:
        form, eid = case.planted[pid]
        per_form.setdefault(form, set())
        if found.get(pid) == eid:
            per_form[form].add(eid)
    assert len(per_form) == 3 and len({frozenset(s) for s in per_form.values()}) == 1, per_form
    assert len(per_form["system prompt + user turn"]) >= 9
    assert not any(tid.startswith("clean:") for tid in found)
    # what the check compared: the user turn's content (as a chat format's text is read), not the
    # system prompt or the answer
    users = {
        r["_id"]: next(m["content"] for m in r["messages"] if m["role"] == "user") for r in train.iter_rows(named=True)
    }
    assert matches.height and all(
        t == users[tid] for tid, t in zip(matches["train_id"], matches["train_text"], strict=True)
    )


def _llama2(messages: list[dict]) -> str:
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    user = next(m["content"] for m in messages if m["role"] == "user")
    answer = next(m["content"] for m in messages if m["role"] == "assistant")
    head = f"<<SYS>>\n{system}\n<</SYS>>\n\n" if system else ""
    return f"<s>[INST] {head}{user} [/INST] {answer} </s>"


@pytest.mark.parametrize("render", ["_chatml", "_llama3", _llama2])
def test_conversations_written_out_in_a_chat_format_are_read_by_their_user_turns(ctx, render):
    """The bench's conversations as one text column in a chat format (an SFT ``text`` column with the
    template applied). They were read whole, system prompt first, so a rephrase after a system
    prompt went unseen: on the development half ChatML found 0.57 of them and Llama 3 0.10
    (messages: 0.98). Now the user turns are the view, as for messages and HH transcripts."""
    bench = _bench()
    render = getattr(bench, render) if isinstance(render, str) else render  # (the bench's own renderings)
    case = bench.chat_cases(REPHRASES, "dev")[0]
    items = sorted({eid for _, eid in case.planted.values()})[:10]
    planted = [pid for pid, (_, eid) in case.planted.items() if eid in items]
    train = case.train.filter(pl.col("_id").is_in(planted) | pl.col("_id").is_in([f"clean:{i}" for i in range(40)]))
    train = train.select("_id", pl.Series("text", [render(m) for m in train["messages"].to_list()]))
    cfg = LeakageConfig(**{**case.options, "train_fields": ["text"]}, action="flag")
    matches = leakage_check({"train": train, "eval": case.evals}, cfg, ctx).tables["matches"]
    found = dict(zip(matches["train_id"], matches["eval_id"], strict=True))
    behind_a_system_prompt = [pid for pid in planted if "system prompt" in pid]
    assert sum(found.get(pid) == case.planted[pid][1] for pid in behind_a_system_prompt) >= 9
    assert not any(tid.startswith("clean:") for tid in found)
    read = matches["train_text"].to_list()  # what the check compared: the request alone
    assert read and not any("patient math tutor" in t or "<|" in t or "[INST]" in t for t in read)


def test_a_conversations_stated_answer_is_compared_with_the_eval_answer(ctx):
    """Without a train answer column, the answer a conversation states ("#### N", "the answer is
    N", in any turn) is its answer: the same pizza frame with another answer ("Donna cut her pizza
    into 12 slices…", 4) is not GSM8K test item 396 ("Jenny is dividing up a pizza with 12
    slices…", 3), which the user turns alone matched."""
    from dataforge.steps.leakage import stated_answers
    from dataforge.text.fields import MESSAGES
    from tests.conftest import GSM8K

    train = pl.read_ndjson(GSM8K / "train.jsonl")
    donna = train.row(7082, named=True)

    def turns(user: str, assistant: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]

    rows = pl.DataFrame(
        {
            "_id": ["donna", "stated", "silent"],
            "messages": [
                turns(donna["question"], donna["answer"]),
                turns("What is 6 times 7?", "The answer is 42."),
                turns("Hi", "6 times 7 is 42"),
            ],
        },
        schema={"_id": pl.String, "messages": MESSAGES},
    )
    assert stated_answers(rows, ["messages"]) == ["4", "42.", None]
    test = pl.read_ndjson(GSM8K / "test.jsonl").with_row_index("i")
    evals = test.select(
        pl.format("te:{}", "i").alias("_id"), "question", pl.col("answer").str.extract(r"####\s*(\S+)").alias("answer")
    )
    cfg = LeakageConfig(train_fields=["messages"], eval_fields=["question"], eval_answer="answer", action="flag")
    check = lambda c: leakage_check({"train": rows.head(1), "eval": evals}, c, ctx).tables["matches"]  # noqa: E731
    matched = check(cfg.model_copy(update={"answers_from_text": False}))
    assert matched["eval_id"].to_list() == ["te:396"]  # the frame alone reads as the item
    assert check(cfg).is_empty()  # 4 is not 3


def test_a_rephrase_with_its_worked_answer_is_read_about_as_long_as_its_eval_item(ctx):
    """The transformer reads a train text to its gated eval item's length + ``train_tokens_margin``
    tokens: a rephrase of GSM8K test item 84 followed by its worked answer (a development rephrase;
    the bench plants it so) is a match, while read to ``max_tokens`` its worked answer dilutes the
    cosine under the floor."""
    from tests.conftest import GSM8K

    test = pl.read_ndjson(GSM8K / "test.jsonl").with_row_index("i")
    evals = test.select(pl.format("te:{}", "i").alias("_id"), "question")
    worked = test["answer"][84].replace("<<+8=8>>", "").replace("<<14/2=7>>", "").replace("<<22-7=15>>", "")
    rephrase = "A soccer team had 22 matches. The number of games they won exceeded the ones they lost by 8. "
    train = pl.DataFrame({"_id": ["soccer"], "text": [rephrase + "How many matches did they win?\n" + worked]})
    cfg = LeakageConfig(train_fields=["text"], eval_fields=["question"], action="flag")
    assert cfg.train_tokens_margin == 32
    matched = leakage_check({"train": train, "eval": evals}, cfg, ctx).tables["matches"]
    assert matched.select("eval_id", "detector").rows() == [("te:84", "embedding")]
    whole = cfg.model_copy(update={"train_tokens_margin": None})
    assert leakage_check({"train": train, "eval": evals}, whole, ctx).tables["matches"].is_empty()
