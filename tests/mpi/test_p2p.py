"""mpi_send / mpi_recv / mpi_sendrecv: forward and exact adjoints."""

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
    adjoint_test,
    assert_close,
    every_rank,
    global_dot,
    random,
    run_graph,
)

needs_two = pytest.mark.skipif(SIZE < 2, reason="needs at least 2 ranks")


def ring(t, tag=0):
    """Every rank sends to the next and receives from the previous, in an
    order that cannot deadlock: even ranks send first, odd ranks receive first."""
    nxt, prv = (RANK + 1) % SIZE, (RANK - 1) % SIZE
    if RANK % 2 == 0:
        sent = am.mpi_send(t, nxt, tag)
        got = am.mpi_recv(t, prv, tag)
    else:
        got = am.mpi_recv(t, prv, tag)
        sent = am.mpi_send(t, nxt, tag)
    return sent, got


@needs_two
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_ring_forward(shape, dtype):
    if SIZE % 2:  # an odd ring pairs rank SIZE-1 (even) with rank 0 (even): both send first
        pytest.skip("ring needs an even number of ranks")
    a = random(shape, dtype, 60)
    sent, got = run_graph(lambda: ring(tf.constant(a), tag=7))
    everyone = every_rank(a)
    assert_close(sent, a, dtype, "mpi_send returns its input")
    assert_close(got, everyone[(RANK - 1) % SIZE], dtype, "mpi_recv gets the previous rank's a")


@adjoint_test("mpi_send", "mpi_recv")
@needs_two
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_send_recv_adjoint(shape, dtype):
    """Rank 0 sends x to the last rank. y = (send output on 0, recv output on
    last, x elsewhere). Dot-product test with per-rank cotangents, and the
    explicit rule: grad on 0 = w_0 + w_last; on last: zeros; elsewhere w."""
    last = SIZE - 1
    x, w, v = (random(shape, dtype, s) for s in (70, 71, 72))

    def op(t):
        if RANK == 0:
            return am.mpi_send(t, last, tag=3)
        if RANK == last:
            return am.mpi_recv(t, 0, tag=3)
        return tf.identity(t)

    def build():
        xt, vt = tf.constant(x), tf.constant(v)
        y = op(xt)
        return y, tf.gradients(y, xt, grad_ys=tf.constant(w))[0], op(vt)

    y, g, opv = run_graph(build)
    ws, xs = every_rank(w), every_rank(x)
    assert_close(y, xs[0] if RANK == last else x, dtype, "forward")
    expected = ws[0] + ws[last] if RANK == 0 else np.zeros(shape) if RANK == last else w
    assert_close(g, expected, dtype, "gradient")
    lhs, rhs = global_dot(g, v), global_dot(w, opv)
    assert abs(lhs - rhs) <= (1e-4 if dtype == np.float32 else 1e-11) * max(1, abs(lhs))


@adjoint_test("mpi_send", "mpi_recv")
@needs_two
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_ring_adjoint(dtype):
    if SIZE % 2:
        pytest.skip("ring needs an even number of ranks")
    x, w1, w2, v = (random((4, 3), dtype, s) for s in (80, 81, 82, 83))

    def op(t):
        sent, got = ring(t, tag=1)
        return sent, got

    def build():
        xt, vt = tf.constant(x), tf.constant(v)
        sent, got = op(xt)
        g = tf.gradients([sent, got], xt, grad_ys=[tf.constant(w1), tf.constant(w2)])[0]
        return g, op(vt)

    g, (s_v, r_v) = run_graph(build)
    w2s = every_rank(w2)
    # sent = x, got_{r+1} = x_r  =>  grad_r = w1_r + w2_{r+1}
    assert_close(g, w1 + w2s[(RANK + 1) % SIZE], dtype, "ring gradient")
    lhs = global_dot(g, v)
    rhs = global_dot(w1, s_v) + global_dot(w2, r_v)
    assert abs(lhs - rhs) <= (1e-4 if dtype == np.float32 else 1e-11) * max(1, abs(lhs))


@pytest.mark.skipif(SIZE < 3, reason="the seed example sends from rank 2")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sendrecv_seed_example(dtype):
    """'Send and Receive': a = mpi_sendrecv(ones(10) * r, 0, 2); L = sum(a^2)."""

    def build():
        a0 = tf.constant(np.ones(10, dtype) * RANK)
        a = am.mpi_sendrecv(a0, 0, 2)
        L = tf.reduce_sum(a**2)
        return a, tf.gradients(L, a0)[0]

    v, G = run_graph(build)
    expected = np.full(10, 2.0) if RANK == 0 else np.full(10, float(RANK))
    assert_close(v, expected, dtype, "values")
    # d/da0 of sum over ranks of L: rank 2's a0 feeds rank 2's own L (2*a) and
    # rank 0's L (2*a): 8 each; rank 0's template gets zeros; others 2*r.
    g_expected = {0: np.zeros(10), 2: np.full(10, 8.0)}.get(RANK, np.full(10, 2.0 * RANK))
    assert_close(G, g_expected, dtype, "gradient")


@adjoint_test("mpi_sendrecv")
@needs_two
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sendrecv_adjoint(dtype):
    src, dest = SIZE - 1, 0
    x, w, v = (random((3, 2), dtype, s) for s in (90, 91, 92))
    op = lambda t: am.mpi_sendrecv(t, dest, src, tag=5)  # noqa: E731

    def build():
        xt, vt = tf.constant(x), tf.constant(v)
        y = op(xt)
        return tf.gradients(y, xt, grad_ys=tf.constant(w))[0], op(vt)

    g, opv = run_graph(build)
    lhs, rhs = global_dot(g, v), global_dot(w, opv)
    assert abs(lhs - rhs) <= (1e-4 if dtype == np.float32 else 1e-11) * max(1, abs(lhs))


@needs_two
def test_gradient_messages_do_not_meet_forward_messages():
    """A forward message with tag 0 is still in flight when the gradient with
    the same tag is computed: they travel on different communicators, so each
    lands where it belongs."""
    x = np.arange(4.0) + 10 * RANK

    def build():
        xt = tf.constant(x)
        if RANK == 0:
            y = am.mpi_send(xt, 1, tag=0)
            late = am.mpi_send(xt * 100, 1, tag=0)  # a second forward message, same tag
            return tf.gradients(y, xt, grad_ys=tf.ones(4, tf.float64))[0], late
        if RANK == 1:
            y = am.mpi_recv(xt, 0, tag=0)
            # the gradient message is sent before the second forward message is received
            g = tf.gradients(y, xt, grad_ys=tf.fill([4], tf.constant(3.0, tf.float64)))[0]
            late = am.mpi_recv(xt, 0, tag=0)
            return g, late
        return tf.zeros(4, tf.float64), tf.constant(x)

    g, late = run_graph(build)
    if RANK == 0:
        np.testing.assert_array_equal(g, 1.0 + 3.0)
    if RANK == 1:
        np.testing.assert_array_equal(g, 0.0)
        np.testing.assert_array_equal(late, np.arange(4.0) * 100)
