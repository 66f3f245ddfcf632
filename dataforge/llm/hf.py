"""The transformers backend: batched generation with left padding, on CPU or GPU.

Chat requests go through the tokenizer's chat template (``add_generation_prompt=True``);
prompt requests are tokenized as they are. Requests with the same sampling params are batched
together (``spec.batch_size`` prompts, ``n`` samples each).

Sampling is per request, not per batch: each sample draws its token at every step as the argmax
of its logits (temperature and top-p applied) plus Gumbel noise from a generator of its own,
seeded from the params' seed, its prompt and its sample index (the Gumbel-max trick: an exact draw
from the tempered distribution). So a request's samples do not depend on which requests share its
batch — a local build and a Ray build, whose batches differ, sample alike with an empty request
cache (up to the float rounding that padding brings to the logits). Before, one seed per batch,
taken from all its prompts, made every sample depend on the batch.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

from dataforge.llm.base import CUT_AT_MAX_TOKENS, Generation, LLMError, OnAnswer, Request, truncate_at_stop
from dataforge.llm.spec import ModelSpec


def pick_device(requested: str | None) -> str:
    import torch

    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def torch_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def end_token_ids(generation_eos: int | list[int] | None, tokenizer_eos: int | None) -> list[int]:
    """The tokens that end a completion: the model's generation config's (an instruct model's
    end-of-turn token: Llama 3's ``<|eot_id|>``, often not the tokenizer's ``eos_token``) and the
    tokenizer's. Given the tokenizer's alone, such a model went on past its turn, writing the next
    one, until ``max_tokens``."""
    ids = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
    if tokenizer_eos is not None and tokenizer_eos not in ids:
        ids.append(tokenizer_eos)
    return ids


def sample_seed(seed: int | None, prompt: str, index: int) -> int:
    """The seed of sample ``index`` of ``prompt`` under the params' ``seed``: the same wherever
    and with whatever batch the request is sent."""
    return int(hashlib.sha256(f"{seed}|{index}|{prompt}".encode()).hexdigest()[:16], 16)


class GumbelNoise:
    """A logits processor adding to each row's scores Gumbel noise from that row's own generator
    (``seeds``, one per row), drawn anew at each step; with greedy decoding after it, each row's
    token is a draw from the softmax of its scores, and depends on its seed alone."""

    def __init__(self, seeds: list[int]):
        self.seeds = [s % 2**63 for s in seeds]
        self.generators: list[Any] = []  # made on the device of the first scores (drawn there, not copied)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if not self.generators:
            self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        uniform = torch.stack(
            [torch.rand(scores.shape[-1], generator=g, device=scores.device) for g in self.generators]
        )
        gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(uniform.dtype).tiny)))
        return scores + gumbel.to(scores.dtype)


class TransformersBackend:
    """``AutoModelForCausalLM`` + ``AutoTokenizer`` from a local path or the hub."""

    def __init__(self, spec: ModelSpec):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.spec = spec
        self.device = pick_device(spec.device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(spec.model)
            self.model = AutoModelForCausalLM.from_pretrained(spec.model, dtype=torch_dtype(spec.dtype, self.device))
        except (OSError, ValueError) as exc:
            raise LLMError(f"cannot load model '{spec.model}' with transformers: {exc}") from exc
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.stop_ids = end_token_ids(self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id)

    def render(self, request: Request) -> tuple[str, bool]:
        """The prompt text, and whether the tokenizer should add its special tokens to it."""
        if request.messages is None:
            return request.prompt or "", True
        if not self.tokenizer.chat_template:
            raise LLMError(f"model '{self.spec.model}' has no chat template; use prompt mode or give it one")
        text = self.tokenizer.apply_chat_template(list(request.messages), add_generation_prompt=True, tokenize=False)
        return text, False

    def generate(self, requests: list[Request], on_answer: OnAnswer | None = None) -> list[Generation]:
        groups: dict[tuple[str, bool], list[int]] = defaultdict(list)
        for i, r in enumerate(requests):  # a batch shares its params, and whether its prompts are rendered chats
            groups[(r.params.model_dump_json(), r.messages is None)].append(i)
        out: list[Generation | None] = [None] * len(requests)
        for idx in groups.values():
            for start in range(0, len(idx), self.spec.batch_size):
                batch = idx[start : start + self.spec.batch_size]
                for i, gen in zip(batch, self._generate_batch([requests[i] for i in batch]), strict=True):
                    out[i] = gen
                    if on_answer is not None:
                        on_answer(i, gen)
        return [g for g in out if g is not None]

    def _generate_batch(self, requests: list[Request]) -> list[Generation]:
        import torch
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        params = requests[0].params
        rendered = [self.render(r) for r in requests]
        add_special = rendered[0][1]
        texts = [t for t, _ in rendered for _ in range(params.n)]  # each request's n samples, in a row
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special).to(self.device)
        processors = LogitsProcessorList()
        if params.temperature > 0:  # sampled: greedy over tempered, top-p-cut logits plus per-sample noise
            processors.append(TemperatureLogitsWarper(params.temperature))
            if params.top_p < 1:
                processors.append(TopPLogitsWarper(params.top_p))
            seeds = [sample_seed(params.seed, t, j) for t, _ in rendered for j in range(params.n)]
            processors.append(GumbelNoise(seeds))
        with torch.no_grad():
            seqs = self.model.generate(
                **enc,
                max_new_tokens=params.max_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.stop_ids or None,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=processors,
            )
        new = seqs[:, enc["input_ids"].shape[1] :].tolist()
        results = []
        for r_i in range(len(requests)):
            texts, reasons, tokens = [], [], 0
            for row in new[r_i * params.n : (r_i + 1) * params.n]:
                end = next((k for k, t in enumerate(row) if t in self.stop_ids), None)
                ended = end is not None
                row = row[:end] if ended else row
                tokens += len(row)
                text, stopped = truncate_at_stop(self.tokenizer.decode(row, skip_special_tokens=True), params.stop)
                texts.append(text)
                reasons.append("stop" if ended or stopped else CUT_AT_MAX_TOKENS)
            results.append(Generation(texts=texts, finish_reasons=reasons, completion_tokens=tokens))
        return results

    def logprobs(self, prompts: list[str], completions: list[str]) -> list[float]:
        """Sum of log p(completion tokens | prompt), one forward pass per pair."""
        import torch

        scores = []
        with torch.no_grad():
            for prompt, completion in zip(prompts, completions, strict=True):
                p_ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
                c_ids = self.tokenizer(completion, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([p_ids + c_ids], device=self.device)
                logits = self.model(ids).logits[0, len(p_ids) - 1 : -1].float()
                logp = torch.log_softmax(logits, dim=-1).gather(1, ids[0, len(p_ids) :, None]).sum()
                scores.append(float(logp))
        return scores

    def close(self) -> None:
        del self.model
