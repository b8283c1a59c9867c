"""mpi_exchange (MPI_Sendrecv: every rank sends and receives): forward
against NumPy references built from every rank's inputs, for a ring shift
and for a line with boundaries (None partners); dot-product adjoint tests
with different cotangents per rank, float32 and float64, in graph mode,
eagerly and in tf.function; a Hessian-vector product against differences;
bad partners and sizes named with the op and rank."""

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
    global_dot,
    random,
    run_graph,
)

RIGHT, LEFT = (RANK + 1) % SIZE, (RANK - 1) % SIZE


def partners(layout):
    """(dest, source) of this rank: a periodic ring, a line sending right
    (the last rank sends nothing, rank 0 receives zeros), or its mirror."""
    if layout == "ring":
        return RIGHT, LEFT
    right = RANK + 1 if RANK + 1 < SIZE else None
    left = RANK - 1 if RANK > 0 else None
    return (right, left) if layout == "line_right" else (left, right)


def reference(xs, source):
    return np.zeros_like(xs[RANK]) if source is None else xs[source]


LAYOUTS = ["ring", "line_right", "line_left"]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(), (5,), (2, 3)])
def test_exchange_forward(shape, layout, dtype):
    dest, source = partners(layout)
    a = random(shape, dtype, 11)
    out = run_graph(lambda: am.mpi_exchange(tf.constant(a), dest, source, tag=3))
    assert out.shape == a.shape and out.dtype == dtype
    assert_close(out, reference(every_rank(a), source), dtype, f"mpi_exchange {layout}")


def test_exchange_with_tensor_partners():
    """Partners as tensors (-1: none) are checked and used by the kernel."""
    dest, source = partners("line_right")
    a = random((4,), np.float64, 12)

    def build():
        as_tensor = [tf.constant(-1 if p is None else p) for p in (dest, source)]
        return am.mpi_exchange(tf.constant(a), *as_tensor)

    assert_close(run_graph(build), reference(every_rank(a), source), np.float64, "tensors")


@adjoint_test("mpi_exchange")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_exchange_adjoint(layout, dtype):
    dest, source = partners(layout)
    x, v = random((3, 2), dtype, 13), random((3, 2), dtype, 14)
    w = random((3, 2), dtype, 15)  # a different cotangent on every rank
    _, g, _ = adjoint_check(lambda t: am.mpi_exchange(t, dest, source), x, w, v)
    # and the gradient itself: what this rank's dest received from it, weighted
    ws = every_rank(w)
    expected = np.zeros_like(x) if dest is None else ws[dest]
    assert_close(g, expected, dtype, f"gradient, {layout}")


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_exchange_adjoint_eager_and_function(mode, dtype):
    dest, source = partners("line_right")
    x, v = random((4,), dtype, 16), random((4,), dtype, 17)
    w = random((4,), dtype, 18)

    def grad(xt):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = am.mpi_exchange(xt, dest, source)
        return tape.gradient(y, xt, output_gradients=tf.constant(w))

    if mode == "function":
        grad = tf.function(grad)
        op = tf.function(lambda t: am.mpi_exchange(t, dest, source))
    else:
        op = lambda t: am.mpi_exchange(t, dest, source)
    g = grad(tf.constant(x)).numpy()
    opv = op(tf.constant(v)).numpy()
    lhs, rhs = global_dot(g, v), global_dot(w, opv)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    assert abs(lhs - rhs) <= tol * max(abs(lhs), abs(rhs), 1.0), (lhs, rhs)


@hvp_test("mpi_exchange")
def test_exchange_hessian_vector_product():
    """f = sum(c * x * exchange(x)**2) on the ring: H v against central
    differences of the gradient."""
    x, v = random((3,), np.float64, 19), random((3,), np.float64, 20)
    c = random((3,), np.float64, 21)

    def grad_and_hvp(xt, vt):
        with tf.GradientTape() as outer:
            outer.watch(xt)
            with tf.GradientTape() as inner:
                inner.watch(xt)
                f = tf.reduce_sum(c * xt * am.mpi_exchange(xt, RIGHT, LEFT) ** 2)
            g = inner.gradient(f, xt)
            gv = tf.reduce_sum(g * vt)
        return g, outer.gradient(gv, xt)

    _, hv = grad_and_hvp(tf.constant(x), tf.constant(v))
    eps = 1e-5
    gp, _ = grad_and_hvp(tf.constant(x + eps * v), tf.constant(v))
    gm, _ = grad_and_hvp(tf.constant(x - eps * v), tf.constant(v))
    np.testing.assert_allclose(
        hv.numpy(), (gp.numpy() - gm.numpy()) / (2 * eps), rtol=1e-6, atol=1e-8, err_msg="HVP"
    )


def test_exchange_bad_partner_is_named():
    with pytest.raises(
        ValueError,
        match=rf"mpi_exchange \(rank {RANK} of {SIZE}\): argument 'dest' = {SIZE} "
        rf"is out of range \[-1, {SIZE - 1}\]",
    ):
        am.mpi_exchange(tf.ones(2), SIZE, None)


@pytest.mark.skipif(SIZE < 2, reason="needs 2 ranks")
def test_exchange_size_mismatch_is_named():
    """Rank 1 sends 3 elements to rank 0, which expects 2: rank 0's error
    names the sender and both sizes; nothing hangs."""
    if RANK > 1:
        return
    shape = (2,) if RANK == 0 else (3,)
    dest, source = (None, 1) if RANK == 0 else (0, None)
    if RANK == 0:
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=r"mpi_exchange \(rank 0 of \d+\): rank 1 sent 12 bytes \(tag 0\) "
            r"but argument 'a' is float\[2\] \(2 elements\)",
        ):
            run_graph(lambda: am.mpi_exchange(tf.ones(shape), dest, source))
    else:
        run_graph(lambda: am.mpi_exchange(tf.ones(shape), dest, source))
