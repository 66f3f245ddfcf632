"""The OpenAI-compatible client against real HTTP servers on loopback: the server process (see
conftest) and, for faults, the same server class run in a thread with a fault hook."""

from __future__ import annotations

import threading
import time

import pytest

from dataforge.llm import ModelSpec, Request, SamplingParams, openai_compat
from dataforge.llm.base import LLMError
from dataforge.llm.client import load_backend
from dataforge.llm.server import ModelServer

PARAMS = SamplingParams(n=2, max_tokens=4, temperature=1.0)
CHAT = ({"role": "user", "content": "hi"},)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(openai_compat, "BACKOFF_SECONDS", 0.01)


@pytest.fixture
def faulty(tiny_lm):
    """Start a server whose fault hook the test chooses; yields a function (hook) → base url."""
    servers = []

    def start(hook) -> str:
        backend = load_backend(ModelSpec(backend="transformers", model=str(tiny_lm), device="cpu"))
        server = ModelServer(("127.0.0.1", 0), backend, "tiny", fault=hook)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.url

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def client(url: str, **kw) -> openai_compat.OpenAIBackend:
    return openai_compat.OpenAIBackend(ModelSpec(backend="openai", model="tiny", base_url=url, **kw))


def test_server_errors_are_retried_then_answered(faulty):
    url = faulty(lambda path, body, number: (503, b'{"error": "busy"}') if number <= 2 else None)
    gen = client(url, max_retries=3).generate([Request(PARAMS, messages=CHAT)])[0]
    assert gen.ok and len(gen.texts) == 2


def test_persistent_failure_is_recorded_not_raised(faulty):
    url = faulty(lambda path, body, number: (503, b"{}"))
    gens = client(url, max_retries=2).generate([Request(PARAMS, messages=CHAT), Request(PARAMS, prompt="x")])
    assert [g.error for g in gens] == ["http_503", "http_503"]


def test_timeout_is_retried_then_recorded(faulty):
    def slow(path, body, number):
        time.sleep(0.5)
        return None

    gen = client(faulty(slow), timeout=0.1, max_retries=1).generate([Request(PARAMS, messages=CHAT)])[0]
    assert gen.error == "timeout"


def test_invalid_output_is_retried_then_recorded(faulty):
    answers = {1: (200, b"not json"), 2: (200, b'{"choices": []}')}
    url = faulty(lambda path, body, number: answers.get(number, (200, b'{"choices": [{"text": 3}]}')))
    gen = client(url, max_retries=2).generate([Request(PARAMS, prompt="x")])[0]
    assert gen.error == "invalid_output"


def test_invalid_output_then_valid_answer_succeeds(faulty):
    url = faulty(lambda path, body, number: (200, b"{}") if number == 1 else None)
    gen = client(url, max_retries=1).generate([Request(PARAMS, prompt="x")])[0]
    assert gen.ok


def test_4xx_raises_at_once_with_the_servers_message(model_server):
    with pytest.raises(LLMError, match=r"404 .*'no-such-model'.*not served"):
        openai_compat.OpenAIBackend(ModelSpec(backend="openai", model="no-such-model", base_url=model_server)).generate(
            [Request(PARAMS, messages=CHAT)]
        )


def test_unreachable_server_is_an_error():
    with pytest.raises(LLMError, match="cannot reach"):
        client("http://127.0.0.1:9", max_retries=1).generate([Request(PARAMS, messages=CHAT)])


def test_concurrency_is_bounded(faulty):
    active, peak, lock = [0], [0], threading.Lock()

    def count(path, body, number):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return None

    client(faulty(count), max_concurrency=2).generate([Request(PARAMS, prompt=str(i)) for i in range(8)])
    assert peak[0] == 2


def test_missing_api_key_env_is_an_error(monkeypatch):
    monkeypatch.delenv("DF_TEST_KEY", raising=False)
    with pytest.raises(LLMError, match="DF_TEST_KEY"):
        client("http://127.0.0.1:9", api_key_env="DF_TEST_KEY")


def test_a_request_asked_twice_in_a_call_is_sent_once_and_its_failure_counts_for_each(tmp_path, scripted_model):
    from dataforge.llm.client import ModelPool

    seen: list[str] = []

    def answer(messages):
        seen.append(messages[-1]["content"])
        return 503 if messages[-1]["content"] == "broken" else f"re: {messages[-1]['content']}"

    spec = ModelSpec(**scripted_model(answer))
    asked = [Request(SamplingParams(max_tokens=8), messages=({"role": "user", "content": c},)) for c in "abab"]
    pool = ModelPool(tmp_path / "llm.sqlite")
    client = pool.client(spec)
    assert [g.texts for g in client.generate(asked)] == [["re: a"], ["re: b"], ["re: a"], ["re: b"]]
    assert sorted(seen) == ["a", "b"]  # one per payload, as the cache would answer the next build
    broken = Request(SamplingParams(max_tokens=8), messages=({"role": "user", "content": "broken"},))
    got = client.generate([broken, asked[0], broken])
    assert [g.ok for g in got] == [False, True, False] and seen.count("broken") == 1
    assert client.stats.errors == {"http_503": 2} and client.stats.requests == 7  # each row's request counts
    pool.close()
