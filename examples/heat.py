"""Heat equation u_t = kappa(x, y) Laplace(u) on [0,1]^2, explicit finite
differences on m x n patches joined by halo exchanges, and the inverse problem
that recovers kappa = t0 + t1 x + t2 y from snapshots (adcme_mpi/apps/heat.py).

    mpiexec -n 4 python examples/heat.py [--N 16 --steps S --out heat_out]

The default number of steps is the smallest stable one; an unstable --steps
is refused.
"""

import quiet  # noqa: F401  (first: TensorFlow without its start-up lines)
import argparse
import sys

import tensorflow as tf
import adcme_mpi as am
from adcme_mpi.apps import heat

if __name__ == "__main__":
    tf.compat.v1.disable_eager_execution()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", type=int, default=16)
    parser.add_argument(
        "--steps", type=int, default=None, help="time steps (default: the smallest stable number)"
    )
    parser.add_argument("--out", default="heat_out")
    parser.add_argument("--maxiter", type=int, default=100)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    try:
        heat.run(args.N, args.steps, args.out, args.maxiter, args.verbose)
    except ValueError as err:  # an unstable setting: one line, on rank 0
        if am.mpi_rank() == 0:
            print(err, file=sys.stderr)
        sys.exit(2)
    am.mpi_finalize()
