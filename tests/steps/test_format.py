"""format and format.reasoning: each TRL dataset type, conversational and standard."""

from __future__ import annotations

import polars as pl
import pytest
from pydantic import ValidationError

from dataforge.errors import DataError
from dataforge.formats import as_messages, trl_dataset_type
from dataforge.steps.format import FormatConfig, ReasoningConfig, format_reasoning, format_trl
from dataforge.text.fields import MESSAGES
from dataforge.text.reasoning import REASONING_RE

DF = pl.DataFrame(
    {
        "_id": ["r:0", "r:1", "r:2"],
        "q": ["What is 2+2?", "Name a colour.", "  "],
        "a": ["4", "blue", "x"],
        "b": ["5", "loud", "y"],
        "gold": ["4", "blue", "x"],
    }
)


def _run(ctx, **cfg) -> pl.DataFrame:
    res = format_trl({"data": DF}, FormatConfig(**cfg), ctx)
    dropped = res.events[0]
    assert dropped["row_id"].to_list() == ["r:2"] and dropped["reason"][0] == "format:missing_field"
    return res.tables["data"]


def test_messages_with_system_prompt(ctx):
    out = _run(ctx, type="messages", prompt="q", completion="a", system="Be brief.")
    assert out.columns == ["_id", "messages"] and out.schema["messages"] == MESSAGES
    assert out["messages"][0].to_list() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    assert trl_dataset_type(out.columns) == "language_modeling"


def test_prompt_completion_standard_and_conversational(ctx):
    std = _run(ctx, type="prompt_completion", style="standard", prompt="q", completion="a")
    assert std.row(0) == ("r:0", "What is 2+2?", "4")
    conv = _run(ctx, type="prompt_completion", prompt="q", completion="a")
    assert conv["completion"][0].to_list() == [{"role": "assistant", "content": "4"}]
    assert trl_dataset_type(conv.columns) == "prompt_completion"


def test_prompt_only_keeps_extra_columns(ctx):
    out = _run(ctx, type="prompt_only", prompt="q", extra={"answer": "gold"})
    assert out.columns == ["_id", "prompt", "answer"]
    assert out["answer"].to_list() == ["4", "blue"]
    assert trl_dataset_type(out.columns) == "prompt_only"


def test_preference_from_text_and_from_messages(ctx):
    out = _run(ctx, type="preference", prompt="q", chosen="a", rejected="b")
    assert trl_dataset_type(out.columns) == "preference"
    assert out["rejected"][1].to_list() == [{"role": "assistant", "content": "loud"}]
    # columns that already hold messages pass through unchanged
    again = format_trl(
        {"data": out}, FormatConfig(type="preference", prompt="prompt", chosen="chosen", rejected="rejected"), ctx
    ).tables["data"]
    assert again.equals(out)
    # a conversation whose turns are all blank is no response: dropped with its reason, not exported
    blank = out.with_columns(
        pl.when(pl.col("_id") == "r:1")
        .then(pl.lit([{"role": "assistant", "content": " "}], dtype=MESSAGES))
        .otherwise(pl.col("chosen"))
        .alias("chosen")
    )
    res = format_trl(
        {"data": blank}, FormatConfig(type="preference", prompt="prompt", chosen="chosen", rejected="rejected"), ctx
    )
    assert res.tables["data"]["_id"].to_list() == ["r:0"]
    assert res.events[0]["row_id"].to_list() == ["r:1"] and res.events[0]["reason"][0] == "format:missing_field"


