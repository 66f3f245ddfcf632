"""Static token embeddings distilled from a sentence-transformers model, for a dense recall stage
that embeds millions of rows in seconds.

Distillation (the model2vec recipe, done here because model2vec's ``distill`` extra pins an older
``transformers`` than the rest of the stack): every vocabulary token is run through the model
alone (``[CLS] token [SEP]``) and its output mean-pooled as the model pools a sentence; the mean
over the vocabulary is removed (the common direction every short input shares). The table, a
(vocab × dim) float16 matrix, is cached under ``$DATAFORGE_CACHE_DIR/static/`` keyed by the
model's files, so it is derived once per machine from the model the package already has: nothing
is downloaded.

A text's vector is then the IDF-weighted sum of its tokens' vectors, normalized: a bag of
MiniLM-placed tokens. The IDF comes from a reference set (the leakage check's eval side: words
every eval item shares weigh little), so a text's vector does not depend on the texts encoded
beside it.
Rewording keeps most tokens' neighbourhoods, so the nearest items survive paraphrase, renamed
people and reordered clauses; it is a recall stage, not a judge of meaning.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dataforge.engine.fingerprint import cache_root, hash_text, path_fingerprint

VERSION = 1  # of the distillation below: a change makes a new cache file


def _model_key(path: str) -> str:
    """A key for the model's weights: the content hash of its folder (``path_fingerprint``, cached
    by size and mtime), or a hub id by name."""
    folder = Path(path)
    content = path_fingerprint(folder) if folder.exists() else path
    return hash_text(f"v{VERSION}|{content}")[:16]


def reference_idf(doc_freq: np.ndarray, n_docs: int) -> np.ndarray:
    """Smoothed IDF (sklearn's) of terms found in ``doc_freq`` of ``n_docs`` reference texts: words
    every reference text shares weigh little, a term in none weighs as much as the rarest.

    Measured against IDF over train ∪ eval (the check before it divided its train rows): on the
    development rephrases about the same (GSM8K, MMLU) or better (HumanEval 0.699 → 0.712); on the
    HH preferences recipe, whose eval side is 229 prompts, static cosines rise (28 train prompts
    at top-1 ≥ 0.85 against 11) and 9 more train rows are matched at static cosine 0.881–0.892 —
    read by hand: long conversations on other topics. Scaling a small reference's frequencies up
    to 1,000 texts removed those and cost HumanEval 0.07 recall, so it was not kept
    (BENCHMARKS.md)."""
    return np.log((1 + n_docs) / (1 + np.asarray(doc_freq, dtype=np.float64))) + 1.0


class StaticModel:
    """A tokenizer and one vector per token id: ``encode`` embeds texts without a transformer."""

    def __init__(self, tokenizer: Any, vectors: np.ndarray) -> None:
        self.tokenizer, self.vectors = tokenizer, vectors.astype(np.float32)

    def token_ids(self, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
        enc = self.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens)
        return enc["input_ids"]

    def _bags(self, texts: Sequence[str], max_tokens: int) -> Any:
        """(n, vocab) sparse presence of each text's tokens (each counted once per text)."""
        from scipy import sparse

        ids = self.token_ids(texts, max_tokens)
        rows = np.repeat(np.arange(len(ids)), [len(x) for x in ids])
        cols = np.fromiter((t for x in ids for t in x), dtype=np.int64, count=len(rows))
        data = np.ones(len(rows), dtype=np.float32)
        bag = sparse.csr_matrix((data, (rows, cols)), shape=(len(ids), len(self.vectors)))
        bag.data[:] = 1.0  # presence, not counts (duplicates were summed)
        return bag

    def idf(self, reference: Sequence[str], max_tokens: int = 512) -> np.ndarray:
        """(vocab,) token weights from the ``reference`` texts (``reference_idf``)."""
        df = np.bincount(self._bags(reference, max_tokens).indices, minlength=len(self.vectors))
        return reference_idf(df, len(reference)).astype(np.float32)

    def encode(self, texts: Sequence[str], idf: np.ndarray, max_tokens: int = 512) -> np.ndarray:
        """(n, dim) unit vectors of ``texts``: the ``idf``-weighted sum of their token vectors, each
        token counted once per text. A text's vector depends on its own tokens and ``idf`` alone,
        so it is the same whatever texts are encoded with it."""
        from scipy import sparse

        out = np.asarray((self._bags(texts, max_tokens) @ sparse.diags(idf)) @ self.vectors, dtype=np.float32)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def distill(model: Any, batch_size: int = 1024) -> np.ndarray:
    """(vocab, dim) float16: each token's output through ``model`` (a SentenceTransformer) alone,
    mean-pooled, with the vocabulary mean removed. Special tokens get zero vectors."""
    import torch

    tokenizer = model.tokenizer
    transformer = model[0].auto_model
    n_vocab = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    dim = transformer.config.hidden_size
    out = np.zeros((n_vocab, dim), dtype=np.float32)
    transformer.eval()
    with torch.inference_mode():
        for s in range(0, n_vocab, batch_size):
            ids = torch.arange(s, min(s + batch_size, n_vocab))
            batch = torch.stack([torch.full_like(ids, cls), ids, torch.full_like(ids, sep)], dim=1)
            hidden = transformer(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
            out[s : s + len(ids)] = hidden.mean(dim=1).float().numpy()
    keep = np.array([i not in special for i in range(n_vocab)])
    out[keep] -= out[keep].mean(axis=0)
    out[~keep] = 0.0
    return out.astype(np.float16)


@functools.lru_cache(maxsize=2)
def load_static(name: str | None = None) -> StaticModel:
    """The static model derived from the sentence-transformers model ``name`` (the bundled MiniLM
    by default), distilled on first use and cached on disk."""
    from dataforge.embed import load_model, model_path

    path = model_path(name)
    cache = cache_root() / "static" / f"{_model_key(path)}.npy"
    st = load_model(name)
    if cache.exists():
        vectors = np.load(cache)
    else:
        vectors = distill(st)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{np.random.randint(1 << 30)}.tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(cache)
    return StaticModel(st.tokenizer, vectors)
