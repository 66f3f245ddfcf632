"""The backend protocol: batched generation of ``n`` samples per request, optional log-prob scoring.

A ``Request`` is either chat ``messages`` (the backend applies the model's chat template) or a
raw ``prompt`` (completion mode). A ``Generation`` is the backend's answer to one request: ``n``
texts, or an ``error`` saying why there are none (recorded as a failed generation, never raised,
unless the error is the user's to fix, such as a 4xx from a server, which raises ``LLMError``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from dataforge.errors import DataforgeError
from dataforge.llm.spec import SamplingParams

Message = dict[str, str]


class LLMError(DataforgeError):
    """A model or server problem the user must fix (a missing model, a 4xx answer)."""


@dataclass(frozen=True)
class Request:
    """One prompt: chat ``messages`` or a raw ``prompt``, sampled with ``params``."""

    params: SamplingParams
    messages: tuple[Message, ...] | None = None
    prompt: str | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("a request has either messages or a prompt")

    def payload(self) -> dict[str, Any]:
        """The request as canonical JSON-able data (the cache key is built from it)."""
        body: dict[str, Any] = {"params": self.params.model_dump(mode="json")}
        if self.messages is not None:
            body["messages"] = [dict(m) for m in self.messages]
        else:
            body["prompt"] = self.prompt
        return body


CUT_AT_MAX_TOKENS = "length"  # the finish reason of an answer stopped by max_tokens (vLLM's and OpenAI's word)


@dataclass
class Generation:
    """The answer to one request."""

    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    error: str | None = None  # set: the request failed after its retries (e.g. "timeout", "invalid_output")
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {"texts": self.texts, "finish_reasons": self.finish_reasons, "completion_tokens": self.completion_tokens}


OnAnswer = Callable[[int, Generation], None]


class Backend(Protocol):
    """What every backend provides."""

    def generate(self, requests: list[Request], on_answer: OnAnswer | None = None) -> list[Generation]:
        """One Generation per request, in order; ``on_answer(index, generation)`` is called as
        each comes back (per request for a server, per batch for a local model), so the request
        cache commits it before the rest arrive."""
        ...

    def logprobs(self, prompts: list[str], completions: list[str]) -> list[float]:
        """Sum of the log-probabilities of each completion given its prompt (NotImplementedError if
        the backend cannot)."""
        ...

    def close(self) -> None: ...


def truncate_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut ``text`` at the first stop string; (text, whether it was cut)."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
