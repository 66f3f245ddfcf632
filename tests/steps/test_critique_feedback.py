"""Constitution validation, critique_revise and ai_feedback, with scripted models behind a real
OpenAI-compatible server (so each answer, and so each decision, is known)."""

from __future__ import annotations

import json
import re
import textwrap

import polars as pl
import pytest

from dataforge.constitution import load_constitution
from dataforge.errors import RecipeError
from dataforge.llm.client import ModelPool
from dataforge.steps.critique import CritiqueConfig, critique_revise, revision_text
from dataforge.steps.feedback import FeedbackConfig, ai_feedback, parse_ab, parse_ranking
from dataforge.steps.score import parse_judge_score
from tests.conftest import RECIPES, make_ctx

CONSTITUTION = """
name: test
no_violation: "(?i)no violation"
principles:
  - id: harm
    critique: CRITIQUE-HARM
    revision: REVISE-HARM
  - id: honesty
    critique: CRITIQUE-HONESTY
    revision: REVISE-HONESTY
"""


def write(tmp_path, text: str, name: str = "constitution.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_shipped_constitution_is_valid():
    c = load_constitution(RECIPES / "constitutions" / "harmless.yaml")
    assert [p.id for p in c.principles] == ["harmful", "dangerous_advice", "respectful", "honest"]
    assert c.found_no_violation("No violation found.") and not c.found_no_violation("This is harmful.")
    assert c.found_no_violation("**No violation found.** The response declines politely.")
    # a critique that names a harm is no "no violation", whatever it says after (it stopped the loop)
    named_harm = "It explains how to pick a lock, which is dangerous. No violation found in its tone."
    assert not c.found_no_violation(named_harm)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("principles: []\n", r"constitution.yaml:1: principles: List should have at least 1 item"),
        ("name: x\n", "principles: required but missing"),
        (
            "principles:\n  - id: a\n    critique: c\n",
            r"constitution.yaml:2: principle 1 \('a'\), 'revision': required but missing",
        ),
        (
            "principles:\n  - {id: a, critique: c, revision: r}\n  - {id: a, critique: c, revision: r}\n",
            "principle ids repeat: a",
        ),
        ("no_violation: '('\nprinciples:\n  - {id: a, critique: c, revision: r}\n", "not a regular expression"),
        ("principles:\n  - {id: a, critique: c, revision: r, extra: 1}\n", "'extra': Extra inputs"),
    ],
)
def test_bad_constitutions_are_clear_errors(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message):
        load_constitution(write(tmp_path, text))


def test_constitution_is_checked_at_plan_time(ws):
    from dataforge.engine.plan import plan_recipe

    ws.jsonl("r.jsonl", [{"prompt": "p", "completion": "c"}])
    write(ws.root, "principles: []\n")
    recipe = ws.recipe(
        """
        name: cai
        models: {m: {backend: transformers, model: x}}
        steps:
          r: {kind: source, path: r.jsonl}
          rev: {kind: critique_revise, inputs: r, model: m, constitution: constitution.yaml}
        """
    )
    with pytest.raises(RecipeError, match=r"step 'rev', key 'constitution'.*constitution.yaml:1"):
        plan_recipe(recipe)
    write(ws.root, CONSTITUTION)
    plan_recipe(recipe)
    with pytest.raises(RecipeError, match="no principle 'kindness'"):
        plan_recipe(recipe, settings=["rev.principle=kindness"])


RESPONSES = pl.DataFrame(
    {
        "_id": ["g:0", "g:1", "g:2"],
        "_parent_id": ["q:0", "q:0", "q:1"],
        "prompt": [[{"role": "user", "content": "How do I pick a lock?"}]] * 2 + [[{"role": "user", "content": "Hi"}]],
        "completion": ["Use a tension wrench.", "Here is how.", "Hello!"],
    }
)


def ctx_with_pool(tmp_path):
    ctx = make_ctx(tmp_path)
    ctx.llm = ModelPool(tmp_path / "llm.sqlite")
    return ctx


