"""verify, filter, score.reward_model, score.judge, rollout and preference.pairs as functions."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
from pydantic import ValidationError

from dataforge.engine.step import ColumnContractError, PlanInfo
from dataforge.errors import DataError, RecipeError
from dataforge.llm.client import ModelPool
from dataforge.steps.preference import (
    PairsConfig,
    ResponsesConfig,
    RmPairsConfig,
    preference_pairs,
    preference_responses,
    rm_pairs,
)
from dataforge.steps.rollout import RolloutConfig, pass_at_k, rollout
from dataforge.steps.score import (
    JudgeConfig,
    RewardModelConfig,
    parse_judge_score,
    score_judge,
    score_reward_model,
)
from dataforge.steps.verify import FilterConfig, VerifyConfig, _verify_columns, score_filter, verify
from tests.conftest import make_ctx

SOLUTIONS = pl.DataFrame(
    {
        "_id": ["s:0", "s:1", "s:2", "s:3"],
        "_parent_id": ["q:0", "q:0", "q:1", "q:1"],
        "prompt": ["2+2?", "2+2?", "10*10?", "10*10?"],
        "completion": [
            "<think>two and two</think><answer>4</answer>",
            "the answer is 5",
            "<think>ten tens</think><answer>100</answer>",
            "#### 120",
        ],
        "final_answer": ["4", "4", "100", "100"],
    }
)


def test_verify_adds_scores_and_a_weighted_reward(ctx):
    cfg = VerifyConfig(
        graders=[{"name": "math", "inputs": {"answer": "final_answer"}}, {"name": "format"}],
        weights={"math": 1.0, "format": 0.5},
    )
    out = verify({"data": SOLUTIONS}, cfg, ctx).tables["data"]
    assert out["score_math"].to_list() == [1.0, 0.0, 1.0, 0.0]  # 5 vs 4, 120 vs 100: wrong, not "near"
    assert out["score_format"].to_list() == [1.0, 0.0, 1.0, 0.0]
    assert out["reward"].to_list() == [1.5, 0.0, 1.5, 0.0]
    shaped = VerifyConfig(
        graders=[{"name": "math", "inputs": {"answer": "final_answer"}, "options": {"partial_credit": True}}]
    )
    assert verify({"data": SOLUTIONS}, shaped, ctx).tables["data"]["score_math"].to_list() == [1.0, 0.5, 1.0, 0.5]


def test_one_grader_listed_twice_writes_both_columns_and_is_weighted_by_column(ctx):
    """math with and without partial credit, each in its own column: the first one's scores were
    lost (only the last column written); a weight names a score column, since the name is ambiguous."""
    strict = {"name": "math", "inputs": {"answer": "final_answer"}}
    shaped = {**strict, "options": {"partial_credit": True}, "column": "score_math_shaped"}
    cfg = VerifyConfig(graders=[strict, shaped], weights={"score_math": 1.0, "score_math_shaped": 0.5})
    out = verify({"data": SOLUTIONS}, cfg, ctx).tables["data"]
    assert out["score_math"].to_list() == [1.0, 0.0, 1.0, 0.0]
    assert out["score_math_shaped"].to_list() == [1.0, 0.5, 1.0, 0.5]
    assert out["reward"].to_list() == [1.5, 0.25, 1.5, 0.25]
    assert _verify_columns(cfg, list(SOLUTIONS.columns), PlanInfo(base_dir=".", step="v"))[-3:] == [
        "score_math",
        "score_math_shaped",
        "reward",
    ]
    with pytest.raises(ValidationError, match="grader 'math', which is listed twice: name its score column"):
        VerifyConfig(graders=[strict, shaped], weights={"math": 1.0})


def test_a_row_without_a_reference_is_not_graded_wrong(ctx):
    """A null or blank reference answer gives a null score and reward (0 called the answer wrong),
    so the filter drops the row as missing, not as a wrong answer."""
    df = SOLUTIONS.with_columns(pl.Series("final_answer", ["4", None, " ", "100"]))
    cfg = VerifyConfig(
        graders=[{"name": "math", "inputs": {"answer": "final_answer"}}, {"name": "format"}],
        weights={"math": 1.0, "format": 0.5},
    )
    out = verify({"data": df}, cfg, ctx).tables["data"]
    assert out["score_math"].to_list() == [1.0, None, None, 0.0]
    assert out["score_format"].to_list() == [1.0, 0.0, 1.0, 0.0]
    assert out["reward"].to_list() == [1.5, None, None, 0.0]
    res = score_filter({"data": out}, FilterConfig(column="score_math", min=1.0, reason="verifier:wrong_answer"), ctx)
    ev = pl.concat(res.events).sort("row_id")
    assert ev.select("row_id", "reason").rows() == [
        ("s:1", "verifier:wrong_answer:missing"),
        ("s:2", "verifier:wrong_answer:missing"),
        ("s:3", "verifier:wrong_answer"),
    ]


def test_verify_checks_grader_inputs_at_plan_time():
    info = PlanInfo(base_dir=".", step="v")
    cols = list(SOLUTIONS.columns)
    with pytest.raises(ColumnContractError, match="'answer'"):
        _verify_columns(VerifyConfig(graders=[{"name": "math"}]), cols, info)
    with pytest.raises(RecipeError, match="takes no parameter max_words"):
        _verify_columns(VerifyConfig(graders=[{"name": "format", "options": {"max_words": 3}}]), cols, info)
    bad_extract = {"name": "math", "inputs": {"answer": "final_answer"}, "options": {"extract": "nearest"}}
    with pytest.raises(RecipeError, match="extract 'nearest' is not one of auto"):
        _verify_columns(VerifyConfig(graders=[bad_extract]), cols, info)
    with pytest.raises(RecipeError, match="unknown grader"):
        _verify_columns(VerifyConfig(graders=[{"name": "nope"}]), cols, info)
    with pytest.raises(ValidationError, match="weights name graders"):
        VerifyConfig(graders=[{"name": "format"}], weights={"math": 1})


def test_filter_drops_with_reason_and_score(ctx):
    df = SOLUTIONS.with_columns(pl.Series("score", [1.0, 0.8, None, 0.5]))
    res = score_filter({"data": df}, FilterConfig(column="score", min=1.0, reason="verifier:wrong_answer"), ctx)
    assert res.tables["data"]["_id"].to_list() == ["s:0"]
    ev = pl.concat(res.events).sort("row_id")
    assert ev.select("row_id", "reason", "score").rows() == [
        ("s:1", "verifier:wrong_answer", 0.8),
        ("s:2", "verifier:wrong_answer:missing", None),
        ("s:3", "verifier:wrong_answer", 0.5),
    ]
    with pytest.raises(ValidationError, match="give 'min', 'max'"):
        FilterConfig(column="score")


@pytest.mark.parametrize("bounds", [{"min": 1.0}, {"max": 0.5}, {"min": 0.0, "max": 1.0}])
def test_filter_drops_a_nan_score_as_missing(ctx, bounds):
    """polars orders NaN above every number: ``min: 1.0`` kept a NaN score as if verified."""
    df = SOLUTIONS.with_columns(pl.Series("score", [float("nan"), 0.5, 1.0, None]))
    res = score_filter({"data": df}, FilterConfig(column="score", reason="check", **bounds), ctx)
    assert "s:0" not in res.tables["data"]["_id"].to_list()
    ev = pl.concat(res.events).sort("row_id")
    assert ev.filter(pl.col("row_id") == "s:0")["reason"].to_list() == ["check:missing"]


def test_rollout_group_statistics_and_pass_at_k(ctx):
    df = SOLUTIONS.with_columns(pl.Series("reward", [1.0, 0.0, 1.0, 1.0]))
    res = rollout({"data": df}, RolloutConfig(k=[1, 2]), ctx)
    data, groups = res.tables["data"], res.tables["groups"]
    q0 = data.filter(pl.col("group_id") == "q:0")
    assert q0["group_mean"].to_list() == [0.5, 0.5] and q0["group_std"].to_list() == pytest.approx([0.5**0.5] * 2)
    assert data.filter(pl.col("group_id") == "q:1")["advantage"].to_list() == [0.0, 0.0]
    # the advantages TRL's GRPOTrainer computes from these rewards (its own nanstd: Bessel-corrected;
    # the population std gave 0.9998 for 0.7070)
    import torch
    from trl.trainer.utils import nanstd

    rewards = torch.tensor(df["reward"].to_list()).view(-1, 2)  # two samples per prompt, prompts in order
    trl_advantages = (rewards - rewards.mean(dim=1, keepdim=True)) / (nanstd(rewards, dim=1, keepdim=True) + 1e-4)
    assert data["advantage"].to_list() == pytest.approx(trl_advantages.flatten().tolist(), rel=1e-6)
    assert groups.sort("_id").select("_id", "n", "correct", "pass@1", "pass@2").rows() == [
        ("q:0", 2, 1, 0.5, 1.0),
        ("q:1", 2, 2, 1.0, 1.0),
    ]
    # a sample no grader could grade (null reward) is no sample: not a wrong one in pass@k
    rewards = pl.Series("reward", [1.0, None, 1.0, 0.0])
    ungraded = rollout({"data": df.with_columns(rewards)}, RolloutConfig(k=[1]), ctx)
    as_nan = rollout({"data": df.with_columns(rewards.fill_null(float("nan")))}, RolloutConfig(k=[1]), ctx)
    assert as_nan.tables["groups"].equals(ungraded.tables["groups"])  # NaN: ungraded too
    assert ungraded.tables["groups"].sort("_id").select("_id", "n", "correct", "pass@1").rows() == [
        ("q:0", 1, 1, 1.0),
        ("q:1", 2, 1, 0.5),
    ]
    q0 = ungraded.tables["data"].filter(pl.col("group_id") == "q:0")
    assert q0["group_size"].to_list() == [1, 1] and q0["advantage"].to_list() == [None, None]  # a group of one
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 0, 2) == 0.0 and pass_at_k(3, 1, 4) is None


def test_rollout_rows_without_a_group_are_groups_of_their_own(ctx):
    """Samples with no prompt to group by (a null or blank group) are not compared with each other:
    they were one group, so samples of different prompts shared a mean and advantages."""
    df = pl.DataFrame(
        {
            "_id": ["s:0", "s:1", "s:2", "s:3", "s:4"],
            "_parent_id": ["q:0", "q:0", None, " ", None],
            "prompt": ["2+2?", "2+2?", "3+3?", "4+4?", "5+5?"],
            "completion": ["4", "5", "6", "8", "9"],
            "reward": [1.0, 0.0, 1.0, 1.0, 0.0],
        }
    )
    res = rollout({"data": df}, RolloutConfig(k=[1]), ctx)
    data = res.tables["data"]
    assert data["group_id"].to_list() == ["q:0", "q:0", "s:2", "s:3", "s:4"]
    assert data["group_size"].to_list() == [2, 2, 1, 1, 1]
    assert data["advantage"].to_list()[2:] == [None, None, None]  # a group of one: nothing to compare with
    assert res.tables["groups"].select("_id", "n", "pass@1").rows() == [
        ("q:0", 2, 0.5),
        ("s:2", 1, 1.0),
        ("s:3", 1, 1.0),
        ("s:4", 1, 0.0),
    ]
    # a number group column is read as text, ids included
    numbered = df.with_columns(pl.Series("_parent_id", [7, 7, None, None, None]))
    assert rollout({"data": numbered}, RolloutConfig(), ctx).tables["groups"]["_id"].to_list() == [
        "7",
        "s:2",
        "s:3",
        "s:4",
    ]
    assert not len(pl.concat(res.events))  # nothing flagged: every group holds one prompt
    # a group whose rows hold different prompts (a group column that is not the prompt's): each row alone
    mixed = df.with_columns(pl.Series("_parent_id", ["q:0", "q:0", "q:9", "q:9", None]))
    res = rollout({"data": mixed}, RolloutConfig(), ctx)
    assert res.tables["data"]["group_id"].to_list() == ["q:0", "q:0", "s:2", "s:3", "s:4"]
    assert res.tables["data"]["advantage"].to_list()[2:] == [None, None, None]
    assert pl.concat(res.events).select("row_id", "reason").rows() == [
        ("s:2", "rollout:prompts_differ"),
        ("s:3", "rollout:prompts_differ"),
    ]
    with pytest.raises(DataError, match="'group' column 'prompt' is List"):
        messages = df.with_columns(pl.Series("prompt", [[{"role": "user", "content": p}] for p in df["prompt"]]))
        rollout({"data": messages}, RolloutConfig(group="prompt"), ctx)


@pytest.mark.parametrize("k, message", [([0], "1 or more"), ([-2], "1 or more"), ([1, 4, 1], "twice")])
def test_rollout_k_is_a_list_of_distinct_sample_counts(k, message):
    with pytest.raises(ValidationError, match=message):
        RolloutConfig(k=k)
    assert pass_at_k(4, 2, 2) == pytest.approx(1 - math.comb(2, 2) / math.comb(4, 2))


def test_reward_model_scores_every_pair(tiny_rm, ctx):
    out = score_reward_model({"data": SOLUTIONS}, RewardModelConfig(reward_model=str(tiny_rm), device="cpu"), ctx)
    scores = out.tables["data"]["score_rm"].to_list()
    assert len(scores) == 4 and all(math.isfinite(s) for s in scores)
    assert len(set(scores)) > 1  # different texts, different scores


def test_a_conversation_over_max_length_keeps_its_response_and_is_flagged(tiny_rm, ctx):
    """Cut from the right, a long conversation lost its response: every response to it got the
    prompt's score. The start of the prompt goes instead, and the row is flagged."""
    prompt = "Tell me about the history of the city. " * 20
    df = pl.DataFrame(
        {
            "_id": ["r:0", "r:1", "r:2"],
            "prompt": [prompt, prompt, "Hi"],
            "completion": ["It was founded by traders.", "I would rather not say anything.", "Hello!"],
        }
    )
    res = score_reward_model({"data": df}, RewardModelConfig(reward_model=str(tiny_rm), max_length=32), ctx)
    scores = res.tables["data"]["score_rm"].to_list()
    assert scores[0] != pytest.approx(scores[1], abs=1e-6)  # the responses are read
    flagged = pl.concat(res.events)
    assert flagged.select("row_id", "action", "reason").rows() == [
        ("r:0", "flagged", "score:truncated"),
        ("r:1", "flagged", "score:truncated"),
    ]
    assert (flagged["score"] > 32).all()
    whole = score_reward_model({"data": df[2:]}, RewardModelConfig(reward_model=str(tiny_rm)), ctx)
    assert whole.tables["data"]["score_rm"][0] == pytest.approx(scores[2], abs=1e-5) and not len(
        pl.concat(whole.events)
    )


