"""Program order without deps: many independent MPI ops, several inter-op
threads, graph mode / tf.function / eager, forward and gradient."""

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from helpers import RANK, SIZE, every_rank, run_graph

COUNT = 40


def independent_ops(values):
    """COUNT collectives that share no data: mixed ops and roots."""
    outs = []
    for i, v in enumerate(values):
        root = (i * 7) % SIZE
        kind = i % 4
        if kind == 0:
            outs.append(am.mpi_bcast(v, root))
        elif kind == 1:
            outs.append(am.mpi_sum(v, root))
        elif kind == 2:
            outs.append(am.mpi_allreduce(v))
        else:
            outs.append(am.mpi_gather(v, root))
    return outs


def expected(i, everyone):
    root = (i * 7) % SIZE
    kind = i % 4
    if kind == 0:
        return everyone[root][i]
    if kind == 1:
        return sum(e[i] for e in everyone) if RANK == root else np.zeros_like(everyone[0][i])
    if kind == 2:
        return sum(e[i] for e in everyone)
    full = np.concatenate([e[i] for e in everyone])
    return full if RANK == root else np.zeros_like(full)


def data():
    # sizes differ per op, so a mismatched pairing would be caught by the metadata check
    return [np.full(1 + i % 5, 100.0 * RANK + i) for i in range(COUNT)]


@pytest.mark.parametrize("repeat", range(3))
def test_graph_mode_many_threads(repeat):
    values = data()
    outs = run_graph(
        lambda: independent_ops([tf.constant(v) for v in values]), inter_op_parallelism_threads=4
    )
    everyone = every_rank(values)
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, expected(i, everyone), err_msg=f"op {i}")


def test_gradients_many_threads():
    values = data()

    def build():
        xs = [tf.constant(v) for v in values]
        outs = independent_ops(xs)
        loss = tf.add_n([tf.reduce_sum(o * (k + 1)) for k, o in enumerate(outs)])
        return tf.gradients(loss, xs)

    grads = run_graph(build, inter_op_parallelism_threads=4)
    for i, g in enumerate(grads):
        root, kind = (i * 7) % SIZE, i % 4
        w = float(i + 1)
        if kind == 0:
            exp = np.full_like(values[i], w * SIZE) if RANK == root else np.zeros_like(values[i])
        elif kind == 1:
            exp = np.full_like(values[i], w)
        elif kind == 2:
            exp = np.full_like(values[i], w * SIZE)
        else:
            exp = np.full_like(values[i], w)
        np.testing.assert_array_equal(g, exp, err_msg=f"grad {i}")


def test_tf_function_and_eager():
    values = data()
    everyone = every_rank(values)

    @tf.function
    def in_function(*xs):
        return independent_ops(list(xs))

    for outs in (
        in_function(*[tf.constant(v) for v in values]),
        independent_ops([tf.constant(v) for v in values]),
    ):
        for i, out in enumerate(outs):
            np.testing.assert_array_equal(out.numpy(), expected(i, everyone), err_msg=f"op {i}")


def test_loop_runs_its_mpi_ops_when_no_fetched_result_needs_them():
    """Rank 0 fetches rows of the loop's state; the other ranks fetch rows
    of zero width written from constants, which no MPI op of the loop
    feeds. Every rank must still run every iteration's halo exchange and
    allreduce (the loop's results wait for its exit token), or rank 0's
    loop and the allreduce after it would meet nobody."""
    steps = 5

    def build():
        width = 2 if RANK == 0 else 0
        rows = tf.TensorArray(tf.float64, size=steps, element_shape=[width])

        def body(i, u, rows):
            v = am.mpi_halo_exchange(u, 1, SIZE)[1:-1, 1:-1]
            total = am.mpi_allreduce(tf.reduce_sum(v))
            sample = v[0, :width] if width else tf.zeros([0], tf.float64)
            return i + 1, 0.5 * v + 1e-3 * total, rows.write(i, sample)

        u0 = tf.fill([3, 2], tf.constant(RANK + 1.0, tf.float64))
        _, _, rows = am.ordering.while_loop(lambda i, *_: i < steps, body, (0, u0, rows))
        return rows.stack()

    got = run_graph(build)
    # meets only if every rank ran the loop's collectives (before any assert,
    # so that one rank's failure cannot leave the others waiting here)
    after = run_graph(lambda: am.mpi_allreduce(tf.constant(1.0, tf.float64)))
    # the same loop in NumPy, from every rank's start: rank 0 records its
    # state's first row before each update
    u = [np.full((3, 2), r + 1.0) for r in range(SIZE)]
    expected = []
    for _ in range(steps):
        expected.append(u[0][0, :2])
        total = sum(x.sum() for x in u)
        u = [0.5 * x + 1e-3 * total for x in u]
    assert after == SIZE
    if RANK == 0:
        np.testing.assert_allclose(got, np.array(expected), rtol=1e-13)
    else:
        assert got.shape == (steps, 0)


@pytest.mark.parametrize("jit", [False, True])
def test_an_mpi_op_after_a_custom_gradient_block_leaves_the_block_to_its_gradient(jit):
    """An MPI op after an ordering.custom_gradient block links (as data,
    inside tf.function) to the block's token output, not to the last MPI
    op made inside the block: linked inside, its gradient flowed into the
    block's forward ops and TensorFlow differentiated them too, beside the
    block's own gradient, with an adjoint nobody asked for (in
    checkpointed_loop, a whole second reverse pass whose MPI ops raced the
    block's: test_checkpoint). Here the block's gradient is deliberately
    not the true one (3 x in place of 2 x), so the result also shows whose
    gradient ran."""
    x = tf.constant(np.arange(1.0, 4.0) + RANK)
    w = tf.constant(np.arange(3.0) - RANK)  # a different cotangent per rank

    @am.ordering.custom_gradient
    def block(x):
        def grad(dy):
            return 3.0 * x * am.mpi_allreduce(dy)

        return am.mpi_allreduce(x * x), grad

    def loss_and_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = am.mpi_allreduce(tf.reduce_sum(block(x) * w))
        return loss, tape.gradient(loss, x)

    compiled = tf.function(loss_and_gradient, jit_compile=jit)
    graph = compiled.get_concrete_function(x).graph
    mpi_ops = [op.name for op in graph.get_operations() if op.type.startswith("MPI")]
    # the block's allreduce, the loss's, the loss's adjoint, the block's gradient's
    assert len(mpi_ops) == 4, mpi_ops
    loss, gradient = compiled(x)
    # the loss's adjoint hands every rank SIZE (each rank's loss is the sum)
    xs, ws = every_rank(x.numpy()), every_rank(w.numpy())
    y, W = sum(v * v for v in xs), sum(ws)
    np.testing.assert_allclose(loss.numpy(), np.sum(y * W), rtol=1e-13)
    np.testing.assert_allclose(gradient.numpy(), 3.0 * x.numpy() * SIZE * W, rtol=1e-13)