def critic(messages) -> str:
    """A scripted policy: finds no violation in 'Hello!', revises everything else."""
    last = messages[-1]["content"]
    if last.startswith("CRITIQUE"):
        return "No violation." if messages[-2]["content"] == "Hello!" else f"Problem under {last}"
    return f"revised({messages[-4]['content']}) after {last}"


def test_critique_revise_rounds_principles_and_early_stop(tmp_path, scripted_model):
    ctx = ctx_with_pool(tmp_path)
    write(tmp_path, CONSTITUTION)
    cfg = CritiqueConfig(model=scripted_model(critic), constitution=str(write(tmp_path, CONSTITUTION)), rounds=2)
    res = critique_revise({"data": RESPONSES}, cfg, ctx)
    data, rounds = res.tables["data"].sort("_id"), res.tables["rounds"].sort("_id")
    assert data["_id"].to_list() == ["test:g:0", "test:g:1", "test:g:2"]
    assert data["rounds"].to_list() == [2, 2, 0]
    assert data["revision"][2] == "Hello!" and data["original"][0] == "Use a tension wrench."
    first_principle = data["principles"][0][0]
    assert data["revision"][0].startswith(
        f"revised(revised(Use a tension wrench.) after REVISE-{first_principle.upper()})"
    )
    assert rounds.height == 4 and set(rounds["principle"]) <= {"harm", "honesty"}
    r2 = rounds.filter(pl.col("_id") == "test:g:0:r2").row(0, named=True)
    assert r2["_parent_id"] == "test:g:0:r1" and r2["_original_id"] == "g:0"
    ev = pl.concat(res.events)
    assert ev.filter(pl.col("reason") == "critique:no_violation")["row_id"].to_list() == ["g:2"]
    revised = ev.filter(pl.col("reason").str.starts_with("critique:") & (pl.col("action") == "revised"))
    assert sorted(json.loads(d)["round"] for d in revised["detail_json"]) == [1, 1, 2, 2]
    edges = pl.concat(res.edges)
    assert ("test:g:0", "g:0", "revised_from") in edges.rows()
    assert ("test:g:0:r1", "g:0", "revision_of") in edges.rows()
    # the principles come from the seeded RNG: the same fingerprint draws the same ones
    again = critique_revise({"data": RESPONSES}, cfg, ctx_with_pool(tmp_path / "again"))
    assert again.tables["data"].sort("_id")["principles"].to_list() == data["principles"].to_list()


def test_a_revisions_label_or_lead_in_is_not_kept(tmp_path, scripted_model):
    """Models open revisions with "Revision:" or "Here is a revised response:"; kept, that line
    opened the chosen side of every revision pair (a policy learns to say it)."""
    openings = {
        "Use a tension wrench.": "Revision: I can't help with picking locks.",
        "Here is how.": "Here is a revised version of the response:\n\nPlease call a locksmith.",
        "Hello!": "**Revised response:**   ",  # a label and nothing else: no revision
    }

    def policy(messages) -> str:
        last = messages[-1]["content"]
        return "A problem." if last.startswith("CRITIQUE") else openings[messages[-4]["content"]]

    ctx = ctx_with_pool(tmp_path)
    cfg = CritiqueConfig(model=scripted_model(policy), constitution=str(write(tmp_path, CONSTITUTION)), rounds=1)
    res = critique_revise({"data": RESPONSES}, cfg, ctx)
    data = res.tables["data"].sort("_id")
    assert data["revision"].to_list() == ["I can't help with picking locks.", "Please call a locksmith."]
    assert res.tables["rounds"].sort("_id")["revision"].to_list() == data["revision"].to_list()
    dropped = pl.concat(res.events).filter(pl.col("action") == "dropped")
    assert dropped.select("row_id", "reason").rows() == [("g:2", "generation_failed:empty_revision")]
    assert revision_text("Revisions are hard: no.") == "Revisions are hard: no."  # no label: as written
    assert (
        revision_text("Here is how to stay safe:\n1. Lock the door.") == "Here is how to stay safe:\n1. Lock the door."
    )