def test_a_reward_model_without_a_pad_token_in_its_config_scores_batches(tiny_rm, ctx, tmp_path):
    """Many reward models name no pad token in their config: transformers then refuses a batch of
    several rows (it finds each row's last token by the padding). The step tells the model the
    tokenizer's pad token; a row's score does not depend on the rows batched with it."""
    import json
    import shutil

    model = shutil.copytree(tiny_rm, tmp_path / "rm-no-pad")
    config = json.loads((model / "config.json").read_text())
    config["pad_token_id"] = None
    (model / "config.json").write_text(json.dumps(config))
    batched, alone = (
        score_reward_model({"data": SOLUTIONS}, RewardModelConfig(reward_model=str(model), batch_size=n), ctx)
        .tables["data"]["score_rm"]
        .to_list()
        for n in (4, 1)
    )
    assert batched == pytest.approx(alone, abs=1e-5)


def test_judge_score_parsing():
    assert parse_judge_score("Reasoning… Score: 7", 1, 10) == 7.0
    assert parse_judge_score("[[8.5]]", 1, 10) == 8.5
    assert parse_judge_score(" 9 ", 1, 10) == 9.0
    assert parse_judge_score("6/10", 1, 10) == 6.0
    assert parse_judge_score("Score: 11", 1, 10) is None
    assert parse_judge_score("I like it", 1, 10) is None
    # a score out of another number is on another scale: "4/5" on a 1-10 rubric means 8 (it read 4)
    assert parse_judge_score("Score: 4/5", 1, 10) is None
    assert parse_judge_score("Score: 4 out of 5", 1, 10) is None
    assert parse_judge_score("[[4/5]]", 1, 10) is None
    assert parse_judge_score("Score: 4/5", 1, 5) == 4.0
    assert parse_judge_score("Score: 8 out of 10", 1, 10) == 8.0


