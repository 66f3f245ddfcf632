"""``blas.product``: the same bits whatever the number of BLAS threads of the process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import sys
import numpy as np
from dataforge.blas import product
rng = np.random.default_rng(0)
a = rng.standard_normal((256, 384)).astype(np.float32)
b = rng.standard_normal((384, 1600)).astype(np.float32)
np.save(sys.argv[1], product(a, b))
np.save(sys.argv[2], a @ b)
"""


def test_the_product_does_not_depend_on_the_blas_threads(tmp_path):
    """Run in a process whose BLAS has one thread (as on a Ray worker) and in one with two (the
    local driver on this machine): ``product`` gives the same bits. The plain ``@`` of the same
    processes is recorded too; where it differs (it did on the 2-core AMD EPYC VM), this is the
    case the helper exists for."""
    out = {}
    for threads in ("1", "2"):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
        paths = [str(tmp_path / f"{name}{threads}.npy") for name in ("product", "plain")]
        subprocess.run([sys.executable, "-c", SCRIPT, *paths], cwd=ROOT, env=env, check=True)
        out[threads] = [np.load(p) for p in paths]
    assert np.array_equal(out["1"][0], out["2"][0])
    assert np.allclose(out["1"][1], out["2"][1], atol=1e-4)  # the plain product: equal up to rounding only
    assert np.array_equal(out["1"][0], out["1"][1])  # on one thread the helper is the plain product


def test_a_strided_view_gives_the_bits_of_the_same_vectors_stored_whole():
    """numpy computes ``@`` of a negatively strided view in its own loop, not BLAS: the helper
    copies such an operand, so a view and the same vectors stored whole give the same bits."""
    from dataforge.blas import product

    rng = np.random.default_rng(1)
    a = rng.standard_normal((128, 384)).astype(np.float32)
    b = rng.standard_normal((900, 384)).astype(np.float32)
    view = b[::-7]
    assert not view.flags.c_contiguous
    assert np.array_equal(product(a, view.T), product(a, np.ascontiguousarray(view).T))
