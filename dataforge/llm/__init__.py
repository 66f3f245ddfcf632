"""Generation backends behind one protocol, a per-request cache, and prompt templates.

- ``spec.py``: ``ModelSpec`` (which backend, which model, its options) and ``SamplingParams``.
- ``base.py``: the ``Backend`` protocol, ``Request`` and ``Generation``.
- ``hf.py`` (transformers), ``openai_compat.py`` (HTTP), ``vllm_backend.py`` (vLLM offline).
- ``cache.py``: every request cached by (model, input, params, seed) in SQLite.
- ``client.py``: ``LLMClient`` = a backend behind the cache, and ``ModelPool`` (what steps get
  as ``ctx.llm``).
- ``server.py``: a small OpenAI-compatible HTTP server around any backend.
- ``templates.py``: Jinja2 prompt templates, with the variables they use known at plan time.
"""

from dataforge.llm.base import Backend, Generation, Request
from dataforge.llm.client import LLMClient, ModelPool
from dataforge.llm.spec import ModelSpec, SamplingParams

__all__ = ["Backend", "Generation", "LLMClient", "ModelPool", "ModelSpec", "Request", "SamplingParams"]