def test_judge_records_unparseable_answers(tiny_lm, tmp_path):
    ctx = make_ctx(tmp_path)
    ctx.llm = ModelPool(tmp_path / "llm.sqlite")
    cfg = JudgeConfig(
        model={"backend": "transformers", "model": str(tiny_lm), "device": "cpu"},
        template="Rate 1-10. Q: {{ prompt }} A: {{ completion }}. Reply 'Score: N'.",
        max_tokens=6,
    )
    res = score_judge({"data": SOLUTIONS}, cfg, ctx)
    out = res.tables["data"]
    assert out.height == 4 and out["score_judge_text"].null_count() == 0
    ev = pl.concat(res.events)
    unparsed = out.filter(pl.col("score_judge").is_null())["_id"].to_list()
    assert sorted(ev["row_id"].to_list()) == sorted(unparsed)  # the random model rarely states a score
    assert set(ev["reason"]) <= {"judge:unparseable"}
    for d in ev["detail_json"]:
        assert "answer" in json.loads(d)
    with pytest.raises(ValidationError, match="rubric 'template'"):
        JudgeConfig(model=cfg.model, prompt="prompt")
    ctx.llm.close()


def test_a_rubric_that_prints_a_messages_column_sends_its_text(tmp_path, scripted_model):
    """{{ prompt }} over a messages column printed a Python list of dicts into the judge's prompt
    ("[{'role': 'user', 'content': …}]"); it is the conversation's text, and still a list to loop."""
    ctx = make_ctx(tmp_path)
    ctx.llm = ModelPool(tmp_path / "llm.sqlite")
    asked: list[str] = []
    model = scripted_model(lambda m: asked.append(m[-1]["content"]) or "Score: 7")
    turns = [("user", "Hi"), ("assistant", "Hello!"), ("user", "How do I pick a lock?")]
    df = pl.DataFrame(
        {
            "_id": ["c:0"],
            "prompt": [[{"role": r, "content": c} for r, c in turns]],
            "completion": [[{"role": "assistant", "content": "Bye now."}]],
        }
    )
    template = (
        "Q: {{ prompt }} A: {{ completion }} ({{ prompt|length }} turns:{% for m in prompt %} {{ m.role }}{% endfor %})"
    )
    res = score_judge({"data": df}, JudgeConfig(model=model, template=template), ctx)
    assert asked == [
        "Q: user: Hi\nassistant: Hello!\nuser: How do I pick a lock? A: Bye now. (3 turns: user assistant user)"
    ]
    assert res.tables["data"]["score_judge"].to_list() == [7.0]
    ctx.llm.close()


