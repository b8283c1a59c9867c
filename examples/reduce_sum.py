"""ADCME's "Reduce Sum": a = (1:10) * r; b = mpi_sum(a); gradient of sum(b).

mpiexec -n 4 python examples/reduce_sum.py
"""

import quiet  # noqa: F401  (first: TensorFlow without its start-up lines)
import numpy as np
import tensorflow as tf

import adcme_mpi as am
from adcme_mpi.apps.grid import print_in_rank_order

tf.compat.v1.disable_eager_execution()

r = am.mpi_rank()
a = tf.constant(np.arange(1, 11, dtype=np.float64) * r)
b = am.mpi_sum(a)
L = tf.reduce_sum(b)
g = tf.gradients(L, a)[0]
with am.Session() as sess:
    v, G = sess.run([b, g])
print_in_rank_order(f"rank {r}: b = {v.tolist()} grad = {G.tolist()}")
am.mpi_finalize()
