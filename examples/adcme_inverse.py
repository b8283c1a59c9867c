"""ADCME's adcme_inverse.jl: the Rosenbrock function weighted by rank + 1,
summed over ranks, minimised with mpi_optimize. Minimiser (1, 1).

    mpiexec -n 4 python examples/adcme_inverse.py
"""

import quiet  # noqa: F401  (first: TensorFlow without its start-up lines)
import numpy as np
import tensorflow as tf

import adcme_mpi as am

tf.compat.v1.disable_eager_execution()

r = am.mpi_rank()
theta0 = tf.compat.v1.placeholder(tf.float64, shape=[2])
theta = am.mpi_bcast(theta0)
a, b = 1.0, 100.0
x, y = theta[0], theta[1]
fxy = (a - x) ** 2 + b * (y - x**2) ** 2
loss = am.mpi_sum(fxy * (r + 1))
g = tf.gradients(loss, theta0)[0]
sess = am.Session()

x0 = am.mpi_sync(np.random.default_rng(0).random(2))
result = am.mpi_optimize(
    fg=lambda v: sess.run([loss, g], {theta0: v}),
    x0=x0,
    method="L-BFGS-B",
    options={"gtol": 1e-10, "ftol": 1e-14},
)
if r == 0:
    print(
        "minimizer", np.round(result.x, 6).tolist(), "minimum", result.fun, "iterations", result.nit
    )
am.mpi_finalize()