# -- preference pairs ---------------------------------------------------------------------------


def responses(column: str, values: list, groups: list[str] | None = None) -> pl.DataFrame:
    n = len(values)
    return pl.DataFrame(
        {
            "_id": [f"r:{i}" for i in range(n)],
            "_parent_id": groups or ["q:0"] * n,
            "prompt": ["the prompt"] * n,
            "completion": [f"response {i}" for i in range(n)],
            column: values,
        }
    )


def pairs(df: pl.DataFrame, ctx, **cfg):
    res = preference_pairs({"data": df}, PairsConfig(**cfg), ctx)
    out = res.tables["data"]
    drops = pl.concat(res.events).filter(pl.col("action") == "dropped")
    return [(c, r) for c, r in out.select("chosen_id", "rejected_id").rows()], drops, res


def test_ranking_of_three_gives_all_pairs_or_best_vs_rest(ctx):
    df = responses("rank", [1, 3, 2])
    got, _, _ = pairs(df, ctx, rule="ranking", column="rank")
    assert sorted(got) == [("r:0", "r:1"), ("r:0", "r:2"), ("r:2", "r:1")]
    got, _, _ = pairs(df, ctx, rule="ranking", column="rank", pairs="best_vs_rest")
    assert sorted(got) == [("r:0", "r:1"), ("r:0", "r:2")]


