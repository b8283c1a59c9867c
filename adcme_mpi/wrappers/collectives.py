"""Collectives and their exact adjoints, in adjoint pairs:

    mpi_sum    (reduce to root)  <->  mpi_bcast (root to all)
    mpi_gather (concat on root)  <->  mpi_scatter (split from root)
    mpi_allreduce                <->  mpi_allreduce
    mpi_allgather                <->  mpi_reduce_scatter
    mpi_scan                     <->  mpi_scan in reverse rank order
    mpi_alltoall                 <->  mpi_alltoall (with the transposed splits)

Each gradient is the paired forward op on the gradient communicator, so
gradients of gradients (Hessian-vector products) compose. The reductions
other than the sum (op="max", "min", "prod") get gradients built from
forward ops too: one sum or allgather of the cotangent stacked with what the
local derivative needs (the extremum's mask and its ties; the other ranks'
factors, so a product with zeros is exact without division). mpi_scan's
other reductions are forward only.

dtypes: float32, float64, int32, int64, float16, bfloat16, complex64 and
complex128 everywhere. float16 and bfloat16 move as 2-byte words; their
reductions (every op, in mpi_sum, mpi_allreduce, mpi_reduce_scatter and
mpi_scan) accumulate in float32 inside the kernel and round once to the
dtype. Complex tensors reduce with "sum", "mean" and "prod" ("max" and "min"
are an error: complex numbers are not ordered). Gradients exist for the
float and complex dtypes, in TensorFlow's convention for complex values (the
conjugate of d loss / dz, as tf.GradientTape gives for a holomorphic map):
every map here but the product is linear with real coefficients, so its
adjoint is the same as for real values; the product's local derivative is
conjugated.
"""

import numpy as np
import tensorflow as tf

from .. import ordering
from .._loader import ops as lib
from ._adjoint import adjoint, cotangent, differentiable, where
from ._callsite import CallSite


REDUCTIONS = ("sum", "mean", "max", "min", "prod")


def _reduce(site, a, op, kernel, deps):
    """Run the reducing `kernel(token, reduction)` for `op` in program order
    ("mean" is the sum, divided by the size here)."""
    if op not in REDUCTIONS:
        raise site.error(
            ValueError, f"argument 'op' = {op!r} is not one of {', '.join(REDUCTIONS)}"
        )
    if op == "mean" and not (a.dtype.is_floating or a.dtype.is_complex):
        raise site.error(TypeError, f"op='mean' needs a float dtype, got {a.dtype.name}")
    _ordered(site, a, op)
    reduction = "sum" if op == "mean" else op
    out = ordering.run_in_order(lambda token: kernel(token, reduction), deps)[0]
    # (a product with the reciprocal: graph optimisation turns a division by a
    # constant into one, and every mode must compute the same bits)
    return out * tf.constant(1.0 / site.size, a.dtype) if op == "mean" else out


def _ordered(site, a, op):
    """max and min need ordered values: not complex ones (MPI refuses them too)."""
    if a.dtype.is_complex and op in ("max", "min"):
        raise site.error(
            TypeError,
            f"argument 'op' = '{op}' is not defined for {a.dtype.name} (complex numbers are not "
            "ordered); use sum, mean or prod",
        )


def _rooted(name, kernel, doc):
    """The public wrapper of a rooted collective (bcast, gather, scatter)."""

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


