"""Point-to-point ops and their exact adjoints:

    mpi_send(a, dest)  <->  mpi_recv(template, src)
    mpi_exchange(a, dest, source)  <->  mpi_exchange(g, source, dest)

mpi_send returns its input, so its gradient is the local upstream gradient
PLUS the gradient that `dest` sends back. (ADCME.jl drops the local term; we
keep it: that is the exact adjoint.) mpi_recv's template input gets zeros, and
its upstream gradient is sent back to `src`. Gradient messages travel on a
private communicator, so they never meet forward messages or user tags.

No deadlock in the backward pass, in any mode: gradient ops run in the exact
reverse order of their forward ops (adcme_mpi/ordering.py), and the send that
is the adjoint of a receive is detached (it never waits for its receiver). If
the forward pass completed on every rank, each blocking gradient receive waits
for a send that its peer reaches without waiting on anything later.
"""

import tensorflow as tf

from .. import ordering
from .._loader import ops as lib
from ..op_table import message
from ._adjoint import adjoint, cotangent, differentiable
from ._callsite import CallSite


def _point_to_point(site, kernel, a, peer_arg, peer, tag, deps, name):
    a = site.data("a", a)
    peer = site.peer(peer_arg, peer)
    tag = site.tag(tag)
    return ordering.run_in_order(
        lambda token: kernel(a, peer, tag, token, name=name, **site.comm_attrs), deps
    )[0]


def mpi_send(a, dest, tag=0, *, comm=None, deps=None, name=None):
    """Send `a` to rank `dest` (matched by an mpi_recv there with the same tag);
    returns `a`.

    Gradient: the upstream gradient of the returned tensor plus the gradient
    that `dest` sends back for what it received.

    Example::

        a = tf.ones(3) * am.mpi_rank()
        if am.mpi_rank() == 0:
            a = am.mpi_send(a, 1)   # and rank 1 calls am.mpi_recv(a, 0)
    """
    site = CallSite("mpi_send", comm, collective=False)
    return _point_to_point(site, lib.mpi_send, a, "dest", dest, tag, deps, name)


def mpi_recv(a, src, tag=0, *, comm=None, deps=None, name=None):
    """Receive from rank `src` a tensor of `a`'s shape and dtype (`a` is a
    template and a real graph input: its gradient is zeros).

    Gradient: the upstream gradient is sent back to `src`.

    Example::

        if am.mpi_rank() == 1:
            a = am.mpi_recv(tf.zeros(3), 0)   # rank 0's a
    """
    site = CallSite("mpi_recv", comm, collective=False)
    return _point_to_point(site, lib.mpi_recv, a, "src", src, tag, deps, name)


def mpi_sendrecv(a, dest, src, tag=0, *, comm=None, deps=None, name=None):
    """ADCME's mpi_sendrecv: on rank `src`, send `a` to `dest` and return `a`;
    on rank `dest`, return what `src` sent (shaped like `a`); elsewhere `a`.

    Example::

        a = am.mpi_sendrecv(tf.ones(10) * am.mpi_rank(), 0, 2)   # rank 0 gets rank 2's
    """
    site = CallSite("mpi_sendrecv", comm, collective=False)
    for arg, value in (("dest", dest), ("src", src)):
        if isinstance(value, tf.Tensor):
            raise site.error(
                TypeError,
                f"argument '{arg}' must be a Python int (it decides which ranks send and receive)",
            )
        if not 0 <= int(value) < site.size:
            raise site.error(ValueError, message("out_of_range", arg, value, 0, site.size - 1))
    if int(dest) == int(src):
        raise site.error(ValueError, f"dest == src == {dest}; sending to oneself is an error")
    if site.rank == int(src):
        return mpi_send(a, dest, tag, comm=site.pair.user, deps=deps, name=name)
    if site.rank == int(dest):
        return mpi_recv(a, src, tag, comm=site.pair.user, deps=deps, name=name)
    return tf.identity(a, name=name) if not tf.executing_eagerly() else tf.convert_to_tensor(a)


def mpi_exchange(a, dest, source, tag=0, *, comm=None, deps=None, name=None):
    """MPI_Sendrecv: every rank sends `a` to rank `dest` and receives from
    rank `source` a tensor of `a`'s shape and dtype, which it returns. `None`
    (or -1 in a tensor) means no partner: nothing is sent, or zeros are
    received (a boundary). Each rank's `source` must send to it with the same
    tag and size. Sending to oneself is allowed (a ring of one rank).

    Gradient: the exchange of the upstream gradients in the opposite
    direction (each rank sends its gradient to `source` and receives from
    `dest`); its sends never block.

    A ring shift, and a 1-D decomposition's edge from the left neighbour.

    Example::

        r, n = am.mpi_rank(), am.mpi_size()
        from_left = am.mpi_exchange(x, (r + 1) % n, (r - 1) % n)
        left_edge = am.mpi_exchange(x[-1:], r + 1 if r + 1 < n else None, r - 1 if r else None)
    """
    site = CallSite("mpi_exchange", comm, collective=False)
    a = site.data("a", a)
    partners = [
        site.int_arg(arg, -1 if value is None else value, -1, site.size - 1)
        for arg, value in (("dest", dest), ("source", source))
    ]
    tag = site.tag(tag)
    return ordering.run_in_order(
        lambda token: lib.mpi_exchange(a, *partners, tag, token, name=name, **site.comm_attrs),
        deps,
    )[0]


@tf.RegisterGradient("MPIExchange")
def _mpi_exchange_grad(op, grad, token_grad):
    if not differentiable(op):
        return None, None, None, None, token_grad
    dest, source, tag = op.inputs[1], op.inputs[2], op.inputs[3]
    returned, token = adjoint(
        op,
        token_grad,
        lambda t, **c: lib.mpi_exchange(
            cotangent(op, grad), source, dest, tag, t, detached=True, **c
        ),
    )
    return returned, None, None, None, token


@tf.RegisterGradient("MPISend")
def _mpi_send_grad(op, grad, token_grad):
    if not differentiable(op):
        return None, None, None, token_grad
    dest, tag = op.inputs[1], op.inputs[2]
    grad = cotangent(op, grad)
    returned, token = adjoint(op, token_grad, lambda t, **c: lib.mpi_recv(grad, dest, tag, t, **c))
    return grad + returned, None, None, token


@tf.RegisterGradient("MPIRecv")
def _mpi_recv_grad(op, grad, token_grad):
    if not differentiable(op):
        return None, None, None, token_grad
    src, tag = op.inputs[1], op.inputs[2]
    sent, token = adjoint(
        op,
        token_grad,
        lambda t, **c: lib.mpi_send(cotangent(op, grad), src, tag, t, detached=True, **c),
    )
    # The template's gradient is zero. Adding the send's token (exactly 0.0)
    # makes the send run, and links it to the template: then a second
    # derivative on this rank also runs the send's adjoint, which the peer's
    # second derivative needs.
    zeros = tf.zeros_like(op.inputs[0]) + tf.cast(token, op.inputs[0].dtype)
    return zeros, None, None, token
