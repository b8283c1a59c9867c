"""mpi_bcast: root's tensor on every rank. Adjoint: upstream gradients summed on root."""
from tensorflow.python.framework import ops as tf_ops

from .. import runtime
from ._common import no_autograph, backward_comm, data_tensor, in_program_order, lib, rank_arg

OP = "mpi_bcast"


@no_autograph
def mpi_bcast(a, root=0, *, comm=None, deps=None, name=None):
    """`root`'s `a` on every rank of `comm` (shape and dtype must agree everywhere).

    Gradient: root gets the sum over ranks of the upstream gradients; others zeros."""
    pair = runtime.comm_pair(comm, OP, collective=True)
    a = data_tensor(OP, "a", a, pair)
    root = rank_arg(OP, "root", root, pair)
    return in_program_order(lambda: lib.mpi_bcast(a, root, comm=pair.forward_handle, name=name), deps)


@tf_ops.RegisterGradient("MPIBcast")
def _mpi_bcast_grad(op, grad):
    comm = backward_comm(op)
    root = op.inputs[1]
    return in_program_order(lambda: lib.mpi_sum(grad, root, comm=comm), adjoint_of=op), None
