"""Heat equation u_t = kappa(x, y) Laplace(u) on [0,1]^2 with zero Dirichlet
boundary, explicit finite differences, the domain split into m x n patches
joined by halo exchanges. Time stepping runs inside one while loop (the graph
does not grow with the number of steps), and the 5-point stencil has its own
exact adjoint (a custom gradient made of pads, not TensorFlow's slice
gradients). The inverse problem recovers kappa(x, y) = t0 + t1 x + t2 y from
snapshots of u with mpi_optimize.

The explicit scheme is stable only for dt * max(kappa) * 4 / h^2 < 1; the
default number of steps is the smallest stable one for every kappa the
optimizer may try (its bounds), and an unstable number of steps is refused.
"""

import math

import numpy as np
import tensorflow as tf
from mpi4py import MPI

from .. import ordering
from ..optimize import mpi_optimize
from ..runtime import Session
from .communication import MPIOps
from .grid import Patch, default_grid, recording_fg, save_figures


TRUE_THETA = np.array([1.0, 0.5, 0.3])
BOUNDS = [(0.2, 2.0), (-0.5, 0.5), (-0.5, 0.5)]  # the optimizer's box for theta
KAPPA_MAX = BOUNDS[0][1] + BOUNDS[1][1] + BOUNDS[2][1]  # largest kappa on [0,1]^2 in the box


@tf.custom_gradient
def laplacian(up):
    """5-point Laplacian (without 1/h^2) of the interior of the padded block
    `up`. Its adjoint scatters each output back to its five inputs with pads:
    exact, and far cheaper than the gradients of five strided slices."""
    lap = up[:-2, 1:-1] + up[2:, 1:-1] + up[1:-1, :-2] + up[1:-1, 2:] - 4.0 * up[1:-1, 1:-1]

    def grad(dl):
        return (
            tf.pad(dl, [[0, 2], [1, 1]])
            + tf.pad(dl, [[2, 0], [1, 1]])
            + tf.pad(dl, [[1, 1], [0, 2]])
            + tf.pad(dl, [[1, 1], [2, 0]])
            - 4.0 * tf.pad(dl, [[1, 1], [1, 1]])
        )

    return lap, grad


def stable_steps(N, T, kappa_max):
    """The smallest number of steps with dt * kappa_max * 4 / h^2 < 1 (10% margin)."""
    h = 1.0 / (N + 1)
    return max(1, math.ceil(1.1 * T * kappa_max * 4 / h**2))


class HeatProblem:
    """Explicit time stepping on this rank's patch; `ops`: the MPI ops it
    makes (communication.MPIOps; LocalOps: none); `checkpoints`: None keeps
    every step for the gradient, K stores K states per segment between
    snapshots and recomputes the rest (ordering.checkpointed_loop)."""

    def __init__(
        self,
        N=16,
        steps=None,
        T=0.02,
        grid=None,
        comm=None,
        snapshots=5,
        kappa_max=KAPPA_MAX,
        ops=None,
        checkpoints=None,
    ):
        comm = comm or MPI.COMM_WORLD
        self.checkpoints = checkpoints  # None: the gradient keeps every step
        self.ops = ops or MPIOps()
        m, n = grid or default_grid(comm.Get_size())
        self.patch = Patch(N, m, n, comm)
        self.steps = steps or stable_steps(N, T, kappa_max)
        self.comm, self.T, self.dt = comm, T, T / self.steps
        courant = self.dt * kappa_max * 4 / self.patch.h**2
        if courant >= 1.0:
            raise ValueError(
                f"heat: unstable explicit scheme: dt * max(kappa) * 4 / h^2 = {courant:.2f} >= 1 "
                f"(N={N}, steps={self.steps}, T={T}, kappa up to {kappa_max}); use --steps "
                f"{stable_steps(N, T, kappa_max)} or more, or a smaller --N"
            )
        # snapshots at evenly spaced steps; the last one at the final step
        self.segments = np.diff(
            np.linspace(0, self.steps, min(snapshots, self.steps) + 1).round().astype(int)
        ).tolist()
        x, y = self.patch.coordinates()
        self.x, self.y = x, y
        self.u0 = np.sin(np.pi * x) * np.sin(np.pi * y)

    def kappa(self, theta):
        return theta[0] + theta[1] * self.x + theta[2] * self.y

    def step(self, u, kappa):
        p = self.patch
        up = self.ops.halo_exchange(u, p.m, p.n, fill_value=0.0, comm=self.comm)
        return u + (self.dt / p.h**2) * kappa * laplacian(up)

    def advance(self, u, kappa, steps):
        """`steps` explicit steps inside one tf.while_loop; with `checkpoints`
        = K, a checkpointed loop (its gradient stores K states, recomputes
        the rest: ordering.checkpointed_loop)."""
        if self.checkpoints is not None:
            return ordering.checkpointed_loop(
                lambda i, u, kappa: self.step(u, kappa), u, steps, self.checkpoints, params=[kappa]
            )

        def body(k, u):
            return k + 1, self.step(u, kappa)

        return ordering.while_loop(lambda k, u: k < steps, body, [tf.constant(0), u])[1]

    def simulate(self, kappa):
        """Snapshots of u (at evenly spaced steps, the last at the end) as one tensor."""
        u = tf.constant(self.u0)
        snaps = []
        for steps in self.segments:
            u = self.advance(u, kappa, steps)
            snaps.append(u)
        return tf.stack(snaps)

    def stable(self, theta):
        return self.dt * np.max(self.kappa(theta)) * 4 / self.patch.h**2 < 1.0


