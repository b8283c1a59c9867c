"""mpi_scan: the prefix reduction over ranks (inclusive and exclusive, op
"sum", "max", "min", "prod") against NumPy references built from every
rank's inputs; dot-product (adjoint) tests of the sum with different
cotangents per rank, in graph mode, eagerly and in tf.function; its gradient
against the reverse scan of the cotangents; second and third derivatives
(the reverse scan on both communicators) against their formula and central
differences; the errors (gradient of "max", op or exclusive or shape
differing across ranks)."""

import numpy as np
import pytest
import tensorflow as tf
from mpi4py import MPI

import adcme_mpi as am
from helpers import (
    hvp_test,
    FLOAT_DTYPES,
    RANK,
    SIZE,
    adjoint_test,
    assert_close,
    every_rank,
    global_dot,
    random,
    run_graph,
)

NUMPY = {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod}
OPS = list(NUMPY)
MODES = ["graph", "eager", "function"]


def identity(op, dtype):
    """What an exclusive scan gives rank 0."""
    if op == "sum":
        return 0
    if op == "prod":
        return 1
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return info.min if op == "max" else info.max
    return -np.inf if op == "max" else np.inf


def reference(op, xs, exclusive, rank=RANK):
    """The scan of `xs` (every rank's input, in rank order) on `rank`."""
    prefix = xs[:rank] if exclusive else xs[: rank + 1]
    dtype = xs[0].dtype
    if not prefix:
        return np.full(xs[0].shape, identity(op, dtype), dtype)
    return NUMPY[op](np.stack(prefix), axis=0).astype(dtype)


def reverse_sum(xs, exclusive, rank=RANK):
    """The transpose of the sum scan: sum over ranks k >= rank (exclusive: k > rank)."""
    suffix = xs[rank + 1 :] if exclusive else xs[rank:]
    return np.sum(suffix, axis=0) if suffix else np.zeros_like(xs[0])


def data(shape, dtype, op, salt):
    a = random(shape, dtype, salt)
    if op == "prod" and np.issubdtype(dtype, np.integer):
        a = (a % 3 - 1).astype(dtype)  # -1, 0, 1: no overflow at any size
    return a


# ---- forward ----


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("shape", [(), (3, 2)])
def test_forward_against_numpy(shape, op, exclusive, dtype):
    a = data(shape, dtype, op, 1)
    out = run_graph(lambda: am.mpi_scan(tf.constant(a), op, exclusive))
    assert out.shape == shape and out.dtype == dtype
    expected = reference(op, every_rank(a), exclusive)
    assert_close(out, expected, dtype, f"mpi_scan op={op} exclusive={exclusive}")


def test_inclusive_sum_of_ones_counts_ranks():
    """A reference that needs no NumPy: rank r gets r + 1 (inclusive), r (exclusive)."""
    inc, exc = run_graph(
        lambda: (am.mpi_scan(tf.ones([2])), am.mpi_scan(tf.ones([2]), exclusive=True))
    )
    np.testing.assert_array_equal(inc, [RANK + 1.0] * 2)
    np.testing.assert_array_equal(exc, [float(RANK)] * 2)


def test_large_tensor_and_eager_and_function():
    """Beyond the check's inline size, in every mode (the forward agrees exactly)."""
    a = random((300,), np.float64, 2)
    graph = run_graph(lambda: am.mpi_scan(tf.constant(a), "max", True))
    eager = am.mpi_scan(tf.constant(a), "max", True).numpy()
    function = tf.function(lambda t: am.mpi_scan(t, "max", True))(tf.constant(a)).numpy()
    np.testing.assert_array_equal(graph, reference("max", every_rank(a), True))
    np.testing.assert_array_equal(eager, graph)
    np.testing.assert_array_equal(function, graph)


# ---- gradient of the sum: the reverse scan ----


def value_and_gradient(mode, op, x, w):
    """(op(x), d/dx of sum_ranks <w, op(x)>) in one mode."""
    if mode == "graph":

        def build():
            xt = tf.constant(x)
            y = op(xt)
            return y, tf.gradients(y, xt, grad_ys=tf.constant(w))[0]

        return run_graph(build)

    def both(xt):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = op(xt)
        return y, tape.gradient(y, xt, output_gradients=tf.constant(w))

    if mode == "function":
        both = tf.function(both)
    y, g = both(tf.constant(x))
    return y.numpy(), g.numpy()