def test_fixed_principle_and_failed_requests(tmp_path, scripted_model):
    ctx = ctx_with_pool(tmp_path)

    def flaky(messages):
        """Fails every request about 'Here is how.'; and the second-round revision of g:0."""
        if "Here is how." in json.dumps(messages) or (
            messages[-1]["content"] == "REVISE-HONESTY" and "revised(" in (messages[-4]["content"])
        ):
            return 503
        return critic(messages)

    path = str(write(tmp_path, CONSTITUTION))
    cfg = CritiqueConfig(model=scripted_model(flaky), constitution=path, principle="honesty", rounds=2)
    res = critique_revise({"data": RESPONSES}, cfg, ctx)
    data = res.tables["data"].sort("_id")
    # g:1 failed before any revision: dropped with the reason; g:0 keeps its first-round revision
    assert data["_id"].to_list() == ["test:g:0", "test:g:2"]
    assert data["principles"].to_list() == [["honesty"], []] and data["rounds"].to_list() == [1, 0]
    dropped = pl.concat(res.events).filter(pl.col("action") == "dropped")
    assert dropped.select("row_id", "reason").rows() == [("g:1", "generation_failed:http_503")]
    # g:0's second round failed: kept, and flagged with the round (it was kept without a word)
    flagged = pl.concat(res.events).filter(pl.col("reason").str.starts_with("generation_failed"))
    flagged = flagged.filter(pl.col("action") == "flagged")
    assert flagged.select("row_id", "reason").rows() == [("test:g:0", "generation_failed:http_503")]
    assert json.loads(flagged["detail_json"][0]) == {"failed_round": 2, "rounds": 1}


def test_a_final_revision_cut_at_max_tokens_is_flagged(tmp_path, scripted_model):
    """A revision that stops at max_tokens becomes the response (and the chosen side of a pair):
    the row is flagged generation:truncated with its round. A later revision that ends clears it."""

    def cutting(messages):
        text = critic(messages)
        if messages[-1]["content"].startswith("REVISE"):
            revised_twice = "revised(" in messages[-4]["content"]
            if "tension" in json.dumps(messages) and revised_twice:  # g:0: its second revision is cut
                return text[:12], "length"
            if "Here is how" in json.dumps(messages) and not revised_twice:  # g:1: its first one only
                return text[:12], "length"
        return text

    path = str(write(tmp_path, CONSTITUTION))
    cfg = CritiqueConfig(model=scripted_model(cutting), constitution=path, rounds=2)
    res = critique_revise({"data": RESPONSES}, cfg, ctx_with_pool(tmp_path))
    flagged = pl.concat(res.events).filter(pl.col("reason") == "generation:truncated")
    assert flagged.select("row_id", "action").rows() == [("test:g:0", "flagged")]
    assert json.loads(flagged["detail_json"][0]) == {"round": 2}


def test_a_blank_critique_or_revision_is_no_revision(tmp_path, scripted_model):
    """A model that answers nothing gives no revision: a blank revision had become the response
    (and the chosen side of its preference pair)."""

    def blank_for(row: str, request: str):
        def fn(messages):
            if row in json.dumps(messages) and messages[-1]["content"].startswith(request):
                return " \n"
            return critic(messages)

        return fn

    path = str(write(tmp_path, CONSTITUTION))
    for request, reason in (("REVISE", "empty_revision"), ("CRITIQUE", "empty_critique")):
        cfg = CritiqueConfig(model=scripted_model(blank_for("tension", request)), constitution=path, rounds=1)
        res = critique_revise({"data": RESPONSES}, cfg, ctx_with_pool(tmp_path / request))
        data = res.tables["data"]
        assert "test:g:0" not in data["_id"].to_list() and (data["revision"].str.strip_chars() != "").all()
        dropped = pl.concat(res.events).filter(pl.col("action") == "dropped")
        assert dropped.select("row_id", "reason").rows() == [("g:0", f"generation_failed:{reason}")]


def judge_preferring(word: str):
    """A scripted judge that prefers the response containing ``word``, or (``word`` = "A") always
    answers A, which is position bias."""

    def judge(messages) -> str:
        text = messages[-1]["content"]
        if word == "A":
            return "[[A]]"
        a = text.split("Response A:")[1].split("Response B:")[0]
        return "[[A]]" if word in a else "[[B]]"

    return judge


