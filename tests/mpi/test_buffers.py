"""Large outputs and whose buffer they are in (the op table's `buffer`
column): an op whose row says "input" writes its output into its input's
buffer when TensorFlow hands it over; the others, and those when it does
not, into a new one. Every op with a data output runs here several times on
inputs of 320 KB a rank (beyond MPI's eager limits: the large-message
protocols), and

- each run's output is right (against NumPy, built from every rank's
  inputs), the zeros of non-root ranks included, which mpi_sum and
  mpi_gather write while their transfer is under way;
- an output still held (an eager tensor, a variable assigned from it in
  graph mode) keeps its values while the same kernel runs again;
- a tf.function whose input is its own (so TensorFlow can forward it)
  gives the same numbers as one whose input is held.
"""

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from adcme_mpi import op_table
from helpers import RANK, SIZE, assert_close, even_odd_ring, every_rank, rng

N = 40_000  # float64 elements per rank: 320 KB
ROOT = SIZE - 1
NEXT, PREV = (RANK + 1) % SIZE, (RANK - 1) % SIZE


def halo_reference(everyone):
    """Rank RANK's padded block on a 1 x SIZE grid, width 1, zero fill."""
    u = everyone[RANK]
    padded = np.zeros((u.shape[0] + 2, u.shape[1] + 2))
    padded[1:-1, 1:-1] = u
    if RANK > 0:
        padded[1:-1, 0] = everyone[RANK - 1][:, -1]
    if RANK < SIZE - 1:
        padded[1:-1, -1] = everyone[RANK + 1][:, 0]
    return padded


def halo_adjoint_reference(everyone):
    """The gradient of the padded blocks' sum weighted by every rank's
    cotangent (the halo exchange's adjoint) on a 1 x SIZE grid, width 1."""
    grad = everyone[RANK][1:-1, 1:-1].copy()
    if RANK > 0:
        grad[:, 0] += everyone[RANK - 1][1:-1, -1]
    if RANK < SIZE - 1:
        grad[:, -1] += everyone[RANK + 1][1:-1, 0]
    return grad