@adjoint_test("mpi_scan")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
def test_adjoint(exclusive, dtype, mode):
    """sum_ranks <g, v> == sum_ranks <w, scan(v)>, with a different cotangent w on every rank."""
    x, v, w = random((4, 3), dtype, 3), random((4, 3), dtype, 4), random((4, 3), dtype, 5)

    def scan(t):
        return am.mpi_scan(t, exclusive=exclusive)

    _, g = value_and_gradient(mode, scan, x, w)
    opv, _ = value_and_gradient(mode, scan, v, w)
    lhs, rhs = global_dot(g, v), global_dot(w, opv)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    assert abs(lhs - rhs) <= tol * max(abs(lhs), abs(rhs), 1.0), (
        f"rank {RANK}: <g,v> = {lhs!r} but <w,scan(v)> = {rhs!r}"
    )
    assert g.dtype == dtype
    # and the gradient itself: the scan of the cotangents in reverse rank order
    assert_close(g, reverse_sum(every_rank(w), exclusive), dtype, "grad = reverse scan of w")


def test_gradient_is_exact_with_large_and_small_cotangents():
    """Not a difference of sums (allreduce minus scan would cancel): rank r's
    gradient is the sum of the cotangents of ranks r.. only, to rounding."""
    w = np.array([1e16 if RANK == 0 else 1.0])
    _, g = value_and_gradient("graph", am.mpi_scan, np.zeros(1), w)
    if RANK == 0:
        np.testing.assert_allclose(g, [1e16 + (SIZE - 1)], rtol=1e-15)
    else:  # small integers: exact, whatever the order of the additions
        np.testing.assert_array_equal(g, [float(SIZE - RANK)])


def test_gradient_on_a_sub_communicator():
    """comm=: the reversed communicator belongs to the sub-communicator's family."""
    sub = MPI.COMM_WORLD.Split(RANK % 2, key=RANK)
    rank, size = sub.Get_rank(), sub.Get_size()
    x, w = random((3,), np.float64, 6), random((3,), np.float64, 7)
    for _ in range(2):  # the second run reuses the family's reversed communicator
        y, g = value_and_gradient("graph", lambda t: am.mpi_scan(t, comm=sub), x, w)
        assert_close(y, reference("sum", sub.allgather(x), False, rank), np.float64, "sub forward")
        assert_close(g, reverse_sum(sub.allgather(w), False, rank), np.float64, "sub gradient")
    assert size == (SIZE + 1 - RANK % 2) // 2


def test_int_dtypes_have_no_gradient():
    def build():
        t = tf.constant([1, 2])
        return tf.gradients(am.mpi_scan(t), t)[0]

    graph = tf.Graph()
    with graph.as_default():
        assert build() is None


# ---- second and third derivatives ----


def scan_operator(xs, exclusive):
    """rank r's row of the scan as a matrix acting on every rank's values."""
    return reference("sum", xs, exclusive)