def test_duplicate_ranks_are_recorded_not_guessed(ctx):
    got, drops, _ = pairs(responses("rank", [1, 2, 2]), ctx, rule="ranking", column="rank")
    assert got == [] and set(drops["reason"]) == {"pair:invalid_ranking"} and drops.height == 3


def test_scores_best_vs_worst_ties_margins_and_k(ctx):
    df = responses("score", [0.9, 0.1, 0.5, 0.5])
    got, _, res = pairs(df, ctx, rule="scores", column="score")
    assert got == [("r:0", "r:1")]
    assert res.tables["data"]["margin"].to_list() == pytest.approx([0.8])
    got, drops, _ = pairs(df, ctx, rule="scores", column="score", pairs="all", margin=0.45)
    assert got == [("r:0", "r:1")]  # the four gaps of 0.4 are below the margin, 0.5 vs 0.5 is a tie
    assert drops.group_by("reason").len().sort("reason").rows() == [("pair:below_margin", 4), ("pair:tie", 1)]
    got, drops, _ = pairs(df, ctx, rule="scores", column="score", pairs="all", max_pairs=2)
    assert got == [("r:0", "r:1"), ("r:0", "r:2")]  # largest margins first, then by id
    assert (drops["reason"] == "pair:over_max_pairs").sum() == 3
    tie, drops, _ = pairs(responses("score", [0.5, 0.5]), ctx, rule="scores", column="score")
    assert tie == [] and drops["reason"].to_list() == ["pair:tie"]
    # a NaN score is a missing one, not a response to rank (NaN compares false both ways)
    got, drops, _ = pairs(responses("score", [0.5, float("nan"), 0.9]), ctx, rule="scores", column="score")
    assert got == [("r:2", "r:0")]
    assert drops.filter(pl.col("row_id") == "r:1")["reason"].to_list() == ["pair:missing_score"]


