"""The ops are CPU kernels. Under a GPU build of TensorFlow, inputs and ops
pinned to `/GPU:0` must still work: soft placement runs the MPI ops on the
host (TensorFlow copies GPU tensors over). Pinned here in every mode, with
and without a GPU, so the behaviour stays defined on CPU-only machines."""

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from helpers import RANK, SIZE, run_graph


def program(x):
    """allreduce, bcast from the last rank, rank 0's x sent to the last rank,
    and a rank-weighted sum of them (to differentiate)."""
    total = am.mpi_allreduce(x)
    root_value = am.mpi_bcast(x * 2.0, root=SIZE - 1)
    moved = am.mpi_sendrecv(x, dest=SIZE - 1, src=0) if SIZE > 1 else tf.identity(x)
    loss = tf.reduce_sum(total + root_value * (RANK + 1.0) + moved * (RANK + 2.0))
    return total, root_value, moved, loss


def expected():
    x = lambda r: np.arange(3.0) + 10.0 * r  # noqa: E731
    total = sum(x(r) for r in range(SIZE))
    moved = x(0) if RANK == SIZE - 1 else x(RANK)
    # d/dx_r of sum_k [sum_j x_j + (k+1) 2 x_{P-1} + (k+2) moved_k], moved_{P-1} = x_0
    grad = np.full(3, float(SIZE))
    if RANK == SIZE - 1:
        grad += 2.0 * sum(k + 1.0 for k in range(SIZE))
    if RANK == 0:
        grad += SIZE + 1.0 + (2.0 if SIZE > 1 else 0.0)
    elif RANK != SIZE - 1:
        grad += RANK + 2.0
    return x(RANK), total, 2.0 * x(SIZE - 1), moved, grad


def check(total, root_value, moved, grad):
    _, want_total, want_root, want_moved, want_grad = expected()
    np.testing.assert_allclose(total, want_total)
    np.testing.assert_allclose(root_value, want_root)
    np.testing.assert_allclose(moved, want_moved)
    np.testing.assert_allclose(grad, want_grad)


@pytest.mark.parametrize("mode", ["graph", "eager", "function"])
def test_ops_pinned_to_gpu_run_on_host(mode):
    x0 = expected()[0]
    if mode == "graph":

        def build():
            with tf.device("/GPU:0"):
                x = tf.constant(x0)
                total, root_value, moved, loss = program(x)
                (grad,) = tf.gradients(loss, [x])
            return total, root_value, moved, grad

        check(*run_graph(build))
        return

    # TF's eager context can report soft placement on and still run with it off
    # ("enable_soft_placement=0", tensorflow/tensorflow#48559; seen here with
    # TF 2.20 after the rest of the suite ran): set it as README advises
    tf.config.set_soft_device_placement(True)

    def eager_or_traced():
        with tf.device("/GPU:0"):
            x = tf.constant(x0)
            with tf.GradientTape() as tape:
                tape.watch(x)
                total, root_value, moved, loss = program(x)
            grad = tape.gradient(loss, x)
        return total, root_value, moved, grad

    run = tf.function(eager_or_traced) if mode == "function" else eager_or_traced
    results = run()
    check(*[r.numpy() for r in results])
    if not tf.config.list_physical_devices("GPU"):  # no GPU: everything ran on the host
        assert all(r.device.endswith("CPU:0") for r in results), [r.device for r in results]
