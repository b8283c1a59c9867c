"""mpi_sum: reduce to root. Adjoint: root's upstream gradient broadcast to all."""
from tensorflow.python.framework import ops as tf_ops

from .. import runtime
from ._common import no_autograph, backward_comm, data_tensor, in_program_order, lib, rank_arg

OP = "mpi_sum"


@no_autograph
def mpi_sum(a, root=0, *, comm=None, deps=None, name=None):
    """Sum of `a` over the ranks of `comm` on `root`; zeros of a's shape elsewhere.

    Gradient: every rank gets root's upstream gradient (a broadcast)."""
    pair = runtime.comm_pair(comm, OP, collective=True)
    a = data_tensor(OP, "a", a, pair)
    root = rank_arg(OP, "root", root, pair)
    return in_program_order(lambda: lib.mpi_sum(a, root, comm=pair.forward_handle, name=name), deps)


@tf_ops.RegisterGradient("MPISum")
def _mpi_sum_grad(op, grad):
    comm = backward_comm(op)
    root = op.inputs[1]
    return in_program_order(lambda: lib.mpi_bcast(grad, root, comm=comm), adjoint_of=op), None