def build_inverse(problem, observed):
    """Graph: theta (placeholder, rank 0's value counts) -> loss on rank 0 and its gradient."""
    theta0 = tf.compat.v1.placeholder(tf.float64, [3])
    theta = problem.ops.bcast(theta0, comm=problem.comm)
    kappa = theta[0] + theta[1] * problem.x + theta[2] * problem.y
    misfit = tf.reduce_sum((problem.simulate(kappa) - observed) ** 2)
    loss = problem.ops.sum(misfit, comm=problem.comm)
    return theta0, loss, tf.gradients(loss, theta0)[0]


def run(N=16, steps=None, out=None, maxiter=100, verbose=False):
    problem = HeatProblem(N=N, steps=steps)
    rank = problem.patch.rank
    with tf.Graph().as_default() as g:
        snaps_true = problem.simulate(tf.constant(problem.kappa(TRUE_THETA)))
        with Session(graph=g) as sess:
            observed = sess.run(snaps_true)
    with tf.Graph().as_default() as g:
        theta0, loss, grad = build_inverse(problem, tf.constant(observed))
        with Session(graph=g) as sess:
            fg, history = recording_fg(sess, loss, grad, theta0)
            start = np.array([2.0, 0.0, 0.0])
            result = mpi_optimize(
                fg=fg,
                x0=start,
                method="L-BFGS-B",
                verbose=verbose,
                bounds=BOUNDS,
                options={"maxiter": maxiter, "gtol": 1e-12, "ftol": 1e-15},
            )
    summary = {
        "theta": result.x,
        "theta_error": float(np.max(np.abs(result.x - TRUE_THETA))),
        "loss0": float(problem.comm.bcast(history[0])),
        "loss": float(result.fun),
        "iterations": int(result.nit),
    }
    if rank == 0:
        print(
            f"heat inverse: N={N} steps={problem.steps} grid={problem.patch.m}x{problem.patch.n} "
            f"theta={np.round(result.x, 6).tolist()} true={TRUE_THETA.tolist()} "
            f"max error={summary['theta_error']:.2e} loss {history[0]:.3e} -> {result.fun:.3e} "
            f"in {result.nit} iterations"
        )
    if out:
        u_final = problem.patch.assemble(observed[-1])
        kappa_true = problem.patch.assemble(problem.kappa(TRUE_THETA))
        kappa_found = problem.patch.assemble(problem.kappa(result.x))
        if rank == 0:
            summary["figures"] = save_figures(
                out,
                "heat",
                [u_final, kappa_true, kappa_found],
                ["u at final time", "true kappa", "recovered kappa"],
                history,
            )
    return summary
