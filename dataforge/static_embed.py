"""Static token embeddings distilled from a sentence-transformers model, for a dense recall stage
that embeds millions of rows in seconds.

Distillation (the model2vec recipe, done here because model2vec's ``distill`` extra pins an older
``transformers`` than the rest of the stack): every vocabulary token is run through the model
alone (``[CLS] token [SEP]``) and its output mean-pooled as the model pools a sentence; the mean
over the vocabulary is removed (the common direction every short input shares). The table, a
(vocab × dim) float16 matrix, is cached under ``$DATAFORGE_CACHE_DIR/static/`` keyed by the
model's files, so it is derived once per machine from the model the package already has: nothing
is downloaded.

A text's vector is then the IDF-weighted sum of its tokens' vectors (IDF over the texts being
compared: words every text shares weigh little), normalized: a bag of MiniLM-placed tokens.
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


class StaticModel:
    """A tokenizer and one vector per token id: ``encode`` embeds texts without a transformer."""

    def __init__(self, tokenizer: Any, vectors: np.ndarray) -> None:
        self.tokenizer, self.vectors = tokenizer, vectors.astype(np.float32)

    def token_ids(self, texts: Sequence[str], max_tokens: int) -> list[list[int]]:
        enc = self.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens)
        return enc["input_ids"]

    def encode(self, *groups: Sequence[str], max_tokens: int = 512) -> list[np.ndarray]:
        """(n, dim) unit vectors of each group of texts: the IDF-weighted sum of their token vectors,
        each token counted once per text, IDF over every text of every group (words all the texts
        share weigh little)."""
        from scipy import sparse

        ids = self.token_ids([t for g in groups for t in g], max_tokens)
        n_vocab = len(self.vectors)
        rows = np.repeat(np.arange(len(ids)), [len(x) for x in ids])
        cols = np.fromiter((t for x in ids for t in x), dtype=np.int64, count=len(rows))
        bag = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(ids), n_vocab))
        bag.data[:] = 1.0  # presence, not counts (duplicates were summed)
        df = np.bincount(bag.indices, minlength=n_vocab)
        idf = np.log((1 + len(ids)) / (1 + df)).astype(np.float32) + 1.0
        out = np.asarray((bag @ sparse.diags(idf)) @ self.vectors, dtype=np.float32)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        bounds = np.cumsum([0, *(len(g) for g in groups)])
        return [out[bounds[k] : bounds[k + 1]] for k in range(len(groups))]


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
