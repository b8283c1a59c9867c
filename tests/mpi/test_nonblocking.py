"""mpi_isend / mpi_irecv / mpi_wait: forward against NumPy references built
from every rank's inputs (a ring, and one-way messages with the waits in
either order and arithmetic between post and wait); dot-product adjoint
tests with different cotangents per rank, float32 and float64, in graph
mode, eagerly and in tf.function; a Hessian-vector product against
differences; a halo step overlapped with the interior update equal to the
blocking one, values and gradients; bad input (partner out of range, a
handle waited twice, not a handle, a message of the wrong size, a handle
never waited) named with the op and rank, never a hang."""

import ctypes

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from adcme_mpi import _loader
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

pytestmark = pytest.mark.skipif(SIZE < 2, reason="needs 2 ranks (sending to oneself is an error)")

RIGHT, LEFT = (RANK + 1) % SIZE, (RANK - 1) % SIZE


def ring(t, waits="recv_first", tag=0):
    """Every rank posts a send to the right and a receive from the left,
    computes while the messages travel, then waits on both (in the order
    `waits` says). Returns what came from the left plus half of the
    tensor the send's wait returns (its own: the local term of the gradient)."""
    hs = am.mpi_isend(t, RIGHT, tag=tag)
    hr = am.mpi_irecv(tf.zeros_like(t), LEFT, tag=tag)
    if waits == "recv_first":
        got = am.mpi_wait(hr)
        sent = am.mpi_wait(hs)
    else:
        sent = am.mpi_wait(hs)
        got = am.mpi_wait(hr)
    if t.dtype in (tf.float32, tf.float64):
        return got + 0.5 * sent
    return got + sent // 2


def ring_reference(xs, dtype):
    if np.issubdtype(dtype, np.floating):
        return xs[LEFT] + 0.5 * xs[RANK]
    return xs[LEFT] + xs[RANK] // 2


def one_way(t):
    """Rank 0 sends to the last rank, which waits first on an unrelated
    post of its own (a receive from rank 0 with another tag); the others
    return their input. Two messages in flight between one pair of ranks."""
    last = SIZE - 1
    if RANK == 0:
        h1 = am.mpi_isend(t, last, tag=5)
        h2 = am.mpi_isend(2.0 * t, last, tag=6)
        return am.mpi_wait(h2) + am.mpi_wait(h1)  # (= 3 t)
    if RANK == last:
        h1 = am.mpi_irecv(t, 0, tag=5)
        h2 = am.mpi_irecv(t, 0, tag=6)
        b = am.mpi_wait(h2)
        return am.mpi_wait(h1) - b  # x0 - 2 x0
    return tf.identity(t)


def one_way_reference(xs):
    if RANK == 0:
        return 3 * xs[0]
    if RANK == SIZE - 1:
        return -xs[0]
    return xs[RANK]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("waits", ["recv_first", "send_first"])
@pytest.mark.parametrize("shape", [(), (5,), (2, 3)])
def test_nonblocking_forward(shape, waits, dtype):
    a = random(shape, dtype, 31)
    out = run_graph(lambda: ring(tf.constant(a), waits, tag=3))
    assert out.shape == a.shape and out.dtype == dtype
    assert_close(out, ring_reference(every_rank(a), dtype), dtype, f"ring {waits}")


def test_nonblocking_forward_two_messages_one_pair():
    a = random((4,), np.float64, 32)
    out = run_graph(lambda: one_way(tf.constant(a)))
    assert_close(out, one_way_reference(every_rank(a)), np.float64, "one way")


def test_handle_is_a_float64_scalar_tensor():
    h = am.mpi_isend(tf.ones(2), RIGHT, tag=9)
    r = am.mpi_irecv(tf.ones(2), LEFT, tag=9)
    assert isinstance(h, tf.Tensor) and h.dtype == tf.float64 and h.shape == ()
    assert float(h.numpy()) >= 1 and float(r.numpy()) > float(h.numpy())
    np.testing.assert_array_equal(am.mpi_wait(r).numpy(), np.ones(2, np.float32))
    np.testing.assert_array_equal(am.mpi_wait(h).numpy(), np.ones(2, np.float32))


