"""ADCME's "Send and Receive": a = mpi_sendrecv(ones(10) * r, 0, 2).

    mpiexec -n 4 python examples/send_recv.py

Rank 2 sends its a to rank 0. Unlike ADCME, rank 2's gradient keeps its own
term: it is 2*a from its own loss plus 2*a sent back by rank 0 (8 = 4 + 4).
"""

import quiet  # noqa: F401  (first: TensorFlow without its start-up lines)
import numpy as np
import tensorflow as tf

import adcme_mpi as am
from adcme_mpi.apps.grid import print_in_rank_order, require_ranks

tf.compat.v1.disable_eager_execution()
am.mpi_init()  # collective, first: ranks 1 and 3 make no point-to-point op
require_ranks("send_recv.py", at_least=3)

r = am.mpi_rank()
a0 = tf.constant(np.ones(10) * r)
a = am.mpi_sendrecv(a0, 0, 2)
L = tf.reduce_sum(a**2)
g = tf.gradients(L, a0)[0]
with am.Session() as sess:
    v, G = sess.run([a, g])
print_in_rank_order(f"rank {r}: a = {v.tolist()} grad = {G.tolist()}")
am.mpi_finalize()
