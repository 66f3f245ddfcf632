"""dedup.exact and dedup.minhash: datasketch compatibility, clusters, keep rules, against,
template-aware matching, and the events they record."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from pydantic import ValidationError

from dataforge.steps.dedup import DedupConfig, MinhashConfig, dedup_exact, dedup_minhash
from dataforge.text.minhash import datasketch_minhash, lsh_params, signatures
from tests.conftest import GSM8K

QUESTIONS = pl.read_ndjson(GSM8K / "train.jsonl")["question"]


@pytest.mark.parametrize(
    "num_perm, seed, ngram, unit", [(128, 1, 3, "word"), (64, 42, 1, "word"), (256, 7, 5, "word"), (128, 3, 5, "char")]
)
def test_signatures_equal_datasketch_hashvalues(num_perm, seed, ngram, unit):
    texts = [*QUESTIONS.head(40).to_list(), "", "one", "Ünïcödé wörds and  MIXED\n case", "a b", " \t "]
    ours = signatures(texts, num_perm=num_perm, seed=seed, ngram=ngram, unit=unit)
    for text, sig in zip(texts, ours, strict=True):
        theirs = datasketch_minhash(text, num_perm, seed, ngram, unit)
        assert theirs.scheme == "affine32"  # datasketch 2.0's default scheme
        assert np.array_equal(theirs.hashvalues, sig), text


def test_signatures_split_over_cores_equal_one_document_at_a_time():
    answers = pl.read_ndjson(GSM8K / "train.jsonl")["answer"]
    texts = pl.concat([QUESTIONS, answers]).head(6000)  # > 2 x 2048 rows: one chunk per core
    together = signatures(texts.to_arrow(), num_perm=64, seed=3, ngram=3)
    for i in range(0, 6000, 97):
        assert np.array_equal(together[i], signatures([texts[i]], num_perm=64, seed=3, ngram=3)[0]), i


def test_kernels_reject_buffers_that_are_too_small():
    from dataforge.text import _kernels

    data, offsets = np.frombuffer(b"one two", dtype=np.uint8), np.array([0, 7], dtype=np.int64)
    a = b = np.ones(8, dtype=np.uint32)
    with pytest.raises(ValueError, match="out"):
        _kernels.signatures(data, offsets, 0, 1, 3, False, a, b, np.empty(4, dtype=np.uint32))
    with pytest.raises(ValueError, match="offsets"):
        _kernels.signatures(data, offsets, 0, 2, 3, False, a, b, np.empty(16, dtype=np.uint32))
    with pytest.raises(IndexError):
        _kernels.pair_jaccard(data, offsets, 3, False, np.array([[0, 1]], dtype=np.int64), 0, 1, np.empty(1))


def test_minhash_text_normalizes_exactly_what_nfkc_and_lowercase_change():
    """Only texts with a non-ASCII run that NFKC or lowercasing changes are normalized, and
    the shingles are those of the fully normalized text."""
    import unicodedata

    from dataforge.steps.dedup import dedup_text

    texts = [
        "cafe\u0301 au lait",  # a combining accent composes with the ASCII letter before it
        "Ｆｕｌｌ width letters",
        "ÉCOLE Normale",
        "ΑΣ ΟΔΟΣ",  # final sigma
        "ﬁne ﬂow",
        "\u1100\u1161 jamo compose",
        "I’m here — “quoted”",  # non-ASCII that neither changes
        "non\u00a0breaking space",
        "½ cup",
        "Plain ASCII Text",
    ]
    df = _frame(texts)
    ours = dedup_text(df, MinhashConfig(fields=["q"]), exact=False)
    full = [unicodedata.normalize("NFKC", t).lower() for t in texts]
    assert np.array_equal(signatures(ours.to_arrow()), signatures(full))
    assert ours[6] == texts[6] and ours[9] == texts[9]  # left alone: the kernel lowercases ASCII itself


def test_candidate_pairs_link_each_bucket_to_its_best_ranked_member():
    from dataforge.text.minhash import candidate_pairs

    rng = np.random.default_rng(0)
    sigs = rng.integers(0, 3, (400, 8), dtype=np.uint32)  # few values: many shared bands
    sigs[7] = sigs[11] = 0xFFFFFFFF  # empty documents match nothing
    rank = rng.permutation(400)
    expected = set()
    for band in range(4):
        buckets: dict[tuple, list[int]] = {}
        for d in range(400):
            if d not in (7, 11):
                buckets.setdefault(tuple(sigs[d, band * 2 : band * 2 + 2]), []).append(d)
        for members in buckets.values():
            head = min(members, key=lambda d: rank[d])
            expected |= {(head, d) for d in members if d != head}
    got = candidate_pairs(sigs, 4, 2, rank)
    assert {tuple(p) for p in got.tolist()} == expected and len(got) == len(expected)


def test_small_buckets_give_every_pair_of_their_members_better_ranked_first():
    from dataforge.text.minhash import candidate_pairs

    rng = np.random.default_rng(1)
    sigs = rng.integers(0, 40, (300, 8), dtype=np.uint32)  # buckets of a few rows
    rank = rng.permutation(300)
    expected = set()
    for band in range(4):
        buckets: dict[tuple, list[int]] = {}
        for d in range(300):
            buckets.setdefault(tuple(sigs[d, band * 2 : band * 2 + 2]), []).append(d)
        for members in buckets.values():
            ordered = sorted(members, key=lambda d: rank[d])
            if len(members) <= 4:
                expected |= {(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1 :]}
            else:
                expected |= {(ordered[0], b) for b in ordered[1:]}
    got = candidate_pairs(sigs, 4, 2, rank, within=4)
    assert {tuple(p) for p in got.tolist()} == expected and len(got) == len(expected)


def test_lsh_params_equal_datasketch():
    from datasketch.lsh import _optimal_param

    for threshold in (0.1, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95):
        for num_perm in (16, 32, 128, 200, 256):
            assert lsh_params(threshold, num_perm) == _optimal_param(threshold, num_perm, 0.5, 0.5)
    assert lsh_params(0.7, 128, 0.3, 0.7) == _optimal_param(0.7, 128, 0.3, 0.7)


def _frame(texts: list[str], prefix: str = "r", **extra) -> pl.DataFrame:
    return pl.DataFrame({"_id": [f"{prefix}:{i:03d}" for i in range(len(texts))], "q": texts, **extra})


def _near_copy(text: str) -> str:
    """The text with one word appended: word 3-gram Jaccard ~0.93-0.97 for GSM8K questions."""
    return text + " Thanks"


def test_exact_dedup_keeps_smallest_id_and_records_representative(ctx):
    df = _frame(["Same  question?", "other question", "same question?", "SAME QUESTION?"])
    res = dedup_exact({"data": df}, DedupConfig(fields=["q"]), ctx)
    assert res.tables["data"]["_id"].to_list() == ["r:000", "r:001"]
    ev = res.events[0].sort("row_id")
    assert ev["row_id"].to_list() == ["r:002", "r:003"]
    assert set(ev["reason"]) == {"exact_duplicate"} and set(ev["related_id"]) == {"r:000"}
    assert set(ev["score"]) == {1.0}


def test_exact_dedup_sees_through_invisible_characters(ctx):
    """A copy carrying a zero-width space, a byte-order mark, a soft hyphen or a bidirectional mark
    (text copied from web pages and files) is the same text to a reader; NFKC keeps those
    characters, so each such copy was kept. The row kept keeps its text as it was."""
    copies = ["Same question?\u200b", "\ufeffsame question?", "same ques\u00adtion?", "same\u200e question?"]
    df = _frame(["Same question?", "Same question? No: another one.", *copies, "same quest\u200bion"])
    res = dedup_exact({"data": df}, DedupConfig(fields=["q"]), ctx)
    assert res.tables["data"]["_id"].to_list() == ["r:000", "r:001", "r:006"]
    assert res.events[0].sort("row_id")["row_id"].to_list() == ["r:002", "r:003", "r:004", "r:005"]
    kept = res.tables["data"].filter(pl.col("_id") == "r:006")["q"].item()
    assert kept == "same quest\u200bion"  # (only the comparison drops them: the row's text is as it was)


def test_minhash_finds_planted_near_duplicates_only(ctx):
    base = QUESTIONS.head(300).to_list()
    planted = [_near_copy(base[i]) for i in range(0, 300, 10)]
    df = _frame(base + planted)
    res = dedup_minhash({"data": df}, MinhashConfig(fields=["q"], threshold=0.7), ctx)
    dropped = dict(zip(res.events[0]["row_id"], res.events[0]["related_id"], strict=True))
    expected = {f"r:{300 + k:03d}": f"r:{i:03d}" for k, i in enumerate(range(0, 300, 10))}
    assert dropped == expected  # every planted copy found, related to its original, nothing else
    assert (res.events[0]["score"] >= 0.7).all() and (res.events[0]["score"] < 1).all()
    assert res.tables["data"].height == 300


def test_character_shingles_catch_typos(ctx):
    df = _frame(["the quick brown fox jumps over the lazy dog", "the quikc brown fox jumsp over the lazy dgo"])
    words = dedup_minhash({"data": df}, MinhashConfig(fields=["q"], threshold=0.5), ctx)
    assert words.tables["data"].height == 2  # three typos break most word 3-grams
    chars = dedup_minhash({"data": df}, MinhashConfig(fields=["q"], threshold=0.5, shingle="char", ngram=4), ctx)
    assert chars.tables["data"]["_id"].to_list() == ["r:000"]


def test_minhash_is_independent_of_row_order(ctx):
    base = QUESTIONS.head(200).to_list()
    df = _frame(base + [_near_copy(t) for t in base[:50]] + base[:20])
    cfg = MinhashConfig(fields=["q"], threshold=0.7)
    a = dedup_minhash({"data": df}, cfg, ctx)
    b = dedup_minhash({"data": df.sample(fraction=1.0, shuffle=True, seed=3)}, cfg, ctx)
    assert sorted(a.tables["data"]["_id"]) == sorted(b.tables["data"]["_id"])
    assert a.events[0].sort("row_id").equals(b.events[0].sort("row_id"))


def test_keep_rules(ctx):
    df = _frame(
        ["a question about ducks", "A question about ducks", "a question  about ducks"], quality=[0.1, 0.9, 0.5]
    )
    highest = dedup_exact({"data": df}, DedupConfig(fields=["q"], keep="highest", keep_column="quality"), ctx)
    assert highest.tables["data"]["_id"].to_list() == ["r:001"]
    # a NaN quality is no quality (polars sorts it above every number: that row was kept)
    unscored = df.with_columns(pl.Series("quality", [0.1, float("nan"), 0.5]))
    kept = dedup_exact({"data": unscored}, DedupConfig(fields=["q"], keep="highest", keep_column="quality"), ctx)
    assert kept.tables["data"]["_id"].to_list() == ["r:002"]
    ts = pl.Series([3, 1, 2]).cast(pl.Datetime("us", "UTC"))
    earliest = dedup_exact(
        {"data": df.with_columns(ts.alias("_ts"))}, DedupConfig(fields=["q"], keep="earliest_ts"), ctx
    )
    assert earliest.tables["data"]["_id"].to_list() == ["r:001"]


def test_against_drops_only_the_main_side(ctx):
    test = _frame(QUESTIONS.slice(1000, 20).to_list(), prefix="test")
    train = _frame([*QUESTIONS.head(50).to_list(), _near_copy(test["q"][3]), test["q"][7]], prefix="train")
    res = dedup_minhash({"data": train, "against": test}, MinhashConfig(fields=["q"], threshold=0.7), ctx)
    ev = pl.concat(res.events).sort("row_id")
    assert dict(zip(ev["row_id"], ev["related_id"], strict=True)) == {"train:050": "test:003", "train:051": "test:007"}
    assert '"against": true' in ev["detail_json"][0]
    assert res.tables["data"].height == 50
    exact = dedup_exact({"data": train, "against": test}, DedupConfig(fields=["q"]), ctx)
    assert pl.concat(exact.events)["row_id"].to_list() == ["train:051"]


def test_template_aware_clusters_renamed_renumbered_problems(ctx):
    df = _frame(
        [
            "Alice has 3 apples and buys 5 more. How many apples does Alice have now?",
            "Bob has 7 apples and buys 2 more. How many apples does Bob have now?",
            "Alice has 3 pears and gives 1 away. How many pears are left with Alice?",
        ]
    )
    plain = dedup_minhash({"data": df}, MinhashConfig(fields=["q"], threshold=0.8), ctx)
    assert plain.tables["data"].height == 3
    templ = dedup_minhash({"data": df}, MinhashConfig(fields=["q"], threshold=0.8, template_aware=True), ctx)
    assert templ.tables["data"]["_id"].to_list() == ["r:000", "r:002"]
    assert templ.events[0]["reason"].to_list() == ["template_duplicate"]


def test_chat_template_tokens_and_shared_system_prompt_are_ignored(ctx):
    sys_prompt = "You are a helpful assistant. Answer carefully and show your work step by step."
    qs = QUESTIONS.head(30).to_list()
    msgs = [[{"role": "system", "content": sys_prompt}, {"role": "user", "content": q}] for q in qs]
    msgs.append([{"role": "user", "content": "<|im_start|>user\n" + qs[4] + "<|im_end|>"}])
    df = pl.DataFrame({"_id": [f"m:{i:02d}" for i in range(31)], "messages": msgs})
    res = dedup_exact({"data": df}, DedupConfig(fields=["messages"]), ctx)
    assert res.events[0].select("row_id", "related_id").rows() == [("m:30", "m:04")]


def test_answers_that_call_different_tools_are_no_duplicates(ctx):
    """A turn that only calls a tool (the OpenAI format: null content, `tool_calls`) was no text, so
    every such answer to one request was an exact duplicate of the others and all but one were
    dropped. Its calls (function and arguments, not the call's id) are its text now."""

    def call(city: str, call_id: str) -> list[dict]:
        fn = {"name": "get_weather", "arguments": f'{{"city": "{city}"}}'}
        return [
            {"role": "user", "content": "What is the weather like?", "tool_calls": None},
            {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": fn}]},
        ]

    convs = [call("Paris", "c1"), call("Lyon", "c2"), call("Paris", "c3")]  # the third repeats the first call
    df = pl.DataFrame({"_id": ["t:0", "t:1", "t:2"], "messages": convs})
    res = dedup_exact({"data": df}, DedupConfig(fields=["messages"]), ctx)
    assert res.tables["data"]["_id"].to_list() == ["t:0", "t:1"]
    assert res.events[0].select("row_id", "related_id").rows() == [("t:2", "t:0")]


def test_one_conversation_in_any_chat_format_is_one_text(ctx):
    """The same exchange written in ChatML, Llama 2 and 3, Mistral, Gemma, Phi-3, Zephyr, HH-RLHF's
    and Alpaca's formats, as "role: content" lines, and as a messages list: exact duplicates.
    (Llama 3's and Gemma's role names, and every role label opening a line, were kept: six of the
    ten text forms survived exact dedup.) A different answer in the same format is kept."""
    q, a = "What is the capital of France?", "Paris."
    forms = [
        f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>",
        f"<s>[INST] {q} [/INST] {a} </s>",
        f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{q}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{a}<|eot_id|>",
        f"<bos><start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n{a}<end_of_turn>",
        f"<|user|>\n{q}<|end|>\n<|assistant|>\n{a}<|end|>",
        f"[INST] {q} [/INST]{a}</s>",
        f"user: {q}\nassistant: {a}",
        f"### Instruction:\n{q}\n\n### Response:\n{a}",
        f"\n\nHuman: {q}\n\nAssistant: {a}",
        f"<|user|>\n{q}</s>\n<|assistant|>\n{a}</s>",
        f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\nLyon.<|im_end|>",
    ]
    res = dedup_exact({"data": _frame(forms)}, DedupConfig(fields=["q"]), ctx)
    assert res.tables["data"]["_id"].to_list() == ["r:000", "r:010"]
    assert len(res.events[0]) == 9 and set(res.events[0]["related_id"]) == {"r:000"}
    # a messages list against a released set in Llama 3's format: the copy is dropped
    msgs = pl.DataFrame(
        {
            "_id": ["m:0", "m:1"],
            "q": [
                [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                [{"role": "user", "content": q}, {"role": "assistant", "content": "Marseille."}],
            ],
        }
    )
    res = dedup_exact({"data": msgs, "against": _frame(forms[2:3], prefix="eval")}, DedupConfig(fields=["q"]), ctx)
    assert res.tables["data"]["_id"].to_list() == ["m:1"]
    assert res.events[0].select("row_id", "related_id").rows() == [("m:0", "eval:000")]
    # with strip_template: false the formats are text like any other
    kept = dedup_exact({"data": _frame(forms)}, DedupConfig(fields=["q"], strip_template=False), ctx)
    assert kept.tables["data"].height == len(forms)


def test_empty_text_kept_or_dropped(ctx):
    df = _frame(["", "", "a real question here"])
    kept = dedup_minhash({"data": df}, MinhashConfig(fields=["q"]), ctx)
    assert kept.tables["data"].height == 3
    dropped = dedup_minhash({"data": df}, MinhashConfig(fields=["q"], on_empty="drop"), ctx)
    assert dropped.tables["data"]["_id"].to_list() == ["r:002"]
    assert set(pl.concat(dropped.events)["reason"]) == {"dedup:empty_text"}


def test_cluster_columns_and_signature_artifact(ctx):
    base = QUESTIONS.head(20).to_list()
    df = _frame([*base, _near_copy(base[0])])
    res = dedup_minhash(
        {"data": df}, MinhashConfig(fields=["q"], threshold=0.7, cluster_columns=True, keep_signatures=True), ctx
    )
    kept = res.tables["data"]
    assert kept.filter(pl.col("_id") == "r:000")["_cluster_size"].item() == 2
    assert kept["_cluster_id"].to_list() == kept["_id"].to_list()
    sig = res.tables["signatures"]
    assert sig.schema["signature"] == pl.List(pl.UInt32) and sig.height == 21
    assert np.array_equal(np.array(sig["signature"].to_list()), signatures(df["q"].str.to_lowercase().to_list()))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"threshold": 1.2}, "between 0 and 1"),
        ({"lsh_threshold": 0.0}, "lsh_threshold must be between 0 and 1"),
        ({"bands": 20, "rows": 10}, "more than num_perm"),
        ({"bands": 4}, "give both bands and rows"),
        ({"keep": "highest"}, "keep_column"),
    ],
)
def test_minhash_config_errors(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        MinhashConfig(fields=["q"], **kwargs)


def test_semantic_dedup_with_the_offline_minilm(ctx):
    from dataforge.steps.dedup import SemanticConfig, dedup_semantic

    df = _frame(
        [
            "How many apples does Tom have after buying five more?",
            "After buying five more, how many apples does Tom have?",
            "What is the capital city of France?",
            "Write a poem about the sea at night.",
        ]
    )
    against = _frame(["Which city is the capital of France?"], prefix="eval")
    res = dedup_semantic({"data": df, "against": against}, SemanticConfig(fields=["q"], threshold=0.85), ctx)
    ev = pl.concat(res.events).sort("row_id")
    assert ev.select("row_id", "related_id", "reason").rows() == [
        ("r:001", "r:000", "semantic_duplicate"),
        ("r:002", "eval:000", "semantic_duplicate"),
    ]
    assert (ev["score"] >= 0.85).all()
    assert res.tables["data"]["_id"].to_list() == ["r:000", "r:003"]


@pytest.mark.parametrize("against", [False, True])
def test_cosine_search_divided_into_jobs_over_staged_vectors_gives_the_same_pairs(tmp_path, monkeypatch, against):
    """``embed.cosine_pairs`` on vectors in ``.npy`` files with a mapper: a pickled job per
    ``SEARCH_ROWS`` rows reads the files itself, and the pairs and cosines are those of the
    search in one process, bit for bit (within one set, and against another). The vectors are
    MiniLM's of GSM8K questions and their lightly edited copies, so there are pairs to find."""
    import cloudpickle

    import dataforge.embed
    from dataforge.embed import cosine_pairs, embed

    questions = QUESTIONS.head(700).to_list()
    texts = questions + [_near_copy(t) for t in questions[:60]]
    vectors = embed(texts, None, 64)
    np.save(tmp_path / "a.npy", vectors)
    np.save(tmp_path / "b.npy", vectors[::-7])
    a = np.load(tmp_path / "a.npy", mmap_mode="r")
    b = np.load(tmp_path / "b.npy", mmap_mode="r") if against else None
    jobs: list[int] = []

    def mapper(fn, work):
        jobs.append(len(work))
        shipped = cloudpickle.loads(cloudpickle.dumps(fn))
        return (shipped(job) for job in work)

    # the same chunk in both: a product's last bits depend on its shape (OpenBLAS picks kernels by size)
    whole_pairs, whole_cos = cosine_pairs(vectors, vectors[::-7] if against else None, 0.9, chunk=128)
    assert len(whole_pairs) >= 60 and (whole_cos >= 0.9).all()  # the copies (and, against, the rows themselves)
    monkeypatch.setattr(dataforge.embed, "SEARCH_ROWS", 256)
    pairs, cos = cosine_pairs(a, b, 0.9, chunk=128, mapper=mapper)
    assert jobs == [3]  # 760 rows, 256 at a time
    assert np.array_equal(pairs, whole_pairs) and np.array_equal(cos, whole_cos)


def test_semantic_unknown_model_is_a_clear_error(ctx):
    from dataforge.errors import DataError
    from dataforge.steps.dedup import SemanticConfig, dedup_semantic

    with pytest.raises(DataError, match="cannot load embedding model '/no/such/model'"):
        dedup_semantic({"data": _frame(["x y z"])}, SemanticConfig(fields=["q"], model="/no/such/model"), ctx)


def test_stored_signatures_are_reused_and_checked(ctx, monkeypatch):
    import dataforge.text.minhash as mh
    from dataforge.errors import DataError

    base = QUESTIONS.head(100).to_list()
    df = _frame(base + [_near_copy(t) for t in base[:10]])
    first = dedup_minhash({"data": df}, MinhashConfig(fields=["q"], threshold=0.7, keep_signatures=True), ctx)
    stored = first.tables["signatures"]
    calls = []
    real = mh.signatures
    monkeypatch.setattr(mh, "signatures", lambda texts, *a, **k: calls.append(len(texts)) or real(texts, *a, **k))
    again = dedup_minhash({"data": df, "signatures": stored}, MinhashConfig(fields=["q"], threshold=0.7), ctx)
    assert calls == []  # every row's signature came from the stored table
    assert again.tables["data"].equals(first.tables["data"])
    partial = dedup_minhash(
        {"data": df, "signatures": stored.head(50)}, MinhashConfig(fields=["q"], threshold=0.7), ctx
    )
    assert calls == [60] and partial.tables["data"].equals(first.tables["data"])
    with pytest.raises(DataError, match="other MinHash settings"):
        dedup_minhash({"data": df, "signatures": stored}, MinhashConfig(fields=["q"], ngram=5), ctx)


def _edit_chain(text: str, rng: np.random.Generator, links: int) -> list[str]:
    """``text`` and ``links`` successive copies, each with one more word replaced: neighbours in
    the chain are near-duplicates, its two ends are not."""
    words, out = text.split(), [text]
    for k in rng.choice(np.arange(2, len(words) - 2), size=links, replace=False):
        words = words.copy()
        words[k] = f"zz{k}"
        out.append(" ".join(words))
    return out


def test_a_row_is_dropped_only_for_its_own_similarity_to_the_row_kept(ctx):
    """Chains of edits on real GSM8K questions (each copy one more word from the original): every
    dropped row's verified Jaccard with the row kept for it reaches the threshold; the far end of a
    chain is not dropped through the chain."""
    from dataforge.text.minhash import exact_jaccard

    rng = np.random.default_rng(0)
    base = [q for q in QUESTIONS.head(400).to_list() if len(q.split()) >= 40][:40]
    texts = [t for q in base for t in _edit_chain(q, rng, 6)]
    df = _frame(texts)
    cfg = MinhashConfig(fields=["q"], threshold=0.8, cluster_columns=True)
    res = dedup_minhash({"data": df}, cfg, ctx)
    ev, kept = res.events[0], res.tables["data"]
    assert set(ev["related_id"]) <= set(kept["_id"])  # dropped in favour of a row that stays
    index = {rid: k for k, rid in enumerate(df["_id"])}
    pairs = np.array([[index[a], index[b]] for a, b in zip(ev["related_id"], ev["row_id"], strict=True)])
    jaccard = exact_jaccard(df["q"].str.to_lowercase().to_arrow(), pairs, 3, False)
    assert (jaccard >= 0.8).all() and np.allclose(jaccard, ev["score"].to_numpy())
    # connected components keep one row per chain; six edits from its start, a chain's end is never
    # dropped in favour of the start
    assert kept.height > len(base)
    related = dict(zip(ev["row_id"], ev["related_id"], strict=True))
    assert all(related.get(f"r:{7 * c + 6:03d}") != f"r:{7 * c:03d}" for c in range(len(base)))
    assert kept.filter(pl.col("_id") == "r:000")["_cluster_size"].item() == int((ev["related_id"] == "r:000").sum()) + 1


def test_candidates_come_from_lsh_below_the_threshold_so_pairs_just_above_it_are_found(ctx):
    """Copies whose verified Jaccard is just above the threshold: LSH tuned at the threshold itself
    misses a share of them; the default (LSH at threshold − 0.2, every candidate verified exactly)
    finds them all, and drops nothing below the threshold."""
    from dataforge.text.minhash import exact_jaccard

    rng = np.random.default_rng(5)
    base = [q for q in QUESTIONS.head(3000).to_list() if len(q.split()) >= 45][:150]
    copies = [_edit_chain(q, rng, 2)[2] for q in base]  # two words replaced: Jaccard ≈ 0.75-0.85
    df = _frame(base + copies)
    n = len(base)
    j = exact_jaccard(df["q"].str.to_lowercase().to_arrow(), np.array([[k, n + k] for k in range(n)]), 3, False)
    above = {f"r:{n + k:03d}" for k in range(n) if j[k] >= 0.8}
    assert len(above) > 40
    default = dedup_minhash({"data": df}, MinhashConfig(fields=["q"], threshold=0.8), ctx)
    at_threshold = dedup_minhash({"data": df}, MinhashConfig(fields=["q"], threshold=0.8, lsh_threshold=0.8), ctx)
    assert MinhashConfig(fields=["q"], threshold=0.8).candidate_threshold == pytest.approx(0.6)
    assert set(default.events[0]["row_id"]) == above
    assert set(at_threshold.events[0]["row_id"]) < above


def test_comparable_text_equals_the_full_normalization_on_real_and_unicode_text():
    """The exact-dedup key, computed with NFKC only where it changes something, equals NFKC +
    lowercase + folded whitespace applied to every text."""
    from dataforge.text.normalize import INVISIBLE, comparable_expr, comparable_text, normalize_expr

    answers = pl.read_ndjson(GSM8K / "train.jsonl")["answer"].head(3000).to_list()
    odd = ["Café", "cafe\u0301 au lait", "ＦＵＬＬ width", "ﬁ ligature", "İstanbul", "ß straße", "Ω ΣΑΣ", "ǅ title"]
    odd += ["  lead\u00a0nbsp  trail \u3000", "① circled", "x\u200bzero", "Ⅻ roman", "\u212a kelvin", "", "\t\n", None]
    odd += ["a \n\t b", "a\x85b\u2028c\u2029d", "one\ntwo\n\nthree", "x\r\ny", " \n ", "a\u205f \u3000b", "\x1c\x1f"]
    texts = pl.Series([*QUESTIONS.head(3000).to_list(), *answers, *odd], dtype=pl.String)
    assert comparable_text(texts).to_list() == pl.select(comparable_expr(pl.lit(texts))).to_series().to_list()
    # the fold matches only runs that change; the result is every whitespace run → one space
    every_run = normalize_expr(pl.lit(texts).str.replace_all(INVISIBLE, ""), lowercase=True).str.replace_all(
        r"\s+", " "
    )
    assert comparable_text(texts).to_list() == pl.select(every_run).to_series().to_list()


@pytest.mark.parametrize("form", ["NFKC", "NFC", None])
@pytest.mark.parametrize("whitespace", ["collapse", "strip", "keep"])
@pytest.mark.parametrize("lowercase", [True, False])
def test_normalize_text_equals_the_expression_on_real_and_unicode_text(form, whitespace, lowercase):
    """clean.normalize and the split/audit keys normalize NFKC only where it changes a text; the
    result equals polars' NFKC applied to every text, for every setting."""
    from dataforge.text.normalize import normalize_expr, normalize_text

    odd = ["Café  AU\u00a0lait", "cafe\u0301 au lait", "ＦＵＬＬ width", "ﬁ ligature", "İstanbul", "ß STRASSE", "Ω ΣΑΣ"]
    odd += ["  lead\r\n\n\n\ntrail \u3000", "① circled\t\ttabs", "Ⅻ roman", "\u212a kelvin", "", "\t\n", None]
    texts = pl.Series([*QUESTIONS.head(2000).to_list(), *odd], dtype=pl.String)
    want = pl.select(normalize_expr(pl.lit(texts), form, whitespace, lowercase)).to_series().to_list()
    assert normalize_text(texts, form, whitespace, lowercase).to_list() == want
