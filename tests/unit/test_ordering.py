"""adcme_mpi.ordering in graphs, without mpiexec (one process, size 1):
what the ordering token and the control edges link, forward and backward."""

import gc
import weakref

import numpy as np
import tensorflow as tf

import adcme_mpi as am
from adcme_mpi import op_table, ordering

MPI_TYPES = op_table.TYPES


def token_source(op):
    """The op whose token output `op` takes as its token input."""
    return op.inputs[-1].op


def mpi_ops(graph):
    return [op for op in graph.get_operations() if op.type in MPI_TYPES]


def test_forward_ops_chain_in_creation_order():
    with tf.Graph().as_default() as g:
        x = tf.constant([1.0, 2.0])
        a = am.mpi_bcast(x)
        b = am.mpi_allreduce(x)  # independent data: only the token and control edge order it
        c = am.mpi_sum(x)
    # each takes the previous one's token: a data dependency, in every mode
    # (TensorFlow drops the control edge the chain adds as redundant with it)
    assert token_source(b.op) is a.op and token_source(c.op) is b.op
    assert mpi_ops(g) == [a.op, b.op, c.op]


def test_gradient_ops_run_in_reverse_forward_order():
    with tf.Graph().as_default():
        x = tf.constant([1.0, 2.0])
        a = am.mpi_bcast(x)  # forward 1: its adjoint is an MPISum
        b = am.mpi_allreduce(a * a)  # forward 2: its adjoint is an MPIAllreduce
        (grad,) = tf.gradients(tf.reduce_sum(b), [x])
    adjoint_of_b = [
        op for op in mpi_ops(grad.graph) if op.type == "MPIAllreduce" and op is not b.op
    ]
    adjoint_of_a = [op for op in mpi_ops(grad.graph) if op.type == "MPISum"]
    assert len(adjoint_of_b) == 1 and len(adjoint_of_a) == 1
    # a's adjoint takes its token from b's adjoint: it runs after it
    assert token_source(adjoint_of_a[0]) is adjoint_of_b[0]
    # gradient ops use the forward op's gradient communicator, and vice versa
    assert adjoint_of_a[0].get_attr("comm") == a.op.get_attr("grad_comm")
    assert adjoint_of_a[0].get_attr("grad_comm") == a.op.get_attr("comm")


def test_rank_without_a_local_path_still_builds_the_adjoints():
    """The loss ignores a's result, but the token links a to it: a's adjoint
    (the collective the other ranks run) is built, with a zero cotangent."""
    with tf.Graph().as_default() as g:
        x = tf.constant(2.0)
        am.mpi_bcast(x)
        loss = am.mpi_sum(tf.constant(1.0))
        (grad,) = tf.gradients(loss, [x])
        types = sorted(op.type for op in mpi_ops(g))
        with am.Session() as sess:
            assert sess.run(grad) == 0.0  # one rank: nobody else contributes
    assert types == ["MPIBcast", "MPIBcast", "MPISum", "MPISum"]


def test_sequences_belong_to_their_graph_and_die_with_it():
    def build():
        with tf.Graph().as_default() as g:
            op = am.mpi_allreduce(tf.constant(1.0)).op
            assert token_source(op).type != "MPIAllreduce"  # a fresh token, not another graph's
            return weakref.ref(g)

    graph = build()
    gc.collect()
    assert graph() is None  # the ordering state does not keep graphs alive


def test_while_loop_threads_the_token():
    with tf.Graph().as_default() as g:
        x = tf.constant([1.0, 2.0])
        first = am.mpi_allreduce(x)
        out = ordering.while_loop(
            lambda k, u: k < 3, lambda k, u: (k + 1, am.mpi_allreduce(u)), [tf.constant(0), first]
        )
        after = am.mpi_bcast(out[1])
        with am.Session() as sess:
            np.testing.assert_array_equal(sess.run(after), [1.0, 2.0])
    # the op after the loop takes the loop's final token (the token variable's Exit)
    source = token_source(after.op)
    while source.type == "Identity":
        source = source.inputs[0].op
    assert source.type in ("Exit", "While", "StatelessWhile")  # v1 / v2 control flow
    # inside, the op takes the token loop variable, not the token from before the loop
    body = g if source.type == "Exit" else g._get_function(source.get_attr("body").name).graph
    inside = [op for op in mpi_ops(body) if op is not first.op and op is not after.op]
    assert len(inside) == 1 and token_source(inside[0]) is not first.op


def test_custom_gradient_keeps_block_in_order():
    calls = []

    @ordering.custom_gradient
    def block(x):
        y = am.mpi_allreduce(x)

        def grad(dy):
            calls.append(ordering.current_token())
            return am.mpi_allreduce(dy)

        return y, grad

    with tf.Graph().as_default():
        x = tf.constant([3.0])
        before = am.mpi_bcast(x)
        y = block(before)
        after = am.mpi_sum(y)
        (grad,) = tf.gradients(after, [x])
        with am.Session() as sess:
            assert sess.run(grad)[0] == 1.0
    assert len(calls) == 1
    # the gradient's MPI op starts from the token gradient of the block's output
    assert calls[0].op.type != "MPIAllreduce" or calls[0].op is not y.op


def test_tf_function_chains_tokens():
    @tf.function
    def f(x):
        a = am.mpi_allreduce(x)
        b = am.mpi_bcast(x)
        return a + b

    graph = f.get_concrete_function(tf.TensorSpec([2], tf.float32)).graph
    a_op, b_op = mpi_ops(graph)
    assert token_source(b_op) is a_op
    np.testing.assert_array_equal(f(tf.constant([1.0, 2.0])).numpy(), [2.0, 4.0])