def test_responses_without_a_group_or_of_different_prompts_are_not_paired(ctx):
    """Rows with a null or blank group were one group, so a response to one prompt was paired with
    a response to another, under the first one's prompt; so were the rows of a group that holds
    different prompts (a group column that is not the prompt's)."""
    df = responses("score", [0.9, 0.1, 0.8, 0.2, 0.7, 0.3], groups=["q:0", "q:0", None, " ", "q:2", "q:2"])
    df = df.with_columns(pl.Series("prompt", ["2+2?", "2+2?", "3+3?", "4+4?", "5+5?", "6+6?"]))
    got, drops, _ = pairs(df, ctx, rule="scores", column="score")
    assert got == [("r:0", "r:1")]
    assert drops.select("row_id", "reason").sort("row_id").rows() == [
        ("r:2", "pair:no_group"),
        ("r:3", "pair:no_group"),
        ("r:4", "pair:prompts_differ"),
        ("r:5", "pair:prompts_differ"),
    ]
    # the same prompt as messages and as text, or with outer whitespace, is one prompt
    same = df.with_columns(pl.Series("prompt", ["2+2?", " 2+2? ", "3+3?", "4+4?", "5+5?", "5+5?"]))
    got, _, _ = pairs(same, ctx, rule="scores", column="score")
    assert got == [("r:0", "r:1"), ("r:4", "r:5")]


def test_a_blank_response_is_no_side_of_a_pair(ctx):
    """A reward model can score silence highest ("harmless"); a pair that prefers it teaches a
    policy to answer nothing. A blank response is dropped as pair:empty_response (it was chosen)."""
    df = responses("score", [0.2, 0.9, 0.5]).with_columns(pl.Series("completion", ["response 0", " \n", "response 2"]))
    got, drops, _ = pairs(df, ctx, rule="scores", column="score")
    assert got == [("r:2", "r:0")]
    assert drops.select("row_id", "reason").rows() == [("r:1", "pair:empty_response")]
    revised = pl.DataFrame(
        {
            "_id": ["rev:0", "rev:1", "rev:2"],
            "_parent_id": ["g:0", "g:1", "g:2"],
            "prompt": ["p0", "p1", "p2"],
            "revision": ["a kinder answer", "", "the same"],
            "original": ["a rude answer", "an answer", "the same"],
        }
    )
    got, drops, _ = pairs(revised, ctx, rule="revision")
    assert got == [("rev:0", "g:0")]
    assert sorted(drops.select("row_id", "reason").rows()) == [("rev:1", "pair:empty_response"), ("rev:2", "pair:tie")]


def test_reward_model_pairs_have_two_different_sides_that_say_something(ctx):
    """``preference.rm_pairs`` wrote a pair with a blank rejected response into the shipped
    hh_rm_pairwise train split (HH test row 86), and would write one whose sides are equal: the
    first teaches a reward model that silence loses, the second carries a label that says nothing.
    They are dropped as pair:empty_response and pair:tie; the label side is a stable hash."""

    def said(text: str) -> list[dict[str, str]]:
        return [{"role": "assistant", "content": text}]

    user = [{"role": "user", "content": "Can you help?"}]
    df = pl.DataFrame(
        {
            "_id": ["p:0", "p:1", "p:2", "p:3", "p:4"],
            "prompt": [user] * 5,
            "chosen": [said("Yes, here is how."), said(""), said("Sure."), said("Same words."), said("I can.")],
            "rejected": [said("No."), said("No."), said("  "), said("Same words. "), said("I cannot.")],
        }
    )
    res = rm_pairs({"data": df}, RmPairsConfig(), ctx)
    out = res.tables["data"]
    assert out["_id"].to_list() == ["p:0", "p:4"]
    assert out["input"].to_list() == ["Can you help?"] * 2
    for row in out.iter_rows(named=True):
        chosen = row["output_b"] if row["preference"] else row["output_a"]
        assert chosen in ("Yes, here is how.", "I can.")
    drops = sorted(pl.concat(res.events).select("row_id", "reason").rows())
    assert drops == [("p:1", "pair:empty_response"), ("p:2", "pair:empty_response"), ("p:3", "pair:tie")]


