"""Graders on real data: every GSM8K test solution scores 1.0 against its own answer, perturbed
answers score as specified, and the TRL reward adapter gives the same numbers."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from dataforge.graders import (
    as_trl_reward,
    extract_answer,
    format_reward,
    language_consistency,
    length_reward,
    load_grader,
    math_answer,
)
from dataforge.text.reasoning import split_reasoning
from tests.conftest import GSM8K


@pytest.fixture(scope="module")
def gsm8k_test() -> list[dict]:
    rows = [json.loads(line) for line in (GSM8K / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 1319
    return rows


def final(row: dict) -> str:
    return row["answer"].rsplit("####", 1)[1].strip().replace(",", "")


def test_every_gsm8k_test_solution_scores_one_against_its_answer(gsm8k_test):
    scores = [math_answer(r["answer"], final(r)) for r in gsm8k_test]
    assert scores == [1.0] * 1319


def test_a_worked_solution_is_a_reference(gsm8k_test):
    """GSM8K's raw ``answer`` column (a worked solution ending "#### N") as the reference: its final
    answer is compared (every completion scored 0 against the whole solution text)."""
    for r in gsm8k_test:
        assert math_answer(f"The answer is {final(r)}.", r["answer"]) == 1.0
        assert math_answer(f"<answer>{int(final(r)) + 1}</answer>", r["answer"]) == 0.0
    assert math_answer("\\boxed{\\frac{1}{2}}", "so the probability is \\boxed{\\frac{1}{2}}") == 1.0
    assert math_answer("#### 5", "5 apples and 3 pears") == 0.0  # no marked answer: the text itself


def test_no_reference_is_no_grade():
    """Without a reference answer there is nothing to check: None (a null score), not 0 (a wrong
    answer); the TRL reward passes None on, which GRPO leaves out of the reward."""
    assert math_answer("#### 5", None) is None
    assert math_answer("#### 5", "  ") is None
    assert math_answer("no answer stated", None) is None
    # a NaN is a float column's missing value: it was a reference, so "#### nan" scored 1.0
    assert math_answer("#### nan", float("nan")) is None
    assert math_answer("#### 5", float("nan")) is None
    assert math_answer("#### 72", 72.0) == 1.0
    reward = as_trl_reward(math_answer)
    assert reward(["p"] * 3, ["#### 5", "#### 5", "#### 6"], answer=["5", None, "5"]) == [1.0, None, 0.0]
    assert as_trl_reward(lambda completion: float("nan"))(["p"], ["x"]) == [None]  # NaN: ungraded too


def test_every_gsm8k_answer_in_reasoning_format_scores_one(gsm8k_test):
    for r in gsm8k_test:
        completion = f"<think>\n{r['answer'].rsplit('####', 1)[0]}\n</think>\n<answer>{final(r)}</answer>"
        assert math_answer(completion, final(r)) == 1.0
        assert format_reward(completion) == 1.0


@pytest.mark.parametrize("factor", [1.005, 1.05, 0.93, 1.2, 0.75, 1.5, 3.0])
def test_perturbed_gsm8k_answers_score_zero_by_default(gsm8k_test, factor):
    checked = 0
    for r in gsm8k_test:
        ref = float(final(r))
        if ref == 0:
            continue
        stated = ref * factor
        assert math_answer(f"<answer>{stated!r}</answer>", final(r)) == 0.0, (stated, ref)
        checked += 1
    assert checked > 1300


@pytest.mark.parametrize(
    ("factor", "expected"),
    [(1.0, 1.0), (1.005, 1.0), (1.05, 0.8), (0.93, 0.8), (1.2, 0.5), (0.75, 0.5), (1.5, 0.0), (3.0, 0.0)],
)
def test_partial_credit_is_an_explicit_reward_shaping_option(gsm8k_test, factor, expected):
    for r in gsm8k_test[:200]:
        ref = float(final(r))
        if ref == 0:
            continue
        stated = ref * factor
        assert math_answer(f"<answer>{stated!r}</answer>", final(r), partial_credit=True) == expected, (stated, ref)


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        ("<answer>151</answer>", "150", 0.0),  # within 1 %: was 1.0
        ("<answer>1005</answer>", "1000", 0.0),  # within 1 %: was 1.0
        ("The answer is not 6 but 5", "6", 0.0),  # a sentence, not an answer
        ("The answer is not 6 but 5", "5", 0.0),
        ("<answer>\\frac{1}{2}</answer>", "0.5", 1.0),  # LaTeX through math-verify, compared exactly
        ("<answer>0.5</answer>", "\\frac{1}{2}", 1.0),
        ("<answer>1/3</answer>", "0.3333333", 0.0),  # no rounding
        ("<answer>x^2+1</answer>", "1+x^2", 1.0),
        ("thus \\boxed{\\frac{3}{4}}", "0.75", 1.0),
        ("<answer>1,000.00</answer>", "1000", 1.0),
        ("<answer>$18</answer>", "18", 1.0),
        ("<answer>18 dollars</answer>", "18", 1.0),
        ("<answer>18 or 20</answer>", "18", 0.0),
        ("<answer>5 1/2</answer>", "5.5", 1.0),  # a mixed number is its value (was 0.0)
        ("The answer is 3 1/3 cups.", "10/3", 1.0),
        ("<answer>-2 3/4</answer>", "-2.75", 1.0),
        ("<answer>5 1/2</answer>", "51/2", 0.0),
        ("<answer>5 1/2</answer>", "6", 0.0),
        ("<answer>5 6/3</answer>", "7", 0.0),  # no proper fraction: two numbers, never guessed
        ("<answer>B</answer>", "b", 1.0),
        ("<answer>1.5e2</answer>", "150", 1.0),  # scientific notation, read exactly (was 0.0)
        ("<answer>1.5e+02</answer>", "150", 1.0),
        ("<answer>1.51e2</answer>", "150", 0.0),
        ("<answer>2.5e-1</answer>", "1/4", 1.0),
        ("<answer>-1.5E2</answer>", "150", 0.0),
        ("<answer>e2</answer>", "100", 0.0),  # no digits before the exponent: not a number
        ("<answer>\u22125</answer>", "-5", 1.0),  # the typeset minus sign (was 0.0)
        ("<answer>-5</answer>", "\u22125", 1.0),
        ("<answer>\u22125</answer>", "5", 0.0),
        ("\\boxed{5\\%}", "5", 1.0),  # LaTeX's percent sign (was 0.0: read as "5\\")
        ("\\boxed{5\\%}", "50", 0.0),
        ("The answer is **5**.", "5", 1.0),  # Markdown emphasis, as chat models write it (was 0.0)
        ("#### **18**", "18", 1.0),
        ("<answer>**B**</answer>", "b", 1.0),
        ("The answer is **5**", "25", 0.0),
        ("<answer>**5** or **6**</answer>", "5", 0.0),  # still two answers, not one
        ("\\boxed{18\\text{ dollars}}", "18", 1.0),  # a unit in \text{} (was 0.0)
        ("\\boxed{5 \\text{ apples}}", "5", 1.0),
        ("\\boxed{5 \\text{ apples}}", "6", 0.0),
        # the Minerva / lm-eval MATH format: the answer in inline math, then a closing sentence (was 0.0)
        ("Final Answer: The final answer is $150$. I hope it is correct.", "150", 1.0),
        ("Final Answer: The final answer is $151$. I hope it is correct.", "150", 0.0),
        ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "0.5", 1.0),
        ("The final answer is \\(150\\).", "150", 1.0),
        ("The answer is $5$ or $6$.", "5", 0.0),
        ("The answer is $5$. Or maybe $6$.", "5", 0.0),  # a sentence after it that is not the trailer
        # an "Answer:" label opening a line, as chat models write it (was 0.0: no answer found)
        ("Work: 3 * 50 = 150\nAnswer: 150", "150", 1.0),
        ("Final answer: 150", "150", 1.0),
        ("**Answer:** 150", "150", 1.0),
        ("**Final Answer**: $150$", "150", 1.0),
        ("**Answer: 150**", "150", 1.0),
        ("Answer: 151", "150", 0.0),
        ("Answer: 150\nWait, that is wrong.\nAnswer: 151", "150", 0.0),  # the last statement counts
        ("Answer: 150 apples and 3 pears", "150", 0.0),
        ("My answer: 150", "150", 0.0),  # not a label opening the line
        # nor after a sentence's end: the retraction "… Answer: 151" was missed and 150 scored 1
        ("Answer: 150\nWait, that is wrong. Answer: 151", "150", 0.0),
        ("Answer: 150\nWait, that is wrong. Answer: 151", "151", 1.0),
        ("So it is 150 in all. Final answer: 150", "150", 1.0),
        # a set in LaTeX braces (was compared as text: the spacing differed, 0.0)
        ("\\boxed{\\{2,3\\}}", "\\{2, 3\\}", 1.0),
        ("\\boxed{\\{3, 2\\}}", "\\{2, 3\\}", 1.0),
        ("\\boxed{\\{2,4\\}}", "\\{2, 3\\}", 0.0),
        ("\\boxed{3}", "\\{2, 3\\}", 0.0),
        # a word or letter in a text command is the word (was 0.0)
        ("\\boxed{\\text{yes}}", "yes", 1.0),
        ("\\boxed{\\text{no}}", "yes", 0.0),
        ("\\boxed{\\textbf{(B)}}", "B", 1.0),
        ("\\boxed{\\textbf{(B)}}", "C", 0.0),
        ("The answer is (B).", "B", 1.0),  # a choice letter in parentheses (was 0.0)
        ("The answer is (B).", "C", 0.0),
        ("The answer is (B) 42.", "B", 0.0),  # letter and choice text: not one answer
        ("\\boxed{150°}", "150", 1.0),  # the degree sign, as "150^\\circ" already was (was 0.0)
        ("\\boxed{150°}", "151", 0.0),
        ("\\boxed{1\\,500}", "1500", 1.0),  # LaTeX's thin space between thousands (was 0.0)
        ("\\boxed{12\\,34}", "1234", 0.0),  # not groups of three: not a separator
        ("\\boxed{1\\,5000}", "15000", 0.0),
        ("zq 150 xv 7 lorem 3.2 ipsum 150", "150", 0.0),  # pure noise: no stated answer
        ("I think 150 is right, maybe", "150", 0.0),  # no last-number guess by default
        ("<think>so it is 150</think>", "150", 0.0),  # reasoning format without <answer>: strict
        # DeepSeek-R1 / Qwen3: think, then the answer outside the tags (was 0.0: held to <answer>)
        ("<think>\n3 * 50 = 150\n</think>\n\n**Final Answer**\n\\[\n\\boxed{150}\n\\]", "150", 1.0),
        ("3 * 50 = 150\n</think>\n\nSo the answer is \\boxed{150}.", "150", 1.0),  # template opened <think>
        ("<think>\\boxed{150}</think>\nThe answer is 151.", "150", 0.0),  # never read inside the thinking
        ("<think>\\boxed{150}</think>\nThe answer is 151.", "151", 1.0),
        ("<think>3 * 50 is 150, so the answer is 150", "150", 0.0),  # the thinking never closed
        ("<think>\\boxed{150}</think>\n<answer>", "150", 0.0),  # answer tags: held to them
        # a number in inline math with its unit after it, and a unit with its power (were 0.0)
        ("The answer is $150$ dollars.", "150", 1.0),
        ("The answer is $150$ dollars.", "151", 0.0),
        ("The answer is $150$ and $151$.", "150", 0.0),
        ("\\boxed{150\\text{ cm}^2}", "150", 1.0),
        ("\\boxed{150 \\text{ m}^{3}}", "150", 1.0),
        ("The area is 150 cm². The answer is 150 cm².", "150", 1.0),
        ("\\boxed{150\\text{ cm}^2}", "1500", 0.0),
        ("\\boxed{x^2}", "2", 0.0),
    ],
)
def test_math_is_exact(completion, reference, expected):
    assert math_answer(completion, reference) == expected


def test_answer_extraction_forms():
    assert extract_answer("so <answer> 42 </answer>") == "42"
    assert extract_answer("work\n#### 1,234") == "1,234"
    assert extract_answer(r"thus \boxed{7}") == "7"
    assert extract_answer(r"thus \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert extract_answer("The answer is: 12 apples") == "12 apples"
    assert extract_answer("Answer: 7\nsome words\nThe answer is 8") == "8"  # the later statement
    assert extract_answer("The answer is 8.\n**Final Answer:** 9") == "9"
    assert extract_answer("Final Answer: The final answer is $3$. I hope it is correct.", "answer_is") == "$3$."
    assert extract_answer("3 then 5 then 8") is None
    assert extract_answer("3 then 5 then 8", "last_number") == "8"
    assert extract_answer("#### 4 and \\boxed{5}", "boxed") == "5"
    assert extract_answer("no tag #### 4", "answer_tag") is None
    assert extract_answer("no numbers here") is None
    with pytest.raises(ValueError, match="unknown extract"):
        extract_answer("x", "nearest")
    assert math_answer("The answer is $1,200.", "1200") == 1.0
    assert math_answer("no answer", "5") == 0.0
    assert math_answer("<answer>0</answer>", "0") == 1.0
    assert math_answer("<answer>1</answer>", "0") == 0.0
    assert math_answer(["ignored", {"role": "assistant", "content": "#### 9"}], "9") == 1.0
    assert math_answer("it is 8", "8", extract="last_number") == 1.0


def test_format_reward_needs_both_tags_in_order():
    assert format_reward("<think>a</think><answer>b</answer>") == 1.0
    assert format_reward("<answer>b</answer><think>a</think>") == 0.0
    assert format_reward("<think>a</think>") == 0.0
    assert format_reward("prefix <think>a</think><answer>b</answer>") == 0.0
    # exactly one block of each: a repeated tag is not the format (the lazy pattern matched them)
    assert format_reward("<think>a</think><answer>1</answer><answer>2</answer>") == 0.0
    assert format_reward("<think>a</think>b</think><answer>1</answer>") == 0.0
    assert format_reward("<think>a<think>b</think><answer>1</answer>") == 0.0
    assert format_reward("<think>a</think><answer><answer>1</answer>") == 0.0
    assert format_reward("\n<think>\nwork\n</think>\n<answer>1</answer>\n") == 1.0
    assert format_reward("<think></think><answer>1</answer>") == 1.0  # an empty think block is still the format
    # a blank answer block states no answer: a format reward for it would teach a policy to answer nothing
    assert format_reward("<think>work</think><answer></answer>") == 0.0
    assert format_reward("<think>work</think><answer> \n </answer>") == 0.0
    # generate's think / stated_answer columns read the same: no stated answer, not a blank one
    assert split_reasoning("<think>work</think><answer> </answer>") == (None, None)
    assert split_reasoning("<think>\nwork\n</think>\n<answer> 5 </answer>") == ("work", "5")


def test_language_and_length():
    assert language_consistency("All English here.") == 1.0
    assert language_consistency("Привет мир") == 0.0
    assert language_consistency("Привет мир", script="cyrillic") == 1.0
    assert language_consistency("12 + 3") == 1.0
    # a blank completion is not graded (it scored 1.0: a GRPO policy was paid for saying nothing)
    assert language_consistency("") is None
    assert language_consistency(" \n ") is None
    assert language_consistency([{"role": "assistant", "content": ""}]) is None
    # a null content (an assistant turn that only calls a tool) is no text: it was graded as the word "None"
    assert language_consistency([{"role": "assistant", "content": None}]) is None
    assert math_answer([{"role": "assistant", "content": None}], "None") == 0.0
    with pytest.raises(ValueError, match="unknown script"):
        language_consistency("x", script="klingon")
    assert length_reward("a b c", min_words=2, max_words=4) == 1.0
    assert length_reward("a b c d e f", max_words=4) == 0.5
    assert length_reward("a", min_words=4) == 0.0
    assert length_reward("a b c", min_words=4) == 0.5
    # a blank completion is not graded either (it scored 1.0 under a bare max_words: brevity paid for nothing)
    assert length_reward("", max_words=50) is None
    assert length_reward("  ", min_words=3) is None
    assert length_reward([{"role": "assistant", "content": None}], max_words=50) is None


def test_user_grader_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_graders.py").write_text(
        textwrap.dedent(
            """
            def mentions(completion, keyword):
                return 1.0 if keyword in completion else 0.0
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = load_grader("my_graders:mentions")
    assert fn("a cat", keyword="cat") == 1.0
    with pytest.raises(ValueError, match="cannot import grader"):
        load_grader("my_graders:absent")
    with pytest.raises(ValueError, match="unknown grader"):
        load_grader("nonsense")
    sys.modules.pop("my_graders", None)


def test_trl_reward_adapter_matches_the_grader(gsm8k_test):
    reward = as_trl_reward(math_answer, columns={"answer": "final_answer"})
    rows = gsm8k_test[:20]
    completions = [[{"role": "assistant", "content": r["answer"]}] for r in rows]
    got = reward(prompts=[None] * 20, completions=completions, final_answer=[final(r) for r in rows])
    assert got == [1.0] * 20
    assert reward.__name__ == "math_answer"
    wrong = reward(prompts=[None], completions=["#### 99999"], final_answer=["1"])
    assert wrong == [0.0]
    length = as_trl_reward(length_reward, max_words=2)
    assert length(prompts=[None, None], completions=["a b", "a b c d"]) == [1.0, 0.0]
