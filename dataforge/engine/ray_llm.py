"""A step's model requests answered through ``ray.data.llm`` on the Ray executor (``--ray-llm``).

The step's logic is not written twice. A step run whole in the driver (its inputs fit in a
batch, a key step the executor runs whole, ``leakage.check`` with its LLM judge) has each of its
calls answered as it makes it: the build's model pool gives a call's requests with no stored
answer to a processor first (``Answering.ask``, the pool's ``elsewhere``), and the step runs
once. Before a step with ``gathers_requests`` runs its batches (a ``rows`` step,
``RayRunner._execute_streamed``) or its buckets (a ``key`` step, after the shuffle) in tasks, which
cannot call back into the driver, the driver gathers the requests they will make and has them
answered in bulk:

1. The step runs on every batch (or bucket) in a task with a *collecting* model pool
   (``llm.client``): it loads no model, and a request with no stored answer stops the batch's
   step (``Unanswered``), giving back every such request of that call. The task writes them to a
   Parquet file per processor in the step's scratch folder (``write_requests``); nothing else is
   written.
2. The driver has a ``ray.data.llm`` processor per model and kind of request (chat messages or a
   raw prompt) read those files and stores each answer in the build's request cache as it comes
   back (``answer_requests``). The tasks' requests never pass through the driver's memory: it
   holds the files' names and the keys of the requests that failed or were left to the step's
   backend.
3. Again from 1: a step whose later calls depend on earlier answers (critique, then revision)
   stops at its next call. A round that finds no request it has not sent ends the rounds.

Then the step runs as always and finds its answers stored. A request the vLLM engine failed
(an error row: the processor continues on errors) is answered there as a failed generation with
reason ``engine_error``, without loading the model, and so counted against ``max_failure_rate``
and asked again by the next build, as the backend's failures are. What the processors did not
answer (a server that kept failing: ray.data.llm's HTTP stage then stops the whole run; an answer
that was not the choices asked for; a model not sent this way) the step's own backend sends, with
its own retries and failure accounting. A build killed in the middle re-sends only the requests
with no stored answer.

Which models (``--ray-llm``, ``$DATAFORGE_RAY_LLM``): ``vllm`` (the default) sends vLLM models
through ``vLLMEngineProcessorConfig``, ``replicas`` engine replicas of one GPU each (default:
the cluster's GPUs, at least 1); ``all`` also sends OpenAI-compatible ones through
``HttpRequestProcessorConfig`` (``replicas`` actors, each with ``max_concurrency`` requests in
flight); ``off`` sends none. Transformers models, log-prob scoring, and the calls a step without
``gathers_requests`` makes in tasks are not sent this way: there each worker process loads the
model once.

Two differences of the vLLM path from the vLLM backend, both from ray.data.llm's engine stage,
which gives one completion per row: a request for ``n`` samples is ``n`` rows, sample ``k`` with
seed ``seed + k``; and a completion's finish reason is ``length`` when it has ``max_tokens``
tokens, else ``stop``. The vLLM processor is built and its config tested, and the path around
it ran end to end with its engine emulated in a Ray Data map (tests/engine/test_ray_llm.py); the
processor itself has not run: vLLM and a GPU are not available to this project's tests.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dataforge.engine.settings import chosen_setting, given_setting
from dataforge.errors import DataforgeError
from dataforge.llm.base import Generation, Request, truncate_at_stop
from dataforge.llm.cache import RequestCache
from dataforge.llm.client import cache_key
from dataforge.llm.spec import ModelSpec, SamplingParams

if TYPE_CHECKING:
    from dataforge.engine.plan import PlannedStep

MODES = ("vllm", "all", "off")
MODE_ENV = "DATAFORGE_RAY_LLM"
REPLICAS_ENV = "DATAFORGE_RAY_LLM_REPLICAS"
MAX_ROUNDS = 64  # rounds of gathering a step's requests (a round without a new request ends them)

Track = Callable[[Iterable[Any], int], Iterator[Any]]
Readable = Callable[[list[str]], tuple[list[str], Any]]  # request files → the paths and filesystem to read them by
Written = dict[str, tuple[str, int, int]]  # by processor: (file, requests, rows); see ``write_requests``


def mode_setting(value: str | None) -> str:
    """Which models go through ``ray.data.llm``: ``value`` (``--ray-llm``) if given, else
    ``$DATAFORGE_RAY_LLM``, else ``vllm``."""
    return chosen_setting(value, "--ray-llm", MODE_ENV, MODES, "one of") or "vllm"


def replicas_setting(value: int | None, gpus: float) -> int:
    """Engine replicas (or HTTP actors) per processor: ``value`` (``--ray-llm-replicas``), else
    ``$DATAFORGE_RAY_LLM_REPLICAS``, else the cluster's GPUs (``gpus``), at least 1."""
    given = given_setting(value, "--ray-llm-replicas", REPLICAS_ENV)
    if given is None:
        return max(1, int(gpus))
    text, where = given
    n = int(text) if text.lstrip("-").isdigit() else 0
    if n < 1:
        raise DataforgeError(f"{where} is {text!r}: a whole number of replicas, at least 1")
    return n


