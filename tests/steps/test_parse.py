"""parse.gsm8k and parse.hh_rlhf on the real shipped data; parse.chat on the forms chat data comes in."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import ValidationError

from dataforge.errors import DataError
from dataforge.steps.dedup import DedupConfig, dedup_exact
from dataforge.steps.parse import (
    ChatConfig,
    Gsm8kConfig,
    HhConfig,
    parse_chat,
    parse_gsm8k,
    parse_hh_rlhf,
    split_hh_conversation,
)
from dataforge.text.chat_text import read_chat_text
from tests.conftest import GSM8K, HH


def _gsm8k(split: str) -> pl.DataFrame:
    df = pl.read_ndjson(GSM8K / f"{split}.jsonl")
    return df.with_columns(pl.format("gsm8k_{}:{}", pl.lit(split), pl.int_range(pl.len())).alias("_id"))


def test_gsm8k_every_real_row_parses(ctx):
    for split in ("train", "test"):
        df = _gsm8k(split)
        res = parse_gsm8k({"data": df}, Gsm8kConfig(), ctx)
        out = res.tables["data"]
        assert out.height == df.height and res.events[0].is_empty()
        assert not out["reasoning"].str.contains("<<").any()
        assert not out["reasoning"].str.contains("####").any()
        expected = df["answer"].str.split("#### ").list.last().str.replace_all(",", "").str.strip_chars()
        assert out["final_answer"].to_list() == expected.to_list()


def test_gsm8k_first_row_exactly(ctx):
    out = parse_gsm8k({"data": _gsm8k("train").head(1)}, Gsm8kConfig(), ctx).tables["data"]
    assert out["reasoning"][0] == (
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May."
    )
    assert out["final_answer"][0] == "72"


def test_gsm8k_without_question_or_final_answer_is_dropped(ctx):
    """A row with a blank question (it was kept, and became a blank prompt) or no numeric final
    answer is dropped with its reason, one reason a row."""
    df = pl.DataFrame(
        {
            "_id": ["a", "b", "c", "d", "e"],
            "question": ["Q1?", "Q2?", "Q3?", " \n", None],
            "answer": ["x\n#### 1,234", "no final line", "y\n#### many", "z\n#### 5", "no final line"],
        }
    )
    res = parse_gsm8k({"data": df}, Gsm8kConfig(), ctx)
    assert res.tables["data"]["final_answer"].to_list() == ["1234"]
    assert res.tables["data"].columns == ["_id", "question", "answer", "reasoning", "final_answer"]
    drops = pl.concat(res.events).sort("row_id").select("row_id", "reason").rows()
    assert drops == [
        ("b", "parse:gsm8k_no_final_answer"),
        ("c", "parse:gsm8k_no_final_answer"),
        ("d", "parse:gsm8k_no_question"),
        ("e", "parse:gsm8k_no_question"),
    ]
    # rows with no question column at all: question: null
    res = parse_gsm8k({"data": df.drop("question")}, Gsm8kConfig(question=None), ctx)
    assert res.tables["data"]["_id"].to_list() == ["a", "d"]
    # a decimal or a fraction is an answer (GSM8K-format sets beyond GSM8K's integers); "3/4 cup" is not
    other = pl.DataFrame(
        {"_id": ["f", "g", "h"], "question": ["Q?"] * 3, "answer": ["x\n#### 3/4", "x\n#### -2.5", "x\n#### 3/4 cup"]}
    )
    res = parse_gsm8k({"data": other}, Gsm8kConfig(), ctx)
    assert res.tables["data"]["final_answer"].to_list() == ["3/4", "-2.5"]
    assert pl.concat(res.events)["row_id"].to_list() == ["h"]


def test_hh_real_data_pairs_and_drops(ctx):
    rows = [json.loads(line) for line in gzip.open(HH / "test.jsonl.gz", "rt")]
    df = pl.DataFrame(rows).with_columns(pl.format("hh:{}", pl.int_range(pl.len())).alias("_id"))
    res = parse_hh_rlhf({"data": df}, HhConfig(), ctx)
    out = res.tables["data"]
    ev = res.events[0]
    assert out.height + ev.height == df.height == 2312
    assert ev.height == 9 and set(ev["reason"]) == {"parse:hh_roles_not_alternating"}
    first = out.row(0, named=True)
    assert first["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert first["prompt"][-1]["role"] == "user"
    assert [m["role"] for m in first["chosen"]] == ["assistant"] == [m["role"] for m in first["rejected"]]
    assert first["chosen"] != first["rejected"]
    # every kept prompt alternates user/assistant and ends with the user
    for prompt in out["prompt"].to_list():
        assert [m["role"] for m in prompt] == ["user", "assistant"] * (len(prompt) // 2) + ["user"]


def test_hh_malformed_reasons():
    assert split_hh_conversation("Human: hi\n\nAssistant: yo")[1] == "parse:hh_no_leading_human"
    assert split_hh_conversation("\n\nHuman: a\n\nHuman: b\n\nAssistant: c")[1] == "parse:hh_roles_not_alternating"
    assert split_hh_conversation("\n\nHuman: a\n\nAssistant: b\n\nHuman: c")[1] == "parse:hh_last_turn_not_assistant"
    msgs, err = split_hh_conversation("\n\nHuman: a \n\nAssistant: b")
    assert err is None and msgs == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]


def test_hh_prefix_mismatch_and_identical(ctx):
    df = pl.DataFrame(
        {
            "_id": ["x", "y"],
            "chosen": ["\n\nHuman: a\n\nAssistant: b", "\n\nHuman: a\n\nAssistant: b"],
            "rejected": ["\n\nHuman: OTHER\n\nAssistant: c", "\n\nHuman: a\n\nAssistant: b"],
        }
    )
    ev = parse_hh_rlhf({"data": df}, HhConfig(), ctx).events[0]
    assert ev["reason"].to_list() == ["parse:hh_prefix_mismatch", "parse:hh_identical"]


# -- parse.chat -------------------------------------------------------------------------------------


def _read(tmp_path, rows: list[dict]) -> pl.DataFrame:
    """Rows as the JSONL source reads them (polars infers one type per column)."""
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    df = pl.read_ndjson(path)
    return df.with_columns(pl.format("c:{}", pl.int_range(pl.len())).alias("_id"))


def test_sharegpt_turns_become_messages_with_the_roles_templates_name(ctx, tmp_path):
    """ShareGPT data ({from: human | gpt | system, value}) was no conversation to any step: dedup
    failed with a polars error on a missing 'content' field, and format could not shape it."""
    rows = [
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello!"},
                {"from": "Human", "value": "Bye"},
                {"from": "GPT", "value": "Bye!"},
            ]
        },
        {"conversations": [{"from": "user", "value": "2+2?"}, {"from": "observation", "value": "4"}]},
        {"conversations": [{"from": "developer", "value": "Be exact."}, {"from": "user", "value": "Hi"}]},
        {"conversations": None},
    ]
    df = _read(tmp_path, rows)
    with pytest.raises(DataError, match=r"row c:1 has a turn of role 'observation'.*roles: \{observation: assistant\}"):
        parse_chat({"data": df}, ChatConfig(fields=["conversations"]), ctx)
    res = parse_chat({"data": df}, ChatConfig(fields=["conversations"], roles={"Observation": "tool"}), ctx)
    out = res.tables["data"]
    assert out.schema["conversations"] == pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
    first = out["conversations"][0].to_list()
    assert [t["role"] for t in first] == ["system", "user", "assistant", "user", "assistant"]
    assert [t["content"] for t in first] == ["Be brief.", "Hi", "Hello!", "Bye", "Bye!"]
    assert out["conversations"][1].to_list()[1] == {"role": "tool", "content": "4"}
    assert out["conversations"][2].to_list()[0] == {"role": "system", "content": "Be exact."}  # OpenAI's developer
    assert out["conversations"][3] is None and res.events[0].is_empty()  # a null conversation: format's to drop
    # the output is messages every step reads: two ShareGPT copies of one chat are exact duplicates
    twice = pl.concat([out.head(1), out.head(1).with_columns(pl.lit("c:9").alias("_id"))])
    deduped = dedup_exact({"data": twice}, DedupConfig(fields=["conversations"]), ctx).tables["data"]
    assert deduped["_id"].to_list() == ["c:0"]
    with pytest.raises(ValidationError, match="'narrator' maps to 'bot', which is not a role"):
        ChatConfig(roles={"narrator": "bot"})


def test_contents_given_as_parts_are_their_text_and_a_row_with_an_image_is_dropped(ctx, tmp_path):
    """OpenAI / Hugging Face content parts ([{type: text, text}]) failed every step with a polars
    cast error; where other rows held plain text, polars had read the parts as JSON text, which
    would have been trained on as the message."""
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    rows = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "text", "text": "it."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]},
                {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
            ]
        },
    ]
    res = parse_chat({"data": _read(tmp_path, rows)}, ChatConfig(), ctx)
    assert res.tables["data"]["messages"].to_list() == [
        [{"role": "user", "content": "Describe\nit."}, {"role": "assistant", "content": "A cat."}]
    ]
    dropped = res.events[0]
    assert dropped["row_id"].to_list() == ["c:1"] and dropped["reason"][0] == "parse:chat_not_text"
    assert json.loads(dropped["detail_json"][0]) == {"field": "messages", "part": "image_url"}

    mixed = _read(tmp_path, [{"messages": [{"role": "user", "content": "Hi"}]}, rows[0]])
    assert mixed.schema["messages"].inner.to_schema()["content"] == pl.String  # polars made the parts JSON text
    assert mixed["messages"][1].to_list()[0]["content"].startswith('[{"type": "text"')
    out = parse_chat({"data": mixed}, ChatConfig(), ctx).tables["data"]
    assert [t["content"] for t in out["messages"][1].to_list()] == ["Describe\nit.", "A cat."]
    assert out["messages"][0].to_list() == [{"role": "user", "content": "Hi"}]


def test_parse_chat_keeps_a_turns_other_fields_and_refuses_what_is_no_conversation(ctx):
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    df = pl.DataFrame(
        {
            "_id": ["t:0"],
            "m": [
                [
                    {"from": "human", "value": "Go", "tool_calls": None},
                    {"from": "gpt", "value": None, "tool_calls": [call]},
                ]
            ],
            "text": ["Human: hi"],
            "odd": [[{"speaker": "a", "says": "b"}]],
        }
    )
    out = parse_chat({"data": df}, ChatConfig(fields=["m"]), ctx).tables["data"]
    assert out["m"][0].to_list()[1] == {"role": "assistant", "content": None, "tool_calls": [call]}
    with pytest.raises(DataError, match=r"column 'n' is Int64, neither text nor a list of turns"):
        parse_chat({"data": df.with_columns(n=pl.lit(1, dtype=pl.Int64))}, ChatConfig(fields=["n"]), ctx)
    with pytest.raises(DataError, match=r"its turns have the fields speaker, says; parse\.chat needs a role"):
        parse_chat({"data": df}, ChatConfig(fields=["odd"]), ctx)
    # a step that reads text names the step that reads such turns, not a polars error
    with pytest.raises(DataError, match=r"column 'odd' holds turns of \{speaker: String, says: String\}.*'parse.chat'"):
        dedup_exact({"data": df}, DedupConfig(fields=["odd"]), ctx)


CHATS = {
    "chatml": "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi\nthere<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi\nthere<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
    "\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n4<|eot_id|>",
    "gemma": "<bos><start_of_turn>system\nBe brief.<end_of_turn>\n<start_of_turn>user\nHi\nthere<end_of_turn>\n"
    "<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
    "phi3": "<|system|>\nBe brief.<|end|>\n<|user|>\nHi\nthere<|end|>\n<|assistant|>\nHello!<|end|>\n"
    "<|user|>\n2+2?<|end|>\n<|assistant|>\n4<|end|>\n<|endoftext|>",
    "zephyr": "<|system|>\nBe brief.</s>\n<|user|>\nHi\nthere</s>\n<|assistant|>\nHello!</s>\n<|user|>\n2+2?</s>\n"
    "<|assistant|>\n4</s>\n",
    "llama2": "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi\nthere [/INST] Hello! </s><s>[INST] 2+2? [/INST] 4 </s>",
    "transcript": "### System: Be brief.\n### Human: Hi\nthere\n### Assistant: Hello!\n"
    "### Human: 2+2?\n### Assistant: 4",
    # a turn a line: its labels open lines, not paragraphs (HH-RLHF's do; see the test below)
    "transcript by line": "System: Be brief.\nHuman: Hi\nthere\nAssistant: Hello!\nHuman: 2+2?\nAssistant: 4",
}
SAID = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi\nthere"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


@pytest.mark.parametrize("chat_format", sorted(CHATS))
def test_a_conversation_written_out_in_a_chat_format_is_read_back_into_its_turns(ctx, chat_format):
    """SFT sets often hold one `text` column with a chat template applied; read back into turns,
    they can be deduplicated by turn, split by request and shaped for another model's template."""
    text = CHATS[chat_format]
    df = pl.DataFrame({"_id": ["t:0", "t:1"], "text": [text, None]})
    for given in ("auto", chat_format.split()[0]):
        out = parse_chat({"data": df}, ChatConfig(fields=["text"], chat_format=given), ctx).tables["data"]
        assert out["text"][0].to_list() == SAID and out["text"][1] is None