def mpi_sum(a, root=0, *, op="sum", comm=None, deps=None, name=None):
    """The reduction of `a` over the ranks of `comm` on `root` (op: "sum",
    "mean", "max", "min" or "prod", elementwise); zeros of a's shape elsewhere.

    Gradient: every rank gets root's upstream gradient (a broadcast), times
    its local derivative: 1 (sum), 1/size (mean), for max and min the mask
    of where this rank holds the extremum, split equally among ties (as
    tf.reduce_max), for prod the product of the other ranks' values (exact
    with zeros; conjugated for complex values, TensorFlow's convention).
    int dtypes are forward only. float16 and bfloat16 accumulate in float32
    and round once; complex values have no "max" or "min" (an error).

    Example::

        L = am.mpi_sum(tf.constant(2.0) ** am.mpi_rank())   # rank 0: sum of 2^r
        top = am.mpi_sum(tf.constant([1.0, 5.0]) * am.mpi_rank(), op="max")
        z = am.mpi_sum(tf.complex(1.0, float(am.mpi_rank())), op="prod")   # complex64
    """
    site = CallSite("mpi_sum", comm, collective=True)
    a = site.data("a", a)
    root = site.rank_arg("root", root)
    return _reduce(
        site,
        a,
        op,
        lambda token, reduction: lib.mpi_sum(
            a, root, token, reduction=reduction, name=name, **site.comm_attrs
        ),
        deps,
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


def mpi_allreduce(a, *, op="sum", comm=None, deps=None, name=None):
    """The reduction of `a` over the ranks of `comm`, on every rank (op:
    "sum", "mean", "max", "min" or "prod", elementwise).

    Gradient: the sum over ranks of the upstream gradients (an allreduce),
    times the local derivative as for mpi_sum: 1/size for mean, the
    extremum's mask split among ties for max and min, the other ranks'
    product for prod (exact with zeros; conjugated for complex values). int
    dtypes are forward only. float16 and bfloat16 accumulate in float32 and
    round once (the result keeps the dtype); complex values have no "max"
    or "min" (an error).

    Example::

        total = am.mpi_allreduce(tf.constant([1.0, 2.0]) * am.mpi_rank())
        worst = am.mpi_allreduce(loss, op="max")
        half = am.mpi_allreduce(tf.ones([4], tf.float16))   # float16, summed in float32
    """
    site = CallSite("mpi_allreduce", comm, collective=True)
    a = site.data("a", a)
    return _reduce(
        site,
        a,
        op,
        lambda token, reduction: lib.mpi_allreduce(
            a, token, reduction=reduction, name=name, **site.comm_attrs
        ),
        deps,
    )


def mpi_allgather(a, *, comm=None, deps=None, name=None):
    """Every rank's `a` joined along axis 0 in rank order, on every rank.
    First dimensions may differ across ranks (the lengths are exchanged
    inside the op); the other dimensions and the dtype must agree. A scalar
    gathers into a vector of length size.

    Gradient: each rank gets the sum over ranks of its own slice of the
    upstream gradients (a reduce-scatter).

    Example::

        everyone = am.mpi_allgather(tf.ones([am.mpi_rank() + 1, 2]))   # [sum_r (r+1), 2]
    """
    site = CallSite("mpi_allgather", comm, collective=True)
    a = site.data("a", a)
    return ordering.run_in_order(
        lambda token: lib.mpi_allgather(a, token, name=name, **site.comm_attrs), deps
    )[0]


def mpi_reduce_scatter(a, op="sum", counts=None, *, comm=None, deps=None, name=None):
    """Rank r gets the reduction (op: "sum", "mean", "max", "min", "prod")
    over ranks of the r-th slice of `a` along axis 0. The slices are equal
    (a's first dimension divisible by the size), or `counts` gives every
    rank's slice length (the same list on every rank, adding up to a's first
    dimension).

    Gradient (sum and mean): an allgather of the upstream gradients. The
    other reductions are forward only here (a clear error if differentiated).
    float16 and bfloat16 accumulate in float32; complex values reduce with
    sum, mean or prod only.

    Example::

        mine = am.mpi_reduce_scatter(tf.ones([2 * am.mpi_size(), 3]))   # [2, 3] of size
    """
    site = CallSite("mpi_reduce_scatter", comm, collective=True)
    a = site.data("a", a)
    if a.shape.rank == 0:
        raise site.error(ValueError, "argument 'a' must have at least one dimension, got a scalar")
    rows = a.shape[0] // site.size if a.shape[0] is not None else None  # this rank's slice
    if counts is None:
        counts = tf.zeros([0], tf.int64)
    else:
        static = [int(c) for c in counts] if isinstance(counts, (list, tuple)) else None
        if static is not None and len(static) != site.size:
            raise site.error(
                ValueError,
                f"argument 'counts' has {len(static)} entries; it must have one per rank "
                f"({site.size})",
            )
        rows = static[site.rank] if static is not None else None
        counts = tf.cast(tf.convert_to_tensor(counts), tf.int64)
    out = _reduce(
        site,
        a,
        op,
        lambda token, reduction: lib.mpi_reduce_scatter(
            a, counts, token, reduction=reduction, name=name, **site.comm_attrs
        ),
        deps,
    )
    out.set_shape(tf.TensorShape([rows]).concatenate(a.shape[1:]))  # (the kernel checks it)
    return out


SCANS = ("sum", "max", "min", "prod")


def mpi_scan(a, op="sum", exclusive=False, *, comm=None, deps=None, name=None):
    """The prefix reduction of `a` over the ranks of `comm`, elementwise
    (op: "sum", "max", "min" or "prod"): rank r gets the reduction of ranks
    0..r's `a` (inclusive), or with `exclusive=True` of ranks 0..r-1; there
    rank 0 gets the reduction's identity: 0 (sum), 1 (prod), for max the
    dtype's lowest value (-inf for floats), for min its highest (+inf). The
    shape, dtype, `op` and `exclusive` must be the same on every rank.

    Gradient (op="sum"): the scan of the upstream gradients in reverse rank
    order, rank r getting the sum over ranks k >= r of theirs (exclusive:
    k > r), exact (no difference of sums), on the gradient communicator; its
    own gradient is the forward scan again, so second derivatives compose.
    float16 and bfloat16 scan in float32 and round once; complex values
    scan with sum or prod only. The other reductions are forward only (an
    error if differentiated), as
    are int dtypes.

    Example::

        before = am.mpi_scan(tf.ones([2]), exclusive=True)   # [r, r] on rank r
        running_max = am.mpi_scan(tf.constant([3.0, 1.0]) * am.mpi_rank(), op="max")
    """
    site = CallSite("mpi_scan", comm, collective=True)
    a = site.data("a", a)
    if op not in SCANS:
        raise site.error(ValueError, f"argument 'op' = {op!r} is not one of {', '.join(SCANS)}")
    if not isinstance(exclusive, (bool, np.bool_)):
        raise site.error(
            TypeError, f"argument 'exclusive' must be a Python bool, got {exclusive!r}"
        )
    _ordered(site, a, op)
    return ordering.run_in_order(
        lambda token: lib.mpi_scan(
            a, token, reduction=op, exclusive=bool(exclusive), name=name, **site.comm_attrs
        ),
        deps,
    )[0]


def _static_splits(splits):
    """`splits` as a list of Python ints when Python knows them (a list,
    tuple or NumPy array of ints), else None (a tensor: the kernel checks it)."""
    if isinstance(splits, (list, tuple)) or (isinstance(splits, np.ndarray) and splits.ndim == 1):
        if all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in splits):
            return [int(s) for s in splits]
    return None


