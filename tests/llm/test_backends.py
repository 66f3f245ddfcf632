"""The backend protocol, run against every backend that can run here: transformers on a tiny
random model, the OpenAI-compatible client against a real server process on loopback, and vLLM
where it imports (GPU machines). The model is noise: these tests check plumbing, not quality."""

from __future__ import annotations

import math

import pytest

from dataforge.llm import ModelSpec, Request, SamplingParams
from dataforge.llm.base import LLMError
from dataforge.llm.client import ModelPool, load_backend

CHAT = ({"role": "user", "content": "What is two plus two?"},)


@pytest.fixture(params=["transformers", "openai", "vllm"])
def spec(request, tiny_lm) -> ModelSpec:
    if request.param == "vllm":
        pytest.importorskip("vllm", reason="vLLM is installed on GPU machines only")
        return ModelSpec(backend="vllm", model=str(tiny_lm), gpu_memory_utilization=0.3)
    if request.param == "openai":
        url = request.getfixturevalue("model_server")
        return ModelSpec(backend="openai", model="tiny", base_url=url, timeout=60)
    return ModelSpec(backend="transformers", model=str(tiny_lm), device="cpu", batch_size=2)


def test_n_samples_per_request_in_order(spec):
    backend = load_backend(spec)
    params = SamplingParams(n=3, max_tokens=6, temperature=1.0, seed=1)
    requests = [
        Request(params, messages=CHAT),
        Request(params, prompt="Once upon a time"),
        Request(params, messages=({"role": "user", "content": "Name a colour."},)),
    ]
    gens = backend.generate(requests)
    assert len(gens) == 3
    for g in gens:
        assert g.ok and len(g.texts) == 3 and len(g.finish_reasons) == 3
        assert all(isinstance(t, str) for t in g.texts)
        assert set(g.finish_reasons) <= {"stop", "length"}
        assert 0 < g.completion_tokens <= 3 * 6
    backend.close()


def test_greedy_is_deterministic_and_max_tokens_bounds_length(spec):
    backend = load_backend(spec)
    params = SamplingParams(n=1, max_tokens=5, temperature=0.0)
    a = backend.generate([Request(params, messages=CHAT)])[0]
    b = backend.generate([Request(params, messages=CHAT)])[0]
    assert a.texts == b.texts
    assert a.completion_tokens <= 5
    backend.close()


def test_stop_strings_cut_the_completion(spec):
    backend = load_backend(spec)
    free = backend.generate([Request(SamplingParams(max_tokens=12, temperature=0.0), prompt="hello")])[0].texts[0]
    words = free.split()
    assert len(words) >= 3, free
    stop = " " + words[2]
    cut = backend.generate([Request(SamplingParams(max_tokens=12, temperature=0.0, stop=[stop]), prompt="hello")])[0]
    assert stop not in cut.texts[0] and free.startswith(cut.texts[0])
    backend.close()


def test_cache_answers_repeated_requests(spec, tmp_path):
    pool = ModelPool(tmp_path / "llm.sqlite")
    client = pool.client(spec)
    params = SamplingParams(n=2, max_tokens=4, temperature=1.0)
    requests = [Request(params, messages=CHAT), Request(params, prompt="abc")]
    first = client.generate(requests)
    second = client.generate(requests)
    assert [g.texts for g in first] == [g.texts for g in second]
    assert not any(g.cached for g in first) and all(g.cached for g in second)
    assert client.stats.requests == 4 and client.stats.cache_hits == 2
    assert len(pool.cache) == 2
    pool.close()


def test_transformers_logprobs_are_log_probabilities(tiny_lm):
    backend = load_backend(ModelSpec(backend="transformers", model=str(tiny_lm), device="cpu"))
    short, longer = backend.logprobs(["the cat", "the cat"], [" sat", " sat on the mat"])
    assert math.isfinite(short) and short < 0
    assert longer < short  # more tokens, each with probability < 1


def test_unloadable_model_is_a_clear_error(tmp_path):
    with pytest.raises(LLMError, match="cannot load model"):
        load_backend(ModelSpec(backend="transformers", model=str(tmp_path / "nope")))


def test_vllm_backend_without_vllm_says_how_to_install():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(LLMError, match=r"dataforge\[vllm\]"):
            load_backend(ModelSpec(backend="vllm", model="x"))
    else:
        pytest.skip("vLLM is installed here")


