"""P1 finite elements on an unstructured triangle mesh, split across ranks,
with an inverse problem for the coefficient field (mpi_SparseTensor on PETSc).

    -div(kappa grad u) = 1  on the unit square, u = 0 on the boundary.

The mesh is the Delaunay triangulation of scattered points (the same seed on
every rank). Interior nodes are the unknowns; sorted by x they are cut into
one contiguous range per rank (a stripe of matrix rows, uneven in general),
so each rank assembles the rows of its own nodes from the triangles that
touch them, including their neighbours owned by other ranks (columns owned
elsewhere). kappa(x, y) = exp(t0 + t1 x + t2 y + t3 x y) per triangle, at
its centroid; the stiffness values are linear in kappa and differentiable.

The inverse problem recovers theta from u observed at every node: L-BFGS
(mpi_optimize), every gradient one transpose solve through PETSc.

    mpiexec -n 2 python examples/fem_inverse.py --points 2000 --out fem_out

With --out, rank 0 writes fem_out/fem_fields.png (the mesh with each interior
node coloured by the rank owning its row; true and recovered kappa) and
fem_out/fem_loss.png (the loss per evaluation).
"""

import quiet  # noqa: F401  (first: TensorFlow without its start-up lines)
import argparse

import tensorflow as tf
from adcme_mpi.apps import fem

if __name__ == "__main__":
    tf.compat.v1.disable_eager_execution()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2000, help="mesh nodes")
    parser.add_argument("--solver", default=None, help="BoomerAMG, GAMG, GMRES or CG")
    parser.add_argument("--maxiter", type=int, default=100, help="L-BFGS iterations")
    parser.add_argument("--out", default=None, help="folder for the figures (needs matplotlib)")
    args = parser.parse_args()
    fem.run(args.points, args.solver, args.maxiter, args.out)