@pytest.mark.parametrize(
    "dtype, value",
    [
        (pl.Categorical, "x"),
        (pl.Enum(["a", "b"]), "a"),
        (pl.Datetime("us", "UTC"), datetime(2024, 1, 1, tzinfo=timezone.utc)),
        (pl.Decimal(10, 2), Decimal("1.25")),
        (pl.Duration("us"), timedelta(seconds=3)),
        (pl.Binary, b"ab"),
        (pl.Array(pl.Int64, 2), [1, 2]),
        (pl.List(pl.Struct({"name": pl.String, "arguments": pl.String})), [{"name": "f", "arguments": "{}"}]),
    ],
)
def test_turns_read_row_by_row_keep_their_other_fields_of_any_type(dtype, value):
    """A conversation read row by row (contents as parts) is built into its column by Arrow
    (``_as_column``): a turn's other fields, of any type polars gives them, come out as polars
    would build them itself."""
    from dataforge.steps.parse import _as_column

    column = pl.List(pl.Struct({"role": pl.String, "content": pl.String, "extra": dtype}))
    rows = [[{"role": "user", "content": "hi", "extra": value}, {"role": "assistant", "content": None}], None, []]
    built = _as_column("c", rows, column)
    assert built.dtype == column and built.equals(pl.Series("c", rows, dtype=column))


