"""``LLMClient``: a backend behind the request cache; ``ModelPool``: the clients of one build.

Steps get a ``ModelPool`` as ``ctx.llm`` and ask it for the client of a ``ModelSpec``. The pool
loads each model once per build, and only when a request has no stored answer, and shares one
cache file.

A pool made with ``collect=True`` loads no model: a request with no stored answer stops the step
with ``Unanswered``, which carries every such request of that call. A pool's ``failed`` (request
cache key → reason) are requests that failed elsewhere: they are answered as failed generations
with that reason, and not sent. The Ray executor runs a step
so, batch by batch, to gather the requests it will make, has them answered elsewhere (through
``ray.data.llm``: ``engine.ray_llm``) and stored, and runs it again until no call stops; then the
step runs as always and finds its answers stored. For a step it runs in the driver it sets the
pool's ``elsewhere`` instead: a call's requests with no stored answer are given to it first
(it stores their answers, or adds them to ``failed``), and only what it left is sent.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dataforge.llm.base import Backend, Generation, Request
from dataforge.llm.cache import LoggedCache, RequestCache, request_key
from dataforge.llm.spec import ModelSpec

Track = Callable[[Iterable[Any], int, str], Iterator[Any]]
Elsewhere = Callable[[ModelSpec, list[Request]], bool]  # answers requests into the cache; False: sent none


@dataclass
class ClientStats:
    """Counters of one client: what was asked, what the cache answered, what failed, and the
    seconds spent inside the backend (the rest of a step's time is dataforge's overhead)."""

    requests: int = 0
    cache_hits: int = 0
    completion_tokens: int = 0
    backend_seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)  # failure reason → requests

    @property
    def failures(self) -> int:
        return sum(self.errors.values())


class Unanswered(BaseException):
    """A request of a collecting pool's step with no stored answer (see the module doc): the
    requests of the call that stopped, with their models. A BaseException, so that a step's own
    ``except Exception`` does not take it for the step's failure."""

    def __init__(self, requests: list[tuple[ModelSpec, Request]]):
        super().__init__(f"{len(requests)} requests with no stored answer")
        self.requests = requests


def cache_key(spec: ModelSpec, request: Request) -> str:
    """The request cache's key of ``request`` to the model of ``spec``."""
    return request_key(spec.identity(), request.payload())


def load_backend(spec: ModelSpec) -> Backend:
    """The backend a spec names, with its model loaded."""
    if spec.backend == "transformers":
        from dataforge.llm.hf import TransformersBackend

        return TransformersBackend(spec)
    if spec.backend == "openai":
        from dataforge.llm.openai_compat import OpenAIBackend

        return OpenAIBackend(spec)
    from dataforge.llm.vllm_backend import VLLMBackend

    return VLLMBackend(spec)


