"""Poisson problem div(kappa grad u) = f on [0,1]^2, u = 0 on the boundary,
ADCME's 5-point scheme with averaged kappa, on an m x n patch grid.

Manufactured solution u = x(1-x)y(1-y), kappa = 1 + x^2 + y^2. The linear
system is solved by a matrix-free distributed conjugate gradient
(adcme_mpi.linalg.pcg: halo exchange for the stencil, one allreduce per
iteration for its dot products) inside one while loop, preconditioned by
block-Jacobi (default), two-level or multigrid (preconditioners.py). Its
gradient is the adjoint method (adcme_mpi.linalg.symmetric_solve): one more
CG solve with the same (symmetric) operator, not differentiation through CG
iterations.

kappa can be a small neural network whose weights are broadcast from rank 0;
the inverse problem recovers kappa from u with mpi_optimize.
"""

import numpy as np
import tensorflow as tf
from mpi4py import MPI

from .. import linalg
from ..optimize import mpi_optimize
from ..runtime import Session
from . import preconditioners
from .communication import MPIOps
from .grid import Patch, default_grid, recording_fg, save_figures


def exact_u(x, y):
    return x * (1 - x) * y * (1 - y)


def exact_kappa(x, y):
    return 1 + x**2 + y**2


def source(x, y):
    """f = div(kappa grad u) for the manufactured pair."""
    ux, uy = (1 - 2 * x) * y * (1 - y), x * (1 - x) * (1 - 2 * y)
    lap = -2 * y * (1 - y) - 2 * x * (1 - x)
    return exact_kappa(x, y) * lap + 2 * x * ux + 2 * y * uy


class PoissonProblem:
    """The operator K = -div(kappa grad .) on this rank's patch (symmetric
    positive definite), its right-hand side, and the solve.

    - `grid`: (m, n) patches (default: near square); `comm` (default COMM_WORLD).
    - `preconditioner`: "block-jacobi", "two-level", "multigrid" or None, or a
      preconditioners.Preconditioner.
    - `ops`: the MPI ops it makes (communication.MPIOps; LocalOps: none).
    """

    def __init__(
        self,
        N=16,
        grid=None,
        comm=None,
        tol=1e-12,
        maxiter=None,
        preconditioner="block-jacobi",
        ops=None,
    ):
        comm = comm or MPI.COMM_WORLD
        m, n = grid or default_grid(comm.Get_size())
        self.patch = p = Patch(N, m, n, comm)
        self.comm, self.tol, self.maxiter = comm, tol, maxiter or 10 * N
        self.ops = ops or MPIOps()
        self.preconditioner = (
            preconditioner
            if isinstance(preconditioner, preconditioners.Preconditioner)
            else preconditioners.make(preconditioner, self)
        )
        self.x, self.y = p.coordinates()
        self.xb, self.yb = p.coordinates(border=1)  # nodes plus one layer (kappa only)
        self.f = source(self.x, self.y)

    def faces(self, kappa_b):
        """Face coefficients (averaged kappa) from kappa on nodes plus border."""
        c = kappa_b[1:-1, 1:-1]
        return (
            (c + kappa_b[1:-1, 2:]) / 2,
            (c + kappa_b[1:-1, :-2]) / 2,
            (c + kappa_b[2:, 1:-1]) / 2,
            (c + kappa_b[:-2, 1:-1]) / 2,
        )

    def apply(self, u, faces):
        """K u on this patch (one halo exchange)."""
        p = self.patch
        return self.stencil(
            self.ops.halo_exchange(u, p.m, p.n, fill_value=0.0, comm=self.comm), faces
        )

    def stencil(self, up, faces):
        """K u from u padded with its neighbours' values (local arithmetic)."""
        e, w, nn, s = faces
        c = up[..., 1:-1, 1:-1]
        return (
            e * (c - up[..., 1:-1, 2:])
            + w * (c - up[..., 1:-1, :-2])
            + nn * (c - up[..., 2:, 1:-1])
            + s * (c - up[..., :-2, 1:-1])
        ) / self.patch.h**2

    def dot(self, a, b):
        """<a, b> summed over ranks."""
        return self.ops.allreduce(tf.reduce_sum(a * b), comm=self.comm)

    def cg(self, faces, b):
        """Preconditioned CG for K x = b from x = 0, to ||r|| <= tol ||b||:
        (x, iterations)."""
        return linalg.pcg(
            lambda p: self.apply(p, faces),
            b,
            precondition=self.preconditioner.prepare(faces),
            reduce=lambda local: self.ops.allreduce(local, comm=self.comm),
            tol=self.tol,
            maxiter=self.maxiter,
        )

    def solve_counted(self, kappa_b):
        """(u, CG iterations) with K(kappa) u = -f; u's gradient with respect
        to kappa by the adjoint method."""
        return linalg.symmetric_solve(
            lambda kappa_b, u: self.apply(u, self.faces(kappa_b)),
            lambda kappa_b, rhs: self.cg(self.faces(kappa_b), rhs),
            kappa_b,
            tf.constant(-self.f),
        )

    def solve(self, kappa_b):
        """u with K(kappa) u = -f, differentiable in kappa (see solve_counted)."""
        return self.solve_counted(kappa_b)[0]


