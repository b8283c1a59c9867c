"""Poisson problem div(kappa grad u) = f on [0,1]^2, u = 0 on the boundary,
solved by a matrix-free distributed preconditioned CG with its adjoint-method
gradient, and the inverse problem that recovers a neural-network kappa
(adcme_mpi/apps/poisson.py).

    mpiexec -n 4 python examples/poisson.py [--N 16 --maxiter 60 --out poisson_out]
        [--preconditioner block-jacobi|two-level|multigrid|none]
"""

import quiet  # noqa: F401  (first: TensorFlow without its start-up lines)
import argparse

import tensorflow as tf
import adcme_mpi as am
from adcme_mpi.apps import poisson

if __name__ == "__main__":
    tf.compat.v1.disable_eager_execution()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", type=int, default=16)
    parser.add_argument("--out", default="poisson_out")
    parser.add_argument("--maxiter", type=int, default=60)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument(
        "--preconditioner",
        default="block-jacobi",
        choices=["block-jacobi", "two-level", "multigrid", "none"],
    )
    args = parser.parse_args()
    preconditioner = None if args.preconditioner == "none" else args.preconditioner
    poisson.run(args.N, args.out, args.maxiter, args.verbose, preconditioner)
    am.mpi_finalize()