class LLMClient:
    """Generation through the cache: cached requests are answered from it, the others are sent
    in chunks, and each answer is committed to the cache as it comes back (a failure never is)."""

    def __init__(self, spec: ModelSpec, cache: RequestCache | LoggedCache | None, collect: bool = False):
        self.spec, self.cache, self.collect = spec, cache, collect
        self.failed: dict[str, str] = {}  # requests that failed elsewhere, by key: answered so, not sent
        self.elsewhere: Elsewhere | None = None  # what answers unstored requests before the backend
        self._backend: Backend | None = None
        self.stats = ClientStats()

    @property
    def backend(self) -> Backend:
        """The model's backend, loaded on first use (a step whose every answer is stored loads none)."""
        if self._backend is None:
            self._backend = load_backend(self.spec)
        return self._backend

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    def _chunk_size(self) -> int:
        return self.spec.max_concurrency * 4 if self.spec.backend == "openai" else self.spec.batch_size

    def generate(
        self, requests: list[Request], track: Track | None = None, description: str = "generate"
    ) -> list[Generation]:
        """One Generation per request, in order. A request asked twice in one call (the same
        payload: two rows with one prompt) is sent once and both get its answer: what the cache,
        keyed by the payload, gives them in the next build, and what ray.data.llm sends
        (``engine.ray_llm.unique_requests``)."""
        keys = [cache_key(self.spec, r) for r in requests]
        out, todo, failed_elsewhere = self._answered(keys)
        if todo and self.elsewhere is not None and not self.collect:
            if self.elsewhere(self.spec, [requests[i] for i in todo]):
                out, todo, failed_elsewhere = self._answered(keys)
        if self.collect:  # counts nothing: the step runs again to send, and counts there
            if todo:
                raise Unanswered([(self.spec, requests[i]) for i in todo])
            return [g for g in out if g is not None]
        self.stats.requests += len(requests)
        self.stats.cache_hits += len(requests) - len(todo) - len(failed_elsewhere)
        for i in failed_elsewhere:
            self.stats.errors[self.failed[keys[i]]] += 1
        copies: dict[str, list[int]] = {}  # each key's requests; the first is the one sent
        for i in todo:
            copies.setdefault(keys[i], []).append(i)
        todo = [same[0] for same in copies.values()]
        size = self._chunk_size()
        chunks = [todo[i : i + size] for i in range(0, len(todo), size)]

        def arrived(i: int, gen: Generation) -> None:
            """One answer: kept for each request of its key, counted, and committed to the cache
            at once if it succeeded (a failure is never cached, so the next build asks again)."""
            self.stats.completion_tokens += gen.completion_tokens
            for j in copies[keys[i]]:
                out[j] = gen
                if not gen.ok:
                    self.stats.errors[gen.error or "unknown"] += 1
            if gen.ok and self.cache is not None:
                self.cache.put_many(self.spec.model, [(keys[i], gen.to_json())])

        for chunk in track(chunks, len(todo), description) if track else chunks:
            started = time.perf_counter()
            self.backend.generate(
                [requests[i] for i in chunk], on_answer=lambda j, gen, chunk=chunk: arrived(chunk[j], gen)
            )
            self.stats.backend_seconds += time.perf_counter() - started
        return [g for g in out if g is not None]

    def _answered(self, keys: list[str]) -> tuple[list[Generation | None], list[int], list[int]]:
        """The answers to the requests of ``keys`` stored or failed elsewhere (None for the
        others), the indexes with neither, and those failed elsewhere."""
        found = self.cache.get_many(keys) if self.cache is not None else {}
        out: list[Generation | None] = [None] * len(keys)
        todo: list[int] = []
        failed_elsewhere: list[int] = []
        for i, key in enumerate(keys):
            if key in found:
                out[i] = Generation(**found[key], cached=True)
            elif key in self.failed:
                out[i] = Generation(error=self.failed[key])
                failed_elsewhere.append(i)
            else:
                todo.append(i)
        return out, todo, failed_elsewhere

    def logprobs(self, prompts: list[str], completions: list[str]) -> list[float]:
        if self.collect:  # scores are not stored: what the step asks after them is not gathered
            raise Unanswered([])
        return self.backend.logprobs(prompts, completions)


class ModelPool:
    """The clients of one build, by model spec; one cache file for all of them. ``node``: the
    pool is a worker process's of a build on a Ray cluster of several nodes (its node's id), and
    its cache a ``LoggedCache`` (see ``llm.cache``)."""

    def __init__(self, cache_path: Path | None, collect: bool = False, node: str = ""):
        self.cache_path, self.collect, self.node = cache_path, collect, node
        self.failed: dict[str, str] = {}  # given to every client (see the module doc); set per step
        self.elsewhere: Elsewhere | None = None  # given to every client (see the module doc); set per step
        self.cache: RequestCache | LoggedCache | None = None  # opened at the first client: no model, no file
        self.epoch = 0  # the driver's merge of the logs this pool's cache reads after (``at_epoch``)
        self._clients: dict[str, LLMClient] = {}

    def client(self, spec: ModelSpec) -> LLMClient:
        key = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
        if self.cache is None and self.cache_path is not None:
            self.cache = LoggedCache(self.cache_path, self.node) if self.node else RequestCache(self.cache_path)
        if key not in self._clients:
            self._clients[key] = LLMClient(spec, self.cache, self.collect)
        chosen = self._clients[key]
        chosen.failed, chosen.elsewhere, chosen.cache = self.failed, self.elsewhere, self.cache
        return chosen

    def at_epoch(self, epoch: int) -> None:
        """A ``LoggedCache`` read after the driver's merge number ``epoch``: one read after an
        earlier merge is closed (the file it reads was written since) and the next client opens
        another, with a log of its own. The models stay loaded."""
        if self.node and epoch != self.epoch and self.cache is not None:
            self.cache.close()
            self.cache = None
        self.epoch = epoch

    def failure_counts(self) -> tuple[int, Counter[str]]:
        """(requests asked, failures by reason) over every client of the build so far; the
        runner takes the difference around a step to account for that step's requests."""
        errors: Counter[str] = Counter()
        for c in self._clients.values():
            errors.update(c.stats.errors)
        return sum(c.stats.requests for c in self._clients.values()), errors

    def close(self) -> None:
        for c in self._clients.values():
            if c.loaded:
                c.backend.close()
        self._clients.clear()
        if self.cache is not None:
            self.cache.close()