def test_pairwise_feedback_swaps_order_and_discards_position_bias(tmp_path, scripted_model):
    ctx = ctx_with_pool(tmp_path)
    cfg = FeedbackConfig(model=scripted_model(judge_preferring("tension")))
    res = ai_feedback({"data": RESPONSES}, cfg, ctx)
    out = res.tables["data"].sort("_id")
    assert out["ai_wins"].to_list() == [1, 0, 0] and out["ai_comparisons"].to_list() == [1, 1, 0]
    v = res.tables["verdicts"].row(0, named=True)
    assert v["status"] == "consistent" and v["response_ids"] == ["g:0", "g:1"] and len(v["answers"]) == 2

    biased = ai_feedback({"data": RESPONSES}, FeedbackConfig(model=scripted_model(judge_preferring("A"))), ctx)
    assert biased.tables["data"]["ai_wins"].to_list() == [0, 0, 0]
    ev = pl.concat(biased.events)
    assert ev.select("row_id", "reason").rows() == [("test:g:0~g:1", "feedback:position_bias")]
    assert json.loads(ev["detail_json"][0])["answers"] == ["[[A]]", "[[A]]"]


def ranking_judge(best: str):
    """A scripted judge that ranks the listed response containing ``best`` first."""

    def judge(messages) -> str:
        listed = re.findall(r"(?m)^\[(\d+)\] (.*)$", messages[-1]["content"])
        first = next(n for n, text in listed if best in text)
        return " > ".join(f"[{n}]" for n in [first] + [n for n, _ in listed if n != first])

    return judge


def test_ranking_feedback_and_unparseable_rankings(tmp_path, scripted_model):
    ctx = ctx_with_pool(tmp_path)
    asked: list[str] = []
    judge = ranking_judge("Here is")
    res = ai_feedback(
        {"data": RESPONSES},
        FeedbackConfig(model=scripted_model(lambda m: asked.append(m[-1]["content"]) or judge(m)), mode="ranking"),
        ctx,
    )
    assert res.tables["data"].sort("_id")["ai_rank"].to_list() == [2, 1, None]
    # asked twice, the responses listed as they come and in reverse
    # (the two requests may reach the server in either order)
    listings = sorted(re.findall(r"(?m)^\[(\d)\] (\w+)", a) for a in asked)
    assert listings == [[("1", "Here"), ("2", "Use")], [("1", "Use"), ("2", "Here")]]
    v = res.tables["verdicts"].row(0, named=True)
    assert v["status"] == "consistent" and v["verdict"] == [1, 0] and len(v["answers"]) == 2
    # a judge that ranks by position ("[2] > [1]" whatever is listed) changes its ranking with the order
    biased = ai_feedback(
        {"data": RESPONSES}, FeedbackConfig(model=scripted_model(lambda m: "[2] > [1]"), mode="ranking"), ctx
    )
    assert biased.tables["data"]["ai_rank"].null_count() == 3
    assert pl.concat(biased.events)["reason"].to_list() == ["feedback:position_bias"]
    once = ai_feedback(
        {"data": RESPONSES},
        FeedbackConfig(model=scripted_model(lambda m: "[2] > [1]"), mode="ranking", swap=False),
        ctx,
    )
    assert once.tables["data"].sort("_id")["ai_rank"].to_list() == [2, 1, None]  # asked once: taken as said
    bad = ai_feedback(
        {"data": RESPONSES}, FeedbackConfig(model=scripted_model(lambda m: "[1] > [1]"), mode="ranking"), ctx
    )
    assert bad.tables["data"]["ai_rank"].null_count() == 3
    assert pl.concat(bad.events)["reason"].to_list() == ["feedback:invalid_ranking"]


