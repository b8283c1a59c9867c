"""mpi_allgather (uneven first dimensions), mpi_reduce_scatter (equal and
given slices) and the reductions beyond the sum (op="mean", "max", "min",
"prod" on mpi_allreduce, mpi_sum and mpi_reduce_scatter): forward against
NumPy references built from every rank's inputs; dot-product adjoint tests
for the linear ones (different cotangents per rank, float32 and float64);
for max, min and prod the gradient against its formula, with ties and zeros;
second derivatives of prod and max by Hessian-vector products against
central differences."""

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from helpers import (
    hvp_test,
    ALL_DTYPES,
    FLOAT_DTYPES,
    RANK,
    SIZE,
    adjoint_check,
    adjoint_test,
    assert_close,
    every_rank,
    random,
    run_graph,
)

NUMPY = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "prod": np.prod}
ROOTS = sorted({0, SIZE - 1})


def uneven(shape_tail, dtype, salt):
    """This rank's block: RANK + 1 rows (the first dimensions differ)."""
    return random((RANK + 1,) + shape_tail, dtype, salt)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("tail", [(), (3,), (2, 2)])
def test_allgather_forward_uneven(tail, dtype):
    a = uneven(tail, dtype, 1)
    out = run_graph(lambda: am.mpi_allgather(tf.constant(a)))
    expected = np.concatenate(every_rank(a))
    assert out.shape == expected.shape and out.dtype == dtype
    assert_close(out, expected, dtype, "mpi_allgather")


def test_allgather_of_scalars():
    out = run_graph(lambda: am.mpi_allgather(tf.constant(float(RANK))))
    assert_close(out, np.arange(SIZE, dtype=np.float32), np.float32, "scalars gather into a vector")


@adjoint_test("mpi_allgather")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("tail", [(), (3,)])
def test_allgather_adjoint(tail, dtype):
    x, v = uneven(tail, dtype, 2), uneven(tail, dtype, 3)
    total = sum(r + 1 for r in range(SIZE))
    w = random((total,) + tail, dtype, 4)  # a different cotangent on every rank
    _, g, _ = adjoint_check(am.mpi_allgather, x, w, v)
    start = sum(r + 1 for r in range(RANK))
    expected = np.sum([wr[start : start + RANK + 1] for wr in every_rank(w)], axis=0)
    assert_close(g, expected, dtype, "grad of mpi_allgather = sum over ranks of my slice")


def counts_uneven():
    return [r % 3 for r in range(SIZE)]  # zeros allowed


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("op", ["sum", "max", "min", "prod"])
@pytest.mark.parametrize("given", [False, True])
def test_reduce_scatter_forward(given, op, dtype):
    counts = counts_uneven() if given else [2] * SIZE
    a = random((sum(counts), 3), dtype, 5)
    if op == "prod" and np.issubdtype(dtype, np.integer):
        a = (a % 3).astype(dtype)  # small factors: no overflow
    out = run_graph(lambda: am.mpi_reduce_scatter(tf.constant(a), op, counts if given else None))
    reduced = NUMPY[op](np.stack(every_rank(a)), axis=0).astype(dtype)
    start = sum(counts[:RANK])
    assert out.shape == (counts[RANK], 3)
    assert_close(out, reduced[start : start + counts[RANK]], dtype, f"mpi_reduce_scatter {op}")


@adjoint_test("mpi_reduce_scatter")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("op", ["sum", "mean"])
def test_reduce_scatter_adjoint(op, dtype):
    counts = counts_uneven()
    x, v = random((sum(counts), 2), dtype, 6), random((sum(counts), 2), dtype, 7)
    w = random((counts[RANK], 2), dtype, 8)
    _, g, _ = adjoint_check(lambda t: am.mpi_reduce_scatter(t, op, counts), x, w, v)
    scale = 1.0 / SIZE if op == "mean" else 1.0
    assert_close(g, np.concatenate(every_rank(w)) * scale, dtype, "grad = allgather of cotangents")


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("op", ["mean", "max", "min", "prod"])
def test_allreduce_forward_ops(op, dtype):
    if op == "mean" and np.issubdtype(dtype, np.integer):
        pytest.skip("op='mean' needs a float dtype (tested in test_mean_of_ints_is_an_error)")
    a = random((4, 2), dtype, 9)
    if op == "prod" and np.issubdtype(dtype, np.integer):
        a = (a % 3).astype(dtype)
    out = run_graph(lambda: am.mpi_allreduce(tf.constant(a), op=op))
    assert_close(out, NUMPY[op](np.stack(every_rank(a)), axis=0).astype(dtype), dtype, op)


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("op", ["mean", "max", "min", "prod"])
def test_sum_forward_ops(op, root):
    a = random((3,), np.float64, 10)
    out = run_graph(lambda: am.mpi_sum(tf.constant(a), root, op=op))
    reduced = NUMPY[op](np.stack(every_rank(a)), axis=0)  # (a collective: on every rank)
    expected = reduced if RANK == root else np.zeros(3)
    assert_close(out, expected, np.float64, f"mpi_sum op={op} root={root}")


