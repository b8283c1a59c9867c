"""Backward passes complete whenever the forward pass did, in graph mode,
eagerly and in tf.function, for rank-dependent point-to-point patterns and
for a rank whose loss has no local path to its input."""

import time

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from helpers import even_odd_ring, RANK, SIZE, every_rank, random, run_graph

MODES = ["graph", "eager", "function"]


def gradients(mode, loss_fn, xs):
    """Gradients of loss_fn(*xs) w.r.t. xs (None entries as zeros)."""
    if mode == "graph":

        def build():
            ts = [tf.constant(x) for x in xs]
            grads = tf.gradients(loss_fn(*ts), ts)
            return [tf.zeros_like(t) if g is None else g for t, g in zip(ts, grads)]

        return run_graph(build)

    def tape_grads(*ts):
        with tf.GradientTape() as tape:
            for t in ts:
                tape.watch(t)
            loss = loss_fn(*ts)
        grads = tape.gradient(loss, list(ts))
        return [tf.zeros_like(t) if g is None else g for t, g in zip(ts, grads)]

    if mode == "function":
        tape_grads = tf.function(tape_grads)
    return [g.numpy() for g in tape_grads(*[tf.constant(x) for x in xs])]


def timed(mode, loss_fn, xs, pattern):
    start = time.perf_counter()
    out = gradients(mode, loss_fn, xs)
    if RANK == 0:
        print(f"pattern {pattern} {mode}: {time.perf_counter() - start:.3f} s")
    return out


@pytest.mark.skipif(SIZE < 2 or SIZE % 2, reason="an even ring")
@pytest.mark.parametrize("mode", MODES)
def test_even_odd_ring(mode):
    """Even ranks send right then receive from the left; odd ranks receive
    first. Loss on rank r: sum(a_r * sent + got^2), got = x of rank r-1."""
    x, a = random(5, np.float64, 400), random(5, np.float64, 401)

    def loss(t):
        sent, got = even_odd_ring(t)
        return tf.reduce_sum(a * sent + got * got)

    (g,) = timed(mode, loss, [x], "even/odd ring")
    np.testing.assert_allclose(g, a + 2 * x, rtol=1e-13, err_msg=f"rank {RANK}")


@pytest.mark.skipif(SIZE < 3, reason="a 3-rank chain")
@pytest.mark.parametrize("mode", MODES)
def test_three_rank_chain(mode):
    """0 -> 1 -> 2: rank 1 multiplies what it got by its x and passes it on;
    rank 2's loss is sum(z^2) with z = x0 * x1. Other ranks only watch."""
    x = random(4, np.float64, 410)
    xs = every_rank(x)

    def loss(t):
        if RANK == 0:
            return tf.reduce_sum(am.mpi_send(t, 1) * 0.0)
        if RANK == 1:
            y = am.mpi_recv(t, 0)
            return tf.reduce_sum(am.mpi_send(y * t, 2) * 0.0)
        if RANK == 2:
            z = am.mpi_recv(t, 1)
            return tf.reduce_sum(z * z)
        return tf.reduce_sum(t * 0.0)

    (g,) = timed(mode, loss, [x], "3-rank chain")
    x0, x1 = xs[0], xs[1]
    expected = {0: 2 * x0 * x1**2, 1: 2 * x0**2 * x1}.get(RANK, np.zeros_like(x))
    np.testing.assert_allclose(g, expected, rtol=1e-13, err_msg=f"rank {RANK}")


@pytest.mark.skipif(SIZE < 2, reason="two ranks")
@pytest.mark.parametrize("mode", MODES)
def test_two_sends_before_a_receive(mode):
    """Rank 0 sends a (tag 0) and b (tag 1), then receives c; rank 1 receives
    in the opposite tag order and sends back c = a * b + x. Losses: rank 0
    sum(c * a), rank 1 sum(x * a). So L = sum(a^2 b + 2 x a). Rank 1's loss
    must depend on its last send (0 * sent), or that send would not be part
    of its backward pass (tests/launch checks the error for that)."""
    a, b, x = (random(3, np.float64, 420 + k) for k in range(3))
    everyone = every_rank((a, b, x))

    def loss(ta, tb, tx):
        if RANK == 0:
            sa = am.mpi_send(ta, 1, tag=0)
            am.mpi_send(tb, 1, tag=1)
            c = am.mpi_recv(ta, 1, tag=2)
            return tf.reduce_sum(c * sa) + tf.reduce_sum(tb * 0.0) + tf.reduce_sum(tx * 0.0)
        if RANK == 1:
            rb = am.mpi_recv(tb, 0, tag=1)
            ra = am.mpi_recv(ta, 0, tag=0)
            sent = am.mpi_send(ra * rb + tx, 0, tag=2)
            return tf.reduce_sum(tx * ra) + tf.reduce_sum(sent * 0.0)
        return tf.reduce_sum((ta + tb + tx) * 0.0)

    ga, gb, gx = timed(mode, loss, [a, b, x], "two sends before a receive")
    a0, b0, _ = everyone[0]
    x1 = everyone[1][2]
    if RANK == 0:
        expected = (2 * a0 * b0 + 2 * x1, a0**2, np.zeros(3))
    elif RANK == 1:
        expected = (np.zeros(3), np.zeros(3), 2 * a0)
    else:
        expected = (np.zeros(3),) * 3
    for got, exp, name in zip((ga, gb, gx), expected, "abx"):
        np.testing.assert_allclose(got, exp, rtol=1e-13, err_msg=f"rank {RANK} d/d{name}")


@pytest.mark.parametrize("mode", MODES)
def test_rank_without_local_path(mode):
    """The seed program with rank 0's theta^0 written as the constant 1: rank
    0's loss has no path to its theta, yet its gradient is the global one
    (it runs its share of the backward collectives with zero cotangents)."""
    theta = np.array(2.0)

    def loss(t):
        b = am.mpi_bcast(t)
        local = b**RANK if RANK > 0 else tf.constant(1.0, tf.float64)
        return am.mpi_sum(local)

    (g,) = timed(mode, loss, [theta], "rank without a local path")
    expected = sum(r * 2.0 ** (r - 1) for r in range(1, SIZE)) if RANK == 0 else 0.0
    np.testing.assert_allclose(g, expected, rtol=1e-14, err_msg=f"rank {RANK}")