# ---- a small neural network for kappa; weights broadcast from rank 0 ----
LAYERS = [2, 10, 1]


def n_weights():
    return sum(a * b + b for a, b in zip(LAYERS[:-1], LAYERS[1:]))


def init_weights(seed=0):
    rng = np.random.default_rng(seed)
    parts = []
    for a, b in zip(LAYERS[:-1], LAYERS[1:]):
        parts += [rng.standard_normal(a * b) * np.sqrt(1.0 / a), np.zeros(b)]
    return np.concatenate(parts)


def network_kappa(weights, x, y):
    """kappa(x, y) = 1 + softplus(MLP(x, y)) > 1, evaluated at the arrays x, y."""
    h = tf.stack([tf.reshape(tf.constant(x), [-1]), tf.reshape(tf.constant(y), [-1])], axis=1)
    k = 0
    for i, (a, b) in enumerate(zip(LAYERS[:-1], LAYERS[1:])):
        W = tf.reshape(weights[k : k + a * b], [a, b])
        c = weights[k + a * b : k + a * b + b]
        k += a * b + b
        h = tf.matmul(h, W) + c
        if i < len(LAYERS) - 2:
            h = tf.tanh(h)
    return tf.reshape(1.0 + tf.nn.softplus(h), x.shape)


def build_inverse(problem, observed):
    """Graph: network weights (placeholder, rank 0's value counts) -> loss on
    rank 0 and its gradient."""
    weights0 = tf.compat.v1.placeholder(tf.float64, [n_weights()])
    weights = problem.ops.bcast(weights0, comm=problem.comm)
    u = problem.solve(network_kappa(weights, problem.xb, problem.yb))
    loss = problem.ops.sum(
        tf.reduce_sum((u - observed) ** 2) / problem.patch.N**2 * 1e4, comm=problem.comm
    )
    return weights0, loss, tf.gradients(loss, weights0)[0]


def build_hessp(weights0, grad):
    """Graph: H p, the Hessian of the inverse problem's loss times p (a
    placeholder), by differentiating `grad` again (through the adjoint
    solves: linalg.symmetric_solve is twice differentiable). Returns (p, Hp);
    for mpi_optimize's second-order methods (Newton-CG, trust-ncg, trust-krylov).

    Example::

        weights0, loss, grad = build_inverse(problem, observed)
        p, hp = build_hessp(weights0, grad)
        hessp = lambda x, v: sess.run(hp, {weights0: x, p: v})
    """
    p = tf.compat.v1.placeholder(weights0.dtype, weights0.shape)
    return p, tf.gradients(tf.reduce_sum(grad * p), weights0)[0]


def run(N=16, out=None, maxiter=200, verbose=False, preconditioner="block-jacobi"):
    problem = PoissonProblem(N=N, preconditioner=preconditioner)
    p = problem.patch
    with tf.Graph().as_default() as g:
        counted = problem.solve_counted(tf.constant(exact_kappa(problem.xb, problem.yb)))
        with Session(graph=g) as sess:
            u_true, iters = sess.run(counted)
    err = np.max(np.abs(p.assemble(u_true) - p.assemble(exact_u(problem.x, problem.y))))
    with tf.Graph().as_default() as g:
        weights0, loss, grad = build_inverse(problem, tf.constant(u_true))
        kappa_net = network_kappa(weights0, problem.x, problem.y)
        with Session(graph=g) as sess:
            fg, history = recording_fg(sess, loss, grad, weights0)
            result = mpi_optimize(
                fg=fg,
                x0=init_weights(),
                method="L-BFGS-B",
                verbose=verbose,
                options={"maxiter": maxiter},
            )
            kappa_found = sess.run(kappa_net, {weights0: result.x})
    kappa_true = exact_kappa(problem.x, problem.y)
    kappa_err = float(
        p.comm.allreduce(np.max(np.abs(kappa_found - kappa_true) / kappa_true), op=MPI.MAX)
    )
    summary = {
        "solution_error": float(err),
        "cg_iterations": int(iters),
        "loss0": float(problem.comm.bcast(history[0])),
        "loss": float(result.fun),
        "kappa_rel_error": kappa_err,
        "iterations": int(result.nit),
    }
    if p.rank == 0:
        print(
            f"poisson: N={N} grid={p.m}x{p.n} CG iterations {iters} "
            f"({preconditioner or 'no preconditioner'}), max |u - u_exact| = "
            f"{err:.2e}; inverse: loss {history[0]:.3e} -> {result.fun:.3e} in {result.nit} "
            f"iterations, max relative kappa error {kappa_err:.2e}"
        )
    if out:
        fields = [p.assemble(u_true), p.assemble(kappa_true), p.assemble(kappa_found)]
        if p.rank == 0:
            summary["figures"] = save_figures(
                out,
                "poisson",
                fields,
                ["u (CG solution)", "true kappa", "recovered kappa (network)"],
                history,
            )
    return summary
