"""comm=: every op and mpi_optimize on sub-communicators from Split."""

import numpy as np
import pytest
import tensorflow as tf
from mpi4py import MPI

import adcme_mpi as am
from helpers import RANK, SIZE, random, run_graph

WORLD = MPI.COMM_WORLD
COLOR = RANK % 2
SUB = WORLD.Split(COLOR, key=RANK)
SUB_RANK, SUB_SIZE = SUB.Get_rank(), SUB.Get_size()


def group(x):
    return SUB.allgather(x)


def test_collectives_on_split_world():
    a = random((3,), np.float64, 300) + 100 * COLOR
    root = SUB_SIZE - 1
    s, ar, b, g = run_graph(
        lambda: (
            am.mpi_sum(tf.constant(a), root, comm=SUB),
            am.mpi_allreduce(tf.constant(a), comm=SUB),
            am.mpi_bcast(tf.constant(a), root, comm=SUB),
            am.mpi_gather(tf.constant(a), 0, comm=SUB),
        )
    )
    members = group(a)
    np.testing.assert_allclose(ar, np.sum(members, axis=0), rtol=1e-14)
    np.testing.assert_allclose(s, np.sum(members, axis=0) if SUB_RANK == root else 0, rtol=1e-14)
    np.testing.assert_array_equal(b, members[root])
    np.testing.assert_array_equal(g, np.concatenate(members) if SUB_RANK == 0 else 0)


def test_gradient_on_split_world():
    x = random((4,), np.float64, 310)

    def build():
        xt = tf.constant(x)
        y = am.mpi_bcast(xt, 0, comm=SUB)
        return tf.gradients(tf.reduce_sum(y * (SUB_RANK + 1)), xt)[0]

    g = run_graph(build)
    expected = sum(range(1, SUB_SIZE + 1)) if SUB_RANK == 0 else 0.0
    np.testing.assert_array_equal(g, np.full(4, float(expected)))


def test_halo_on_split_world():
    u = np.full((2, 2), float(SUB_RANK + 1))
    out = run_graph(lambda: am.mpi_halo_exchange(tf.constant(u), 1, SUB_SIZE, comm=SUB))
    left = float(SUB_RANK) if SUB_RANK > 0 else 0.0
    right = float(SUB_RANK + 2) if SUB_RANK < SUB_SIZE - 1 else 0.0
    np.testing.assert_array_equal(out[1:-1, 0], left)
    np.testing.assert_array_equal(out[1:-1, -1], right)


@pytest.mark.skipif(SIZE < 4, reason="needs two sub-communicators of at least 2 ranks")
def test_send_recv_on_split_world():
    am.register_comm(SUB)  # collective on SUB; point-to-point ops need it
    x = np.arange(3.0) + 10 * RANK

    def build():
        xt = tf.constant(x)
        if SUB_RANK == 0:
            y = am.mpi_send(xt, 1, comm=SUB)
        elif SUB_RANK == 1:
            y = am.mpi_recv(xt, 0, comm=SUB)
        else:
            y = tf.identity(xt)
        return y, tf.gradients(y, xt, grad_ys=tf.fill([3], float(SUB_RANK + 1)))[0]

    y, g = run_graph(build)
    members = group(x)
    if SUB_RANK == 1:
        np.testing.assert_array_equal(y, members[0])
        np.testing.assert_array_equal(g, 0.0)
    if SUB_RANK == 0:
        np.testing.assert_array_equal(g, 1.0 + 2.0)


def test_point_to_point_needs_registered_comm():
    fresh = WORLD.Dup()
    if SIZE > 1:
        with pytest.raises(ValueError, match="register_comm"):
            am.mpi_send(tf.ones(2), (RANK + 1) % SIZE, comm=fresh)
    fresh.Free()


def test_mpi_optimize_per_group():
    """Each half of the world solves its own problem with its own optimizer."""
    target = 1.0 + COLOR
    graph = tf.Graph()
    with graph.as_default():
        th0 = tf.compat.v1.placeholder(tf.float64, [1])
        th = am.mpi_bcast(th0, comm=SUB)
        loss = am.mpi_sum(tf.reduce_sum((th - target) ** 2) / SUB_SIZE, comm=SUB)
        grad = tf.gradients(loss, th0)[0]
        with am.Session(graph=graph) as sess:
            result = am.mpi_optimize(
                fg=lambda v: sess.run([loss, grad], {th0: v}), x0=np.zeros(1), comm=SUB
            )
    assert abs(result.x[0] - target) < 1e-6
