"""mpi_send / mpi_recv / mpi_sendrecv: point-to-point with exact adjoints.

mpi_send returns its input, so its gradient is the local upstream gradient
PLUS the gradient that `dest` sends back. (ADCME.jl drops the local term; we
keep it: that is the exact adjoint.) mpi_recv's template input gets zeros, and
its upstream gradient is sent back to `src`. Gradient messages travel on a
private communicator, so they never meet forward messages or user tags.
"""
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

from .. import runtime
from ._common import no_autograph, backward_comm, data_tensor, in_program_order, lib, peer_arg, tag_arg, where


def _point_to_point(op, create, a, peer_name, peer, tag, comm, deps, name):
    pair = runtime.comm_pair(comm, op, collective=False)
    a = data_tensor(op, "a", a, pair)
    peer = peer_arg(op, peer_name, peer, pair)
    tag = tag_arg(op, tag, pair)
    return in_program_order(lambda: create(a, peer, tag, comm=pair.forward_handle, name=name), deps)


@no_autograph
def mpi_send(a, dest, tag=0, *, comm=None, deps=None, name=None):
    """Send `a` to rank `dest` (matched by an mpi_recv there with the same tag);
    returns `a`.

    Gradient: the upstream gradient of the returned tensor plus the gradient
    that `dest` sends back for what it received."""
    return _point_to_point("mpi_send", lib.mpi_send, a, "dest", dest, tag, comm, deps, name)


@no_autograph
def mpi_recv(a, src, tag=0, *, comm=None, deps=None, name=None):
    """Receive from rank `src` a tensor of `a`'s shape and dtype (`a` is a
    template and a real graph input: its gradient is zeros).

    Gradient: the upstream gradient is sent back to `src`."""
    return _point_to_point("mpi_recv", lib.mpi_recv, a, "src", src, tag, comm, deps, name)


@no_autograph
def mpi_sendrecv(a, dest, src, tag=0, *, comm=None, deps=None, name=None):
    """ADCME's mpi_sendrecv: on rank `src`, send `a` to `dest` and return `a`;
    on rank `dest`, return what `src` sent (shaped like `a`); elsewhere `a`."""
    pair = runtime.comm_pair(comm, "mpi_sendrecv", collective=False)
    for arg, value in (("dest", dest), ("src", src)):
        if isinstance(value, tf.Tensor):
            raise TypeError(f"{where('mpi_sendrecv', pair)}: argument '{arg}' must be a Python "
                            "int (it decides which ranks send and receive)")
        if not 0 <= int(value) < pair.size:
            raise ValueError(f"{where('mpi_sendrecv', pair)}: argument '{arg}' = {value} is out "
                             f"of range [0, {pair.size - 1}]")
    if int(dest) == int(src):
        raise ValueError(f"{where('mpi_sendrecv', pair)}: dest == src == {dest}; sending to "
                         "oneself is an error")
    if pair.rank == int(src):
        return mpi_send(a, dest, tag, comm=pair.user, deps=deps, name=name)
    if pair.rank == int(dest):
        return mpi_recv(a, src, tag, comm=pair.user, deps=deps, name=name)
    return tf.identity(a, name=name) if not tf.executing_eagerly() else tf.convert_to_tensor(a)


@tf_ops.RegisterGradient("MPISend")
def _mpi_send_grad(op, grad):
    comm = backward_comm(op)
    dest, tag = op.inputs[1], op.inputs[2]
    returned = in_program_order(lambda: lib.mpi_recv(grad, dest, tag, comm=comm), adjoint_of=op)
    return grad + returned, None, None


@tf_ops.RegisterGradient("MPIRecv")
def _mpi_recv_grad(op, grad):
    comm = backward_comm(op)
    src, tag = op.inputs[1], op.inputs[2]
    sent = in_program_order(lambda: lib.mpi_send(grad, src, tag, comm=comm), adjoint_of=op)
    # The template's gradient is zero; the control edge makes the send run.
    with tf.control_dependencies([sent]):
        zeros = tf.zeros_like(op.inputs[0])
    return zeros, None, None
