"""Heat equation u_t = kappa(x, y) Laplace(u) on [0,1]^2 with zero Dirichlet
boundary, explicit finite differences, the domain split into m x n patches
joined by mpi_halo_exchange, time stepping in the TF graph. The inverse
problem recovers kappa(x, y) = t0 + t1 x + t2 y from snapshots of u with
mpi_optimize.

    mpiexec -n 4 python examples/heat.py --out heat_out [--N 32 --steps 100]
"""
import argparse
import os
import sys

import numpy as np
import tensorflow as tf
import adcme_mpi as am  # first: with a system MPI it picks the libmpi mpi4py loads
from mpi4py import MPI  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grid import Patch, default_grid, recording_fg, save_figures  # noqa: E402

TRUE_THETA = np.array([1.0, 0.5, 0.3])


class HeatProblem:
    def __init__(self, N=16, steps=50, T=0.02, grid=None, comm=None, snapshot_every=10):
        comm = comm or MPI.COMM_WORLD
        m, n = grid or default_grid(comm.Get_size())
        self.patch = Patch(N, m, n, comm)
        self.comm, self.steps, self.dt = comm, steps, T / steps
        self.snapshot_every = snapshot_every
        x, y = self.patch.coordinates()
        self.x, self.y = x, y
        self.u0 = np.sin(np.pi * x) * np.sin(np.pi * y)

    def kappa(self, theta):
        return theta[0] + theta[1] * self.x + theta[2] * self.y

    def simulate(self, kappa):
        """Snapshots of u (every `snapshot_every` steps and the last) as tensors."""
        p, h2 = self.patch, self.patch.h ** 2
        u = tf.constant(self.u0)
        snaps = []
        for step in range(1, self.steps + 1):
            up = am.mpi_halo_exchange(u, p.m, p.n, fill_value=0.0, comm=self.comm)
            lap = (up[:-2, 1:-1] + up[2:, 1:-1] + up[1:-1, :-2] + up[1:-1, 2:] - 4.0 * u) / h2
            u = u + self.dt * kappa * lap
            if step % self.snapshot_every == 0 or step == self.steps:
                snaps.append(u)
        return tf.stack(snaps)

    def stable(self, theta):
        return self.dt * np.max(self.kappa(theta)) * 4 / self.patch.h ** 2 < 1.0


def build_inverse(problem, observed):
    """Graph: theta (placeholder, rank 0's value counts) -> loss on rank 0 and its gradient."""
    theta0 = tf.compat.v1.placeholder(tf.float64, [3])
    theta = am.mpi_bcast(theta0, comm=problem.comm)
    kappa = theta[0] + theta[1] * problem.x + theta[2] * problem.y
    misfit = tf.reduce_sum((problem.simulate(kappa) - observed) ** 2)
    loss = am.mpi_sum(misfit, comm=problem.comm)
    return theta0, loss, tf.gradients(loss, theta0)[0]


def run(N=16, steps=50, out=None, maxiter=100, verbose=False):
    problem = HeatProblem(N=N, steps=steps)
    rank = problem.patch.rank
    with tf.Graph().as_default() as g:
        snaps_true = problem.simulate(tf.constant(problem.kappa(TRUE_THETA)))
        with am.Session(graph=g) as sess:
            observed = sess.run(snaps_true)
    with tf.Graph().as_default() as g:
        theta0, loss, grad = build_inverse(problem, tf.constant(observed))
        with am.Session(graph=g) as sess:
            fg, history = recording_fg(sess, loss, grad, theta0)
            start = np.array([2.0, 0.0, 0.0])
            result = am.mpi_optimize(fg=fg, x0=start, method="L-BFGS-B", verbose=verbose,
                                     bounds=[(0.2, 3.0), (-1.0, 1.0), (-1.0, 1.0)],
                                     options={"maxiter": maxiter, "gtol": 1e-12, "ftol": 1e-15})
    summary = {
        "theta": result.x, "theta_error": float(np.max(np.abs(result.x - TRUE_THETA))),
        "loss0": float(problem.comm.bcast(history[0])), "loss": float(result.fun), "iterations": int(result.nit),
    }
    if rank == 0:
        print(f"heat inverse: N={N} steps={steps} grid={problem.patch.m}x{problem.patch.n} "
              f"theta={np.round(result.x, 6).tolist()} true={TRUE_THETA.tolist()} "
              f"max error={summary['theta_error']:.2e} loss {history[0]:.3e} -> {result.fun:.3e} "
              f"in {result.nit} iterations")
    if out:
        u_final = problem.patch.assemble(observed[-1])
        kappa_true = problem.patch.assemble(problem.kappa(TRUE_THETA))
        kappa_found = problem.patch.assemble(problem.kappa(result.x))
        if rank == 0:
            summary["figures"] = save_figures(out, "heat", [u_final, kappa_true, kappa_found],
                                              ["u at final time", "true kappa", "recovered kappa"],
                                              history)
    return summary


if __name__ == "__main__":
    tf.compat.v1.disable_eager_execution()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--N", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", default="heat_out")
    parser.add_argument("--maxiter", type=int, default=100)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    run(args.N, args.steps, args.out, args.maxiter, args.verbose)
    am.mpi_finalize()