def with_ties_and_zeros(dtype, salt):
    """Small integers: several ranks share the maximum and the minimum, and
    some entries are zero (prod's gradient must be exact there)."""
    return (np.random.default_rng([salt, RANK]).integers(-2, 3, size=(6,))).astype(dtype)


def gradient_of(reduce, a, w):
    """d/da of sum over ranks <w, reduce(a)>, on this rank."""

    def build():
        t = tf.constant(a)
        return tf.gradients(reduce(t), t, grad_ys=tf.constant(w))[0]

    return run_graph(build)


def expected_gradient(op, a, upstream):
    """The formula: the upstream sum times the local derivative."""
    everyone = np.stack(every_rank(a))
    if op == "prod":
        others = np.prod(np.delete(everyone, RANK, axis=0), axis=0)
        return upstream * others
    extremum = NUMPY[op](everyone, axis=0)
    ties = np.sum(everyone == extremum, axis=0)
    return upstream * (a == extremum) / ties


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("op", ["max", "min", "prod"])
def test_allreduce_gradient_with_ties_and_zeros(op, dtype):
    a, w = with_ties_and_zeros(dtype, 11), random((6,), dtype, 12)
    g = gradient_of(lambda t: am.mpi_allreduce(t, op=op), a, w)
    upstream = np.sum(every_rank(w), axis=0)
    assert_close(g, expected_gradient(op, a, upstream), dtype, f"grad of allreduce {op}")


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("op", ["max", "min", "prod", "mean"])
def test_sum_gradient_with_ties_and_zeros(op, root):
    a, w = with_ties_and_zeros(np.float64, 13), random((6,), np.float64, 14)
    g = gradient_of(lambda t: am.mpi_sum(t, root, op=op), a, w)
    upstream = every_rank(w)[root]
    expected = upstream / SIZE if op == "mean" else expected_gradient(op, a, upstream)
    assert_close(g, expected, np.float64, f"grad of mpi_sum {op} root={root}")


@hvp_test("mpi_allreduce")
@pytest.mark.parametrize("op", ["prod", "max"])
def test_second_derivative_by_hvp(op):
    """H v of f(a) = sum_ranks <c, reduce(a)^2> against central differences of the gradient."""
    a = np.random.default_rng([15, RANK]).uniform(0.5, 1.5, size=(4,))
    v = np.random.default_rng([16, RANK]).standard_normal(4)
    c = np.random.default_rng([17, RANK]).standard_normal(4)

    def gradient(x):
        t = tf.constant(x)
        y = am.mpi_allreduce(t, op=op)
        return tf.gradients(tf.reduce_sum(tf.constant(c) * y * y), t)[0]

    def build_hvp():
        t = tf.constant(a)
        y = am.mpi_allreduce(t, op=op)
        g = tf.gradients(tf.reduce_sum(tf.constant(c) * y * y), t)[0]
        return tf.gradients(tf.reduce_sum(g * tf.constant(v)), t)[0]

    hv = run_graph(build_hvp)
    eps = 1e-6
    difference = run_graph(lambda: gradient(a + eps * v)) - run_graph(lambda: gradient(a - eps * v))
    assert_close(hv, difference / (2 * eps), np.float32, f"H v through allreduce {op}")


def test_mean_of_ints_is_an_error():
    with pytest.raises(
        TypeError, match=r"mpi_allreduce \(rank \d+ of \d+\): op='mean' needs a float"
    ):
        am.mpi_allreduce(tf.constant([1, 2]), op="mean")


def test_unknown_op_is_an_error():
    with pytest.raises(ValueError, match=r"argument 'op' = 'median' is not one of"):
        am.mpi_allreduce(tf.constant([1.0]), op="median")


def test_reduce_scatter_gradient_of_max_is_a_clear_error():
    def build():
        t = tf.constant(np.ones((SIZE, 2)))
        return tf.gradients(am.mpi_reduce_scatter(t, "max"), t)

    where = r"mpi_reduce_scatter \(rank \d+ of \d+\)"
    with pytest.raises(ValueError, match=where + r": op='max' has no gradient here"):
        run_graph(build)


def test_eager_and_function_agree_with_graph():
    a = uneven((2,), np.float64, 18)

    def both(t):
        return am.mpi_allgather(t), am.mpi_allreduce(t[:1], op="max")

    graph = run_graph(lambda: both(tf.constant(a)))
    eager = [x.numpy() for x in both(tf.constant(a))]
    function = [x.numpy() for x in tf.function(both)(tf.constant(a))]
    for mode in (eager, function):
        for x, y in zip(mode, graph):
            np.testing.assert_array_equal(x, y)