def test_transformers_stops_at_the_models_end_of_turn_token(tiny_lm, tmp_path):
    """An instruct model's generation config names its end-of-turn token (Llama 3's <|eot_id|>),
    often not the tokenizer's eos_token; told only the tokenizer's, generation went on past the
    turn until max_tokens. Here a token the tiny model writes is made its end of turn."""
    import json
    import shutil

    params = SamplingParams(max_tokens=8, temperature=0.0)
    free_backend = load_backend(ModelSpec(backend="transformers", model=str(tiny_lm), device="cpu"))
    ids = free_backend.model.generate(
        **free_backend.tokenizer("hello", return_tensors="pt"), max_new_tokens=8, do_sample=False, eos_token_id=None
    )[0, -8:].tolist()
    first = max(k for k in range(len(ids)) if ids[k] not in ids[:k])  # the last token first written there
    end, kept = ids[first], ids[:first]
    model = shutil.copytree(tiny_lm, tmp_path / "eot")
    config = (
        json.loads((model / "generation_config.json").read_text())
        if (model / "generation_config.json").exists()
        else {}
    )
    config["eos_token_id"] = [free_backend.tokenizer.eos_token_id, end]
    (model / "generation_config.json").write_text(json.dumps(config))
    backend = load_backend(ModelSpec(backend="transformers", model=str(model), device="cpu"))
    got = backend.generate([Request(params, prompt="hello")])[0]
    assert got.finish_reasons == ["stop"] and got.completion_tokens == len(kept)
    assert got.texts[0] == backend.tokenizer.decode(kept, skip_special_tokens=True)


def test_transformers_tokenizes_a_prompt_and_a_rendered_chat_each_as_its_own(tiny_lm):
    """A prompt-mode request takes the tokenizer's special tokens (its BOS); a rendered chat holds
    them already. Batched together, both were tokenized as the batch's first request said, so a
    raw prompt after a chat lost its BOS (and a chat after a raw prompt got two)."""
    backend = load_backend(ModelSpec(backend="transformers", model=str(tiny_lm), device="cpu", batch_size=4))
    tokenizer, calls = backend.tokenizer, []

    class Recording:
        def __call__(self, texts, **kwargs):
            calls.append((tuple(texts), kwargs.get("add_special_tokens")))
            return tokenizer(texts, **kwargs)

        def __getattr__(self, name):
            return getattr(tokenizer, name)

    backend.tokenizer = Recording()
    params = SamplingParams(max_tokens=2, temperature=0.0)
    chat, raw = Request(params, messages=CHAT), Request(params, prompt="Name a colour.")
    backend.generate([chat, raw, chat])
    assert sorted(calls) == sorted([((backend.render(chat)[0],) * 2, False), (("Name a colour.",), True)])


def test_transformers_samples_a_request_alike_whatever_it_is_batched_with(tiny_lm):
    """Each sample draws from its own seed (params' seed, prompt, sample index): alone or batched
    with other prompts of other lengths (left padding), a request gets the same samples. Before,
    one seed per batch made them depend on the batch, so a local and a Ray build sampled apart."""
    params = SamplingParams(n=3, max_tokens=8, temperature=1.0, top_p=0.9, seed=5)
    target = Request(params, messages=CHAT)
    others = [
        Request(params, messages=({"role": "user", "content": "Name a colour, any colour you like, and say why."},)),
        Request(params, messages=({"role": "user", "content": "Hi"},)),
    ]
    alone = load_backend(ModelSpec(backend="transformers", model=str(tiny_lm), device="cpu", batch_size=1))
    batched = load_backend(ModelSpec(backend="transformers", model=str(tiny_lm), device="cpu", batch_size=3))
    once = alone.generate([target])[0].texts
    assert batched.generate([others[0], target, others[1]])[1].texts == once
    assert batched.generate([target, *others])[0].texts == once
    assert len(set(once)) > 1  # sampled: three draws, not one greedy answer thrice
    reseeded = alone.generate([Request(params.model_copy(update={"seed": 6}), messages=CHAT)])[0].texts
    assert reseeded != once
    near_greedy = params.model_copy(update={"temperature": 1e-6, "top_p": 1.0, "n": 1})
    greedy = params.model_copy(update={"temperature": 0.0, "n": 1})
    assert (
        alone.generate([Request(near_greedy, messages=CHAT)])[0].texts
        == alone.generate([Request(greedy, messages=CHAT)])[0].texts
    )
