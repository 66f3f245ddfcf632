"""MinHash LSH candidate pairs of more rows than one process should hold the band keys of: the
keys are filed by bucket as they come, batch by batch, and each bucket's pairs are found in a
job of its own (``Context.mapper``: a Ray task on the Ray executor).

``BandKeys`` collects each batch's band keys (``minhash.band_keys``) by row. Up to ``KEY_ROWS``
rows it holds them (n × bands × 8 bytes) and forms the pairs with
``minhash.candidate_pairs_of_keys`` at once. Beyond, it appends each live row's (row, key)
record of each band to one of ``ceil(n / KEY_ROWS)`` buckets, chosen by a hash of (band, key),
in a file per bucket and band, so every LSH bucket (one key in one band) lies whole in one file;
a job per bucket links each LSH bucket's members to its member of smallest rank (and, in small
buckets, every pair of members: ``within``) with the same compiled kernel, a band at a time, and
gives back the pairs' codes. The pairs are the same in both modes, in the same order (tested),
whatever the batches or the executor. What the collecting process holds is one batch of keys
and a flag per row; what a job holds is one file's records (about ``KEY_ROWS`` × 16 bytes).
"""

from __future__ import annotations

import functools
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from dataforge.staging import staging

if TYPE_CHECKING:
    from dataforge.engine.table import Mapper

KEY_ROWS = 1_000_000  # rows whose band keys are held at once; beyond, they are filed in buckets of about this many

RECORD = np.dtype([("row", "<i8"), ("key", "<u8")])  # one live row's key in one band


class BandKeys:
    """The band keys of ``n`` rows, given batch by batch (``add``), and their candidate pairs
    (``pairs``); see the module doc. Use it as a context manager: on exit its files go.
    ``folder``: where the buckets are filed when the rows are more than ``KEY_ROWS`` (on Ray,
    storage every node reaches: the step's scratch folder)."""

    def __init__(self, n: int, bands: int, folder: Path | None = None):
        self.n, self.bands = n, bands
        self.live = np.zeros(n, dtype=bool)
        self.buckets = 0 if n <= KEY_ROWS else -(-n // KEY_ROWS)
        self.keys = np.empty((n, bands), dtype=np.uint64) if not self.buckets else None
        self._folder = folder
        self._held = ExitStack()  # the staging folder and the open files
        self._files: list[list[BinaryIO]] = []  # [bucket][band]
        self.paths: list[list[str]] = []

    def __enter__(self) -> BandKeys:
        if self.buckets:
            where = Path(self._held.enter_context(staging(self._folder, "dataforge-lsh-")))
            self.paths = [
                [str(where / f"{b:05d}-{band:03d}.keys") for band in range(self.bands)] for b in range(self.buckets)
            ]
            self._files = [[self._held.enter_context(open(p, "wb")) for p in bucket] for bucket in self.paths]
        return self

    def __exit__(self, *exc: object) -> None:
        self._files = []
        self._held.close()

    def add(self, index: np.ndarray, keys: np.ndarray, live: np.ndarray) -> None:
        """The band keys (len(index) × bands) and has-words flags of the rows at ``index``."""
        index = np.asarray(index, dtype=np.int64)
        self.live[index] = live
        if self.keys is not None:
            self.keys[index] = keys
            return
        records = np.empty(int(np.count_nonzero(live)), dtype=RECORD)
        if not len(records):
            return
        records["row"] = index[live]
        for band in range(self.bands):
            records["key"] = keys[live, band]
            bucket = _bucket_of(band, records["key"], self.buckets)
            order = np.argsort(bucket, kind="stable")  # a radix sort of 16-bit buckets
            bounds = np.searchsorted(bucket[order], np.arange(self.buckets + 1))
            for b in range(self.buckets):
                self._files[b][band].write(records[order[bounds[b] : bounds[b + 1]]].tobytes())

    def pairs(self, rank: np.ndarray | None = None, within: int = 0, mapper: Mapper | None = None) -> np.ndarray:
        """``minhash.candidate_pairs_of_keys`` of every row added: (head, member) pairs sorted by
        head then member. Filed: one job per bucket (its file of each band; through ``mapper``
        where given; ``rank`` is staged beside the files for the jobs to read)."""
        from dataforge.text.minhash import candidate_pairs_of_keys

        if self.keys is not None:
            return candidate_pairs_of_keys(self.keys, self.live, rank, within)
        if self.live.sum() < 2:
            return np.zeros((0, 2), dtype=np.int64)
        for bucket in self._files:
            for f in bucket:
                f.flush()
        rank_path = None
        if rank is not None:
            rank_path = str(Path(self.paths[0][0]).parent / "rank.npy")
            np.save(rank_path, np.ascontiguousarray(rank, dtype=np.int64))
        run: Mapper = mapper or (lambda fn, jobs: map(fn, jobs))
        job = functools.partial(bucket_pairs, n=self.n, rank_path=rank_path, within=within)
        codes = np.unique(np.concatenate([np.zeros(0, dtype=np.int64), *run(job, self.paths)]))
        return np.column_stack([codes // self.n, codes % self.n]).astype(np.int64)


def _bucket_of(band: int, key: np.ndarray, buckets: int) -> np.ndarray:
    """The bucket of each key of ``band``: a multiplicative hash of both, so an LSH bucket (one
    key in one band) is in one file whatever batch its rows came in."""
    mixed = (key ^ np.uint64((band * 0x9E3779B97F4A7C15) & (2**64 - 1))) * np.uint64(0xBF58476D1CE4E5B9)
    return ((mixed >> np.uint64(33)) % np.uint64(buckets)).astype(np.uint16 if buckets < 1 << 16 else np.int64)


def bucket_pairs(paths: list[str], n: int, rank_path: str | None, within: int) -> np.ndarray:
    """One bucket's pairs as codes (head × n + member; with ``within``, also member pairs of small
    LSH buckets, better-ranked first): ``minhash.band_pairs`` on the bucket's file of each band
    (``paths``), one band at a time. Depends on its files alone (what a Ray task may run)."""
    from dataforge.text.minhash import band_pairs

    ranks = np.load(rank_path, mmap_mode="r") if rank_path else None
    codes = [np.zeros(0, dtype=np.int64)]
    for path in paths:
        mine = np.fromfile(path, dtype=RECORD)
        if not len(mine):
            continue
        rows = mine["row"].astype(np.int64)
        m = len(rows)
        local = band_pairs(mine["key"], ranks[rows] if ranks is not None else rows, np.ones(m, dtype=bool), within)
        codes.append(rows[local // m] * n + rows[local % m])
    return np.unique(np.concatenate(codes))
