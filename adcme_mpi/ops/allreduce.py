"""mpi_allreduce: sum over ranks on every rank. Adjoint: allreduce of the gradients."""
from tensorflow.python.framework import ops as tf_ops

from .. import runtime
from ._common import no_autograph, backward_comm, data_tensor, in_program_order, lib

OP = "mpi_allreduce"


@no_autograph
def mpi_allreduce(a, *, comm=None, deps=None, name=None):
    """Sum of `a` over the ranks of `comm`, on every rank.

    Gradient: the sum over ranks of the upstream gradients (an allreduce)."""
    pair = runtime.comm_pair(comm, OP, collective=True)
    a = data_tensor(OP, "a", a, pair)
    return in_program_order(lambda: lib.mpi_allreduce(a, comm=pair.forward_handle, name=name), deps)


@tf_ops.RegisterGradient("MPIAllreduce")
def _mpi_allreduce_grad(op, grad):
    comm = backward_comm(op)
    return in_program_order(lambda: lib.mpi_allreduce(grad, comm=comm), adjoint_of=op)