@hvp_test("mpi_scan")
@pytest.mark.parametrize("exclusive", [False, True], ids=["inclusive", "exclusive"])
def test_hvp_against_differences_and_formula(exclusive):
    """f(a) = sum_ranks <c, scan(a)^3>: H v = S^T (6 c y (S v)), y = S a, S the scan."""
    a = random((4,), np.float64, 8)
    v = random((4,), np.float64, 9)
    c = random((4,), np.float64, 10)

    def gradient(t):
        y = am.mpi_scan(t, exclusive=exclusive)
        return tf.gradients(tf.reduce_sum(tf.constant(c) * y**3), t)[0]

    def build_hvp():
        t = tf.constant(a)
        g = gradient(t)
        return tf.gradients(tf.reduce_sum(g * tf.constant(v)), t)[0]

    hv = run_graph(build_hvp)
    eps = 1e-5
    plus = run_graph(lambda: gradient(tf.constant(a + eps * v)))
    minus = run_graph(lambda: gradient(tf.constant(a - eps * v)))
    np.testing.assert_allclose(hv, (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-6)
    y = scan_operator(every_rank(a), exclusive)
    sv = scan_operator(every_rank(v), exclusive)
    formula = reverse_sum(every_rank(6 * c * y * sv), exclusive)
    np.testing.assert_allclose(hv, formula, rtol=1e-12, atol=1e-12)


def test_third_derivative_runs_the_reverse_scan_on_the_forward_communicator():
    """f = sum_ranks <c, y^4>, y = S a: d/da <d/da <grad f, v>, u> = S^T (24 c y (S v)(S u))."""
    a, v, u, c = (random((3,), np.float64, salt) for salt in (11, 12, 13, 14))

    def build():
        t = tf.constant(a)
        y = am.mpi_scan(t)
        g = tf.gradients(tf.reduce_sum(tf.constant(c) * y**4), t)[0]
        hv = tf.gradients(tf.reduce_sum(g * tf.constant(v)), t)[0]
        return tf.gradients(tf.reduce_sum(hv * tf.constant(u)), t)[0]

    third = run_graph(build)
    y, sv, su = (scan_operator(every_rank(z), False) for z in (a, v, u))
    formula = reverse_sum(every_rank(24 * c * y * sv * su), False)
    np.testing.assert_allclose(third, formula, rtol=1e-12, atol=1e-12)


# ---- errors ----


@pytest.mark.parametrize("op", ["max", "min", "prod"])
def test_gradient_of_other_ops_is_a_clear_error(op):
    pattern = rf"mpi_scan \(rank {RANK} of {SIZE}\): op='{op}' has no gradient"

    def build():
        t = tf.constant(np.ones(3))
        return tf.gradients(am.mpi_scan(t, op), t)

    with pytest.raises(ValueError, match=pattern):
        run_graph(build)
    t = tf.constant(np.ones(3))
    with tf.GradientTape() as tape:  # eagerly: the forward scan runs, its gradient refuses
        tape.watch(t)
        y = am.mpi_scan(t, op)
    with pytest.raises(ValueError, match=pattern):
        tape.gradient(y, t)


def expect_error(build, *texts):
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run_graph(build)
    message = str(info.value)
    for text in (f"mpi_scan (rank {RANK} of {SIZE})",) + texts:
        assert text in message, message


def needs_two_ranks():
    if SIZE == 1:
        pytest.skip("needs two ranks")


def test_op_differing_across_ranks_is_named_on_every_rank():
    needs_two_ranks()
    op = "max" if RANK == SIZE - 1 else "sum"
    ops = ["max" if r == SIZE - 1 else "sum" for r in range(SIZE)]
    got = ", ".join(f"rank {r}: {o} (inclusive)" for r, o in enumerate(ops))
    expect_error(
        lambda: am.mpi_scan(tf.ones([2]), op),
        f"argument 'op' and 'exclusive' must be the same on every rank; got {got}",
    )


def test_exclusive_differing_across_ranks_is_named_on_every_rank():
    needs_two_ranks()
    expect_error(
        lambda: am.mpi_scan(tf.ones([2]), exclusive=RANK == 0),
        "argument 'op' and 'exclusive' must be the same on every rank",
        "rank 0: sum (exclusive), rank 1: sum (inclusive)",
    )


def test_shape_differing_across_ranks_is_named_on_every_rank():
    needs_two_ranks()
    expect_error(
        lambda: am.mpi_scan(tf.ones([2 + (RANK == 1)])),
        "argument 'a' must have the same dtype and shape on every rank",
        "rank 0: float[2], rank 1: float[3]",
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"mpi_scan \(rank \d+ of \d+\): argument 'op' = 'mean'"):
        am.mpi_scan(tf.ones([2]), "mean")
    with pytest.raises(TypeError, match=r"argument 'exclusive' must be a Python bool"):
        am.mpi_scan(tf.ones([2]), exclusive="yes")
    with pytest.raises(TypeError, match=r"mpi_scan \(rank \d+ of \d+\): argument 'a' has dtype"):
        am.mpi_scan(tf.constant([1], tf.uint8))