def mpi_alltoall(a, splits=None, *, comm=None, deps=None, name=None):
    """`a` split along axis 0 into one piece per rank of `comm`, piece k sent
    to rank k; the result joins the pieces this rank receives, in rank order,
    along axis 0. The pieces are equal (a's first dimension divisible by the
    size, and the same on every rank), or `splits` gives this rank's piece
    lengths (a list or 1-D int tensor with one entry per rank, adding up to
    a's first dimension; they may differ across ranks, and the lengths to
    receive are exchanged inside the op). The dimensions after the first and
    the dtype must agree everywhere. With `splits` the result's first
    dimension is unknown until the op runs (None in its static shape).

    Gradient: the alltoall back with the transposed splits: rank r sends rank
    k the upstream gradient of the piece it received from k. int dtypes are
    forward only.

    Example::

        # rank r sends k + 1 rows of r to each rank k; rank k gets k + 1 rows from each rank
        size = am.mpi_size()
        x = tf.fill([size * (size + 1) // 2, 2], float(am.mpi_rank()))
        y = am.mpi_alltoall(x, splits=[k + 1 for k in range(size)])   # [size * (rank + 1), 2]
    """
    site = CallSite("mpi_alltoall", comm, collective=True)
    a = site.data("a", a)
    if a.shape.rank == 0:
        raise site.error(ValueError, "argument 'a' must have at least one dimension, got a scalar")
    rows = a.shape[0] if a.shape.rank is not None else None
    if splits is None:
        if rows is not None and rows % site.size != 0:
            raise site.error(
                ValueError,
                "argument 'a' must have a first dimension divisible by the communicator size "
                f"{site.size} when 'splits' is not given, got shape {a.shape}",
            )
        splits = tf.zeros([0], tf.int64)
        given = False
    else:
        static = _static_splits(splits)
        if static is not None:
            if len(static) != site.size:
                raise site.error(
                    ValueError,
                    f"argument 'splits' has {len(static)} entries; it must have one per rank "
                    f"({site.size})",
                )
            for k, s in enumerate(static):
                if s < 0:
                    raise site.error(
                        ValueError, f"argument 'splits' has a negative entry {s} (for rank {k})"
                    )
            if rows is not None and sum(static) != rows:
                raise site.error(
                    ValueError,
                    f"argument 'splits' adds up to {sum(static)} but 'a' has {rows} slices "
                    "along axis 0",
                )
        try:
            splits = tf.convert_to_tensor(splits)
        except (TypeError, ValueError) as err:
            raise site.error(TypeError, f"argument 'splits' cannot be a tensor: {err}") from None
        if splits.dtype not in (tf.int32, tf.int64) or splits.shape.rank not in (None, 1):
            raise site.error(
                TypeError,
                "argument 'splits' must be a list or a 1-D int tensor, got "
                f"{splits.dtype.name}{splits.shape}",
            )
        splits = tf.cast(splits, tf.int64)
        given = True
    return ordering.run_in_order(
        lambda token: lib.mpi_alltoall(
            a, splits, token, given_splits=given, name=name, **site.comm_attrs
        ),
        deps,
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


tf.RegisterGradient("MPIBcast")(_rooted_gradient(lib.mpi_sum))
tf.RegisterGradient("MPIGather")(_rooted_gradient(lib.mpi_scatter, reshape_like_input=True))
tf.RegisterGradient("MPIScatter")(_rooted_gradient(lib.mpi_gather))


def _rank_of(op):
    """This rank in the forward op's communicator (its Fortran handle)."""
    from mpi4py import MPI

    return MPI.Comm.f2py(op.get_attr("comm")).Get_rank()


def _others_product(rows, rank):
    """Over axis 0 of `rows` (one row per rank): the product of every row but
    `rank`'s. tf.reduce_prod's gradient is exact with zeros."""
    keep = tf.not_equal(tf.range(tf.shape(rows)[0]), rank)
    return tf.reduce_prod(tf.boolean_mask(rows, keep), axis=0)


@tf.RegisterGradient("MPISum")
def _mpi_sum_grad(op, grad, token_grad):
    if not differentiable(op):
        return None, None, token_grad
    reduction = op.get_attr("reduction").decode()
    root = op.inputs[1]
    g = cotangent(op, grad)
    if reduction == "sum":
        out, token = adjoint(op, token_grad, lambda t, **c: lib.mpi_bcast(g, root, t, **c))
        return out, None, token
    # one allgather of (root's cotangent, root's result, every rank's input):
    # the other ranks' outputs are constant zeros, so only root's cotangent counts
    a, y = op.inputs[0], op.outputs[0]
    is_root = tf.cast(tf.equal(root, _rank_of(op)), g.dtype)
    stacked = tf.expand_dims(tf.stack([g * is_root, y * is_root, a]), 0)
    rows, token = adjoint(op, token_grad, lambda t, **c: lib.mpi_allgather(stacked, t, **c))
    upstream, result = tf.reduce_sum(rows[:, 0], 0), tf.reduce_sum(rows[:, 1], 0)
    if reduction == "prod":  # (conj: TF's convention for complex; the identity for real)
        return upstream * tf.math.conj(_others_product(rows[:, 2], _rank_of(op))), None, token
    holds = tf.cast(tf.equal(a, result), g.dtype)
    ties = tf.reduce_sum(tf.cast(tf.equal(rows[:, 2], result), g.dtype), 0)
    return upstream * holds / ties, None, token


@tf.RegisterGradient("MPIAllreduce")
def _mpi_allreduce_grad(op, grad, token_grad):
    if not differentiable(op):
        return None, token_grad
    reduction = op.get_attr("reduction").decode()
    g = cotangent(op, grad)
    if reduction == "sum":
        return adjoint(op, token_grad, lambda t, **c: lib.mpi_allreduce(g, t, **c))
    a, y = op.inputs[0], op.outputs[0]
    if reduction == "prod":
        stacked = tf.expand_dims(tf.stack([g, a]), 0)
        rows, token = adjoint(op, token_grad, lambda t, **c: lib.mpi_allgather(stacked, t, **c))
        others = tf.math.conj(_others_product(rows[:, 1], _rank_of(op)))  # (as in mpi_sum's)
        return tf.reduce_sum(rows[:, 0], 0) * others, token
    holds = tf.cast(tf.equal(a, y), g.dtype)
    sums, token = adjoint(
        op, token_grad, lambda t, **c: lib.mpi_allreduce(tf.stack([g, holds]), t, **c)
    )
    return sums[0] * holds / sums[1], token


@tf.RegisterGradient("MPIAllgather")
def _mpi_allgather_grad(op, grad, token_grad):
    if not differentiable(op):
        return None, token_grad
    a = op.inputs[0]
    # this rank's length along axis 0 (a scalar gathered as one): the
    # reduce-scatter exchanges the others'
    own = tf.cast(tf.shape(a)[:1] if a.shape.rank != 0 else tf.ones([1], tf.int32), tf.int64)
    out, token = adjoint(
        op, token_grad, lambda t, **c: lib.mpi_reduce_scatter(cotangent(op, grad), own, t, **c)
    )
    return tf.reshape(out, tf.shape(a)), token


@tf.RegisterGradient("MPIReduceScatter")
def _mpi_reduce_scatter_grad(op, grad, token_grad):
    if not differentiable(op):
        return None, None, token_grad
    reduction = op.get_attr("reduction").decode()
    if reduction != "sum":
        raise ValueError(
            f"mpi_reduce_scatter ({where(op)}): op='{reduction}' has no gradient here; "
            "only op='sum' and op='mean' are differentiable"
        )
    out, token = adjoint(
        op, token_grad, lambda t, **c: lib.mpi_allgather(cotangent(op, grad), t, **c)
    )
    return out, None, token


@tf.RegisterGradient("MPIScan")
def _mpi_scan_grad(op, grad, token_grad):
    if not differentiable(op):
        return None, token_grad
    reduction = op.get_attr("reduction").decode()
    if reduction != "sum":
        raise ValueError(
            f"mpi_scan ({where(op)}): op='{reduction}' has no gradient; "
            "only op='sum' is differentiable"
        )
    # the transpose of a prefix sum is the suffix sum: the same scan in
    # reverse rank order (and the reverse scan's is the forward one)
    return adjoint(
        op,
        token_grad,
        lambda t, **c: lib.mpi_scan(
            cotangent(op, grad),
            t,
            reduction="sum",
            exclusive=op.get_attr("exclusive"),
            reverse=not op.get_attr("reverse"),
            **c,
        ),
    )


@tf.RegisterGradient("MPIAlltoall")
def _mpi_alltoall_grad(op, grad, received_grad, token_grad):
    if not differentiable(op):
        return None, None, token_grad
    given = op.get_attr("given_splits")
    # the transposed splits: send each rank back what came from it
    splits = op.outputs[1] if given else op.inputs[1]
    out, _, token = adjoint(
        op,
        token_grad,
        lambda t, **c: lib.mpi_alltoall(cotangent(op, grad), splits, t, given_splits=given, **c),
    )
    out.set_shape(op.inputs[0].shape)  # (what left this rank comes back)
    return out, None, token
