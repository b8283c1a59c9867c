"""mpi_gather / mpi_scatter: concatenate on root along axis 0 / split root's
tensor along axis 0. Each is the other's adjoint."""
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

from .. import runtime
from ._common import no_autograph, backward_comm, data_tensor, in_program_order, lib, rank_arg


@no_autograph
def mpi_gather(a, root=0, *, comm=None, deps=None, name=None):
    """On `root`: the ranks' `a` concatenated along axis 0 in rank order (a
    scalar gathers into a vector of length size); elsewhere zeros of that shape.

    Gradient: each rank gets its own slice of root's upstream gradient (a scatter)."""
    pair = runtime.comm_pair(comm, "mpi_gather", collective=True)
    a = data_tensor("mpi_gather", "a", a, pair)
    root = rank_arg("mpi_gather", "root", root, pair)
    return in_program_order(lambda: lib.mpi_gather(a, root, comm=pair.forward_handle, name=name), deps)


@no_autograph
def mpi_scatter(a, root=0, *, comm=None, deps=None, name=None):
    """Rank r gets the r-th of `size` equal slices along axis 0 of `root`'s `a`
    (a's first dimension must be divisible by the size; non-root ranks pass a
    tensor of the same shape, whose values are ignored).

    Gradient: root gets the ranks' upstream gradients concatenated; others zeros."""
    pair = runtime.comm_pair(comm, "mpi_scatter", collective=True)
    a = data_tensor("mpi_scatter", "a", a, pair)
    root = rank_arg("mpi_scatter", "root", root, pair)
    return in_program_order(lambda: lib.mpi_scatter(a, root, comm=pair.forward_handle, name=name), deps)


@tf_ops.RegisterGradient("MPIGather")
def _mpi_gather_grad(op, grad):
    comm = backward_comm(op)
    root = op.inputs[1]
    part = in_program_order(lambda: lib.mpi_scatter(grad, root, comm=comm), adjoint_of=op)
    return tf.reshape(part, tf.shape(op.inputs[0])), None


@tf_ops.RegisterGradient("MPIScatter")
def _mpi_scatter_grad(op, grad):
    comm = backward_comm(op)
    root = op.inputs[1]
    return in_program_order(lambda: lib.mpi_gather(grad, root, comm=comm), adjoint_of=op), None