def sent_through(spec: ModelSpec, mode: str) -> bool:
    """Whether requests to ``spec`` go through ``ray.data.llm`` in ``mode``."""
    return (spec.backend == "vllm" and mode in ("vllm", "all")) or (spec.backend == "openai" and mode == "all")


def step_models(ps: PlannedStep) -> list[ModelSpec]:
    """The models a step's config names (``model:``, ``judge:``, …)."""
    return [v for v in (getattr(ps.cfg, k) for k in type(ps.cfg).model_fields) if isinstance(v, ModelSpec)]


# -- what one processor reads and gives back ---------------------------------------------------


def _plain(value: Any) -> Any:
    """``value`` with the numpy arrays Ray Data gives for lists turned back into lists."""
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _request(row: dict[str, Any]) -> Request:
    data = json.loads(row["request"])
    params = SamplingParams(**data["params"])
    if "messages" in data:
        return Request(params, messages=tuple(data["messages"]))
    return Request(params, prompt=data["prompt"])


def _vllm_input(row: dict[str, Any]) -> dict[str, Any]:
    """A row of the vLLM processor: sample ``k`` of its request, with seed ``seed + k``."""
    request = _request(row)
    p = request.params
    sampling = {"n": 1, "temperature": p.temperature, "top_p": p.top_p, "max_tokens": p.max_tokens}
    sampling["seed"] = p.seed + int(row["k"])
    if p.stop:
        sampling["stop"] = list(p.stop)
    text = {"messages": [dict(m) for m in request.messages]} if request.messages else {"prompt": request.prompt}
    return {**text, "sampling_params": sampling, "key": row["key"], "k": row["k"], "request": row["request"]}


def _vllm_output(row: dict[str, Any]) -> dict[str, Any]:
    """The engine's completion of one sample as the answer the backend would store (cut at the
    stop strings), with the samples its request has (``n``)."""
    request = _request(row)
    text, _ = truncate_at_stop(str(row.get("generated_text") or ""), request.params.stop)
    tokens = int(row.get("num_generated_tokens") or 0)
    reason = "length" if tokens >= request.params.max_tokens else "stop"
    answer = {"texts": [text], "finish_reasons": [reason], "completion_tokens": tokens}
    return {"key": row["key"], "k": row["k"], "n": request.params.n, "answer": json.dumps(answer), "error": ""}


def _http_input(spec: ModelSpec) -> Callable[[dict[str, Any]], dict[str, Any]]:
    from dataforge.llm.openai_compat import request_body

    def prepare(row: dict[str, Any]) -> dict[str, Any]:
        _, body = request_body(spec, _request(row))
        return {"payload": body, "key": row["key"], "k": row["k"], "request": row["request"]}

    return prepare


def _http_output(row: dict[str, Any]) -> dict[str, Any]:
    """A server's answer as a stored one; an answer that is not the choices asked for (an error
    body, too few choices) is given back as an error and stored nowhere."""
    from dataforge.llm.openai_compat import parse_answer

    given = {"key": row["key"], "k": row["k"], "n": 1}  # (the server gives the n samples in one answer)
    try:
        gen = parse_answer(_plain(row["http_response"]), _request(row))
    except (ValueError, KeyError, TypeError):
        return {**given, "answer": "", "error": "invalid_output"}
    return {**given, "answer": json.dumps(gen.to_json()), "error": ""}


