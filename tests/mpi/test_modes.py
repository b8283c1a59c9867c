"""Every op and gradient in graph mode, eagerly (GradientTape), inside
tf.function and inside tf.function(jit_compile=True) (XLA: the op lowers
to a custom call that runs its kernel): the four must agree exactly. The
ops that do not lower (the sparse ops, op_table's `xla` column) must refuse
under jit_compile=True with XLACompilationError, naming why."""

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
import helpers
from helpers import near_square_grid as grid, RANK, SIZE, random, run_graph
from helpers import assert_mpi_ops_in_one_chain, jit_refusal, sparse_matrix, table_case, table_cases

MODES = ["graph", "eager", "function", "jit"]


def p2p(t):
    if SIZE == 1:
        return tf.identity(t)
    if RANK == 0:
        return am.mpi_send(t, SIZE - 1, tag=2)
    if RANK == SIZE - 1:
        return am.mpi_recv(t, 0, tag=2)
    return tf.identity(t)


def nonblocking_ring(t):
    """Posts to the right and from the left, then the waits. (Two terms, in
    the value and in the gradient: a sum that no mode can reorder.)"""
    if SIZE == 1:
        return tf.identity(t)
    hs = am.mpi_isend(t, (RANK + 1) % SIZE, tag=4)
    hr = am.mpi_irecv(t, (RANK - 1) % SIZE, tag=4)
    return am.mpi_wait(hr) + 0.5 * am.mpi_wait(hs)


def stripe():
    lo, hi = helpers.sparse_rows()
    return (hi - lo + 1,)


def solve(t):
    A = sparse_matrix(t.dtype)
    return A.solve(t, solver="CG", rtol=1e-5 if t.dtype == tf.float32 else 1e-12)


ALLTOALL_ROWS = SIZE * (SIZE + 1) // 2


def alltoall_uneven(t):
    """Rank r sends (k - r) % SIZE + 1 slices to rank k (1 to itself, 2 to the
    next rank, ...), so every rank sends and receives ALLTOALL_ROWS slices."""
    splits = [(k - RANK) % SIZE + 1 for k in range(SIZE)]
    return tf.ensure_shape(am.mpi_alltoall(t, splits), (ALLTOALL_ROWS, 2))


# public op(s) of the op table -> {case: (input shape, output shape, the op)};
# every public op has a case (table_cases: a missing one fails)
CASES = {
    "mpi_sum": {
        "sum": ((3, 2), (3, 2), lambda t: am.mpi_sum(t, SIZE - 1)),
        "sum_min": ((3,), (3,), lambda t: am.mpi_sum(t, SIZE - 1, op="min")),
    },
    "mpi_allreduce": {
        "allreduce": ((4,), (4,), am.mpi_allreduce),
        "allreduce_max": ((4,), (4,), lambda t: am.mpi_allreduce(t, op="max")),
        "allreduce_prod": ((4,), (4,), lambda t: am.mpi_allreduce(t, op="prod")),
    },
    "mpi_bcast": {"bcast": ((2, 2), (2, 2), lambda t: am.mpi_bcast(t, SIZE - 1))},
    "mpi_gather": {"gather": ((2, 3), (2 * SIZE, 3), lambda t: am.mpi_gather(t, 0))},
    "mpi_scatter": {"scatter": ((SIZE, 2), (1, 2), lambda t: am.mpi_scatter(t, 0))},
    "mpi_allgather": {"allgather": ((2, 3), (2 * SIZE, 3), am.mpi_allgather)},
    "mpi_reduce_scatter": {
        "reduce_scatter": ((2 * SIZE, 3), (2, 3), am.mpi_reduce_scatter),
        "reduce_scatter_mean": ((SIZE, 2), (1, 2), lambda t: am.mpi_reduce_scatter(t, "mean")),
    },
    "mpi_scan": {
        "scan": ((3, 2), (3, 2), am.mpi_scan),
        "scan_exclusive": ((4,), (4,), lambda t: am.mpi_scan(t, exclusive=True)),
    },
    "mpi_alltoall": {
        "alltoall": ((2 * SIZE, 3), (2 * SIZE, 3), am.mpi_alltoall),
        "alltoall_splits": ((ALLTOALL_ROWS, 2), (ALLTOALL_ROWS, 2), alltoall_uneven),
    },
    "mpi_halo_exchange": {
        "halo": ((3, 4), (5, 6), lambda t: am.mpi_halo_exchange(t, *grid(), fill_value=0.25)),
        "halo2": ((3, 4), (7, 8), lambda t: am.mpi_halo_exchange(t, *grid(), width=2)),
    },
    ("mpi_send", "mpi_recv"): {"send_recv": ((5,), (5,), p2p)},
    "mpi_exchange": {
        "exchange_ring": (
            (5,),
            (5,),
            lambda t: am.mpi_exchange(t, (RANK + 1) % SIZE, (RANK - 1) % SIZE),
        ),
        "exchange_line": (
            (2, 2),
            (2, 2),
            lambda t: am.mpi_exchange(
                t, RANK + 1 if RANK + 1 < SIZE else None, RANK - 1 if RANK else None
            ),
        ),
    },
    ("mpi_isend", "mpi_irecv", "mpi_wait"): {
        "isend_irecv_wait": ((5,), (5,), lambda t: nonblocking_ring(t)),
    },
    "mpi_sendrecv": {
        "sendrecv": ((5,), (5,), lambda t: am.mpi_sendrecv(t, 0, SIZE - 1) if SIZE > 1 else t)
    },
    "mpi_sparse_matvec": {
        "sparse_matvec": (stripe(), stripe(), lambda t: sparse_matrix(t.dtype) @ t)
    },
    "mpi_sparse_solve": {"sparse_solve": (stripe(), stripe(), solve)},
}


def run_mode(mode, op, x, w):
    if mode == "graph":

        def build():
            xt = tf.constant(x)
            y = op(xt)
            g = tf.gradients(y, xt, grad_ys=tf.constant(w))[0]
            assert_mpi_ops_in_one_chain(tf.compat.v1.get_default_graph())
            return y, g

        return run_graph(build)

    def forward_backward(xt):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = op(xt)
        return y, tape.gradient(y, xt, output_gradients=tf.constant(w))

    x = tf.constant(x)
    if mode in ("function", "jit"):
        forward_backward = tf.function(forward_backward, jit_compile=mode == "jit")
        assert_mpi_ops_in_one_chain(forward_backward.get_concrete_function(x).graph)
    y, g = forward_backward(x)
    return y.numpy(), g.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(table_cases("modes", CASES)))
def test_modes_agree(name, dtype):
    in_shape, out_shape, op = table_case("modes", CASES, name)
    x, w = random(in_shape, dtype, 200), random(out_shape, dtype, 201)
    refusal = jit_refusal(CASES, name)
    modes = MODES if refusal is None else [mode for mode in MODES if mode != "jit"]
    results = {mode: run_mode(mode, op, x, w) for mode in modes}
    y_graph, g_graph = results["graph"]
    assert y_graph.shape == out_shape and g_graph.shape == in_shape
    for mode in modes[1:]:
        y, g = results[mode]
        np.testing.assert_array_equal(y, y_graph, err_msg=f"{mode} forward")
        np.testing.assert_array_equal(g, g_graph, err_msg=f"{mode} gradient")
    if refusal is not None:
        with pytest.raises(am.XLACompilationError, match=refusal):
            run_mode("jit", op, x, w)
