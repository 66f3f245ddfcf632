"""Dense float products whose bits do not depend on the process's thread count.

OpenBLAS (numpy's BLAS) sums a matrix product in another order when it runs more threads: on the
AMD EPYC VM of 2026-12-04, 10.6 % of the entries of a (128 × 384)·(384 × 1,600) float32 product
differed in their last bits between one thread and two. A Ray worker runs BLAS on one thread (Ray
sets ``OMP_NUM_THREADS=1``), the local driver on as many as the machine has, so a cosine at a
threshold's edge, or one recorded in the lineage, came out differently on the two executors
(``dedup.semantic``'s scores did). ``product`` runs the product on one BLAS thread wherever it runs.
It also hands BLAS only operands it takes as they are: numpy's ``@`` computes a product of an
array with a negative or uneven stride (a view such as ``x[::-7]``) in a loop of its own, which
sums in another order than BLAS, so the same vectors as a view and as a file differed too.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np


@functools.cache
def _controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` computed by BLAS on one thread (see the module doc)."""
    a, b = ready(a), ready(b)
    with _controller().limit(limits=1, user_api="blas"):
        return np.asarray(a @ b)


def ready(x: np.ndarray) -> np.ndarray:
    """``x`` itself where BLAS takes it (C- or Fortran-ordered), else a C-ordered copy."""
    return x if x.flags.c_contiguous or x.flags.f_contiguous else np.ascontiguousarray(x)
