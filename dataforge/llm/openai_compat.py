"""The OpenAI-compatible HTTP backend (``vllm serve``, TGI, llama.cpp server, OpenAI itself).

Chat requests go to ``{base_url}/chat/completions``, prompt requests to ``{base_url}/completions``.
At most ``spec.max_concurrency`` requests are in flight. A timeout, a 429 or 5xx answer, or an
answer without the expected ``n`` choices is retried ``spec.max_retries`` times with exponential
backoff, then recorded as a failed generation (``timeout``, ``http_503``, ``invalid_output``).
Any other 4xx is the user's to fix (wrong model name, bad key) and raises ``LLMError`` at once;
so does a server that cannot be reached at all.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import httpx

from dataforge.llm.base import Generation, LLMError, OnAnswer, Request, truncate_at_stop
from dataforge.llm.spec import ModelSpec

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
BACKOFF_SECONDS = 0.5
BACKOFF_CAP = 8.0


def request_body(spec: ModelSpec, request: Request) -> tuple[str, dict[str, Any]]:
    """(path under the base URL, JSON body) of ``request`` to the model of ``spec``."""
    p = request.params
    body: dict[str, Any] = {
        "model": spec.model,
        "n": p.n,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "max_tokens": p.max_tokens,
        "seed": p.seed,
    }
    if p.stop:
        body["stop"] = p.stop
    if request.messages is not None:
        return "/chat/completions", {**body, "messages": [dict(m) for m in request.messages]}
    return "/completions", {**body, "prompt": request.prompt}


def auth_headers(spec: ModelSpec) -> dict[str, str]:
    """The headers that authenticate to the server of ``spec`` (its key, from ``api_key_env``)."""
    if not spec.api_key_env:
        return {}
    key = os.environ.get(spec.api_key_env)
    if not key:
        raise LLMError(f"environment variable {spec.api_key_env} (api_key_env) is not set")
    return {"Authorization": f"Bearer {key}"}


def parse_answer(data: Any, request: Request) -> Generation:
    """The Generation a server's JSON answer ``data`` gives ``request``; ValueError, KeyError or
    TypeError when it is not a valid answer (not the ``n`` choices of text it asked for)."""
    choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
    chat = request.messages is not None
    texts = [c["message"]["content"] if chat else c["text"] for c in choices]
    if len(texts) != request.params.n or not all(isinstance(t, str) for t in texts):
        raise ValueError("not the choices asked for")
    reasons = [c.get("finish_reason") or "stop" for c in choices]
    cut = [truncate_at_stop(t, request.params.stop) for t in texts]
    tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
    return Generation(texts=[t for t, _ in cut], finish_reasons=reasons, completion_tokens=tokens)


class _Retry(Exception):
    def __init__(self, reason: str):
        self.reason = reason


class OpenAIBackend:
    """A client of an OpenAI-compatible server."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.base_url = (spec.base_url or "").rstrip("/")
        self.http = httpx.Client(
            timeout=spec.timeout, headers=auth_headers(spec), limits=httpx.Limits(max_connections=spec.max_concurrency)
        )

    def body(self, request: Request) -> tuple[str, dict[str, Any]]:
        return request_body(self.spec, request)

    def generate(self, requests: list[Request], on_answer: OnAnswer | None = None) -> list[Generation]:
        """One Generation per request, in order; ``on_answer(index, generation)`` is called (on
        this thread) as each comes back, so the cache can commit it before the others arrive."""
        out: list[Generation | None] = [None] * len(requests)
        with ThreadPoolExecutor(max_workers=self.spec.max_concurrency) as pool:
            futures = {pool.submit(self._one, r): i for i, r in enumerate(requests)}
            try:
                for done in as_completed(futures):
                    i = futures[done]
                    out[i] = done.result()
                    if on_answer is not None:
                        on_answer(i, out[i])
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
        return [g for g in out if g is not None]

    def _one(self, request: Request) -> Generation:
        path, body = self.body(request)
        reason = "unknown"
        for attempt in range(self.spec.max_retries + 1):
            if attempt:
                time.sleep(min(BACKOFF_CAP, BACKOFF_SECONDS * 2 ** (attempt - 1)))
            try:
                return self._send(path, body, request)
            except _Retry as r:
                reason = r.reason
        if reason == "unreachable":
            raise LLMError(f"cannot reach the model server at {self.base_url} (after {self.spec.max_retries} retries)")
        return Generation(error=reason)

    def _send(self, path: str, body: dict[str, Any], request: Request) -> Generation:
        try:
            resp = self.http.post(self.base_url + path, json=body)
        except httpx.TimeoutException:
            raise _Retry("timeout") from None
        except httpx.TransportError:
            raise _Retry("unreachable") from None
        if resp.status_code in RETRYABLE_STATUS:
            raise _Retry(f"http_{resp.status_code}")
        if resp.status_code >= 400:
            raise LLMError(
                f"{self.base_url}{path} answered {resp.status_code} for model '{self.spec.model}': {resp.text[:300]}"
            )
        try:
            return parse_answer(resp.json(), request)
        except (ValueError, KeyError, TypeError):
            raise _Retry("invalid_output") from None

    def logprobs(self, prompts: list[str], completions: list[str]) -> list[float]:
        raise NotImplementedError("log-prob scoring needs the transformers or vllm backend")

    def close(self) -> None:
        self.http.close()