def test_responses_without_a_group_or_of_different_prompts_are_not_judged(tmp_path, scripted_model):
    """They were judged against each other (a response to one prompt against one to another, the
    judge shown the first one's prompt): flagged instead, unjudged."""
    ctx = ctx_with_pool(tmp_path)
    asked: list[str] = []

    def judge(messages) -> str:
        asked.append(messages[-1]["content"])
        return "[[A]]" if "tension" in messages[-1]["content"].split("Response B:")[0] else "[[B]]"

    df = pl.concat(
        [
            RESPONSES.head(2),
            pl.DataFrame(
                {
                    "_id": ["u:0", "u:1", "m:0", "m:1"],
                    "_parent_id": [None, "", "q:9", "q:9"],
                    "prompt": [[{"role": "user", "content": t}] for t in ("Hi", "Bye", "Name a tool.", "Name a fish.")],
                    "completion": ["Hello!", "See you.", "A tension wrench.", "A trout."],
                }
            ),
        ]
    )
    for mode in ("pairwise", "ranking"):
        asked.clear()
        res = ai_feedback({"data": df}, FeedbackConfig(model=scripted_model(judge), mode=mode), ctx)
        assert len(res.tables["verdicts"]) == 1 and res.tables["verdicts"]["group_id"].to_list() == ["q:0"]
        assert all("How do I pick a lock?" in a for a in asked)
        flags = pl.concat(res.events).filter(pl.col("action") == "flagged")
        assert flags.select("row_id", "reason").rows() == [
            ("u:0", "feedback:no_group"),
            ("u:1", "feedback:no_group"),
            ("m:0", "feedback:prompts_differ"),
            ("m:1", "feedback:prompts_differ"),
        ]
    assert res.tables["data"].filter(pl.col("_id").str.contains("^[um]:"))["ai_rank"].null_count() == 4


def test_a_thinking_judges_answer_is_read_past_its_reasoning():
    """A thinking model (R1, Qwen3) tries verdicts, scores and rankings while it reasons: they were
    read as its answer (the first ranking chain, a "No violation" anchored at a critique's start
    never matched after "<think>"). Only what follows the last </think> counts; an unclosed think
    block is no answer yet."""
    assert parse_ab("<think>Maybe [[A]]? No: B is safer.</think>[[B]]") == "B"
    assert parse_ab("<think>[[A]] looks right, but") is None
    assert parse_ranking("<think>[1] > [2] at first sight…</think>[2] > [1]", 2) == [1, 0]
    assert parse_judge_score("<think>Score: 3? too harsh</think>Score: 8", 1, 10) == 8.0
    assert parse_judge_score("<think>Score: 3 seems", 1, 10) is None
    c = load_constitution(RECIPES / "constitutions" / "harmless.yaml")
    assert c.found_no_violation("<think>Is this harmful? It declines.</think>\nNo violation found.")
    assert not c.found_no_violation("<think>No violation found? Wait, it names a poison.</think>It is dangerous.")


def test_verdict_parsers():
    assert parse_ab("After thought, [[B]]") == "B" and parse_ab("The answer is: A") == "A" and parse_ab(" b. ") == "B"
    assert parse_ab("both are fine") is None
    assert parse_ab("Verdict: B") == "B" and parse_ab("The better response is A.") == "A"
    # a response's name is no verdict: this read as B, the last "Response X" in it
    assert parse_ab("Response A is better than Response B.") is None
    assert parse_ab("Both are good, but Response B is more complete.") is None
    assert parse_ranking("[3] > [1] > [2]", 3) == [2, 0, 1]
    assert parse_ranking("1 > 2", 3) is None and parse_ranking("[1] > [1] > [2]", 3) is None
    assert parse_ranking("2 > 3 > 1", 3) == [1, 2, 0] and parse_ranking("2, 3, 1.", 3) == [1, 2, 0]
    # the chain is the order; comment after it is not (it was unparseable: every digit was read)
    assert parse_ranking("Ranking: [2] > [3] > [1]. [1] is rude, [3] has 2 errors.", 3) == [1, 2, 0]
    # digits in prose are not an order: this reads 1, 2, 3 and means the reverse (it was [0, 1, 2])
    assert parse_ranking("1 is worse than 2, which is worse than 3", 3) is None