def test_a_text_column_with_no_rows_or_only_nulls_reads_as_messages(ctx):
    """The column is built as Arrow arrays (``_read_texts``): no rows, and only null rows, give
    a messages column of as many rows (an empty batch of a build reads so)."""
    from dataforge.text.fields import MESSAGES

    for texts in ([], [None, None]):
        ids = [f"t:{i}" for i in range(len(texts))]
        df = pl.DataFrame({"_id": ids, "text": texts}, schema_overrides={"text": pl.String})
        out = parse_chat({"data": df}, ChatConfig(fields=["text"]), ctx).tables["data"]
        assert out.schema["text"] == MESSAGES and out["text"].to_list() == texts


def test_text_in_no_chat_format_is_dropped_with_its_reason_and_a_generation_prompt_is_no_turn(ctx):
    df = pl.DataFrame(
        {
            "_id": ["t:0", "t:1", "t:2", "t:3"],
            "text": [
                "Just a sentence about Human rights.",
                "Preamble first. <|im_start|>user\nHi<|im_end|>",  # text before the first turn: not guessed
                "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",  # ends with a generation prompt
                "<|im_start|>narrator\nOnce<|im_end|>",  # a role no template names
            ],
        }
    )
    res = parse_chat({"data": df}, ChatConfig(fields=["text"]), ctx)
    assert res.tables["data"]["text"].to_list() == [[{"role": "user", "content": "Hi"}]]
    dropped = pl.concat(res.events)
    assert dropped.select("row_id", "reason").rows() == [
        ("t:0", "parse:chat_unknown_format"),
        ("t:1", "parse:chat_unknown_format"),
        ("t:3", "parse:chat_unknown_format"),
    ]
    # a header role no template names is read when the step's roles name it
    named = parse_chat({"data": df.slice(3, 1)}, ChatConfig(fields=["text"], roles={"Narrator": "system"}), ctx)
    assert named.tables["data"]["text"].to_list() == [[{"role": "system", "content": "Once"}]]
    # a format named is the one read: ChatML text asked for as Llama 3 is no Llama 3 conversation
    res = parse_chat({"data": df.slice(2, 1)}, ChatConfig(fields=["text"], chat_format="llama3"), ctx)
    assert res.tables["data"].is_empty() and pl.concat(res.events)["reason"].to_list() == ["parse:chat_unknown_format"]