def test_standard_style_refuses_messages(ctx):
    from dataforge.errors import DataError

    msgs = pl.DataFrame({"_id": ["a"], "p": [[{"role": "user", "content": "x"}]], "c": ["y"]})
    with pytest.raises(DataError, match="standard style needs text"):
        format_trl(
            {"data": msgs}, FormatConfig(type="prompt_completion", style="standard", prompt="p", completion="c"), ctx
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"type": "preference", "prompt": "q", "chosen": "a"}, "needs 'rejected'"),
        ({"type": "prompt_only", "prompt": "q", "completion": "a"}, "does not use 'completion'"),
        ({"type": "messages", "style": "standard", "prompt": "q", "completion": "a"}, "conversational"),
        ({"type": "prompt_only", "style": "standard", "prompt": "q", "system": "s"}, "conversational"),
        # an extra column named as one the step writes failed on polars' DuplicateError
        ({"type": "prompt_only", "prompt": "q", "extra": {"prompt": "a"}}, "extra column 'prompt' is one the step"),
        ({"type": "messages", "prompt": "q", "completion": "a", "extra": {"_id": "a"}}, "extra column '_id'"),
        ({"type": "messages", "prompt": "q"}, r"needs 'completion' .*\(or 'messages', a column of whole"),
        ({"type": "messages", "messages": "m", "prompt": "q"}, "'messages' .* or 'prompt' and 'completion', not both"),
        ({"type": "preference", "messages": "m", "chosen": "a", "rejected": "b"}, "does not use 'messages'"),
        ({"type": "prompt_only", "prompt": "q", "messages": "m"}, "'prompt_only' takes 'messages' .* not both"),
        ({"type": "prompt_only", "prompt": ["q", "q"]}, "names one or more text columns, each once"),
    ],
)
def test_format_config_errors(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        FormatConfig(**kwargs)


def test_reasoning_format(ctx):
    df = pl.DataFrame({"_id": ["a"], "reasoning": ["2+2 is 4."], "final_answer": ["4"]})
    out = format_reasoning({"d": df}, ReasoningConfig(), ctx).tables["d"]
    text = out["completion"][0]
    assert text == "<think>\n2+2 is 4.\n</think>\n<answer>4</answer>"
    assert pl.Series([text]).str.contains(REASONING_RE)[0]
    # no answer, no target: an empty answer block is not the format (it was written)
    df = pl.DataFrame({"_id": ["a", "b", "c"], "reasoning": ["w", "w", "w"], "final_answer": ["4", " ", None]})
    out = format_reasoning({"d": df}, ReasoningConfig(), ctx).tables["d"]
    assert out["completion"].is_null().to_list() == [False, True, True]
    cfg = FormatConfig(type="prompt_completion", prompt="reasoning", completion="completion")
    sft = format_trl({"d": out}, cfg, ctx)
    assert sft.tables["d"]["_id"].to_list() == ["a"]
    assert set(pl.concat(sft.events)["reason"]) == {"format:missing_field"}


def test_a_null_message_content_is_no_text():
    """An OpenAI-format assistant turn that only calls a tool has ``content: null``; it is an empty
    message, never the text "None" (which critique, reward-model scoring and preference pairs sent
    on or wrote out)."""
    turns = [{"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "content": None}]
    assert as_messages(turns, "user") == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": ""},
    ]
    assert as_messages("Hi", "assistant") == [{"role": "assistant", "content": "Hi"}]
    assert as_messages(None, "user") == []


def test_a_preference_pair_whose_sides_are_the_same_text_is_dropped_as_a_tie(ctx):
    pairs = pl.DataFrame(
        {
            "_id": ["p:0", "p:1", "p:2"],
            "q": ["Say hi.", "Say hi.", "Say bye."],
            "a": ["Hi!", "Hi! ", "Bye."],
            "b": ["Hello.", " Hi!", "Bye now."],
        }
    )
    res = format_trl({"data": pairs}, FormatConfig(type="preference", prompt="q", chosen="a", rejected="b"), ctx)
    assert res.tables["data"]["_id"].to_list() == ["p:0", "p:2"]
    ties = pl.concat(res.events).filter(pl.col("reason") == "format:tie")
    assert ties["row_id"].to_list() == ["p:1"]
    # messages sides are compared by their text
    conv = pairs.with_columns(
        pl.Series("a", [as_messages(t, "assistant") for t in pairs["a"]], dtype=MESSAGES),
        pl.Series("b", [as_messages(t, "assistant") for t in pairs["b"]], dtype=MESSAGES),
    )
    res = format_trl({"data": conv}, FormatConfig(type="preference", prompt="q", chosen="a", rejected="b"), ctx)
    assert res.tables["data"]["_id"].to_list() == ["p:0", "p:2"]


def test_system_on_prompts_that_open_with_their_own_system_message_is_refused(ctx):
    prompts = [
        [{"role": "user", "content": "What is 2+2?"}],
        [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi"}],
    ]
    df = pl.DataFrame({"_id": ["s:0", "s:1"], "prompt": pl.Series(prompts, dtype=MESSAGES), "a": ["4", "Arr"]})
    with pytest.raises(DataError, match=r"'system' is set, but 1 row\(s\) of 'data'.*'prompt'.*first: s:1"):
        format_trl(
            {"data": df}, FormatConfig(type="messages", prompt="prompt", completion="a", system="Be brief."), ctx
        )
    # without 'system' the rows keep their own
    out = format_trl({"data": df}, FormatConfig(type="messages", prompt="prompt", completion="a"), ctx).tables["data"]
    assert out["messages"][1].to_list()[0] == {"role": "system", "content": "You are a pirate."}


CALL = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
TOOL_PROMPTS = [
    [
        {"role": "user", "content": "Weather in Paris?", "tool_calls": None, "tool_call_id": None},
        {"role": "assistant", "content": None, "tool_calls": [CALL], "tool_call_id": None},
        {"role": "tool", "content": '{"temp": 18}', "tool_calls": None, "tool_call_id": "c1"},
    ],
    [{"role": "user", "content": "Hi", "tool_calls": None, "tool_call_id": None}],
]


def test_tool_calling_turns_keep_their_fields_and_every_turn_gets_them(ctx):
    """A conversation in the OpenAI tool-calling format was refused (its turns carry more than role
    and content), so tool-use data could not be shaped for TRL at all."""
    df = pl.DataFrame({"_id": ["t:0", "t:1"], "prompt": TOOL_PROMPTS, "a": ["It is 18 °C in Paris.", "Hello!"]})
    cfg = FormatConfig(type="messages", prompt="prompt", completion="a", system="Use the tools.")
    out = format_trl({"data": df}, cfg, ctx).tables["data"]
    turns = out["messages"][0].to_list()
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "tool", "assistant"]
    assert turns[2]["tool_calls"] == [CALL] and turns[2]["content"] is None
    assert turns[3]["tool_call_id"] == "c1"
    assert turns[0] == {"role": "system", "content": "Use the tools.", "tool_calls": None, "tool_call_id": None}
    assert turns[4] == {
        "role": "assistant",
        "content": "It is 18 °C in Paris.",
        "tool_calls": None,
        "tool_call_id": None,
    }
    # prompt-completion: the completion may be a turn that only calls a tool; one that says nothing is missing
    calls = pl.Series(
        "c",
        [
            [{"role": "assistant", "content": None, "tool_calls": [CALL]}],
            [{"role": "assistant", "content": " ", "tool_calls": []}],
        ],
    )
    res = format_trl(
        {"data": df.with_columns(calls)}, FormatConfig(type="prompt_completion", prompt="prompt", completion="c"), ctx
    )
    assert res.tables["data"]["_id"].to_list() == ["t:0"]
    assert res.tables["data"]["completion"][0].to_list()[0]["tool_calls"] == [CALL]
    assert res.events[0]["row_id"].to_list() == ["t:1"] and res.events[0]["reason"][0] == "format:missing_field"


def test_two_responses_that_only_call_tools_tie_only_when_the_calls_are_the_same(ctx):
    other = {**CALL, "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'}}
    side = lambda call: [{"role": "assistant", "content": None, "tool_calls": [call]}]  # noqa: E731
    df = pl.DataFrame(
        {
            "_id": ["p:0", "p:1", "p:2"],
            "q": ["Weather in Paris?"] * 3,
            "a": [side(CALL), side(CALL), side(CALL)],
            "b": [side(other), side(CALL), side({**CALL, "id": "c7"})],
        }
    )
    res = format_trl({"data": df}, FormatConfig(type="preference", prompt="q", chosen="a", rejected="b"), ctx)
    assert res.tables["data"]["_id"].to_list() == ["p:0"]  # Paris against Lyon is a preference
    # one call under another id (two samples of it) is the same call, as dedup reads it
    assert pl.concat(res.events).filter(pl.col("reason") == "format:tie")["row_id"].to_list() == ["p:1", "p:2"]


def test_a_turn_field_of_two_types_is_refused_naming_both_columns(ctx):
    df = pl.DataFrame(
        {
            "_id": ["x:0"],
            "p": [[{"role": "user", "content": "hi", "name": "ann"}]],
            "c": [[{"role": "assistant", "content": "hello", "name": 3}]],
        }
    )
    with pytest.raises(
        DataError, match=r"turns of column 'c' have a 'name' of type Int64, those of 'p' of type String"
    ):
        format_trl({"data": df}, FormatConfig(type="messages", prompt="p", completion="c"), ctx)
    bad = pl.DataFrame({"_id": ["x:0"], "p": [[{"role": "user", "content": ["a", "b"]}]], "c": ["y"]})
    with pytest.raises(DataError, match=r"column 'p' holds turns of .*, not messages with a text 'role' and 'content'"):
        format_trl({"data": bad}, FormatConfig(type="messages", prompt="p", completion="c"), ctx)


def test_whole_conversations_are_shaped_as_messages(ctx):
    """A dataset that already holds conversations (the most common SFT form) could not be shaped:
    type 'messages' took only a prompt and a completion column."""
    convo = lambda *turns: [{"role": r, "content": c} for r, c in turns]  # noqa: E731
    df = pl.DataFrame(
        {
            "_id": ["m:0", "m:1", "m:2", "m:3", "m:4"],
            "m": [
                convo(("user", "Hi"), ("assistant", "Hello!"), ("user", "2+2?"), ("assistant", "4")),
                convo(("user", "Hi"), ("assistant", "  ")),  # no answer said
                convo(("user", "Anyone there?")),  # no assistant turn
                [],
                convo(("user", "Bye"), ("assistant", "Bye!")),
            ],
        }
    )
    res = format_trl({"data": df}, FormatConfig(type="messages", messages="m", system="Be kind."), ctx)
    out = res.tables["data"]
    assert out.columns == ["_id", "messages"] and out["_id"].to_list() == ["m:0", "m:4"]
    assert [t["role"] for t in out["messages"][0]] == ["system", "user", "assistant", "user", "assistant"]
    assert out["messages"][1].to_list()[0] == {"role": "system", "content": "Be kind."}
    reasons = pl.concat(res.events).select("row_id", "reason").rows()
    assert sorted(reasons) == [
        ("m:1", "format:no_response"),
        ("m:2", "format:no_response"),
        ("m:3", "format:missing_field"),
    ]
    assert trl_dataset_type(out.columns) == "language_modeling"
    # a text column is no conversation; roles a chat template does not name are refused
    with pytest.raises(DataError, match="column 'q' is String; 'messages' takes whole conversations"):
        format_trl({"data": DF}, FormatConfig(type="messages", messages="q"), ctx)
    human = df.with_columns(pl.Series("m", [convo(("human", "Hi"), ("gpt", "Yo"))] * 5))
    with pytest.raises(DataError, match=r"row m:0 has a turn of role 'human'.*'parse\.chat'"):
        format_trl({"data": human}, FormatConfig(type="messages", messages="m"), ctx)
    with pytest.raises(DataError, match="role 'human'"):  # in a prompt column too
        format_trl(
            {"data": human.with_columns(a=pl.lit("x"))}, FormatConfig(type="messages", prompt="m", completion="a"), ctx
        )


def test_a_prompt_of_several_columns_joins_their_texts(ctx):
    """Alpaca-form data (instruction, input, output) could not be shaped: `prompt` named one column,
    so the input was lost or the instruction was."""
    df = pl.DataFrame(
        {
            "_id": ["a:0", "a:1", "a:2", "a:3"],
            "instruction": ["Translate to English.", "Add 2 and 3.", " ", "Say hi."],
            "input": ["Bonjour", "", None, "Politely."],
            "output": ["Hello", "5", "x", "Hello!"],
            "prompt_": ["kept", "kept", "kept", "kept"],  # a column the joined prompt must not take the name of
        }
    )
    cfg = FormatConfig(
        type="prompt_completion", prompt=["instruction", "input"], completion="output", extra={"p": "prompt_"}
    )
    res = format_trl({"data": df}, cfg, ctx)
    out = res.tables["data"]
    assert [p[0]["content"] for p in out["prompt"].to_list()] == [
        "Translate to English.\n\nBonjour",
        "Add 2 and 3.",
        "Say hi.\n\nPolitely.",
    ]
    assert out.columns == ["_id", "prompt", "completion", "p"] and out["p"].to_list() == ["kept"] * 3
    dropped = res.events[0]
    assert dropped["row_id"].to_list() == ["a:2"] and dropped["reason"][0] == "format:missing_field"
    assert '"fields": ["instruction", "input", "output"]' in dropped["detail_json"][0]
    standard = FormatConfig(type="prompt_only", style="standard", prompt=["instruction", "input"])
    assert format_trl({"data": df}, standard, ctx).tables["data"]["prompt"][1] == "Add 2 and 3."
    with pytest.raises(DataError, match="field 'input' is Int32, not text"):
        format_trl({"data": df.with_columns(pl.lit(1).alias("input"))}, cfg, ctx)


def _user(text: str) -> dict:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def test_responses_written_as_whole_conversations_lose_the_prompts_turns(ctx):
    """UltraFeedback-form pairs (a `prompt`, and `chosen` / `rejected` as the whole conversation)
    were shaped with the prompt's turn in each side too, so DPO read the request twice."""
    df = pl.DataFrame(
        {
            "_id": ["u:0", "u:1", "u:2", "u:3"],
            "prompt": ["Name a colour.", "Hi", "Q", "Q2"],
            "chosen": [
                [_user("Name a colour."), _assistant("Blue.")],
                [_assistant("Hello")],  # a response alone: kept as it is
                [_user("Another question"), _assistant("x")],  # opens with another prompt
                [_user("Q2"), _assistant("A"), _user("more"), _assistant("B")],  # goes on past the request
            ],
            "rejected": [
                [_user("Name a colour. "), _assistant("No.")],  # outer whitespace aside, the same turn
                [_assistant("Go away")],
                [_user("Q"), _assistant("y")],
                [_user("Q2"), _assistant("C")],
            ],
        }
    )
    res = format_trl(
        {"data": df}, FormatConfig(type="preference", prompt="prompt", chosen="chosen", rejected="rejected"), ctx
    )
    out = res.tables["data"]
    assert out["_id"].to_list() == ["u:0", "u:1"] and out.columns == ["_id", "prompt", "chosen", "rejected"]
    assert out.row(0) == ("u:0", [_user("Name a colour.")], [_assistant("Blue.")], [_assistant("No.")])
    assert out["chosen"][1].to_list() == [_assistant("Hello")]
    reasons = pl.concat(res.events).select("row_id", "reason").rows()
    assert reasons == [("u:2", "format:user_turn_in_response"), ("u:3", "format:user_turn_in_response")]
    # the same for a completion, and for messages made of prompt + completion
    pc = df.head(1).select("_id", "prompt", pl.col("chosen").alias("c"))
    messages = format_trl({"data": pc}, FormatConfig(type="messages", prompt="prompt", completion="c"), ctx).tables[
        "data"
    ]
    assert messages["messages"][0].to_list() == [_user("Name a colour."), _assistant("Blue.")]
    shaped = format_trl(
        {"data": pc}, FormatConfig(type="prompt_completion", prompt="prompt", completion="c", system="S"), ctx
    )
    # a prompt with its own system turn, and a response that repeats the request without it
    with_system = pc.with_columns(pl.Series("prompt", [[{"role": "system", "content": "S"}, _user("Name a colour.")]]))
    res = format_trl(
        {"data": with_system}, FormatConfig(type="prompt_completion", prompt="prompt", completion="c"), ctx
    )
    assert res.tables["data"]["completion"].to_list() == [[_assistant("Blue.")]]
    assert shaped.tables["data"].row(0)[1:] == (
        [{"role": "system", "content": "S"}, _user("Name a colour.")],
        [_assistant("Blue.")],
    )


def test_a_preference_without_a_prompt_takes_the_turns_its_sides_open_with(ctx):
    """TRL's implicit prompt: chosen and rejected as whole conversations that part at the last
    assistant turn (HH-RLHF multi-turn pairs as messages)."""
    df = pl.DataFrame(
        {
            "_id": ["i:0", "i:1", "i:2", "i:3", "i:4"],
            "chosen": [
                [_user("Hi"), _assistant("Hello"), _user("A joke?"), _assistant("Knock knock.")],
                [_user("Q"), _assistant("Same")],  # the two sides are one: a tie
                [_assistant("Unprompted")],  # nothing the two open with: no prompt
                [_user("Q"), _assistant("Shared start"), _assistant("then this")],  # part after an assistant turn
                [_user("Q"), _assistant("")],  # nothing said
            ],
            "rejected": [
                [_user("Hi"), _assistant("Hello"), _user("A joke?"), _assistant("No.")],
                [_user("Q"), _assistant("Same")],
                [_assistant("Other")],
                [_user("Q"), _assistant("Shared start"), _assistant("or that")],
                [_user("Q"), _assistant("Fine")],
            ],
        }
    )
    res = format_trl({"data": df}, FormatConfig(type="preference", chosen="chosen", rejected="rejected"), ctx)
    out = res.tables["data"]
    assert out["_id"].to_list() == ["i:0", "i:3"]
    assert out.row(0)[1:] == (
        [_user("Hi"), _assistant("Hello"), _user("A joke?")],
        [_assistant("Knock knock.")],
        [_assistant("No.")],
    )
    # the prompt ends at the last turn that is not the assistant's: each side opens with its own answer
    assert out.row(1)[1:] == (
        [_user("Q")],
        [_assistant("Shared start"), _assistant("then this")],
        [_assistant("Shared start"), _assistant("or that")],
    )
    reasons = sorted(pl.concat(res.events).select("row_id", "reason").rows())
    assert reasons == [
        ("i:1", "format:tie"),
        ("i:2", "format:no_prompt"),
        ("i:3", "format:roles_not_alternating"),  # kept, flagged: two assistant turns in a row
        ("i:4", "format:missing_field"),
    ]
    with pytest.raises(DataError, match="without 'prompt', chosen and rejected must be conversations"):
        format_trl({"data": DF}, FormatConfig(type="preference", chosen="a", rejected="b"), ctx)


def test_whole_conversations_part_at_their_last_request(ctx):
    """A conversation dataset gives prompts to generate from (distillation, GRPO) and
    prompt-completion pairs: every turn up to the last user turn is the prompt, what follows it
    the completion."""
    system = {"role": "system", "content": "S"}
    df = pl.DataFrame(
        {
            "_id": ["m:0", "m:1", "m:2", "m:3"],
            "m": [
                [system, _user("Hi"), _assistant("Hello"), _user("A joke?"), _assistant("Knock knock.")],
                [_user("Unanswered")],
                [_assistant("No request")],
                [_user("Q"), _assistant(" ")],
            ],
        }
    )
    res = format_trl({"data": df}, FormatConfig(type="prompt_completion", messages="m"), ctx)
    out = res.tables["data"]
    assert out.columns == ["_id", "prompt", "completion"] and out["_id"].to_list() == ["m:0"]
    assert out.row(0)[1:] == (
        [system, _user("Hi"), _assistant("Hello"), _user("A joke?")],
        [_assistant("Knock knock.")],
    )
    reasons = sorted(pl.concat(res.events).select("row_id", "reason").rows())
    assert reasons == [("m:1", "format:no_response"), ("m:2", "format:no_prompt"), ("m:3", "format:no_response")]
    prompts = format_trl({"data": df}, FormatConfig(type="prompt_only", messages="m"), ctx)
    assert prompts.tables["data"]["_id"].to_list() == ["m:0", "m:1", "m:3"]  # a prompt needs no answer
    assert prompts.tables["data"]["prompt"][1].to_list() == [_user("Unanswered")]


def test_conversations_whose_roles_do_not_alternate_are_flagged(ctx):
    """Two user turns in a row (nine HH-RLHF transcripts), or two assistant turns with no tool
    result between them: templates that want roles to alternate refuse them, which TRL met only when
    it prepared the data. Kept and flagged; a tool call, its result and the answer alternate."""
    tool = {"role": "tool", "content": "18"}
    df = pl.DataFrame(
        {
            "_id": ["a:0", "a:1", "a:2", "a:3"],
            "m": [
                [_user("Hi"), _assistant("Hello")],
                [_user("Hi"), _user("Are you there?"), _assistant("Yes")],
                [_user("Weather?"), _assistant("calling"), tool, _assistant("18 degrees")],
                [_user("Q"), _assistant("x"), _assistant("y")],
            ],
        }
    )
    res = format_trl({"data": df}, FormatConfig(type="messages", messages="m", system="S"), ctx)
    assert res.tables["data"].height == 4
    flagged = pl.concat(res.events).filter(pl.col("action") == "flagged")
    assert flagged.select("row_id", "reason").rows() == [
        ("a:1", "format:roles_not_alternating"),
        ("a:3", "format:roles_not_alternating"),
    ]
