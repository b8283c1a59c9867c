"""Forward against NumPy references built from every rank's inputs, and
dot-product adjoint tests, for mpi_sum, mpi_allreduce, mpi_bcast, mpi_gather
and mpi_scatter: all dtypes, shapes (), (n,), (a,b), (a,b,c), root 0 and size-1."""

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from helpers import (
    ALL_DTYPES,
    FLOAT_DTYPES,
    RANK,
    SHAPES,
    SIZE,
    adjoint_check,
    adjoint_test,
    assert_close,
    every_rank,
    random,
    run_graph,
)

ROOTS = sorted({0, SIZE - 1})


def forward(op, shape, dtype, salt):
    a = random(shape, dtype, salt)
    out = run_graph(lambda: op(tf.constant(a)))
    return a, every_rank(a), out


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_sum_forward(shape, root, dtype):
    a, everyone, out = forward(lambda t: am.mpi_sum(t, root), shape, dtype, 1)
    expected = np.sum(everyone, axis=0).astype(dtype) if RANK == root else np.zeros(shape, dtype)
    assert out.shape == shape and out.dtype == dtype
    assert_close(out, expected, dtype, f"mpi_sum root={root}")


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_allreduce_forward(shape, dtype):
    a, everyone, out = forward(am.mpi_allreduce, shape, dtype, 2)
    assert out.shape == shape and out.dtype == dtype
    assert_close(out, np.sum(everyone, axis=0).astype(dtype), dtype, "mpi_allreduce")


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bcast_forward(shape, root, dtype):
    a, everyone, out = forward(lambda t: am.mpi_bcast(t, root), shape, dtype, 3)
    assert out.shape == shape and out.dtype == dtype
    assert_close(out, everyone[root], dtype, f"mpi_bcast root={root}")


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_gather_forward(shape, root, dtype):
    a, everyone, out = forward(lambda t: am.mpi_gather(t, root), shape, dtype, 4)
    full = np.concatenate([np.reshape(x, (1,) if x.ndim == 0 else x.shape) for x in everyone])
    assert out.shape == full.shape and out.dtype == dtype
    assert_close(
        out, full if RANK == root else np.zeros_like(full), dtype, f"mpi_gather root={root}"
    )


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("shape", [(SIZE,), (2 * SIZE, 3), (SIZE, 2, 2)])
def test_scatter_forward(shape, root, dtype):
    a, everyone, out = forward(lambda t: am.mpi_scatter(t, root), shape, dtype, 5)
    k = shape[0] // SIZE
    assert_close(out, everyone[root][RANK * k : (RANK + 1) * k], dtype, f"mpi_scatter root={root}")


# ---- gradients: explicit adjoint formula and the dot-product test ----------


def cotangents(shape_in, shape_out, dtype, salt):
    return (
        random(shape_in, dtype, salt),
        random(shape_out, dtype, salt + 1),
        random(shape_in, dtype, salt + 2),
    )


@adjoint_test("mpi_sum")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_sum_adjoint(shape, root, dtype):
    x, w, v = cotangents(shape, shape, dtype, 10)
    _, g, _ = adjoint_check(lambda t: am.mpi_sum(t, root), x, w, v)
    assert_close(g, every_rank(w)[root], dtype, "grad of mpi_sum = root's cotangent")


@adjoint_test("mpi_allreduce")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_allreduce_adjoint(shape, dtype):
    x, w, v = cotangents(shape, shape, dtype, 20)
    _, g, _ = adjoint_check(am.mpi_allreduce, x, w, v)
    assert_close(
        g, np.sum(every_rank(w), axis=0), dtype, "grad of mpi_allreduce = sum of cotangents"
    )


@adjoint_test("mpi_bcast")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bcast_adjoint(shape, root, dtype):
    x, w, v = cotangents(shape, shape, dtype, 30)
    _, g, _ = adjoint_check(lambda t: am.mpi_bcast(t, root), x, w, v)
    total = np.sum(every_rank(w), axis=0)  # collective: every rank calls it
    expected = total if RANK == root else np.zeros(shape)
    assert_close(g, expected, dtype, "grad of mpi_bcast = sum of cotangents on root")


@adjoint_test("mpi_gather")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_gather_adjoint(shape, root, dtype):
    out_shape = (SIZE,) if shape == () else (SIZE * shape[0],) + shape[1:]
    x, w, v = cotangents(shape, out_shape, dtype, 40)
    _, g, _ = adjoint_check(lambda t: am.mpi_gather(t, root), x, w, v)
    k = 1 if shape == () else shape[0]
    expected = every_rank(w)[root][RANK * k : (RANK + 1) * k].reshape(shape)
    assert_close(g, expected, dtype, "grad of mpi_gather = this rank's slice of root's cotangent")


@adjoint_test("mpi_scatter")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("root", ROOTS)
def test_scatter_adjoint(root, dtype):
    shape = (2 * SIZE, 3)
    x, w, v = cotangents(shape, (2, 3), dtype, 50)
    _, g, _ = adjoint_check(lambda t: am.mpi_scatter(t, root), x, w, v)
    gathered = np.concatenate(every_rank(w))  # collective: every rank calls it
    expected = gathered if RANK == root else np.zeros(shape)
    assert_close(g, expected, dtype, "grad of mpi_scatter = gathered cotangents on root")


def test_root_as_tensor_and_deps():
    """root may be a scalar int tensor; deps= adds a control dependency."""

    def build():
        counter = tf.Variable(0.0, dtype=tf.float64)
        bump = counter.assign_add(1.0)
        a = tf.constant(float(RANK + 1), tf.float64)
        b = am.mpi_bcast(a, tf.constant(SIZE - 1, tf.int64), deps=[bump])
        return b, counter

    g = tf.Graph()
    with g.as_default():
        b, counter = build()
        with am.Session(graph=g) as s:
            s.run(counter.initializer)
            out = s.run(b)
            assert s.run(counter) == 1.0  # the dependency ran with the bcast
    assert out == float(SIZE)
