"""ADCME's MPI Poisson benchmark on PETSc: the finite-difference problem of
poisson.py assembled as row stripes (mpi_SparseTensor) and solved by
BoomerAMG or GAMG, and its inverse problem (examples/sparse_poisson.py runs it)."""

import numpy as np
import tensorflow as tf

import adcme_mpi as am
from mpi4py import MPI
from .poisson import exact_kappa, exact_u, init_weights, network_kappa, source


class SparsePoisson:
    """The operator K = -div(kappa grad .) of poisson.py as an mpi_SparseTensor."""

    def __init__(self, N, comm=None):
        rank, size = am.mpi_rank(comm), am.mpi_size(comm)
        if size > N:
            raise SystemExit(f"sparse_poisson.py: N = {N} grid rows cannot feed {size} ranks")
        bounds = np.linspace(0, N, size + 1).astype(int)
        self.N, self.comm, self.h = N, comm, 1.0 / (N + 1)
        self.row0, self.row1 = bounds[rank], bounds[rank + 1]
        self.ilower, self.iupper = self.row0 * N, self.row1 * N - 1
        i, j = np.meshgrid(np.arange(self.row0, self.row1), np.arange(N), indexing="ij")
        self.x, self.y = (j + 1) * self.h, (i + 1) * self.h  # this rank's nodes
        self._pattern(i.ravel(), j.ravel())

    def _pattern(self, i, j):
        """Matrix entries and, for each face, its two end nodes and the entries
        it feeds: face value (kappa_P + kappa_Q) / 2 goes to P's diagonal
        (+) and, when Q is an interior node, to entry (P, Q) (-)."""
        N, rows = self.N, i * self.N + j
        pairs = [np.stack([rows, rows], 1)]
        ends, entries, signs = [], [], []
        count = len(rows)
        for di, dj in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            qi, qj = i + di, j + dj
            ends.append(np.stack([j, i, qj, qi], 1))
            entries.append(np.arange(len(rows)))  # the diagonal entry of row P
            signs.append(np.ones(len(rows)))
            inside = (qi >= 0) & (qi < N) & (qj >= 0) & (qj < N)
            pairs.append(np.stack([rows[inside], (qi * N + qj)[inside]], 1))
            ends.append(np.stack([j, i, qj, qi], 1)[inside])
            entries.append(count + np.arange(inside.sum()))
            signs.append(-np.ones(inside.sum()))
            count += inside.sum()
        self.pairs = np.concatenate(pairs)
        ends = np.concatenate(ends)
        self.face_p = (ends[:, :2] + 1) * self.h  # (x, y) of P and Q
        self.face_q = (ends[:, 2:] + 1) * self.h
        self.entry_of_face = np.concatenate(entries)
        self.sign = np.concatenate(signs) / self.h**2

    def matrix(self, kappa):
        """K for `kappa(x, y)`, a function of coordinate arrays returning a tensor."""
        faces = 0.5 * (kappa(*self.face_p.T) + kappa(*self.face_q.T))
        values = tf.math.unsorted_segment_sum(
            faces * self.sign, self.entry_of_face, len(self.pairs)
        )
        return am.mpi_SparseTensor(
            self.pairs, values, self.ilower, self.iupper, self.N**2, comm=self.comm
        )

    def solve(self, kappa, solver=None, rtol=1e-12):
        """u with K(kappa) u = -f (this rank's nodes, row-major)."""
        b = tf.constant(-source(self.x, self.y).ravel())
        return self.matrix(kappa).solve(b, solver=solver, rtol=rtol)


def run(N=32, solver=None, maxiter=60):
    solver = solver or ("BoomerAMG" if am.petsc_info()["hypre"] else "GAMG")
    problem = SparsePoisson(N)
    truth = lambda x, y: tf.constant(exact_kappa(x, y))  # noqa: E731
    with tf.Graph().as_default() as g:
        u = problem.solve(truth, solver)
        with am.Session(graph=g) as sess:
            u_true = sess.run(u)
    err = largest(np.abs(u_true - exact_u(problem.x, problem.y).ravel()))

    with tf.Graph().as_default() as g:
        weights0 = tf.compat.v1.placeholder(tf.float64, [len(init_weights())])
        weights = am.mpi_bcast(weights0)
        u = problem.solve(lambda x, y: network_kappa(weights, x, y), solver)
        loss = am.mpi_allreduce(tf.reduce_sum((u - u_true) ** 2)) / N**2 * 1e4
        grad = tf.gradients(loss, weights0)[0]
        kappa = network_kappa(weights0, problem.x, problem.y)
        with am.Session(graph=g) as sess:

            def fg(w):
                return sess.run([loss, grad], {weights0: w})

            loss0 = fg(init_weights())[0]
            result = am.mpi_optimize(fg=fg, x0=init_weights(), options={"maxiter": maxiter})
            found = sess.run(kappa, {weights0: result.x})
    true_kappa = exact_kappa(problem.x, problem.y)
    kappa_err = largest(np.abs(found - true_kappa) / true_kappa)
    if am.mpi_rank() == 0:
        print(
            f"sparse poisson: N={N} ({N * N} rows on {am.mpi_size()} rank(s)), solver {solver}: "
            f"max |u - u_exact| = {err:.2e}; inverse: loss {loss0:.3e} -> {result.fun:.3e} in "
            f"{result.nit} iterations, max relative kappa error {kappa_err:.2e}"
        )
    return u_true, err, loss0, result.fun, kappa_err


def largest(values):
    """The largest of every rank's values."""
    return MPI.COMM_WORLD.allreduce(float(np.max(values)), op=MPI.MAX)
