"""clean.normalize and clean.filter on direct calls: outputs and the events they record."""

from __future__ import annotations

import json

import polars as pl
import pytest
from pydantic import ValidationError

from dataforge.errors import DataError
from dataforge.steps.clean import FilterConfig, NormalizeConfig, filter_rows, normalize
from dataforge.text.fields import MESSAGES
from dataforge.text.normalize import normalize_text


def _df(**cols):
    n = len(next(iter(cols.values())))
    return pl.DataFrame({"_id": [f"s:{i}" for i in range(n)], **cols})


def test_normalize_nfkc_and_whitespace(ctx):
    df = _df(q=["ﬁve  apples\u00a0and\t２ pears ", "  line one \r\nline  two \n\n\n\nend", "same"])
    res = normalize({"data": df}, NormalizeConfig(fields=["q"]), ctx)
    out = res.tables["data"]["q"].to_list()
    assert out == ["five apples and 2 pears", "line one\nline two\n\nend", "same"]
    ev = res.events[0]
    assert ev["row_id"].to_list() == ["s:0", "s:1"]  # the unchanged row has no event
    assert set(ev["action"]) == {"revised"} and set(ev["reason"]) == {"clean:normalize"}
    assert json.loads(ev["detail_json"][0]) == {"fields": ["q"]}
    assert df["q"][0].startswith("ﬁ")  # the input is not mutated


def test_normalize_keeps_the_layout_of_code(ctx):
    """Collapsing whitespace folded indentation: Python in a completion no longer parsed. Each
    line's indentation is kept, and fenced code blocks are kept exactly; the rest is collapsed."""
    import ast

    code = "def area(w, h):\n    if w < 0:  \n        raise ValueError('w')\n\n\n\n    return  w * h\n"
    body = "    total = 0\n    for x in xs:\n        total += x\n    return total"  # a body, first line indented
    fenced = "Use this:\r\n\r\n```python\ndef pad(s):\n    return s + '   '\n\n\n\n```\n\n\n\nIt  pads.  "
    listed = "Steps:\n- mix\n  - flour   and water\n- bake"
    df = _df(c=[code, body, fenced, listed])
    out = normalize({"data": df}, NormalizeConfig(fields=["c"]), ctx).tables["data"]["c"].to_list()
    assert out[0] == "def area(w, h):\n    if w < 0:\n        raise ValueError('w')\n\n    return w * h"
    assert ast.dump(ast.parse(out[0])) == ast.dump(ast.parse(code))
    assert out[1] == body
    assert out[2] == "Use this:\n\n```python\ndef pad(s):\n    return s + '   '\n\n\n\n```\n\nIt pads."
    assert out[3] == "Steps:\n- mix\n  - flour and water\n- bake"
    # a string literal's spaces are its value: kept (they were folded, 'a   b' became 'a b')
    literal = 'def sep():\n    return \'a   b\' + "c\\"  d"  # joins   them\n'
    kept = normalize({"data": _df(c=[literal])}, NormalizeConfig(fields=["c"]), ctx).tables["data"]["c"][0]
    assert ast.dump(ast.parse(kept)) == ast.dump(ast.parse(literal)) and kept.endswith("# joins them")
    for keep_code in (True, False):  # an empty batch too (a typed empty mask: the Ray audit failed on it)
        assert normalize_text(pl.Series([], dtype=pl.String), keep_code=keep_code).dtype == pl.String


def test_normalize_a_conversation_turn_by_turn(ctx):
    """A messages column was refused as not text; each turn's content is normalized, roles, order,
    empty and null conversations kept."""
    convs = [
        [{"role": "user", "content": "ﬁve  apples "}, {"role": "assistant", "content": "def f():\n    return  1"}],
        [],
        None,
        [{"role": "user", "content": "same"}],
    ]
    df = pl.DataFrame({"_id": ["c:0", "c:1", "c:2", "c:3"], "m": pl.Series(convs, dtype=MESSAGES)})
    res = normalize({"data": df}, NormalizeConfig(fields=["m"]), ctx)
    out = res.tables["data"]
    assert out.schema["m"] == MESSAGES
    assert out["m"].to_list() == [
        [{"role": "user", "content": "five apples"}, {"role": "assistant", "content": "def f():\n    return 1"}],
        [],
        None,
        [{"role": "user", "content": "same"}],
    ]
    assert res.events[0]["row_id"].to_list() == ["c:0"]


def test_normalize_keeps_superscripts_subscripts_and_fractions(ctx):
    """NFKC folds "5²" into "52" and "½" into "1⁄2": in math data a change of meaning. The default
    keeps them (and still folds the rest); keep_math: false is plain NFKC."""
    df = _df(q=["5² = 25 and x₂ is ½ of ﬁve ２", "3¾ cups"])
    kept = normalize({"data": df}, NormalizeConfig(fields=["q"]), ctx).tables["data"]["q"].to_list()
    assert kept == ["5² = 25 and x₂ is ½ of five 2", "3¾ cups"]
    plain = normalize({"data": df}, NormalizeConfig(fields=["q"], keep_math=False), ctx).tables["data"]["q"]
    assert plain.to_list() == ["52 = 25 and x2 is 1\u20442 of five 2", "33\u20444 cups"]


def test_normalize_lowercase_only_named_fields(ctx):
    df = _df(q=["HeLLo"], a=["KEEP"])
    out = normalize({"x": df}, NormalizeConfig(fields=["q"], lowercase=True), ctx).tables["x"]
    assert out.row(0) == ("s:0", "hello", "KEEP")


def test_normalize_rejects_non_text_field(ctx):
    from dataforge.errors import DataError

    with pytest.raises(DataError, match="field 'n' is Int64, not text"):
        normalize({"data": _df(n=[1, 2])}, NormalizeConfig(fields=["n"]), ctx)


