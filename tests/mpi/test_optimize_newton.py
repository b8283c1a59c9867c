"""mpi_optimize's second-order methods (Newton-CG, trust-ncg, trust-krylov) with
Hessian-vector products built in the graph, on a distributed nonlinear least
squares problem whose loss goes through mpi_bcast and mpi_sum."""

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from helpers import RANK, SIZE

N = 4  # unknowns, the same on every rank (broadcast from rank 0)
SECOND_ORDER = ["Newton-CG", "trust-ncg", "trust-krylov"]
# Newton-CG stops on the step size; the trust-region methods on the gradient norm
# (tighter ones end in scipy's precision-loss stops at some rank counts)
TOLERANCES = {
    "Newton-CG": {"xtol": 1e-8},
    "trust-ncg": {"gtol": 1e-6},
    "trust-krylov": {"gtol": 1e-6},
}


def rank_data(r):
    """Rank r's rows of the least squares problem; every rank can build any
    rank's, so the NumPy reference sees every rank's input."""
    gen = np.random.default_rng(1000 + r)
    # more rows than unknowns: well conditioned at one rank too
    return gen.standard_normal((6, N)), gen.standard_normal(6)


def reference_hessian(x):
    """Hessian of sum_r 0.5 |A_r x - b_r|^2 + 0.25 sum x^4 (the quartic term keeps
    the Hessian x-dependent, so the products are not those of a fixed matrix)."""
    H = sum(a.T @ a for a, _ in map(rank_data, range(SIZE)))
    return H + np.diag(3 * x**2)


def local_loss(t):
    a, b = rank_data(RANK)
    residual = tf.linalg.matvec(tf.constant(a), t) - b
    quartic = 0.25 * tf.reduce_sum(t**4) if RANK == 0 else 0.0
    return 0.5 * tf.reduce_sum(residual**2) + quartic


def graph_problem():
    """loss on rank 0 (zeros elsewhere), its gradient, and H p by double backprop."""
    graph = tf.Graph()
    with graph.as_default():
        theta = tf.compat.v1.placeholder(tf.float64, [N])
        p = tf.compat.v1.placeholder(tf.float64, [N])
        loss = am.mpi_sum(local_loss(am.mpi_bcast(theta)))
        g = tf.gradients(loss, theta)[0]
        hp = tf.gradients(tf.reduce_sum(g * p), theta)[0]
    sess = am.Session(graph=graph)
    fg = lambda x: sess.run([loss, g], {theta: x})  # noqa: E731
    hessp = lambda x, v: sess.run(hp, {theta: x, p: v})  # noqa: E731
    return sess, fg, hessp


def function_problem():
    """The same with tf.function and reverse-over-reverse (a tape over a tape)."""

    @tf.function
    def fg(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = am.mpi_sum(local_loss(am.mpi_bcast(x)))
        return loss, tape.gradient(loss, x)

    @tf.function
    def hp(x, v):
        with tf.GradientTape() as outer:
            outer.watch(x)
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = am.mpi_sum(local_loss(am.mpi_bcast(x)))
            inner = tf.reduce_sum(tape.gradient(loss, x) * v)
        return outer.gradient(inner, x)

    return (
        lambda x: [t.numpy() for t in fg(tf.constant(x))],
        lambda x, v: hp(tf.constant(x), tf.constant(v)).numpy(),
    )


def check_hessp(name, grad, hvp):
    gen = np.random.default_rng(7)  # the same x, v on every rank (they are broadcast)
    x, v = gen.standard_normal(N), gen.standard_normal(N)
    hv = hvp(x, v)
    if RANK != 0:  # bcast's adjoint: only the root holds the gradient
        np.testing.assert_array_equal(hv, 0.0, err_msg=name)
        for s in (1e-5, -1e-5):
            grad(x + s * v)  # the collectives still need every rank
        return
    np.testing.assert_allclose(hv, reference_hessian(x) @ v, rtol=1e-12, err_msg=name)
    h = 1e-5
    diff = (grad(x + h * v)[1] - grad(x - h * v)[1]) / (2 * h)
    np.testing.assert_allclose(hv, diff, rtol=1e-7, err_msg=name)


def test_hessp_matches_exact_hessian_and_differences():
    sess, fg, hessp = graph_problem()
    with sess:
        check_hessp("graph", fg, hessp)
    check_hessp("tf.function", *function_problem())  # eager, outside the session's graph


@pytest.mark.parametrize("method", SECOND_ORDER)
def test_second_order_methods_reach_the_lbfgs_minimizer(method):
    sess, fg, hessp = graph_problem()
    x0 = np.full(N, 0.5)
    counts = {"fg": 0, "h": 0}

    def counted_fg(x):
        counts["fg"] += 1
        return fg(x)

    def counted_hessp(x, v):
        counts["h"] += 1
        return hessp(x, v)

    with sess:
        lbfgs = am.mpi_optimize(
            fg=fg, x0=x0, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15}
        )
        result = am.mpi_optimize(
            fg=counted_fg, x0=x0, method=method, hessp=counted_hessp, options=TOLERANCES[method]
        )
    assert result.success, result.message
    np.testing.assert_allclose(result.x, lbfgs.x, atol=1e-5)
    # the minimizer: the gradient of the reference vanishes there
    a_b = [rank_data(r) for r in range(SIZE)]
    grad = sum(a.T @ (a @ result.x - b) for a, b in a_b) + result.x**3
    assert np.linalg.norm(grad) < 1e-6
    # every rank got the same result and evaluated as often as rank 0 asked
    comm = am.runtime.MPI.COMM_WORLD
    assert all(np.array_equal(x, result.x) for x in comm.allgather(result.x))
    assert len({(c["fg"], c["h"]) for c in comm.allgather(counts)}) == 1
    assert counts["h"] > 0  # (scipy's nhev may count one more or less than it called)


def test_bad_method_and_missing_hessp_are_clear_errors():
    f, g = lambda x: float(x @ x), lambda x: 2 * x
    where = f"mpi_optimize \\(rank {RANK} of {SIZE}\\)"
    with pytest.raises(ValueError, match=f"{where}: argument 'method' = 'Newton' is not"):
        am.mpi_optimize(f, g, np.ones(2), method="Newton")
    with pytest.raises(ValueError, match=f"{where}: argument 'hessp' is required"):
        am.mpi_optimize(f, g, np.ones(2), method="trust-ncg")
    with pytest.raises(ValueError, match=f"{where}: argument 'hessp' is only used"):
        am.mpi_optimize(f, g, np.ones(2), method="BFGS", hessp=lambda x, p: 2 * p)
    # and the pure-Python problem works with every rank following
    result = am.mpi_optimize(f, g, np.ones(2), method="trust-krylov", hessp=lambda x, p: 2 * p)
    np.testing.assert_allclose(result.x, 0.0, atol=1e-8)
