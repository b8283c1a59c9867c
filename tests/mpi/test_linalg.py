"""adcme_mpi.linalg: pcg and symmetric_solve on a distributed tridiagonal
system K(theta) = tridiag(-1, 2 + theta, -1), rows split unevenly across
ranks (rank r owns r + 2 rows), against NumPy on every rank's inputs; the
gradient by a dot-product test (b) and central differences (theta); its
Hessian-vector products against central differences of the gradient."""

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from helpers import COMM, RANK, SIZE, global_dot, run_graph

ROWS = RANK + 2  # uneven stripes


def apply(theta, u):
    """This rank's rows of K(theta) u: neighbours' end values by a 1 x P halo exchange."""
    padded = am.mpi_halo_exchange(u[None, :], 1, SIZE)[1]
    return (2.0 + theta) * u - padded[:-2] - padded[2:]


def dense_K(theta_parts):
    theta = np.concatenate(theta_parts)
    n = theta.size
    return np.diag(2.0 + theta) - np.eye(n, k=1) - np.eye(n, k=-1)


def local_rows(whole):
    start = sum(r + 2 for r in range(RANK))
    return whole[start : start + ROWS]


def inputs(dtype, salt=0):
    g = np.random.default_rng([salt, RANK])
    theta = (0.5 + g.random(ROWS)).astype(dtype)
    b = g.standard_normal(ROWS).astype(dtype)
    return theta, b


def solver(tol, precondition=None):
    def solve(theta, rhs):
        jacobi = (lambda r: r / (2.0 + theta)) if precondition == "jacobi" else None
        return am.linalg.pcg(lambda p: apply(theta, p), rhs, precondition=jacobi, tol=tol)

    return solve


TOL = {np.float32: 1e-6, np.float64: 1e-13}