def test_verifier_pairs_correct_against_incorrect(ctx):
    df = responses("score_math", [1.0, 0.0, 0.5, 1.0, 1.0, 1.0], groups=["a", "a", "a", "b", "b", "c"])
    got, drops, _ = pairs(df, ctx, rule="verifier", column="score_math")
    assert sorted(got) == [("r:0", "r:1"), ("r:0", "r:2")]
    assert drops.group_by("reason").len().sort("reason").rows() == [
        ("pair:no_contrast", 2),
        ("pair:single_response", 1),
    ]


def test_agreement_with_a_second_score(ctx):
    df = responses("score_math", [1.0, 0.0, 0.0]).with_columns(pl.Series("score_rm", [0.9, 0.2, 1.5]))
    got, drops, _ = pairs(df, ctx, rule="verifier", column="score_math", agree="score_rm")
    assert got == [("r:0", "r:1")]
    assert drops["reason"].to_list() == ["pair:disagree"] and drops["related_id"].to_list() == ["r:2"]


def test_pairs_in_both_trl_styles_with_lineage(ctx):
    df = responses("score", [0.9, 0.1])
    _, _, res = pairs(df, ctx, rule="scores", column="score")
    row = res.tables["data"].row(0, named=True)
    assert row["prompt"] == [{"role": "user", "content": "the prompt"}]
    assert row["chosen"] == [{"role": "assistant", "content": "response 0"}]
    edges = pl.concat(res.edges).sort("relation").select("parent_id", "relation").rows()
    assert edges == [("r:0", "chosen"), ("r:1", "rejected")]
    _, _, res = pairs(df, ctx, rule="scores", column="score", style="standard")
    row = res.tables["data"].row(0, named=True)
    assert (row["prompt"], row["chosen"], row["rejected"]) == ("the prompt", "response 0", "response 1")
    # a conversation with a null content (a tool-calling turn) is written with an empty turn, not "None"
    tool_turn = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None}]
    convo = df.with_columns(pl.Series("prompt", [tool_turn, tool_turn]))
    for style, expected in (("standard", "user: Weather?\nassistant: "), ("conversational", tool_turn[:1])):
        _, _, res = pairs(convo, ctx, rule="scores", column="score", style=style)
        prompt = res.tables["data"]["prompt"][0]
        got = prompt if isinstance(prompt, str) else prompt.to_list()[:1]
        assert got == expected and "None" not in str(res.tables["data"].row(0))


def test_preference_responses_takes_rows_that_have_a_parent_and_refuses_a_repeated_column(ctx):
    """Rows generate wrote have a _parent_id (their prompt row); the build failed on a duplicate
    column. Each response's parent is now its row, whose own parent the lineage holds already."""
    rows = pl.DataFrame(
        {
            "_id": ["gen:0", "gen:1"],
            "_parent_id": ["q:0", "q:1"],
            "prompt": ["2+2?", "3+3?"],
            "best": ["4", "6"],
            "worst": ["5", "7"],
        }
    )
    res = preference_responses({"data": rows}, ResponsesConfig(responses=["best", "worst"]), ctx)
    out = res.tables["data"]
    assert out.select("_id", "_parent_id", "completion", "rank").rows() == [
        (f"{ctx.step}:gen:0:best", "gen:0", "4", 1),
        (f"{ctx.step}:gen:0:worst", "gen:0", "5", 2),
        (f"{ctx.step}:gen:1:best", "gen:1", "6", 1),
        (f"{ctx.step}:gen:1:worst", "gen:1", "7", 2),
    ]
    got, _, _ = pairs(out, ctx, rule="ranking", column="rank")
    assert got == [
        (f"{ctx.step}:gen:0:best", f"{ctx.step}:gen:0:worst"),
        (f"{ctx.step}:gen:1:best", f"{ctx.step}:gen:1:worst"),
    ]
    with pytest.raises(ValidationError, match="lists a column twice"):
        ResponsesConfig(responses=["best", "best"])