@adjoint_test("mpi_isend", "mpi_irecv", "mpi_wait")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("pattern", ["recv_first", "send_first", "one_way"])
def test_nonblocking_adjoint(pattern, dtype):
    op = one_way if pattern == "one_way" else (lambda t: ring(t, pattern))
    x, v = random((3, 2), dtype, 33), random((3, 2), dtype, 34)
    w = random((3, 2), dtype, 35)  # a different cotangent on every rank
    _, g, _ = adjoint_check(op, x, w, v)
    # and the gradient itself: the local half plus the right neighbour's cotangent
    ws = every_rank(w)
    if pattern == "one_way":
        expected = {0: 3 * w - ws[SIZE - 1], SIZE - 1: np.zeros_like(w)}.get(RANK, w)
    else:
        expected = 0.5 * w + ws[RIGHT]
    assert_close(g, expected, dtype, f"gradient, {pattern}")


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("pattern", ["recv_first", "one_way"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_nonblocking_adjoint_eager_and_function(dtype, pattern, mode):
    op = one_way if pattern == "one_way" else ring
    x, v = random((4,), dtype, 36), random((4,), dtype, 37)
    w = random((4,), dtype, 38)

    def grad(xt):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = op(xt)
        return tape.gradient(y, xt, output_gradients=tf.constant(w))

    forward = op
    if mode == "function":
        grad, forward = tf.function(grad), tf.function(op)
    g = grad(tf.constant(x)).numpy()
    opv = forward(tf.constant(v)).numpy()
    lhs, rhs = global_dot(g, v), global_dot(w, opv)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    assert abs(lhs - rhs) <= tol * max(abs(lhs), abs(rhs), 1.0), (lhs, rhs)


@hvp_test("mpi_isend", "mpi_irecv", "mpi_wait")
def test_nonblocking_hessian_vector_product():
    """f = sum(c * x * ring(x)**2): H v against central differences of the gradient."""
    x, v = random((3,), np.float64, 39), random((3,), np.float64, 40)
    c = random((3,), np.float64, 41)

    def grad_and_hvp(xt, vt):
        with tf.GradientTape() as outer:
            outer.watch(xt)
            with tf.GradientTape() as inner:
                inner.watch(xt)
                f = tf.reduce_sum(c * xt * ring(xt) ** 2)
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


def heat_step(u, overlapped):
    """One explicit heat step on this rank's strip of rows (periodic ring of
    strips): blocking halo rows by mpi_exchange, or posted, the interior
    updated meanwhile, then the two edge rows."""
    lap = lambda up, mid, down: up + down - 2.0 * mid  # noqa: E731
    if not overlapped:
        top = am.mpi_exchange(u[-1:], RIGHT, LEFT, tag=1)  # from the left strip's last row
        bottom = am.mpi_exchange(u[:1], LEFT, RIGHT, tag=2)
        padded = tf.concat([top, u, bottom], 0)
        return u + 0.1 * lap(padded[:-2], padded[1:-1], padded[2:])
    posts = [
        am.mpi_isend(u[-1:], RIGHT, tag=1),
        am.mpi_irecv(u[:1], LEFT, tag=1),
        am.mpi_isend(u[:1], LEFT, tag=2),
        am.mpi_irecv(u[-1:], RIGHT, tag=2),
    ]
    with tf.control_dependencies(posts):  # the interior after the posts: it overlaps them
        inner = u[1:-1] + 0.1 * lap(u[:-2], u[1:-1], u[2:])
    _, top, _, bottom = [am.mpi_wait(h) for h in posts]
    first = u[:1] + 0.1 * lap(top, u[:1], u[1:2])
    last = u[-1:] + 0.1 * lap(u[-2:-1], u[-1:], bottom)
    return tf.concat([first, inner, last], 0)


@pytest.mark.parametrize("mode", ["graph", "eager"])
def test_overlapped_heat_step_equals_blocking(mode):
    u0, w = random((6, 4), np.float64, 42), random((6, 4), np.float64, 43)

    def value_and_grad(overlapped):
        def build():
            u = tf.constant(u0)
            if mode == "eager":
                with tf.GradientTape() as tape:
                    tape.watch(u)
                    y = heat_step(heat_step(u, overlapped), overlapped)
                return y, tape.gradient(y, u, output_gradients=tf.constant(w))
            y = heat_step(heat_step(u, overlapped), overlapped)
            return y, tf.gradients(y, u, grad_ys=tf.constant(w))[0]

        out = run_graph(build) if mode == "graph" else build()
        return [np.asarray(t) for t in out]

    y_block, g_block = value_and_grad(False)
    y_over, g_over = value_and_grad(True)
    np.testing.assert_allclose(y_over, y_block, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(g_over, g_block, rtol=1e-14, atol=1e-14)


# ---- bad input: clear errors on the ranks concerned, never a hang ----


@pytest.mark.parametrize("op", ["mpi_isend", "mpi_irecv"])
def test_partner_out_of_range_is_named(op):
    arg = "dest" if op == "mpi_isend" else "src"
    with pytest.raises(
        ValueError,
        match=rf"{op} \(rank {RANK} of {SIZE}\): argument '{arg}' = {SIZE} "
        rf"is out of range \[0, {SIZE - 1}\]",
    ):
        getattr(am, op)(tf.ones(2), SIZE)


def test_partner_tensor_out_of_range_is_named_by_the_kernel():
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=rf"mpi_isend \(rank {RANK} of {SIZE}\): argument 'dest' = -1 is out of range",
    ):
        run_graph(lambda: am.mpi_isend(tf.ones(2), tf.constant(-1)))


def test_handle_waited_twice_is_an_error_on_every_rank():
    hs = am.mpi_isend(tf.ones(3), RIGHT, tag=11)
    hr = am.mpi_irecv(tf.ones(3), LEFT, tag=11)
    am.mpi_wait(hr)
    am.mpi_wait(hs)
    for h in (hr, hs):
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=rf"mpi_wait \(rank {RANK} of {SIZE}\): argument 'handle' = \d+ was already "
            r"waited on",
        ):
            am.mpi_wait(h)


def test_handle_waited_twice_in_a_graph_is_an_error():
    def build():
        hs = am.mpi_isend(tf.ones(3), RIGHT, tag=12)
        hr = am.mpi_irecv(tf.ones(3), LEFT, tag=12)
        first = [am.mpi_wait(hr), am.mpi_wait(hs)]
        return first + [am.mpi_wait(hr)]

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"mpi_wait \(rank \d+ of \d+\).*"):
        run_graph(build)


