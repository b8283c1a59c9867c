"""ADCME's test_simple.jl: f(theta) = sum_i theta^(i-1) over the ranks.

mpiexec -n 4 python examples/test_simple.py   ->   (15.0, 17.0) at theta = 2
"""

import quiet  # noqa: F401  (first: TensorFlow without its start-up lines)
import tensorflow as tf

import adcme_mpi as am

tf.compat.v1.disable_eager_execution()

theta = tf.compat.v1.placeholder_with_default(tf.constant(2.0, tf.float64), shape=())
f_theta = am.mpi_bcast(theta)
l = f_theta ** am.mpi_rank()
L = am.mpi_sum(l)
g = tf.gradients(L, theta)[0]
with am.Session() as sess:
    L_, g_ = sess.run([L, g])
if am.mpi_rank() == 0:
    print((float(L_), float(g_)))
am.mpi_finalize()
