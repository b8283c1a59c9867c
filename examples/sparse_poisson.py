"""ADCME's MPI Poisson benchmark on distributed sparse matrices (PETSc).

    -div(kappa grad u) = f  on the unit square, u = 0 on the boundary,

by finite differences on an n x n grid of interior points, numbered row by
row, so rank r's stripe of matrix rows is a band of grid rows (uneven when
n is not divisible by the rank count). kappa is a small neural network of
(x, y) evaluated at the cell faces each rank needs; its weights live on
rank 0 and are broadcast, so their gradient sums over ranks.

Forward: f is made from a known u_exact and kappa_true with the same
discrete operator, so the solve must give u_exact back (to the solver's
tolerance). Inverse: the network is fitted with L-BFGS (mpi_optimize) to
the u that kappa_true produces; every loss gradient is one transpose solve
through PETSc.

    mpiexec -n 2 python examples/sparse_poisson.py --n 32
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import adcme_mpi as am  # noqa: E402


def kappa_true(x, y):
    return 1.0 + 0.5 * np.sin(np.pi * x) * np.cos(np.pi * y) + x * y


def stripe(n, rank, size):
    """This rank's grid rows (a band), hence its matrix rows ilower..iupper."""
    bounds = np.linspace(0, n, size + 1).astype(int)
    return bounds[rank], bounds[rank + 1]


def operator_pattern(n, row0, row1):
    """(indices, face coordinates, face of each entry, sign) for the 5-point
    operator's rows of grid rows row0..row1-1. Entry k's value is
    sum over its faces of sign * kappa(face) / h^2."""
    h = 1.0 / (n + 1)
    pairs, faces, entry_of_face, signs = [], [], [], []
    for i in range(row0, row1):
        for j in range(n):
            row = i * n + j
            x, y = (j + 1) * h, (i + 1) * h
            diag = len(pairs)
            pairs.append((row, row))
            for di, dj in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                face = (x + dj * h / 2, y + di * h / 2)
                faces.append(face)
                entry_of_face.append(diag)
                signs.append(1.0)
                ii, jj = i + di, j + dj
                if 0 <= ii < n and 0 <= jj < n:
                    faces.append(face)
                    entry_of_face.append(len(pairs))
                    signs.append(-1.0)
                    pairs.append((row, ii * n + jj))
    return (
        np.array(pairs),
        np.array(faces),
        np.array(entry_of_face),
        np.array(signs) / h**2,
    )


def network(weights, xy):
    """kappa(x, y) = exp(small tanh network): positive by construction."""
    W1, b1, W2, b2 = weights
    return tf.exp(tf.matmul(tf.tanh(tf.matmul(xy, W1) + b1), W2) + b2)[:, 0]


def init_weights(width=12, seed=0):
    g = np.random.default_rng(seed)
    return [
        g.standard_normal((2, width)) * 0.5,
        np.zeros(width),
        g.standard_normal((width, 1)) * 0.1,
        np.zeros(1),
    ]


def run(n, solver, iterations):
    rank, size = am.mpi_rank(), am.mpi_size()
    solver = solver or ("BoomerAMG" if am.petsc_info()["hypre"] else "GAMG")
    if size > n:
        raise SystemExit(f"sparse_poisson.py: --n {n} gives fewer grid rows than {size} ranks")
    row0, row1 = stripe(n, rank, size)
    N, ilower, iupper = n * n, row0 * n, row1 * n - 1
    pairs, faces, entry_of_face, signs = operator_pattern(n, row0, row1)
    nnz = len(pairs)

    def assemble(kappa_at_faces):
        return tf.math.unsorted_segment_sum(kappa_at_faces * signs, entry_of_face, nnz)

    h = 1.0 / (n + 1)
    grid = np.arange(1, n + 1) * h
    X, Y = np.meshgrid(grid, grid)
    mine = slice(ilower, iupper + 1)
    u_exact = (np.sin(np.pi * X) * np.sin(np.pi * Y) * (1 + X)).ravel()[mine]
    coords = np.stack([X.ravel()[mine], Y.ravel()[mine]], 1)

    tf.compat.v1.disable_eager_execution()
    A_true = am.mpi_SparseTensor(
        pairs, assemble(tf.constant(kappa_true(faces[:, 0], faces[:, 1]))), ilower, iupper, N
    )
    f = A_true @ tf.constant(u_exact)  # the discrete right-hand side of u_exact
    u_true = A_true.solve(f, solver=solver, rtol=1e-12)
    forward_error = am.mpi_allreduce(tf.reduce_max(tf.abs(u_true - u_exact)))

    theta0 = init_weights()
    theta_in = [tf.compat.v1.placeholder(tf.float64, w.shape) for w in theta0]
    theta = [am.mpi_bcast(w) for w in theta_in]  # rank 0's weights everywhere
    kappa = network(theta, tf.constant(faces))
    A = am.mpi_SparseTensor(pairs, assemble(kappa), ilower, iupper, N)
    u = A.solve(f, solver=solver, rtol=1e-12)
    loss = am.mpi_allreduce(tf.reduce_sum((u - u_true) ** 2)) * 1e4
    grads = tf.gradients(loss, theta_in)
    kappa_nodes = network(theta, tf.constant(coords))
    kappa_error = am.mpi_allreduce(
        tf.reduce_max(tf.abs(kappa_nodes / kappa_true(coords[:, 0], coords[:, 1]) - 1))
    )

    shapes = [w.shape for w in theta0]
    sizes = [w.size for w in theta0]

    def unpack(vector):
        return {
            t: p.reshape(s)
            for t, p, s in zip(theta_in, np.split(vector, np.cumsum(sizes)[:-1]), shapes)
        }

    with am.Session() as sess:
        err = sess.run(forward_error, unpack(np.concatenate([w.ravel() for w in theta0])))

        def fg(vector):
            value, g = sess.run([loss, grads], unpack(vector))
            return value, np.concatenate([x.ravel() for x in g])

        x0 = np.concatenate([w.ravel() for w in theta0])
        loss0 = fg(x0)[0]
        result = am.mpi_optimize(None, None, x0, fg=fg, options={"maxiter": iterations})
        k_err = sess.run(kappa_error, unpack(result.x))
    if rank == 0:
        print(
            f"sparse poisson: N = {N} rows on {size} rank(s), solver {solver}: "
            f"max |u - u_exact| = {err:.2e}; inverse: loss {loss0:.3e} -> {result.fun:.3e} "
            f"in {result.nit} L-BFGS iterations, max relative kappa error {k_err:.3f}"
        )
    return err, loss0, result.fun, k_err


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="interior grid points per side")
    parser.add_argument("--solver", default=None, help="BoomerAMG, GAMG, GMRES or CG")
    parser.add_argument("--iterations", type=int, default=200, help="L-BFGS iterations")
    args = parser.parse_args()
    run(args.n, args.solver, args.iterations)


if __name__ == "__main__":
    main()