def test_hh_transcripts_read_as_parse_hh_rlhf_reads_them(ctx):
    """The real HH-RLHF harmless-base test transcripts: every chosen conversation parse.chat reads
    is the prompt and chosen answer parse.hh_rlhf finds in it — but an empty final answer, which is
    read as an answer not written (a transcript ending in "Assistant:", as a generation prompt does)."""
    df = pl.read_ndjson(HH / "test.jsonl.gz").with_columns(pl.format("h:{}", pl.int_range(pl.len())).alias("_id"))
    pairs = parse_hh_rlhf({"data": df}, HhConfig(), ctx).tables["data"]
    res = parse_chat({"data": df.select("_id", "chosen")}, ChatConfig(fields=["chosen"]), ctx)
    assert res.tables["data"].height == df.height and pl.concat(res.events).is_empty()
    read = dict(zip(res.tables["data"]["_id"], res.tables["data"]["chosen"].to_list(), strict=True))
    unanswered = 0
    for row in pairs.iter_rows(named=True):
        whole = row["prompt"] + row["chosen"]
        if not row["chosen"][0]["content"]:
            whole, unanswered = whole[:-1], unanswered + 1
        assert read[row["_id"]] == whole, row["_id"]
    assert pairs.height == 2303 and unanswered == 4


