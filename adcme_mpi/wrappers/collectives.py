"""Collectives and their exact adjoints, in adjoint pairs:

    mpi_sum    (reduce to root)  <->  mpi_bcast (root to all)
    mpi_gather (concat on root)  <->  mpi_scatter (split from root)
    mpi_allreduce                <->  mpi_allreduce

Each gradient is the paired forward op on the gradient communicator, so
gradients of gradients (Hessian-vector products) compose.
"""

import tensorflow as tf

from .. import ordering
from .._loader import ops as lib
from ._adjoint import adjoint, cotangent, differentiable
from ._callsite import CallSite


def _rooted(name, kernel, doc):
    """The public wrapper of a rooted collective (sum, bcast, gather, scatter)."""

    def wrapper(a, root=0, *, comm=None, deps=None, name=None):
        site = CallSite(wrapper.__name__, comm, collective=True)
        a = site.data("a", a)
        root = site.rank_arg("root", root)
        return ordering.run_in_order(
            lambda token: kernel(a, root, token, name=name, **site.comm_attrs), deps
        )[0]

    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__doc__ = doc
    return wrapper


mpi_sum = _rooted(
    "mpi_sum",
    lib.mpi_sum,
    """Sum of `a` over the ranks of `comm` on `root`;
    zeros of a's shape elsewhere.

    Gradient: every rank gets root's upstream gradient (a broadcast).

    Example::

        L = am.mpi_sum(tf.constant(2.0) ** am.mpi_rank())   # rank 0: sum of 2^r
    """,
)

mpi_bcast = _rooted(
    "mpi_bcast",
    lib.mpi_bcast,
    """`root`'s `a` on every rank of `comm`
    (shape and dtype must agree everywhere).

    Gradient: root gets the sum over ranks of the upstream gradients; others zeros.

    Example::

        theta = am.mpi_bcast(tf.constant([1.0, 2.0]) * am.mpi_rank(), root=1)   # [1, 2]
    """,
)

mpi_gather = _rooted(
    "mpi_gather",
    lib.mpi_gather,
    """On `root`: the ranks' `a` concatenated
    along axis 0 in rank order (a scalar gathers into a vector of length
    size); elsewhere zeros of that shape.

    Gradient: each rank gets its own slice of root's upstream gradient (a scatter).

    Example::

        all_losses = am.mpi_gather(loss)   # rank 0: one entry per rank
    """,
)

mpi_scatter = _rooted(
    "mpi_scatter",
    lib.mpi_scatter,
    """Rank r gets the r-th of `size` equal
    slices along axis 0 of `root`'s `a` (a's first dimension must be divisible
    by the size; non-root ranks pass a tensor of the same shape, whose values
    are ignored).

    Gradient: root gets the ranks' upstream gradients concatenated; others zeros.

    Example::

        mine = am.mpi_scatter(tf.range(2.0 * am.mpi_size()))   # rank r: [2r, 2r + 1]
    """,
)


def mpi_allreduce(a, *, comm=None, deps=None, name=None):
    """Sum of `a` over the ranks of `comm`, on every rank.

    Gradient: the sum over ranks of the upstream gradients (an allreduce).

    Example::

        total = am.mpi_allreduce(tf.constant([1.0, 2.0]) * am.mpi_rank())
    """
    site = CallSite("mpi_allreduce", comm, collective=True)
    a = site.data("a", a)
    return ordering.run_in_order(
        lambda token: lib.mpi_allreduce(a, token, name=name, **site.comm_attrs), deps
    )[0]


# ---- gradients: each forward op's adjoint is its pair on the gradient communicator ----


def _rooted_gradient(adjoint_kernel, reshape_like_input=False):
    def gradient(op, grad, token_grad):
        if not differentiable(op):
            return None, None, token_grad
        root = op.inputs[1]
        out, token = adjoint(
            op, token_grad, lambda t, **c: adjoint_kernel(cotangent(op, grad), root, t, **c)
        )
        if reshape_like_input:  # a scalar gathers into a vector; its slice is a length-1 vector
            out = tf.reshape(out, tf.shape(op.inputs[0]))
        return out, None, token

    return gradient


tf.RegisterGradient("MPISum")(_rooted_gradient(lib.mpi_bcast))
tf.RegisterGradient("MPIBcast")(_rooted_gradient(lib.mpi_sum))
tf.RegisterGradient("MPIGather")(_rooted_gradient(lib.mpi_scatter, reshape_like_input=True))
tf.RegisterGradient("MPIScatter")(_rooted_gradient(lib.mpi_gather))


@tf.RegisterGradient("MPIAllreduce")
def _mpi_allreduce_grad(op, grad, token_grad):
    if not differentiable(op):
        return None, token_grad
    return adjoint(op, token_grad, lambda t, **c: lib.mpi_allreduce(cotangent(op, grad), t, **c))