def test_not_a_handle_is_named():
    with pytest.raises(
        TypeError,
        match=rf"mpi_wait \(rank {RANK} of {SIZE}\): argument 'handle' must be a handle",
    ):
        am.mpi_wait(tf.constant(1.0, tf.float64))


@pytest.mark.parametrize("sent", [1, 3])
def test_size_mismatch_is_named_at_the_wait(sent):
    """Rank 1 sends `sent` elements to rank 0, whose receive expects 2: its
    wait names the sender, the tag and the template."""
    if RANK > 1:
        return
    if RANK == 1:
        am.mpi_wait(am.mpi_isend(tf.ones(sent), 0, tag=13))
        return
    h = am.mpi_irecv(tf.ones(2), 1, tag=13)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"mpi_wait \(rank 0 of \d+\): the message from rank 1 \(tag 13\) does not match "
        r"mpi_irecv's argument 'a' \(float\[2\], 2 elements\): "
        + ("it holds 1 elements" if sent == 1 else r"it holds more than 2 elements \(truncated\)"),
    ):
        am.mpi_wait(h)


def test_never_waited_is_reported_with_op_rank_and_tag():
    """What the end of the program reports (tests/launch/test_errors.py runs
    the whole job): asked here directly, the handles are then abandoned."""
    hs = am.mpi_isend(tf.ones(3), RIGHT, tag=14)
    hr = am.mpi_irecv(tf.ones(3), LEFT, tag=14)
    am.mpi_barrier()
    buffer = ctypes.create_string_buffer(4096)
    assert _loader.capi.adcme_mpi_unwaited_requests(buffer, len(buffer)) == 2
    text = buffer.value.decode()
    assert text.startswith(
        f"mpi_isend (rank {RANK} of {SIZE}) posted a send to rank {RIGHT} (tag 14, float[3])"
        " that was never waited on"
    ), text
    assert "(2 such handles)" in text
    assert _loader.capi.adcme_mpi_unwaited_requests(buffer, len(buffer)) == 0
    del hs, hr
    am.mpi_barrier()


def test_a_wait_after_every_differentiated_op_is_a_clear_error_not_a_zero_gradient():
    """The send's wait comes last and its result is not used: the ordering
    token never reaches its gradient, so the post's gradient cannot receive
    what the peer sends back. That is an error naming op, rank and peer on
    every rank, not a silent zero. (A tag of its own: the peer's unmatched
    adjoint message must not meet another test's.)"""
    nxt, prv = (RANK + 1) % SIZE, (RANK - 1) % SIZE
    x = tf.constant(np.arange(3.0) + RANK)
    with tf.GradientTape() as tape:
        tape.watch(x)
        hs, hr = am.mpi_isend(x, nxt, tag=97), am.mpi_irecv(x, prv, tag=97)
        y = am.mpi_wait(hr)
        am.mpi_wait(hs)
        loss = tf.reduce_sum(y * y)
    with pytest.raises(ValueError) as info:
        tape.gradient(loss, x)
    assert (
        f"mpi_isend (rank {RANK} of {SIZE}): the gradient of its mpi_wait did not run, so it "
        f"cannot receive the gradient that rank {nxt} sends back"
    ) in str(info.value)
