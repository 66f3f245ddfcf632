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


class _Retry(Exception):
    def __init__(self, reason: str):
        self.reason = reason


class OpenAIBackend:
    """A client of an OpenAI-compatible server."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.base_url = (spec.base_url or "").rstrip("/")
        headers = {}
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise LLMError(f"environment variable {spec.api_key_env} (api_key_env) is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.http = httpx.Client(
            timeout=spec.timeout, headers=headers, limits=httpx.Limits(max_connections=spec.max_concurrency)
        )

    def body(self, request: Request) -> tuple[str, dict[str, Any]]:
        p = request.params
        body: dict[str, Any] = {
            "model": self.spec.model,
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
            data = resp.json()
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            chat = request.messages is not None
            texts = [c["message"]["content"] if chat else c["text"] for c in choices]
            if len(texts) != request.params.n or not all(isinstance(t, str) for t in texts):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise _Retry("invalid_output") from None
        reasons = [c.get("finish_reason") or "stop" for c in choices]
        cut = [truncate_at_stop(t, request.params.stop) for t in texts]
        tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
        return Generation(texts=[t for t, _ in cut], finish_reasons=reasons, completion_tokens=tokens)

    def logprobs(self, prompts: list[str], completions: list[str]) -> list[float]:
        raise NotImplementedError("log-prob scoring needs the transformers or vllm backend")

    def close(self) -> None:
        self.http.close()
