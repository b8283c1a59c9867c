"""ADCME's LBFGS example: solve 1 + t + t^2 + t^3 = 2 with the MPI optimizer.

    mpiexec -n 4 python examples/lbfgs.py   ->   minimizer [0.5437], minimum ~0

Rank r contributes t^r; rank 0 holds the loss (sum - 2)^2. Differentiating
with respect to the placeholder before mpi_bcast gives rank 0 the gradient of
the whole sum (bcast's adjoint adds every rank's contribution on the root).
"""

import quiet  # noqa: F401  (first: TensorFlow without its start-up lines)
import numpy as np
import tensorflow as tf

import adcme_mpi as am

tf.compat.v1.disable_eager_execution()

theta = tf.compat.v1.placeholder(tf.float64, shape=[1])
f_theta = am.mpi_bcast(theta)
r = am.mpi_rank()
# t^0 written as 1 + 0*t: TF's pow gradient at t = 0 is 0 * t^-1 = nan (and
# L-BFGS-B's first step from t = 1 lands exactly on 0). The 0*t keeps a
# differentiable path from theta to L on rank 0, which tf.gradients needs to
# build rank 0's part of the backward pass.
l = f_theta**r if r > 0 else 1.0 + 0.0 * f_theta
L = (tf.reduce_sum(am.mpi_sum(l)) - 2.0) ** 2
g = tf.gradients(L, theta)[0]
sess = am.Session()

result = am.mpi_optimize(
    lambda x: sess.run(L, {theta: x}),
    lambda x: sess.run(g, {theta: x}),
    np.ones(1),
    method="L-BFGS-B",
)
if am.mpi_rank() == 0:
    print("minimizer", result.x, "minimum", result.fun)
am.mpi_finalize()
