"""ADCME's MPI Poisson benchmark on distributed sparse matrices (PETSc): the
problem of examples/poisson.py, assembled as row stripes and solved by PETSc.

    div(kappa grad u) = f  on [0,1]^2, u = 0 on the boundary,

ADCME's 5-point scheme with averaged kappa (the same discrete operator as
poisson.py, so the same answer as its matrix-free CG), on an N x N grid of
interior nodes numbered row by row: rank r owns a band of grid rows, that is
a stripe of matrix rows (uneven when N is not divisible by the rank count).
Each rank evaluates kappa at the nodes its rows touch (its own and their
neighbours, the boundary included), so assembly needs no communication.

Forward: the manufactured pair of poisson.py (u = x(1-x)y(1-y), kappa =
1 + x^2 + y^2). Inverse: kappa as poisson.py's small neural network (weights
broadcast from rank 0), fitted with L-BFGS (mpi_optimize) to the u that the
true kappa gives; every gradient is one transpose solve through PETSc.

    mpiexec -n 2 python examples/sparse_poisson.py --N 32
"""

import quiet  # noqa: F401  (first: TensorFlow without its start-up lines)
import argparse

import tensorflow as tf
from adcme_mpi.apps import sparse_poisson

if __name__ == "__main__":
    tf.compat.v1.disable_eager_execution()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", type=int, default=32, help="interior nodes per side")
    parser.add_argument("--solver", default=None, help="BoomerAMG, GAMG, GMRES or CG")
    parser.add_argument("--maxiter", type=int, default=60, help="L-BFGS iterations")
    args = parser.parse_args()
    sparse_poisson.run(args.N, args.solver, args.maxiter)