def test_filter_rules_and_first_failing_reason(ctx):
    df = _df(
        q=["a good long question", "short", None, "a question with a URL http://x", "no marker here at all"],
        a=["#### 1", "#### 2", "#### 3", "#### 4", "nothing"],
    )
    cfg = FilterConfig(
        fields=["q"], min_length=10, max_length=100, required=["q"], keep_regex={"a": "####"}, drop_regex={"q": "http"}
    )
    res = filter_rows({"data": df}, cfg, ctx)
    assert res.tables["data"]["_id"].to_list() == ["s:0"]
    ev = pl.concat(res.events).sort("row_id")
    assert dict(zip(ev["row_id"], ev["reason"], strict=True)) == {
        "s:1": "filter:min_length",
        "s:2": "filter:required",
        "s:3": "filter:regex_drop",
        "s:4": "filter:regex_keep",
    }
    assert ev.filter(pl.col("row_id") == "s:1")["score"].item() == 5.0
    assert len(ev) == 4  # one event per dropped row, never two


def test_required_conversation_needs_a_turn_with_text(ctx):
    """``required`` on a messages column drops a conversation with no turns or only blank ones (an
    empty list was not null, so it was kept), and on a list column an empty list."""
    user = {"role": "user", "content": "Hi"}
    df = pl.DataFrame(
        {
            "_id": ["s:0", "s:1", "s:2", "s:3", "s:4"],
            "m": [[user], [], None, [{"role": "user", "content": "  "}], [{"role": "system", "content": None}, user]],
            "tags": [["a"], ["b"], ["c"], [], None],
        }
    )
    res = filter_rows({"data": df}, FilterConfig(required=["m"]), ctx)
    assert res.tables["data"]["_id"].to_list() == ["s:0", "s:4"]
    assert sorted(res.events[0]["row_id"].to_list()) == ["s:1", "s:2", "s:3"]
    res = filter_rows({"data": df}, FilterConfig(required=["tags"]), ctx)
    assert res.tables["data"]["_id"].to_list() == ["s:0", "s:1", "s:2"]


def test_length_and_regex_rules_read_a_conversation_by_what_it_says(ctx):
    """A messages column was refused as not text; it is measured and matched on its turns' contents."""
    convs = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, how can I help?"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
        [{"role": "user", "content": "Visit http://spam"}, {"role": "assistant", "content": "No thanks, not today."}],
    ]
    df = pl.DataFrame({"_id": ["c:0", "c:1", "c:2"], "messages": pl.Series(convs, dtype=MESSAGES)})
    cfg = FilterConfig(fields=["messages"], min_length=4, unit="words", drop_regex={"messages": "http"})
    res = filter_rows({"data": df}, cfg, ctx)
    assert res.tables["data"]["_id"].to_list() == ["c:0"]
    ev = pl.concat(res.events).sort("row_id")
    assert ev.select("row_id", "reason", "score").rows() == [
        ("c:1", "filter:min_length", 2.0),  # "Hi" + "Yo": two words, the role names not counted
        ("c:2", "filter:regex_drop", None),
    ]
    with pytest.raises(DataError, match="field 'n' is Int32, not text"):
        filter_rows({"data": df.with_columns(pl.lit(1).alias("n"))}, FilterConfig(fields=["n"], max_length=3), ctx)


def test_an_answer_that_only_calls_a_tool_has_the_length_of_its_call(ctx):
    """A turn that only calls a tool (null content) read as no text, so `min_length` dropped every
    tool-calling answer as too short."""
    fn = {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}
    calls = [
        [{"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": fn}]}],
        [{"role": "assistant", "content": "ok", "tool_calls": None}],
    ]
    df = pl.DataFrame({"_id": ["t:0", "t:1"], "completion": calls})
    res = filter_rows({"data": df}, FilterConfig(fields=["completion"], min_length=10), ctx)
    assert res.tables["data"]["_id"].to_list() == ["t:0"]
    assert pl.concat(res.events)["row_id"].to_list() == ["t:1"]
    # nor is such an answer missing to `required` (it read the turns' contents alone)
    calls[1] = [{"role": "assistant", "content": " ", "tool_calls": None}]
    df = pl.DataFrame({"_id": ["t:0", "t:1"], "completion": calls})
    res = filter_rows({"data": df}, FilterConfig(required=["completion"]), ctx)
    assert res.tables["data"]["_id"].to_list() == ["t:0"]
    assert pl.concat(res.events).select("row_id", "reason").rows() == [("t:1", "filter:required")]


def test_filter_words_unit(ctx):
    df = _df(q=["one two three", "one"])
    res = filter_rows({"data": df}, FilterConfig(fields=["q"], min_length=2, unit="words"), ctx)
    assert res.tables["data"]["_id"].to_list() == ["s:0"]
    assert res.events[0]["score"].to_list() == [1.0]


def test_filter_tokens_unit_with_a_local_tokenizer(ctx, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "one": 1, "two": 2, "three": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    df = _df(q=["one two three four", "one two"])
    cfg = FilterConfig(fields=["q"], max_length=3, unit="tokens", tokenizer=str(tmp_path / "tok"))
    res = filter_rows({"data": df}, cfg, ctx)
    assert res.tables["data"]["_id"].to_list() == ["s:1"]
    assert res.events[0]["score"].to_list() == [4.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fields": ["q"], "min_length": 5, "max_length": 2}, "above max_length"),
        ({"fields": ["q"], "unit": "tokens", "min_length": 1}, "needs 'tokenizer'"),
        ({"keep_regex": {"q": "("}}, "does not compile"),
        ({}, "no rule"),
        ({"min_length": 3}, "need 'fields'"),
    ],
)
def test_filter_config_errors(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        FilterConfig(**kwargs)
