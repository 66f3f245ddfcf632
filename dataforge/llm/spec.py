"""What a recipe says about a model (``ModelSpec``) and about sampling (``SamplingParams``).

A recipe names its models once, at the top, and steps refer to them by name::

    models:
      policy: {backend: vllm, model: Qwen/Qwen2.5-Math-1.5B-Instruct}
      judge:  {backend: openai, model: my-judge, base_url: http://localhost:8000/v1}
    steps:
      solve: {kind: generate, model: policy, ...}

``dataforge build --model policy=transformers:/path/to/model`` swaps a model without editing the
recipe (tests use it to run recipes on a tiny random model).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Backends = Literal["transformers", "openai", "vllm"]


class ModelSpec(BaseModel):
    """A model and the backend that runs it. Part of the fingerprint of every step that uses it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Backends
    model: str = Field(description="hub name or local path (transformers, vllm); served model name (openai)")
    base_url: str | None = None  # openai: e.g. http://localhost:8000/v1
    api_key_env: str | None = None  # openai: the environment variable holding the key
    max_concurrency: int = Field(8, ge=1)  # openai: requests in flight
    timeout: float = Field(120.0, gt=0)  # openai: seconds per request
    max_retries: int = Field(3, ge=0)  # openai: retries after a timeout, a 5xx/429 or an invalid answer
    batch_size: int = Field(16, ge=1)  # transformers: prompts per forward batch
    device: str | None = None  # transformers: "cpu", "cuda", … (default: cuda when available)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int | None = None  # vllm
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)  # vllm

    @model_validator(mode="after")
    def _url_for_openai(self) -> ModelSpec:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs 'base_url' (e.g. http://localhost:8000/v1)")
        return self

    def identity(self) -> dict[str, str | int | None]:
        """What decides the outputs (the request cache key); concurrency and timeouts do not. A
        backend whose answers changed (``BACKEND_REVISIONS``) names its revision, so answers stored
        before are not reused."""
        ident: dict[str, str | int | None] = {
            "backend": self.backend,
            "model": self.model,
            "base_url": self.base_url,
            "dtype": self.dtype,
        }
        if self.backend in BACKEND_REVISIONS:
            ident["revision"] = BACKEND_REVISIONS[self.backend]
        return ident


# 2: transformers stops at the generation config's end-of-turn tokens (it stopped at the tokenizer's
# eos_token only: an instruct model such as Llama 3 wrote past its turn until max_tokens)
# 3: transformers samples each request from its own seed (a batch's one seed made every sample depend on
# the requests batched with it)
BACKEND_REVISIONS = {"transformers": 3}


def parse_model_override(text: str) -> tuple[str, dict[str, str]]:
    """``NAME=BACKEND:MODEL[@BASE_URL]`` (the ``--model`` option) → (name, spec fields)."""
    name, eq, rest = text.partition("=")
    backend, colon, model = rest.partition(":")
    if not (eq and colon and name and model):
        raise ValueError(f"--model {text!r}: expected NAME=BACKEND:MODEL (e.g. policy=transformers:/models/tiny)")
    fields = {"backend": backend}
    if backend == "openai" and "@" in model:
        model, _, url = model.partition("@")
        fields["base_url"] = url
    fields["model"] = model
    return name, fields


class SamplingParams(BaseModel):
    """How to sample: the same keys for every backend."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(1, ge=1, description="completions per prompt")
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    seed: int = 0
    stop: list[str] = Field(default_factory=list)
