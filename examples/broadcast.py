"""ADCME's "Broadcast": b = mpi_bcast(ones(10) * r, 3); L = mpi_sum(sum(b^2)).

mpiexec -n 4 python examples/broadcast.py   ->   rank 3's gradient is 24 everywhere
"""

import quiet  # noqa: F401  (first: TensorFlow without its start-up lines)
import numpy as np
import tensorflow as tf

import adcme_mpi as am
from adcme_mpi.apps.grid import print_in_rank_order, require_ranks

tf.compat.v1.disable_eager_execution()
require_ranks("broadcast.py", at_least=4)

r = am.mpi_rank()
a = tf.constant(np.ones(10) * r)
b = am.mpi_bcast(a, 3)
L = am.mpi_sum(tf.reduce_sum(b**2))
g = tf.gradients(L, a)[0]
with am.Session() as sess:
    v, G = sess.run([b, g])
print_in_rank_order(f"rank {r}: b = {v.tolist()} grad = {G.tolist()}")
am.mpi_finalize()
