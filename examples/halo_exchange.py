"""ADCME's test_halo_exchange.jl: the 6x4 array 1..24 split into 2x2 blocks on
a 3x2 rank grid, padded with one ghost layer (fill 1.0).

    mpiexec -n 6 python examples/halo_exchange.py
"""

import quiet  # noqa: F401  (first: TensorFlow without its start-up lines)
import numpy as np
import tensorflow as tf

import adcme_mpi as am
from adcme_mpi.apps.grid import print_in_rank_order, require_ranks

tf.compat.v1.disable_eager_execution()
require_ranks("halo_exchange.py", exactly=6)

U = np.arange(1.0, 25.0).reshape(6, 4)
m, n = 3, 2
r = am.mpi_rank()
i, j = divmod(r, n)
u = U[2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
padded = am.mpi_halo_exchange(tf.constant(u), m, n, fill_value=1.0)
with am.Session() as sess:
    value = sess.run(padded)
print_in_rank_order(
    f"=========================== rank = {r} ======================\n"
    + "\n".join(" ".join(f"{x:4.0f}" for x in row) for row in value)
)
am.mpi_finalize()
