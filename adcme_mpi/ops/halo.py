"""mpi_halo_exchange: ghost cells from the neighbours on an m x n rank grid.

Rank r is block (r // n, r % n) (row-major). The output is u padded by
`width` cells on each side: side bands hold the neighbours' nearest `width`
rows/columns, corners come from the diagonal neighbours, and ghost cells with
no neighbour (the physical boundary) hold `fill_value`.

Gradient: the exact adjoint. Ghost-cell gradients go back to the rank that
owns those cells and are added to its edge (and corner) cells; the gradient
of `fill_value` is the sum of the boundary ghost cells' gradients.
"""
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

from .. import runtime
from ._common import no_autograph, backward_comm, data_tensor, in_program_order, lib, tag_arg, where

OP = "mpi_halo_exchange"


@no_autograph
def mpi_halo_exchange(u, m, n, fill_value=0.0, tag=0, deps=None, width=1, *, comm=None,
                      name=None):
    """Pad the local block `u` (2-D, at least `width` in each dimension) with
    `width` ghost rows/columns from its neighbours; see the module docstring."""
    pair = runtime.comm_pair(comm, OP, collective=True)
    u = data_tensor(OP, "u", u, pair)
    for arg, value in (("m", m), ("n", n), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where(OP, pair)}: argument '{arg}' must be a positive int, got {value!r}")
    if m * n != pair.size:
        raise ValueError(f"{where(OP, pair)}: m * n = {m} * {n} = {m * n} must equal the "
                         f"communicator size {pair.size}")
    if u.shape.rank is not None and u.shape.rank != 2:
        raise ValueError(f"{where(OP, pair)}: argument 'u' must be 2-D, got shape {u.shape}")
    for axis, dim in enumerate(u.shape.as_list() if u.shape.rank == 2 else []):
        if dim is not None and dim < width:
            raise ValueError(f"{where(OP, pair)}: argument 'u' has shape {u.shape}; each "
                             f"dimension must be at least width = {width}")
    fill = tf.cast(fill_value, u.dtype) if isinstance(fill_value, tf.Tensor) else \
        tf.constant(fill_value, dtype=u.dtype)
    tag = tag_arg(OP, tag, pair)
    return in_program_order(
        lambda: lib.mpi_halo_exchange(u, fill, tag, m=m, n=n, width=width,
                                      comm=pair.forward_handle, name=name), deps)


@tf_ops.RegisterGradient("MPIHaloExchange")
def _mpi_halo_exchange_grad(op, grad):
    comm = backward_comm(op)
    grad_u, grad_fill = in_program_order(
        lambda: lib.mpi_halo_exchange_grad(grad, op.inputs[2], m=op.get_attr("m"),
                                           n=op.get_attr("n"), width=op.get_attr("width"),
                                           comm=comm), adjoint_of=op)
    return grad_u, grad_fill, None
