"""Second derivatives through every op and every gradient op: the
Hessian-vector product H v (the gradient of <grad f, v>) against central
differences of the gradient, (grad f(x + eps v) - grad f(x - eps v)) / 2 eps,
in graph mode, eagerly, in tf.function and in tf.function(jit_compile=True)
(where the ops lower to XLA; the others must refuse there). f is cubic in each op's output,
so H depends on x and both the op and its adjoint are differentiated again."""

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
import helpers
from helpers import even_odd_ring, near_square_grid as grid, COMM, RANK, SIZE, random, run_graph
from helpers import assert_mpi_ops_in_one_chain
from helpers import count_table_case, jit_refusal, sparse_matrix, table_case, table_cases

MODES = ["graph", "eager", "function", "jit"]


def ring(t):
    if SIZE == 1:
        return t * 1.0
    sent, got = even_odd_ring(t)
    return sent * got + got


def nonblocking_ring(t):
    """Posts to the right and from the left; waits in the opposite order."""
    if SIZE == 1:
        return t * 1.0
    hs = am.mpi_isend(t, (RANK + 1) % SIZE, tag=4)
    hr = am.mpi_irecv(t, (RANK - 1) % SIZE, tag=4)
    sent = am.mpi_wait(hs)
    return am.mpi_wait(hr) * sent + sent


def stripe():
    lo, hi = helpers.sparse_rows()
    return (hi - lo + 1,)


ALLTOALL_ROWS = SIZE * (SIZE + 1) // 2


def alltoall_uneven(t):
    """Rank r sends (k - r) % SIZE + 1 slices to rank k (1 to itself, 2 to the
    next rank, ...), so every rank sends and receives ALLTOALL_ROWS slices."""
    splits = [(k - RANK) % SIZE + 1 for k in range(SIZE)]
    return tf.ensure_shape(am.mpi_alltoall(t, splits), (ALLTOALL_ROWS, 2))


# public op(s) of the op table -> {case: (input shape, the op)}; every public
# op has a case (table_cases: a missing one fails)
CASES = {
    "mpi_sum": {"sum": ((3, 2), lambda t: am.mpi_sum(t, SIZE - 1))},
    "mpi_allreduce": {
        "allreduce": ((4,), am.mpi_allreduce),
        "allreduce_prod": ((4,), lambda t: am.mpi_allreduce(t, op="prod")),
    },
    "mpi_bcast": {"bcast": ((2, 2), lambda t: am.mpi_bcast(t, SIZE - 1))},
    "mpi_gather": {"gather": ((2, 3), lambda t: am.mpi_gather(t, 0))},
    "mpi_scatter": {"scatter": ((SIZE, 2), lambda t: am.mpi_scatter(t, 0))},
    # (equal blocks here, so the gathered length is known: the objective needs it)
    "mpi_allgather": {
        "allgather": ((2, 3), lambda t: tf.ensure_shape(am.mpi_allgather(t), (2 * SIZE, 3)))
    },
    "mpi_reduce_scatter": {"reduce_scatter": ((2 * SIZE, 3), am.mpi_reduce_scatter)},
    "mpi_scan": {
        "scan": ((3, 2), am.mpi_scan),
        "scan_exclusive": ((4,), lambda t: am.mpi_scan(t, exclusive=True)),
    },
    "mpi_alltoall": {
        "alltoall": ((2 * SIZE, 3), am.mpi_alltoall),
        "alltoall_splits": ((ALLTOALL_ROWS, 2), alltoall_uneven),
    },
    "mpi_halo_exchange": {
        "halo": ((3, 4), lambda t: am.mpi_halo_exchange(t, *grid(), fill_value=0.25)),
        "halo_fill": (
            (3, 4),
            lambda t: am.mpi_halo_exchange(t, *grid(), fill_value=tf.reduce_sum(t)),
        ),
        "halo2": ((3, 4), lambda t: am.mpi_halo_exchange(t, *grid(), width=2)),
    },
    ("mpi_send", "mpi_recv"): {"send_recv_ring": ((5,), ring)},
    "mpi_exchange": {
        "exchange_ring": ((5,), lambda t: am.mpi_exchange(t, (RANK + 1) % SIZE, (RANK - 1) % SIZE))
    },
    ("mpi_isend", "mpi_irecv", "mpi_wait"): {
        "isend_irecv_wait": ((5,), lambda t: nonblocking_ring(t))
    },
    "mpi_sendrecv": {
        "sendrecv": ((5,), lambda t: am.mpi_sendrecv(t, 0, SIZE - 1) if SIZE > 1 else t * 1.0)
    },
    "mpi_sparse_matvec": {"sparse_matvec": (stripe(), lambda t: sparse_matrix() @ t)},
    "mpi_sparse_solve": {
        "sparse_solve": (stripe(), lambda t: sparse_matrix().solve(t, solver="CG", rtol=1e-14))
    },
}


def objective(op, x):
    y = op(x)
    c = tf.constant(random(y.shape, np.float64, 301))  # different weights on each rank
    return tf.reduce_sum(c * y**3)


def gradient_and_hvp(mode, op, x, v):
    if mode == "graph":

        def build():
            xt, vt = tf.constant(x), tf.constant(v)
            g = tf.gradients(objective(op, xt), xt)[0]
            hv = tf.gradients(tf.reduce_sum(g * vt), xt)[0]
            # (auto-clustering compiles v1 graphs too: data, not control edges)
            assert_mpi_ops_in_one_chain(tf.compat.v1.get_default_graph())
            return g, hv

        return run_graph(build)

    def both(xt, vt):
        with tf.GradientTape() as outer:
            outer.watch(xt)
            with tf.GradientTape() as inner:
                inner.watch(xt)
                f = objective(op, xt)
            g = inner.gradient(f, xt)
            gv = tf.reduce_sum(g * vt)
        return g, outer.gradient(gv, xt)

    x, v = tf.constant(x), tf.constant(v)
    if mode in ("function", "jit"):
        both = tf.function(both, jit_compile=mode == "jit")
        # the forward ops, their adjoints, then the adjoints' and the forward
        # ops' second-order adjoints: one chain, by data alone
        assert_mpi_ops_in_one_chain(both.get_concrete_function(x, v).graph)
    g, hv = both(x, v)
    return g.numpy(), hv.numpy()


def global_norm(a):
    return np.sqrt(COMM.allreduce(float(np.sum(np.asarray(a) ** 2))))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(table_cases("second_order", CASES)))
def test_hessian_vector_product_matches_differences(name, mode, request):
    shape, op = table_case("second_order", CASES, name)
    count_table_case(request, "hvp", CASES, name)
    x, v = random(shape, np.float64, 302), random(shape, np.float64, 303)
    refusal = jit_refusal(CASES, name) if mode == "jit" else None
    if refusal is not None:
        with pytest.raises(am.XLACompilationError, match=refusal):
            gradient_and_hvp(mode, op, x, v)
        return
    _, hv = gradient_and_hvp(mode, op, x, v)
    eps = 1e-5
    g_plus, _ = gradient_and_hvp(mode, op, x + eps * v, v)
    g_minus, _ = gradient_and_hvp(mode, op, x - eps * v, v)
    fd = (g_plus - g_minus) / (2 * eps)
    error = global_norm(hv - fd) / max(global_norm(fd), 1e-12)
    if RANK == 0:
        print(f"HVP {name} {mode}: relative error {error:.1e}")
    assert error < 1e-7, f"{name} {mode}: H v differs from differences by {error:.2e} (relative)"