HALO_BLOCK = (N // 200, 200)


def halo_adjoint(cotangent):
    u = tf.ones(HALO_BLOCK, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(u)
        padded = am.mpi_halo_exchange(u, 1, SIZE)
    return tape.gradient(padded, u, output_gradients=cotangent)


def ring_received(a):
    """mpi_recv's output from the previous rank (the send runs too in graph mode)."""
    sent, received = even_odd_ring(a)
    with tf.control_dependencies([sent]):
        return tf.identity(received)


# op type: (input shape, what runs it, NumPy reference from every rank's inputs)
OPS = {
    "MPIBcast": ((N,), lambda a: am.mpi_bcast(a, ROOT), lambda e: e[ROOT]),
    "MPISum": (
        (N,),
        lambda a: am.mpi_sum(a, ROOT),
        lambda e: np.sum(e, 0) if RANK == ROOT else np.zeros(N),
    ),
    "MPIAllreduce": ((N,), am.mpi_allreduce, lambda e: np.sum(e, 0)),
    "MPIGather": (
        (N,),
        lambda a: am.mpi_gather(a, ROOT),
        lambda e: np.concatenate(e) if RANK == ROOT else np.zeros(N * SIZE),
    ),
    "MPIScatter": (
        (N * SIZE,),
        lambda a: am.mpi_scatter(a, ROOT),
        lambda e: e[ROOT][RANK * N : (RANK + 1) * N],
    ),
    "MPIAllgather": ((N,), am.mpi_allgather, np.concatenate),
    "MPIReduceScatter": (
        (N * SIZE,),
        am.mpi_reduce_scatter,
        lambda e: np.sum(e, 0)[RANK * N : (RANK + 1) * N],
    ),
    "MPIAlltoall": (
        (N * SIZE,),
        am.mpi_alltoall,
        lambda e: np.concatenate([x[RANK * N : (RANK + 1) * N] for x in e]),
    ),
    "MPIScan": ((N,), am.mpi_scan, lambda e: np.sum(e[: RANK + 1], 0)),
    "MPIExchange": ((N,), lambda a: am.mpi_exchange(a, NEXT, PREV), lambda e: e[PREV]),
    "MPIRecv": ((N,), ring_received, lambda e: e[PREV]),
    "MPIHaloExchange": (
        HALO_BLOCK,
        lambda a: am.mpi_halo_exchange(a, 1, SIZE),
        halo_reference,
    ),
    "MPIHaloExchangeGrad": (
        (HALO_BLOCK[0] + 2, HALO_BLOCK[1] + 2),
        halo_adjoint,
        halo_adjoint_reference,
    ),
}


def case(op):
    """OPS[op], or a skip where the op cannot run at this size."""
    if op == "MPIRecv" and SIZE == 1:
        pytest.skip("mpi_recv needs another rank to send (sending to oneself is an error)")
    return OPS[op]


def inputs(shape, runs, salt):
    """`runs` different inputs on this rank, and every rank's, per run."""
    g = rng(salt)
    mine = [g.standard_normal(shape) for _ in range(runs)]
    return mine, [every_rank(x) for x in mine]


@pytest.mark.parametrize("op", sorted(OPS))
def test_eager_results_held_keep_their_values(op):
    """The same eager kernel runs three times while all three results are
    held; then each is checked: a reused buffer would hold the last run's."""
    shape, fn, reference = case(op)
    mine, everyone = inputs(shape, 3, 1)
    held = [fn(tf.constant(x)) for x in mine]
    for k, (out, e) in enumerate(zip(held, everyone)):
        assert_close(out.numpy(), reference(e), np.float64, f"{op}, run {k} of 3")


@pytest.mark.parametrize("op", sorted(OPS))
def test_inputs_only_the_op_reads_give_the_same_results(op):
    """Inside a tf.function each op's input is a new tensor that nothing
    else reads, so an "input" op may write into it: the same numbers as
    from inputs that are held, run after run."""
    shape, fn, reference = case(op)
    mine, everyone = inputs(shape, 3, 2)
    compiled = tf.function(lambda x: fn(x * 1.0))  # x * 1.0: a buffer the op may take
    # every run first, then the checks: a rank that failed a check and
    # stopped would leave the others waiting in the next run's collective
    outs = [compiled(tf.constant(x)).numpy() for x in mine]
    for k, (out, e) in enumerate(zip(outs, everyone)):
        assert_close(out, reference(e), np.float64, f"{op}, run {k}")


@pytest.mark.parametrize("op", sorted(OPS))
def test_graph_variable_assigned_from_a_result_keeps_it(op):
    """Graph mode: run 1 assigns the op's result to a variable (which may
    take its buffer), later runs only compute it; the variable keeps run 1's."""
    shape, fn, reference = case(op)
    mine, everyone = inputs(shape, 3, 3)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float64, shape)
        y = fn(x)
        v = tf.Variable(tf.zeros(reference(everyone[0]).shape, tf.float64))
        assign = v.assign(y)
        with am.Session(graph=graph) as sess:
            sess.run(v.initializer)
            sess.run(assign.op, {x: mine[0]})
            later = [sess.run(y, {x: m}) for m in mine[1:]]
            kept = sess.run(v.read_value())
    assert_close(kept, reference(everyone[0]), np.float64, f"{op}: the variable after later runs")
    for k, out in enumerate(later, 1):
        assert_close(out, reference(everyone[k]), np.float64, f"{op}, graph run {k}")


def test_every_op_with_a_data_output_is_tested():
    """This file's cases are the op table's ops with a data output: all but
    the sends (which return their input), the sparse ops (tests/mpi/test_sparse.py)
    and the non-blocking ones (their buffer is the request's)."""
    left_out = {"MPISend", "MPIIsend", "MPIIrecv", "MPIWait"}
    expected = {o.type for o in op_table.OPS if not o.needs_petsc} - left_out
    assert expected == set(OPS)
    assert {o.type for o in op_table.OPS if o.buffer == "input"} <= set(OPS)
