"""Halo exchange and its exact adjoint, an adjoint pair:

    mpi_halo_exchange  <->  MPIHaloExchangeGrad (ghost-cell gradients go home)

Rank r is block (r // n, r % n) (row-major) of an m x n grid. The output is u
padded by `width` cells on each side: side bands hold the neighbours' nearest
`width` rows/columns, corners come from the diagonal neighbours, and ghost
cells with no neighbour (the physical boundary) hold `fill_value`.

Gradient: ghost-cell gradients go back to the rank that owns those cells and
are added to its edge (and corner) cells; the gradient of `fill_value` is the
sum of the boundary ghost cells' gradients. The gradient of that (second
derivatives) is the halo exchange again, with the fill gradient as fill value.
"""

import tensorflow as tf

from .. import ordering
from .._loader import ops as lib
from ..op_table import HALO_DTYPES, message
from ._adjoint import adjoint, cotangent, differentiable
from ._callsite import CallSite


def mpi_halo_exchange(u, m, n, fill_value=0.0, tag=0, deps=None, width=1, *, comm=None, name=None):
    """Pad the local block `u` (2-D, at least `width` in each dimension) with
    `width` ghost rows/columns from its neighbours; see the module docstring.

    Example::

        # 2 x 2 ranks, a 4 x 5 block u on each
        padded = am.mpi_halo_exchange(u, 2, 2, fill_value=0.0)   # shape (6, 7)
        lap = padded[1:-1, :-2] + padded[1:-1, 2:] + padded[:-2, 1:-1] + padded[2:, 1:-1] - 4 * u
    """
    site = CallSite("mpi_halo_exchange", comm, collective=True)
    u = site.data("u", u, names=HALO_DTYPES)  # (no float16 or complex halo)
    for arg, value in (("m", m), ("n", n), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise site.error(ValueError, f"argument '{arg}' must be a positive int, got {value!r}")
    if m * n != site.size:
        raise site.error(ValueError, message("grid_size", m, n, m * n, site.size))
    if u.shape.rank is not None and u.shape.rank != 2:
        raise site.error(ValueError, f"argument 'u' must be 2-D, got shape {u.shape}")
    for dim in u.shape.as_list() if u.shape.rank == 2 else []:
        if dim is not None and dim < width:
            raise site.error(ValueError, message("halo_width", "u", u.shape, width))
    fill = (
        tf.cast(fill_value, u.dtype)
        if isinstance(fill_value, tf.Tensor)
        else tf.constant(fill_value, dtype=u.dtype)
    )
    tag = site.tag(tag)
    return ordering.run_in_order(
        lambda token: lib.mpi_halo_exchange(
            u, fill, tag, token, m=m, n=n, width=width, name=name, **site.comm_attrs
        ),
        deps,
    )[0]


def near_square_grid(size):
    """The most square m x n grid of `size` ranks with m <= n (1x1, 1x2, 1x3,
    2x2, 2x3, ...): the one factorisation the self-test, the tests and the
    examples use."""
    m = max(d for d in range(1, size + 1) if size % d == 0 and d * d <= size)
    return m, size // m


def _grid(op):
    return {"m": op.get_attr("m"), "n": op.get_attr("n"), "width": op.get_attr("width")}


@tf.RegisterGradient("MPIHaloExchange")
def _mpi_halo_exchange_grad(op, grad, token_grad):
    if not differentiable(op):
        return None, None, None, token_grad
    grad_u, grad_fill, token = adjoint(
        op,
        token_grad,
        lambda t, **c: lib.mpi_halo_exchange_grad(
            cotangent(op, grad), op.inputs[2], t, **_grid(op), **c
        ),
    )
    return grad_u, grad_fill, None, token


@tf.RegisterGradient("MPIHaloExchangeGrad")
def _mpi_halo_exchange_grad_grad(op, grad_u, grad_fill, token_grad):
    # MPIHaloExchangeGrad is linear in its input, jointly in (u, fill) for its
    # adjoint: d/d(grad_padded) <(a, b), HaloGrad(g)> = HaloExchange(a, fill=b).
    a, b = cotangent(op, grad_u, 0), cotangent(op, grad_fill, 1)
    padded, token = adjoint(
        op,
        token_grad,
        lambda t, **c: lib.mpi_halo_exchange(a, b, op.inputs[1], t, **_grid(op), **c),
    )
    return padded, None, token