def _ray_data_llm(*names: str) -> list[Any]:
    """``names`` from ``ray.data.llm``, or an error that says what to install (or to turn it off)."""
    try:
        import ray.data.llm as llm
    except ImportError as exc:
        raise DataforgeError(
            f"--ray-llm needs ray.data.llm, which failed to import ({exc}): pip install 'dataforge[ray]' "
            "(Ray 2.60 or newer, aiohttp), or build with --ray-llm off"
        ) from None
    return [getattr(llm, name) for name in names]


def processor_config(spec: ModelSpec, chat: bool, replicas: int) -> Any:
    """The ``ray.data.llm`` processor config of requests to ``spec`` (``chat``: messages, else
    raw prompts)."""
    HttpRequestProcessorConfig, vLLMEngineProcessorConfig = _ray_data_llm(
        "HttpRequestProcessorConfig", "vLLMEngineProcessorConfig"
    )
    from dataforge.llm.openai_compat import BACKOFF_SECONDS, auth_headers

    if spec.backend == "openai":
        path = "/chat/completions" if chat else "/completions"
        return HttpRequestProcessorConfig(
            url=(spec.base_url or "").rstrip("/") + path,
            headers=auth_headers(spec),
            concurrency=replicas,
            batch_size=spec.max_concurrency,
            max_retries=spec.max_retries,
            base_retry_wait_time_in_s=BACKOFF_SECONDS,
        )
    engine: dict[str, Any] = {"dtype": spec.dtype, "gpu_memory_utilization": spec.gpu_memory_utilization}
    if spec.max_model_len:
        engine["max_model_len"] = spec.max_model_len
    return vLLMEngineProcessorConfig(
        model_source=spec.model,
        engine_kwargs=engine,
        concurrency=replicas,
        batch_size=spec.batch_size,
        chat_template_stage=chat,
        tokenize_stage=True,
        detokenize_stage=True,
        should_continue_on_error=True,
    )


def build(spec: ModelSpec, chat: bool, replicas: int) -> Any:
    """The processor of ``processor_config``, with the rows it reads and gives back."""
    (build_processor,) = _ray_data_llm("build_processor")
    config = processor_config(spec, chat, replicas)
    if spec.backend == "openai":
        return build_processor(config, preprocess=_http_input(spec), postprocess=_http_output)
    return build_processor(config, preprocess=_vllm_input, postprocess=_vllm_output)


# -- the driver's side -------------------------------------------------------------------------


def group_name(spec: ModelSpec, chat: bool) -> str:
    """The name of the processor that answers requests to ``spec`` (chat messages, or raw prompts)."""
    return json.dumps({"model": spec.model_dump(mode="json"), "chat": chat}, sort_keys=True)


def write_requests(
    folder: Path, requests: list[tuple[ModelSpec, Request]], mode: str, skip: Collection[str]
) -> Written:
    """The requests of ``requests`` sent through ``ray.data.llm`` in ``mode`` whose keys are not in
    ``skip``, written by processor (``group_name``) to a Parquet file each in ``folder`` (columns
    ``key``, ``request``: the payload as JSON; once per key: a request asked by two batches is in
    both their files, and sent once, ``unique_requests``). Returns {group: (file, requests, rows
    the processor reads: a row per sample for vLLM)}: what the driver reads them from, so that
    the requests never pass through its memory."""
    import polars as pl

    by_group: dict[str, dict[str, str]] = {}
    samples: dict[str, int] = {}
    for spec, request in requests:
        key = cache_key(spec, request)
        if sent_through(spec, mode) and key not in skip:
            group = group_name(spec, request.messages is not None)
            if key not in by_group.setdefault(group, {}):
                by_group[group][key] = json.dumps(request.payload())
                samples[group] = samples.get(group, 0) + _rows_per_request(spec, request.params.n)
    written: Written = {}
    for group, rows in by_group.items():
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{uuid.uuid4().hex}.parquet"
        pl.DataFrame({"key": list(rows), "request": list(rows.values())}).write_parquet(path)
        written[group] = (str(path), len(rows), samples[group])
    return written


