"""Connected components where the executor runs divided work (``Context.mapper``: Ray tasks on
the Ray executor): the labels ``cluster.components`` gives, found off the driver.

``components_of(n, pairs, mapper, folder)`` stages the edges in ``folder`` (on Ray, storage every
node reaches: the step's scratch folder), as shards of at most ``EDGE_ROWS`` edges, and then:

- **one shard** (the edges fit one worker): ``cluster.components`` (a vectorised union-find) in
  one job;
- **several**: min-label propagation between roots — the same hooking as that union-find, in
  rounds over the shards. Every node starts as its own root; in each round a job per shard reads
  its edges and the current roots (a file the driver writes) and gives back, for each edge whose
  ends have two roots, the larger root and the smaller; the driver hangs each such root under the
  smallest root it is given, then jumps pointers until every node points at its root. The rounds
  end when a round finds no edge between two roots (checked: that is the condition that ends
  them): then every component has one root, its smallest node (a node only ever hangs under a
  smaller node of its own component). Each round that goes on hangs a root, so the rounds end; in
  practice in few rounds (a path through 2,000 nodes in a random order: 8 or 9 rounds; through
  1,000,000: 15).

Both give the labels of ``components`` exactly (numbered by each component's smallest node; tested
against it), whatever the shards or the executor. Without a mapper it is ``components`` here.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dataforge.cluster import components
from dataforge.staging import staging

if TYPE_CHECKING:
    from dataforge.engine.table import Mapper

# edges one job holds: union-find on one worker holds about 50 bytes per edge (the pairs, their
# roots, masks), ~1 GB here; beyond this many edges, min-label propagation over shards this size
EDGE_ROWS = 20_000_000


def components_of(n: int, pairs: np.ndarray, mapper: Mapper | None = None, folder: Path | None = None) -> np.ndarray:
    """``components(n, pairs)`` (see the module doc): here without a ``mapper``; with one, the
    edges staged under ``folder`` and the work done in its jobs."""
    if mapper is None:
        return components(n, pairs)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    with staging(folder, "dataforge-edges-") as where:
        paths = []
        for start in range(0, max(len(pairs), 1), EDGE_ROWS):
            paths.append(f"{where}/{len(paths):05d}.npy")
            np.save(paths[-1], pairs[start : start + EDGE_ROWS])
        if len(paths) == 1:
            return next(iter(mapper(functools.partial(_union_find, n), paths)))
        return _propagated(n, paths, mapper, f"{where}/roots.npy")


def _union_find(n: int, path: str) -> np.ndarray:
    """A job: the component labels of ``n`` nodes linked by the edges in ``path``."""
    return components(n, np.load(path))


def _propagated(n: int, paths: list[str], mapper: Mapper, roots_path: str) -> np.ndarray:
    """The labels of ``n`` nodes linked by the edge shards in ``paths``, by root hooking in rounds
    of a ``_hooks`` job per shard (the module doc); the roots each round reads are written to
    ``roots_path``."""
    parent = np.arange(n, dtype=np.int64)
    while True:
        np.save(roots_path, parent)
        hooked = False
        for larger, smaller in mapper(functools.partial(_hooks, roots_path), paths):
            if len(larger):
                np.minimum.at(parent, larger, smaller)  # the larger root hangs under the smaller
                hooked = True
        if not hooked:  # converged: no edge joins two roots
            break
        while True:  # pointer jumping: every node to its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    roots = parent == np.arange(n)
    return (np.cumsum(roots) - 1)[parent]


def _hooks(roots_path: str, path: str) -> tuple[np.ndarray, np.ndarray]:
    """A job: for each edge in ``path`` whose ends have two roots (in ``roots_path``), the larger
    root and the smaller."""
    parent = np.load(roots_path, mmap_mode="r")
    edges = np.load(path)
    ru, rv = parent[edges[:, 0]], parent[edges[:, 1]]
    split = ru != rv
    ru, rv = ru[split], rv[split]
    return np.maximum(ru, rv), np.minimum(ru, rv)