@pytest.mark.parametrize("precondition", [None, "jacobi"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pcg_matches_numpy(dtype, precondition):
    theta, b = inputs(dtype)
    x, iterations = run_graph(
        lambda: solver(TOL[dtype], precondition)(tf.constant(theta), tf.constant(b))
    )
    reference = np.linalg.solve(dense_K(COMM.allgather(theta)), np.concatenate(COMM.allgather(b)))
    rtol = 1e-4 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(x, local_rows(reference), rtol=rtol, atol=rtol)
    total = sum(r + 2 for r in range(SIZE))
    assert 0 < iterations <= total + 1, iterations


class ConstantCoarseSpace(am.linalg.SplitPreconditioner):
    """Jacobi plus a coarse correction on the constant vector: its sum of r
    rides in CG's reduction."""

    def __init__(self, theta):
        self.theta = theta
        ones = tf.ones_like(theta)
        self.coarse = am.mpi_allreduce(tf.reduce_sum(apply(theta, ones)))  # 1^T K 1

    def split(self, r):
        return r / (2.0 + self.theta), tf.reshape(tf.reduce_sum(r), [1])

    def join(self, z, extra):
        y0 = extra[0] / self.coarse
        return z + y0, extra[0] * y0


def test_split_preconditioner_gives_the_same_solution():
    theta, b = inputs(np.float64, salt=1)

    def build():
        t, rhs = tf.constant(theta), tf.constant(b)
        split = am.linalg.pcg(
            lambda p: apply(t, p), rhs, precondition=ConstantCoarseSpace(t), tol=1e-13
        )
        return split, solver(1e-13)(t, rhs)

    (x_split, its_split), (x_plain, _) = run_graph(build)
    np.testing.assert_allclose(x_split, x_plain, rtol=1e-10, atol=1e-11)
    assert its_split > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_symmetric_solve_gradient_in_b_is_the_adjoint(dtype):
    """Dot-product test: x = K^-1 b is linear in b; different cotangents per rank."""
    theta, b = inputs(dtype, salt=2)
    g = np.random.default_rng([3, RANK])
    w, v = g.standard_normal((2, ROWS)).astype(dtype)

    def build():
        t = tf.constant(theta)
        bt, vt = tf.constant(b), tf.constant(v)
        x, _ = am.linalg.symmetric_solve(apply, solver(TOL[dtype]), t, bt)
        (gb,) = tf.gradients(x, bt, grad_ys=tf.constant(w))
        xv, _ = am.linalg.symmetric_solve(apply, solver(TOL[dtype]), t, vt)
        return gb, xv

    gb, xv = run_graph(build)
    lhs, rhs = global_dot(gb, v), global_dot(w, xv)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    assert abs(lhs - rhs) <= tol * max(abs(lhs), abs(rhs)), (lhs, rhs)


def loss_graph(theta, b, w):
    """This rank's <w, x(theta)> and the gradient of their sum over ranks
    (the package's convention), as graph tensors."""
    t = tf.compat.v1.placeholder(tf.float64, [ROWS])
    x, _ = am.linalg.symmetric_solve(apply, solver(1e-14), t, tf.constant(b))
    loss = tf.reduce_sum(tf.constant(w) * x)
    (grad,) = tf.gradients(loss, t)
    return t, loss, grad


def test_symmetric_solve_gradient_in_theta_matches_differences():
    theta, b = inputs(np.float64, salt=4)
    w = np.random.default_rng([5, RANK]).standard_normal(ROWS)
    direction = np.random.default_rng([6, RANK]).standard_normal(ROWS)
    graph = tf.Graph()
    with graph.as_default():
        t, loss, grad = loss_graph(theta, b, w)
        with am.Session(graph=graph) as sess:
            G = sess.run(grad, {t: theta})
            eps = 1e-6
            Lp = sess.run(loss, {t: theta + eps * direction})
            Lm = sess.run(loss, {t: theta - eps * direction})
    fd = COMM.allreduce(Lp - Lm) / (2 * eps)
    ad = global_dot(G, direction)
    assert abs(fd - ad) <= 1e-7 * max(abs(ad), 1e-8), (fd, ad)


# second derivatives: losses of theta through one solve, and through two
# solves in a row (the second solve's right-hand side is the first's x), so
# that the Hessian-vector product differentiates nested custom gradients,
# with a different loss on odd ranks


def one_solve(t, b, c):
    x, _ = am.linalg.symmetric_solve(apply, solver(1e-14), t, b * t)  # b depends on theta too
    return tf.reduce_sum(c * x**2) + tf.reduce_sum(x)


def two_solves(t, b, c):
    """Rank-dependent: on even ranks the loss is quadratic in (x, y), on odd
    ranks linear in y, so only even ranks need y's derivative (one more
    solve) in H v. Odd ranks must still run that solve, with a zero
    cotangent, at the same place (ordering.custom_gradient); before, they
    skipped it and the ranks met in different collectives at 2-4 ranks."""
    x, _ = am.linalg.symmetric_solve(apply, solver(1e-14), t, b)
    y, _ = am.linalg.symmetric_solve(apply, solver(1e-14), t * t, x)
    return tf.reduce_sum(c * x * y) if RANK % 2 == 0 else tf.reduce_sum(c * y)


def gradient_and_hvp(mode, loss, v, b, c):
    """A function theta -> this rank's part of the gradient of sum_ranks loss,
    and of H v; built once (one graph, one trace), evaluated three times."""
    if mode == "graph":
        graph = tf.Graph()
        with graph.as_default():
            t = tf.compat.v1.placeholder(tf.float64, [ROWS])
            (g,) = tf.gradients(loss(t, tf.constant(b), tf.constant(c)), t)
            hv = tf.gradients(tf.reduce_sum(g * tf.constant(v)), t)[0]
            sess = am.Session(graph=graph)
        return lambda theta: sess.run([g, hv], {t: theta})
    b, c, v = tf.constant(b), tf.constant(c), tf.constant(v)

    def both(t):
        with tf.GradientTape() as outer:
            outer.watch(t)
            with tf.GradientTape() as inner:
                inner.watch(t)
                f = loss(t, b, c)
            g = inner.gradient(f, t)
            gv = tf.reduce_sum(g * v)
        return g, outer.gradient(gv, t)

    if mode == "function":
        both = tf.function(both)
    return lambda theta: [r.numpy() for r in both(tf.constant(theta))]


# (two solves not in tf.function: its trace alone takes 5 s, over the CI budget)
@pytest.mark.parametrize(
    "loss, mode",
    [(one_solve, "graph"), (one_solve, "eager"), (one_solve, "function")]
    + [(two_solves, "graph"), (two_solves, "eager")],
    ids=lambda p: p if isinstance(p, str) else p.__name__,
)
def test_symmetric_solve_hessian_vector_product_matches_differences(loss, mode):
    """H v (reverse over reverse, through the adjoint solves) against central
    differences of the gradient; different v and loss weights on each rank."""
    theta, b = inputs(np.float64, salt=7)
    g = np.random.default_rng([8, RANK])
    v, c = g.standard_normal((2, ROWS))
    evaluate = gradient_and_hvp(mode, loss, v, b, c)
    _, hv = evaluate(theta)
    eps = 1e-5
    g_plus, _ = evaluate(theta + eps * v)
    g_minus, _ = evaluate(theta - eps * v)
    fd = (g_plus - g_minus) / (2 * eps)
    error = np.sqrt(global_dot(hv - fd, hv - fd) / global_dot(fd, fd))
    assert error < 1e-7, f"{loss.__name__} {mode}: H v differs from differences by {error:.2e}"