@dataclass
class Answered:
    """What ``answer_requests`` did: requests sent and answers stored; requests that failed for
    good (``failed``, by cache key: a vLLM engine's error, which the step then records as a failed
    generation without loading the model); requests left to the step's own backend (``left``, by
    why: an answer that was not the choices asked for, the processor's error; ``skip``: the keys
    of the first kind, not to be gathered again; ``given_up``: the processors that stopped, whose
    requests are all left)."""

    sent: int = 0
    stored: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    left: dict[str, int] = field(default_factory=dict)
    skip: set[str] = field(default_factory=set)
    given_up: set[str] = field(default_factory=set)

    def leave(self, why: str, n: int = 1) -> None:
        self.left[why] = self.left.get(why, 0) + n

    def summary(self, rounds: int) -> dict[str, Any]:
        """What the build's report keeps of it (``BuildReport.llm``)."""
        failures: dict[str, int] = {}
        for why in self.failed.values():
            failures[why] = failures.get(why, 0) + 1
        return {"rounds": rounds, "sent": self.sent, "stored": self.stored, "failed": failures, "left": self.left}


class Answering:
    """One step's requests answered through ``ray.data.llm`` into the request cache at
    ``cache_path``, over its rounds (``send``: the files tasks wrote) or, for a step run in the
    driver, call by call as it asks (``ask``, a model pool's ``elsewhere``), counted in ``done``.
    Request files go under ``folder``, removed by ``close``. ``readable``: where the processor
    reads request files from (``engine.relay``: the store, for nodes that do not mount the build
    folder; default: where they are)."""

    def __init__(
        self,
        cache_path: Path,
        folder: Path,
        mode: str,
        replicas: int,
        track: Track | None = None,
        readable: Readable | None = None,
    ):
        self.cache = RequestCache(cache_path)
        self.folder, self.mode, self.replicas, self.track = folder, mode, replicas, track
        self.readable = readable
        self.done = Answered()
        self.rounds = 0  # rounds (or calls) that sent something

    def send(self, files: dict[str, list[tuple[str, int, int]]]) -> bool:
        """Answer the requests of ``files`` ({group: its ``write_requests`` values}) but those of
        processors that stopped; False when there were none."""
        files = {group: parts for group, parts in files.items() if group not in self.done.given_up}
        if not files:
            return False
        self.rounds += 1
        answer_requests(files, self.cache, self.replicas, self.done, self.track, self.readable)
        return True

    def ask(self, spec: ModelSpec, requests: list[Request]) -> bool:
        """Answer one call's requests to ``spec`` with no stored answer, those sent this way and
        not left to the step's backend before: afterwards each is stored, failed (``done.failed``)
        or left to the backend. False when none was sent."""
        call = self.folder / f"call-{uuid.uuid4().hex}"
        written = write_requests(call, [(spec, r) for r in requests], self.mode, self.done.skip)
        return self.send({group: [part] for group, part in written.items()})

    def close(self) -> dict[str, Any]:
        """Remove the request files; what the build's report keeps (``Answered.summary``)."""
        self.cache.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        return self.done.summary(self.rounds)


def _n(request: str) -> int:
    """The samples asked by a request as ``write_requests`` wrote it (its payload as JSON)."""
    return int(json.loads(request)["params"]["n"])


def _rows_per_request(spec: ModelSpec, n: int) -> int:
    """The processor's rows for a request of ``n`` samples to ``spec``: one per sample for vLLM
    (whose engine stage gives one completion per row), else one."""
    return n if spec.backend == "vllm" else 1


def _key_codes(keys: list[str]) -> np.ndarray:
    """The first 64 bits of each request key (a sha256 in hex) as uint64."""
    return np.fromiter((int(k[:16], 16) for k in keys), dtype=np.uint64, count=len(keys))


def unique_requests(parts: list[tuple[str, int, int]], spec: ModelSpec) -> list[tuple[str, int, int]]:
    """``parts`` (one processor's files of a round, ``write_requests`` values) with each request
    once: the first file that holds it keeps it, a later one is written again without it (a file
    left with none is dropped). A request two batches ask (the same prompt in two rows) is sent
    once, and the second batch finds its answer stored.

    The driver reads the files' keys alone, 8 bytes each (their first 64 bits): two distinct
    requests that share them (about one chance in 10^7 at 10^7 requests) leave the second
    unsent this round; it has no stored answer, so the next round gathers and sends it."""
    import polars as pl

    if len(parts) < 2:
        return parts
    codes = [_key_codes(pl.read_parquet(f, columns=["key"])["key"].to_list()) for f, _, _ in parts]
    _, first = np.unique(np.concatenate(codes), return_index=True)
    kept = np.zeros(sum(len(c) for c in codes), dtype=bool)
    kept[first] = True
    out, start = [], 0
    for (path, n, rows), c in zip(parts, codes, strict=True):
        mine, start = kept[start : start + len(c)], start + len(c)
        if mine.all():
            out.append((path, n, rows))
        elif mine.any():
            table = pl.read_parquet(path).filter(pl.Series(mine))
            table.write_parquet(path)
            out.append((path, len(table), sum(_rows_per_request(spec, _n(r)) for r in table["request"])))
    return out


