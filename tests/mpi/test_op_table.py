"""The op table's backward types (adcme_mpi/op_table.py) are what the
gradients make: starting from the self-test's cases (one per public op),
every MPI op in the graph, forward or made by a gradient, is differentiated
once per type, and the MPI ops that makes are exactly its row's
backward_types. Graphs are only built, not run. The point-to-point ops are
made on ranks 0 and 1 only, so the types seen are agreed across ranks.
MPIWait's gradient makes MPIIrecv for a send's wait and MPIIsend for a
receive's: both kinds are differentiated."""

import numpy as np
import tensorflow as tf

import adcme_mpi as am
from adcme_mpi import _selftest, op_table
from helpers import COMM, SIZE


def mpi_ops(graph):
    return [op for op in graph.get_operations() if op.type in op_table.TYPES]


def variant(op):
    """An op type's kinds whose gradients make different ops: MPIWait's
    `send` (a send's wait posts a receive, a receive's wait a send)."""
    return (op.type, op.get_attr("send") if op.type == "MPIWait" else None)


def differentiate_each_type(graph, made, done):
    """Differentiate the first op of each MPI type (and variant) in `graph`
    (and in what that makes) that is not in `done` yet; made[type] = the MPI
    op types its gradients made."""
    todo = mpi_ops(graph)
    while todo:
        op = todo.pop(0)
        if variant(op) in done or not op.outputs[0].dtype.is_floating:
            continue
        done.add(variant(op))
        before = set(graph.get_operations())
        inputs = [t for t in op.inputs if t.dtype.is_floating]
        tf.gradients(op.outputs[0], inputs, stop_gradients=inputs)  # op's gradient only
        new = [o for o in mpi_ops(graph) if o not in before]
        made[op.type] = sorted(set(made.get(op.type, [])) | {o.type for o in new})
        todo += new


def test_each_gradient_makes_its_rows_backward_types():
    petsc = True
    try:
        am.petsc_info()
    except am.PETScUnavailableError:
        petsc = False
    made, done = {}, set()
    for key in op_table.selftest_cases():
        if not petsc and any(row.needs_petsc for row in op_table.OPS if row.case == key):
            continue
        shape, op, _ = _selftest.CASES[key]
        with tf.Graph().as_default() as graph:
            op(tf.constant(np.ones(shape)))
            differentiate_each_type(graph, made, done)
    for op_type, types in made.items():
        expected = sorted(set(op_table.by_type(op_type).backward_types))
        assert types == expected, f"the gradient of {op_type} made {types}, its row says {expected}"
    seen = set().union(*COMM.allgather(set(made)))
    expected = {row.type for row in op_table.OPS if petsc or not row.needs_petsc}
    if SIZE == 1:  # no send or receive to oneself
        expected -= {"MPISend", "MPIRecv", "MPIIsend", "MPIIrecv", "MPIWait"}
    assert seen == expected