def test_hh_pairs_read_by_parse_chat_and_the_implicit_prompt_are_parse_hh_rlhfs_pairs(ctx):
    """Two paths to the same DPO pairs, on the real HH-RLHF harmless-base test file: parse.hh_rlhf
    then format, and parse.chat on both transcripts then format without a prompt (the turns the
    sides open with). Every pair both keep is the same; the chat path keeps, flagged, the nine
    conversations with two turns of one role in a row that parse.hh_rlhf drops."""
    from dataforge.steps.format import FormatConfig, format_trl

    df = pl.read_ndjson(HH / "test.jsonl.gz").with_columns(pl.format("h:{}", pl.int_range(pl.len())).alias("_id"))
    pairs = parse_hh_rlhf({"data": df}, HhConfig(), ctx)
    explicit = format_trl(
        {"data": pairs.tables["data"]},
        FormatConfig(type="preference", prompt="prompt", chosen="chosen", rejected="rejected"),
        ctx,
    )
    chats = parse_chat({"data": df}, ChatConfig(fields=["chosen", "rejected"]), ctx)
    implicit = format_trl(
        {"data": chats.tables["data"]}, FormatConfig(type="preference", chosen="chosen", rejected="rejected"), ctx
    )
    a, b = explicit.tables["data"], implicit.tables["data"]
    assert a.height == 2299 and b.height == 2308
    assert_frame_equal(b.filter(pl.col("_id").is_in(a["_id"].implode())), a, check_dtypes=False)
    kept_more = set(b["_id"]) - set(a["_id"])
    not_alternating = pl.concat(pairs.events).filter(pl.col("reason") == "parse:hh_roles_not_alternating")
    assert kept_more == set(not_alternating["row_id"]) and len(kept_more) == 9
    flagged = pl.concat(implicit.events).filter(pl.col("reason") == "format:roles_not_alternating")
    assert set(flagged["row_id"]) == kept_more


def test_conversations_read_at_once_are_those_read_row_by_row(ctx):
    """Where no turn needs Python (every content text, no null turn), parse.chat reads a column by
    polars expressions at once; the messages are the ones the row-by-row reading gives. Checked on
    the real HH conversations in ShareGPT form, with mixed-case roles, a turn field and an empty
    and a null conversation."""
    from dataforge.steps.parse import _Chat

    df = pl.read_ndjson(HH / "test.jsonl.gz").head(400)
    convos = []
    for k, text in enumerate(df["chosen"]):
        turns = [
            {"from": ("Human" if role == "user" else "GPT") if k % 2 else role, "value": t["content"], "weight": k % 3}
            for t in read_chat_text(text, "transcript")
            for role in [t["role"]]
        ]
        convos.append(turns)
    convos[5], convos[6] = [], None
    table = pl.DataFrame({"_id": [f"h:{k}" for k in range(len(convos))], "c": convos})
    chat = _Chat("c", table.schema["c"], {})
    at_once = chat.whole(table)
    assert at_once is not None
    one_by_one = [
        chat.conversation(turns, rid)[0] for rid, turns in zip(table["_id"], table["c"].to_list(), strict=True)
    ]
    assert at_once.to_list() == one_by_one and at_once.dtype == chat.dtype
    assert at_once[1].to_list()[0] == {"role": "user", "content": one_by_one[1][0]["content"], "weight": 1}
    # a turn that needs Python (a part, a null turn) reads the column row by row
    with_parts = table.with_columns(
        pl.Series("c", [[{"from": "human", "value": '[{"type": "text", "text": "x"}]', "weight": 0}]] * 400)
    )
    assert _Chat("c", with_parts.schema["c"], {}).whole(with_parts) is None
    # a role no template names is refused as the row-by-row reading refuses it
    odd = table.with_columns(pl.Series("c", [[{"from": "Narrator", "value": "x", "weight": 0}]] * 400))
    with pytest.raises(DataError, match="row h:0 has a turn of role 'Narrator'"):
        _Chat("c", odd.schema["c"], {}).whole(odd)
