"""Distributed Krylov solves over callables: preconditioned conjugate gradient
and a symmetric solve whose gradient is the adjoint method (one more solve),
not differentiation through the iterations. Each rank holds its own part of
every vector; global sums go through one reduction per CG iteration."""

import tensorflow as tf

from . import ordering
from .wrappers.collectives import mpi_allreduce

__all__ = ["pcg", "symmetric_solve", "SplitPreconditioner"]


class SplitPreconditioner:
    """A preconditioner that needs a global sum of its own (a coarse space:
    z = B^-1 r + Phi A0^-1 Phi^T r, with Phi^T r summed over ranks) and puts it
    in the one reduction CG makes per iteration instead of a second one.

    Subclasses define `split(r) -> (z_local, extra)`: the part of z computable
    on this rank and this rank's share of the extra sums (a 1-D tensor), and
    `join(z_local, extra_sum) -> (z, rz_extra)`: z from the summed extras, and
    what z adds to <r, z> beyond <r, z_local>.

    Example::

        class CoarseCorrected(am.linalg.SplitPreconditioner):
            def split(self, r):
                return smooth(r), tf.einsum("uij,ij->u", hats, r)
            def join(self, z, coarse_r):
                y0 = coarse_solve(coarse_r)
                return z + prolong(y0), tf.reduce_sum(coarse_r * y0)
    """

    def split(self, r):
        raise NotImplementedError

    def join(self, z_local, extra_sum):
        raise NotImplementedError


def _default_reduce(comm):
    return lambda local: mpi_allreduce(local, comm=comm)


def pcg(apply, b, precondition=None, reduce=None, comm=None, tol=1e-12, maxiter=100):
    """Preconditioned conjugate gradient for K x = b from x = 0, until
    ||r|| <= tol ||b|| or `maxiter` iterations, inside one while loop (its MPI
    ops in program order). K must be symmetric positive definite, and so must
    the preconditioner M^-1.

    - `apply(p)`: this rank's part of K p.
    - `precondition(r)`: this rank's part of M^-1 r (None: no preconditioner),
      or a :class:`SplitPreconditioner`.
    - `reduce(local)`: the sum over ranks of a tensor; default
      ``mpi_allreduce`` on `comm` (default COMM_WORLD). Each iteration makes
      two: <p, K p>, then <r, z> and <r, r> together.

    Returns `(x, iterations)`.

    Example::

        # K = tridiag(-1, 2, -1) on rows split across ranks: the halo is one
        # value from each neighbour (mpi_sendrecv, or a 1 x P halo exchange)
        def apply(p):
            padded = am.mpi_halo_exchange(p[None, :], 1, am.mpi_size())[1]
            return 2 * p - padded[:-2] - padded[2:]
        x, iterations = am.linalg.pcg(apply, tf.ones([10], tf.float64), tol=1e-10)
    """
    reduce = reduce or _default_reduce(comm)
    split = isinstance(precondition, SplitPreconditioner)

    def precondition_and_sums(r):
        """z = M^-1 r and the global [<r, z>, <r, r>] in one reduction."""
        if not split:
            z = r if precondition is None else precondition(r)
            return z, reduce(tf.stack([tf.reduce_sum(r * z), tf.reduce_sum(r * r)]))
        z, extra = precondition.split(r)
        local = tf.stack([tf.reduce_sum(r * z), tf.reduce_sum(r * r)])
        sums = reduce(tf.concat([local, extra], 0))
        z, rz_extra = precondition.join(z, sums[2:])
        return z, tf.stack([sums[0] + rz_extra, sums[1]])

    z, sums = precondition_and_sums(b)
    stop2 = tol**2 * sums[1]

    def cond(k, x, r, p, rz, rr):
        return tf.logical_and(k < maxiter, rr > stop2)

    def body(k, x, r, p, rz, rr):
        Kp = apply(p)
        alpha = rz / reduce(tf.reduce_sum(p * Kp))
        x = x + alpha * p
        r = r - alpha * Kp
        z, sums = precondition_and_sums(r)
        return k + 1, x, r, z + (sums[0] / rz) * p, sums[0], sums[1]

    start = [tf.constant(0), tf.zeros_like(b), b, z, sums[0], sums[1]]
    iterations, x, *_ = ordering.while_loop(cond, body, start)
    return x, iterations


def symmetric_solve(apply, solve, theta, b):
    """x = K(theta)^-1 b for a symmetric K(theta), differentiable with respect
    to `theta` and `b` by the adjoint method: with g the cotangent of x,
    lambda = K^-1 g (one more solve, K symmetric), the gradient of b is
    lambda, and that of theta is -d/dtheta <lambda, K(theta) x> with lambda
    and x held fixed.

    - `apply(theta, x)`: this rank's part of K(theta) x (differentiable in theta).
    - `solve(theta, rhs)`: `(x, iterations)` with K(theta) x = rhs, e.g. from :func:`pcg`.

    Returns `(x, iterations)` of the forward solve. The solves' MPI ops, forward
    and backward, stay in program order (``adcme_mpi.ordering.custom_gradient``).

    Twice differentiable (Hessian-vector products): the gradient is built from
    differentiable pieces. lambda comes from symmetric_solve itself, and x
    enters the gradient as a tensor whose own gradient is this same adjoint
    rule, so differentiating the gradient again solves again (two more solves
    per Hessian-vector product: lambda's and x's derivatives), in program
    order. `apply` must be twice differentiable in theta for that.

    Example::

        def apply(kappa, u):
            return kappa * u   # any symmetric operator of theta
        def solve(kappa, rhs):
            return am.linalg.pcg(lambda p: apply(kappa, p), rhs)
        x, iterations = am.linalg.symmetric_solve(apply, solve, kappa, b)
    """
    b = tf.convert_to_tensor(b, theta.dtype)

    def adjoint(theta, x_differentiable, dx):
        """Gradients of (theta, b) for the cotangent dx of x = K(theta)^-1 b,
        as differentiable functions of theta, x and dx."""
        lam, _ = symmetric_solve(apply, solve, theta, dx)  # K is symmetric: K^T lam = dx
        # the partial derivative in theta alone: the tape sees only apply, so
        # lam and x are held fixed here, yet the result stays a function of
        # them (no stop_gradient) for a second differentiation
        with tf.GradientTape() as tape:
            tape.watch(theta)
            inner = -tf.reduce_sum(lam * apply(theta, x_differentiable))
        return tape.gradient(inner, theta), lam

    @ordering.custom_gradient
    def with_gradient(theta, b, x):
        """x (already solved) as a function of (theta, b) whose gradient is the
        adjoint rule: how x enters the gradient, so that it can be
        differentiated again without differentiating through CG."""
        x = tf.identity(x)

        def grad(dx):
            dtheta, db = adjoint(theta, with_gradient(theta, b, x), dx)
            return [dtheta, db, tf.zeros_like(x)]

        return x, grad

    @ordering.custom_gradient
    def solve_with_adjoint(theta, b):
        x, iterations = solve(theta, b)

        def grad(dx, _):
            return adjoint(theta, with_gradient(theta, b, tf.stop_gradient(x)), dx)

        return (x, iterations), grad

    return solve_with_adjoint(theta, b)
