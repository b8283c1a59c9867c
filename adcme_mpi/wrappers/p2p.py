"""Point-to-point ops and their exact adjoints:

    mpi_send(a, dest)  <->  mpi_recv(template, src)
    mpi_exchange(a, dest, source)  <->  mpi_exchange(g, source, dest)
    mpi_isend / mpi_irecv (post)  <->  mpi_wait (complete), and back

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

import weakref

import tensorflow as tf

from .. import ordering
from .._loader import ops as lib
from ..op_table import message
from ._adjoint import DIFFERENTIABLE, _is_filler, adjoint, cotangent, differentiable, where
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


# ---- non-blocking: mpi_isend / mpi_irecv post, mpi_wait completes ----
#
# A handle is a float64 scalar tensor holding the id of a request in the
# kernels' table (ops/p2p.cc). What mpi_wait needs besides the id (the
# post's tensor for its dtype and shape, peer, tag, communicators and kind)
# is remembered here for the handle tensor (graph, eager and tf.function
# alike), or read from the handle's producing op in a graph.
#
# Gradients, the exact adjoints in reverse order: the gradient of mpi_wait
# posts the adjoint message (a receive for a send, a send for a receive)
# and returns its handle as the gradient of `handle`; the gradient of the
# post receives that handle and waits on it. So in the backward pass the
# adjoint posts come first and the adjoint waits later: posts never block,
# and reverse order is deadlock-free whenever the forward pass was.


class _Posted:
    """What mpi_wait needs to know about the post of a handle."""

    def __init__(self, send, a, peer, tag, comm_attrs):
        self.send, self.a, self.peer, self.tag, self.comm_attrs = send, a, peer, tag, comm_attrs


_posted = {}  # id(handle tensor) -> (weak reference to it, _Posted)


def _remember(handle, posted):
    key = id(handle)
    _posted[key] = (weakref.ref(handle, lambda _: _posted.pop(key, None)), posted)


def _posted_of(handle):
    entry = _posted.get(id(handle))
    if entry is not None and entry[0]() is handle:
        return entry[1]
    op = getattr(handle, "op", None) if not tf.executing_eagerly() else None
    while op is not None and op.type == "Identity":
        op = op.inputs[0].op
    if op is not None and op.type in ("MPIIsend", "MPIIrecv"):
        comm_attrs = {"comm": op.get_attr("comm"), "grad_comm": op.get_attr("grad_comm")}
        return _Posted(op.type == "MPIIsend", *op.inputs[:3], comm_attrs)
    return None


def _post(op, kernel, send, a, peer_arg, peer, tag, comm, deps, name):
    site = CallSite(op, comm, collective=False)
    a = site.data("a", a)
    peer = site.peer(peer_arg, peer)
    tag = site.tag(tag)
    handle = ordering.run_in_order(
        lambda token: kernel(a, peer, tag, token, name=name, **site.comm_attrs), deps
    )[0]
    _remember(handle, _Posted(send, a, peer, tag, site.comm_attrs))
    return handle


def mpi_isend(a, dest, tag=0, *, comm=None, deps=None, name=None):
    """Post a send of `a` to rank `dest` (matched by an mpi_recv or mpi_irecv
    there with the same tag) and return its handle at once: a float64 scalar
    tensor. `mpi_wait(handle)` completes the send and returns `a`. Every
    handle must be waited on exactly once (one never waited on is an error
    at the end of the program). Computation placed between the post and the
    wait overlaps the message; in a graph, make it depend on the handle
    (`tf.control_dependencies([h])`) to be sure it runs after the post.

    Gradient: as mpi_send's (the upstream gradient of the waited tensor plus
    the gradient that `dest` sends back); the wait's gradient posts the
    receive of it, the post's gradient waits on it.

    Example::

        h = am.mpi_isend(edge, 1)          # on rank 0; rank 1 posts am.mpi_irecv
        interior = update(u)               # overlaps the message
        edge = am.mpi_wait(h)              # returns edge
    """
    return _post("mpi_isend", lib.mpi_isend, True, a, "dest", dest, tag, comm, deps, name)


def mpi_irecv(a, src, tag=0, *, comm=None, deps=None, name=None):
    """Post a receive from rank `src` of a tensor of `a`'s shape and dtype
    (`a` is a template, as for mpi_recv; its gradient is zeros) and return
    its handle at once: a float64 scalar tensor. `mpi_wait(handle)` returns
    what was received. The size is checked when the message arrives, at the
    wait (the post cannot look at a message that has not come).

    Gradient: the upstream gradient of the waited tensor is sent back to
    `src` (the wait's gradient posts that send, the post's gradient waits on it).

    Example::

        h = am.mpi_irecv(tf.zeros(3), 0)   # on rank 1; rank 0 posts am.mpi_isend
        x = am.mpi_wait(h)                 # rank 0's tensor
    """
    return _post("mpi_irecv", lib.mpi_irecv, False, a, "src", src, tag, comm, deps, name)


def mpi_wait(handle, *, deps=None, name=None):
    """Complete the request of `handle` (from mpi_isend or mpi_irecv): for a
    send, return the tensor sent; for a receive, what was received. Waits in
    program order, under the watchdog (ADCME_MPI_TIMEOUT). Waiting twice on
    one handle is an error; a handle from a tf.function cannot be waited on
    outside it.

    Gradient: posts the adjoint message (see mpi_isend, mpi_irecv); the
    handle's gradient is that message's handle.

    Example::

        h = am.mpi_irecv(tf.zeros(3), 0)
        x = am.mpi_wait(h)
    """
    posted = _posted_of(handle)
    if posted is None:
        site = CallSite("mpi_wait", None, collective=False)
        raise site.error(
            TypeError,
            "argument 'handle' must be a handle returned by mpi_isend or mpi_irecv "
            f"(in the same graph or function); got {handle!r}",
        )
    return ordering.run_in_order(
        lambda token: lib.mpi_wait(
            handle,
            posted.a,
            posted.peer,
            posted.tag,
            token,
            send=posted.send,
            name=name,
            **posted.comm_attrs,
        ),
        deps,
    )[0]


def _never_posted(handle_grad):
    """No adjoint message was posted for this handle (the wait's gradient did
    not run: nothing after the wait was differentiated on this rank)."""
    if handle_grad is None or _is_filler(handle_grad):
        return True
    value = tf.get_static_value(handle_grad)
    return value is not None and value == 0


def _unmatched_adjoint(op, what):
    """The post's gradient runs but its wait's did not (the wait is after
    every op this rank's loss depends on, so the ordering token never reaches
    it): zeros here would be a wrong gradient, and the peer's adjoint message
    would stay unmatched."""
    peer = tf.get_static_value(op.inputs[1])
    name = "mpi_isend" if op.type == "MPIIsend" else "mpi_irecv"
    return ValueError(
        f"{name} ({where(op)}): the gradient of its mpi_wait "
        f"did not run, so it cannot {what.format(peer if peer is not None else '?')}: "
        "the wait comes after every MPI op this rank's loss depends on. Use the waited "
        "tensor, or wait on this handle before the wait whose result you use"
    )


@tf.RegisterGradient("MPIWait")
def _mpi_wait_grad(op, grad, token_grad):
    if not differentiable(op):
        return None, None, None, None, token_grad
    send = op.get_attr("send")
    peer, tag = op.inputs[2], op.inputs[3]
    upstream = cotangent(op, grad)
    post = lib.mpi_irecv if send else lib.mpi_isend
    handle, token = adjoint(op, token_grad, lambda t, **c: post(upstream, peer, tag, t, **c))
    # a send's wait returned `a`: its own upstream gradient goes to `a` (the
    # post's gradient adds what `dest` sends back); a receive's `a` is a template
    return handle, (upstream if send else None), None, None, token


@tf.RegisterGradient("MPIIsend")
def _mpi_isend_grad(op, handle_grad, token_grad):
    a = op.inputs[0]
    if a.dtype not in DIFFERENTIABLE:
        return None, None, None, token_grad
    if _never_posted(handle_grad):
        raise _unmatched_adjoint(op, "receive the gradient that rank {} sends back")
    dest, tag = op.inputs[1], op.inputs[2]
    received, token = adjoint(
        op,
        token_grad,
        lambda t, **c: lib.mpi_wait(handle_grad, a, dest, tag, t, send=False, **c),
    )
    return received, None, None, token


@tf.RegisterGradient("MPIIrecv")
def _mpi_irecv_grad(op, handle_grad, token_grad):
    a = op.inputs[0]
    if a.dtype not in DIFFERENTIABLE:
        return None, None, None, token_grad
    zeros = tf.zeros_like(a)
    if _never_posted(handle_grad):
        raise _unmatched_adjoint(op, "send the gradient back to rank {}")
    src, tag = op.inputs[1], op.inputs[2]
    # the wait of the adjoint send returns its `a`, here zeros: the template's
    # gradient, which so depends on the wait (a second derivative on this
    # rank then also runs the wait's adjoint, which the peer's needs)
    sent, token = adjoint(
        op,
        token_grad,
        lambda t, **c: lib.mpi_wait(handle_grad, zeros, src, tag, t, send=True, **c),
    )
    return sent, None, None, token