def _as_they_are(paths: list[str]) -> tuple[list[str], Any]:
    """Request files read where they are (every node mounts the build folder)."""
    return paths, None


def _samples(spec: ModelSpec) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    """A request's rows for the processor of ``spec``: one per sample for vLLM (``k``), else one."""

    def rows(row: dict[str, Any]) -> list[dict[str, Any]]:
        n = _rows_per_request(spec, _n(row["request"]))
        return [{"key": row["key"], "k": k, "request": row["request"]} for k in range(n)]

    return rows


def answer_requests(
    files: dict[str, list[tuple[str, int, int]]],
    cache: RequestCache,
    replicas: int,
    done: Answered,
    track: Track | None = None,
    readable: Readable | None = None,
) -> None:
    """Send the requests written by ``write_requests`` (``files``: {group: [its values]}) through
    ``ray.data.llm``, a processor per group, and store each answer in ``cache`` as it comes back
    (all ``n`` samples of a vLLM request first), counting in ``done`` (the step's, over its
    rounds). A request the engine failed goes to ``done.failed``; a processor that fails (a
    request the server kept failing: the HTTP stage gives up on the whole run) leaves what it had
    not answered to the step's own backend (``left``, ``given_up``)."""
    import ray
    import ray.data  # (configures its logging: the level is set after)

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # the step's own progress bar tells
    ray.data.DataContext.get_current().enable_progress_bars = False
    for group, parts in files.items():
        _answer_group(group, parts, cache, replicas, track, done, readable)


def _answer_group(
    group: str,
    parts: list[tuple[str, int, int]],
    cache: RequestCache,
    replicas: int,
    track: Track | None,
    done: Answered,
    readable: Readable | None = None,
) -> None:
    """``answer_requests`` for the requests of one processor (``group``), counted in ``done``."""
    import ray

    named = json.loads(group)
    spec, chat = ModelSpec(**named["model"]), bool(named["chat"])
    parts = unique_requests(parts, spec)
    total, rows = sum(n for _, n, _ in parts), sum(r for _, _, r in parts)
    samples: dict[str, dict[int, dict[str, Any]]] = {}  # a vLLM request's samples until all came

    def take(row: dict[str, Any]) -> int:
        """One row the processor gave: 1 when it settles its request (stored, failed, left)."""
        key = row["key"]
        if key in done.failed or key in done.skip:  # (another sample of a request settled)
            return 0
        if row.get("__inference_error__"):  # an engine's error row (it skips the postprocess)
            done.failed[key] = "engine_error"
        elif row.get("error") or not row.get("answer"):  # not the answer asked for: the backend retries
            done.leave(row.get("error") or "no_answer")
            done.skip.add(key)
        else:
            got = samples.setdefault(key, {})
            got[int(row["k"])] = json.loads(row["answer"])
            if len(got) < int(row["n"]):
                return 0
            cache.put_many(spec.model, [(key, _combined(got))])
            done.stored += 1
        samples.pop(key, None)
        return 1

    paths, filesystem = (readable or _as_they_are)([f for f, _, _ in parts])
    requests = ray.data.read_parquet(paths, filesystem=filesystem).flat_map(_samples(spec))
    answers = build(spec, chat, replicas)(requests).iter_rows()
    out = iter(track(answers, rows) if track else answers)
    settled = 0  # requests stored, failed or left
    while True:
        try:
            row = next(out)
        except StopIteration:
            break
        except Exception as exc:  # the processor stopped: what it had not answered goes to the backend
            done.leave(f"processor: {type(exc).__name__}", total - settled)
            done.given_up.add(group)
            break
        settled += take(row)  # (outside the try: an error here is dataforge's, and is raised)
    done.sent += total


def _combined(samples: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The stored answer of one request from its samples, in sample order."""
    parts = [Generation(**samples[k]) for k in sorted(samples)]
    return Generation(
        texts=[t for g in parts for t in g.texts],
        finish_reasons=[r for g in parts for r in g.finish_reasons],
        completion_tokens=sum(g.completion_tokens for g in parts),
    ).to_json()
