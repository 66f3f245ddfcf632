"""The vLLM offline backend (``pip install dataforge[vllm]`` on a GPU machine).

Chat requests use ``LLM.chat`` (the model's chat template), prompt requests ``LLM.generate``;
each request gets its own ``SamplingParams`` (with its seed), so samples do not depend on how
requests are batched. Log-prob scoring uses ``prompt_logprobs``.
"""

from __future__ import annotations

from typing import Any

from dataforge.llm.base import Generation, LLMError, OnAnswer, Request, truncate_at_stop
from dataforge.llm.spec import ModelSpec


class VLLMBackend:
    def __init__(self, spec: ModelSpec):
        try:
            import vllm
        except ImportError as exc:
            raise LLMError("backend 'vllm' needs vLLM: pip install 'dataforge[vllm]' (GPU machines)") from exc
        self.vllm = vllm
        self.spec = spec
        kwargs: dict[str, Any] = {"model": spec.model, "dtype": spec.dtype, "seed": 0}
        kwargs["gpu_memory_utilization"] = spec.gpu_memory_utilization
        if spec.max_model_len:
            kwargs["max_model_len"] = spec.max_model_len
        try:
            self.llm = vllm.LLM(**kwargs)
        except (OSError, ValueError) as exc:
            raise LLMError(f"cannot load model '{spec.model}' with vLLM: {exc}") from exc

    def sampling(self, request: Request) -> Any:
        p = request.params
        return self.vllm.SamplingParams(
            n=p.n, temperature=p.temperature, top_p=p.top_p, max_tokens=p.max_tokens, seed=p.seed, stop=p.stop or None
        )

    def generate(self, requests: list[Request], on_answer: OnAnswer | None = None) -> list[Generation]:
        out: list[Generation | None] = [None] * len(requests)
        chat = [i for i, r in enumerate(requests) if r.messages is not None]
        plain = [i for i, r in enumerate(requests) if r.messages is None]
        if chat:
            results = self.llm.chat(
                [list(requests[i].messages or ()) for i in chat],
                sampling_params=[self.sampling(requests[i]) for i in chat],
                use_tqdm=False,
            )
            for i, res in zip(chat, results, strict=True):
                out[i] = self._generation(res, requests[i])
                if on_answer is not None:
                    on_answer(i, out[i])
        if plain:
            results = self.llm.generate(
                [requests[i].prompt for i in plain],
                sampling_params=[self.sampling(requests[i]) for i in plain],
                use_tqdm=False,
            )
            for i, res in zip(plain, results, strict=True):
                out[i] = self._generation(res, requests[i])
                if on_answer is not None:
                    on_answer(i, out[i])
        return [g for g in out if g is not None]

    @staticmethod
    def _generation(res: Any, request: Request) -> Generation:
        outs = sorted(res.outputs, key=lambda o: o.index)
        cut = [truncate_at_stop(o.text, request.params.stop) for o in outs]
        return Generation(
            texts=[t for t, _ in cut],
            finish_reasons=[o.finish_reason or "stop" for o in outs],
            completion_tokens=sum(len(o.token_ids) for o in outs),
        )

    def logprobs(self, prompts: list[str], completions: list[str]) -> list[float]:
        tok = self.llm.get_tokenizer()
        params = self.vllm.SamplingParams(max_tokens=1, prompt_logprobs=0)
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        results = self.llm.generate(texts, sampling_params=params, use_tqdm=False)
        scores = []
        for prompt, res in zip(prompts, results, strict=True):
            start = len(tok(prompt)["input_ids"])
            total = 0.0
            for pos, entry in enumerate(res.prompt_logprobs or []):
                if pos >= start and entry:
                    total += entry[res.prompt_token_ids[pos]].logprob
            scores.append(total)
        return scores

    def close(self) -> None:
        del self.llm
