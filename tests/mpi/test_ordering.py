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
