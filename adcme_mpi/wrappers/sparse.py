"""Distributed sparse matrices (ADCME's mpi_SparseTensor) on PETSc, with exact
adjoints. Rank r owns the rows `ilower..iupper` (0-based, inclusive) of a
global N x N matrix; the stripes tile 0..N-1 in rank order, every rank owns
at least one row. Vectors are this rank's slice of rows.

Adjoint pairs (ops/sparse.cc):

    A @ x      (MPISparseMatVec)   <->  A.T @ y (the same op, transposed)
    A.solve(b) (MPISparseSolve)    <->  the transpose solve (reusing the
                                        preconditioner)
    gather     (x at my columns)   <->  scatter-add (back to the owners)

Gradients with respect to the values: for y = A x, d/dA_ij = g_i x_j; for
x = A^-1 b, d/dA_ij = -lambda_i x_j with lambda = A^-T g. The x_j of columns
owned by other ranks come from PETSc's scatter (the gather op). Every
gradient is built from these ops, so second derivatives work too.

The first product or solve of a sparsity pattern sets PETSc's matrix up
(collective); later calls with the same pattern write new values in place,
and a solve whose values did not change (the backward pass's transpose
solve) reuses the preconditioner.
"""

import numpy as np
import tensorflow as tf

from .. import _loader, ordering
from ..op_table import SOLVERS, message
from ._adjoint import adjoint, cotangent
from ._callsite import CallSite

__all__ = ["mpi_SparseTensor", "mpi_sparse_solve", "petsc_options", "petsc_info"]

FLOAT_DTYPES = (tf.float32, tf.float64)


def _lib():
    return _loader.sparse_library()[0]


def petsc_info():
    """{'version': PETSc's version string, 'hypre': bool} of the PETSc the
    sparse ops were built against (loads it).

    Example::

        am.petsc_info()   # {'version': 'Petsc Release Version 3.26.1, ...', 'hypre': False}
    """
    _, text = _c_text(_loader.sparse_library()[1].adcme_mpi_petsc_info)
    version, _, hypre = text.partition("\x1f")
    return {"version": version, "hypre": hypre == "1"}


def _c_text(function, *args):
    from .. import _c_api

    return _c_api.text_call(function, *args)


def default_solver():
    """ADCME's default, BoomerAMG, where PETSc has hypre; GAMG otherwise."""
    return "BoomerAMG" if petsc_info()["hypre"] else "GAMG"


def petsc_options(options):
    """Add options to PETSc's options database, e.g.
    `petsc_options("-mysolve_ksp_type bcgs -mysolve_pc_type asm")`, read by
    solves that pass `options_prefix="mysolve_"` (full control of PETSc's
    KSP and PC). Local to this rank: call it on every rank. The environment
    variable PETSC_OPTIONS works too.

    Example::

        am.petsc_options("-p_ksp_type bcgs -p_pc_type asm")
        x = A.solve(b, options_prefix="p_")
    """
    code, text = _c_text(_loader.sparse_library()[1].adcme_mpi_petsc_options, str(options).encode())
    if code != 0:
        raise ValueError(text)


def _int_arg(site, arg, value):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise site.error(TypeError, f"argument '{arg}' must be an int, got {value!r}")
    return int(value)


def _index_array(site, arg, value, ndim):
    if isinstance(value, tf.Tensor):
        # ADCME's scripts pass tf.constant(indices). A graph tensor whose value
        # TensorFlow can fold (a constant) is taken; one computed at run time
        # cannot be: the pattern fixes the PETSc matrix's layout and the
        # stripes' cross-rank check, made once when the matrix is built.
        known = tf.get_static_value(value)
        if known is None:
            raise site.error(
                TypeError,
                f"argument '{arg}' is computed when the graph runs; it must be known when "
                "the graph is built (a NumPy array, a list or a tf.constant), because the "
                "sparsity pattern fixes the matrix's PETSc layout when the matrix is made",
            )
        value = known
    try:
        array = np.asarray(value)
    except Exception as err:  # noqa: BLE001 (anything NumPy cannot take)
        raise site.error(TypeError, f"argument '{arg}' cannot be an array: {err}") from None
    if array.size == 0:
        array = array.reshape((0,) * (ndim - 1) + (2,) if ndim == 2 else (0,))
    if array.ndim != ndim or not np.issubdtype(array.dtype, np.integer):
        raise site.error(
            TypeError,
            f"argument '{arg}' must be a {ndim}-D array of ints, got {array.dtype} {array.shape}",
        )
    return array.astype(np.int64)


def _values(site, values, nnz, dtype):
    try:
        v = tf.convert_to_tensor(values, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise site.error(TypeError, f"argument 'values' cannot be a tensor: {err}") from None
    if v.dtype not in FLOAT_DTYPES:
        v = tf.cast(v, tf.float64) if v.dtype.is_integer else v
    if v.dtype not in FLOAT_DTYPES:
        raise site.error(TypeError, message("dtype", "values", v.dtype.name, "float32, float64"))
    if v.shape.rank is not None and v.shape.rank != 1:
        raise site.error(ValueError, f"argument 'values' must be 1-D, got shape {v.shape}")
    if v.shape.rank == 1 and v.shape[0] is not None and v.shape[0] != nnz:
        raise site.error(
            ValueError, f"argument 'values' has {v.shape[0]} entries for {nnz} index pairs"
        )
    return v


class mpi_SparseTensor:
    """A row-distributed sparse N x N matrix: this rank's rows ilower..iupper.

    `indices` is an (nnz, 2) array of global (row, column) pairs, every row
    inside this rank's stripe; `values` (float32 or float64, a tensor or an
    array) holds one value per pair and is differentiable. Pairs may come in
    any order; repeated pairs are summed. Indices must be known when the graph
    is built: NumPy arrays, lists or tf.constant (ADCME's form); indices
    computed when the graph runs are refused with a TypeError.

    Making one checks this rank's arguments; the stripes' tiling, N and the
    solver arguments are checked across ranks by the first op that uses the
    matrix, with an error on every rank that names the ranks.

    Example::

        # 2 ranks, a 4 x 4 tridiagonal matrix: rank 0 rows 0..1, rank 1 rows 2..3
        lo = 2 * am.mpi_rank()
        pairs = [(i, j) for i in (lo, lo + 1) for j in (i - 1, i, i + 1) if 0 <= j < 4]
        values = [2.0 if i == j else -1.0 for i, j in pairs]
        A = am.mpi_SparseTensor(pairs, values, lo, lo + 1, 4)
        y = A @ tf.ones(2, tf.float64)   # rank 0: [1, 0], rank 1: [0, 1]
    """

    def __init__(self, indices, values, ilower, iupper, N, *, dtype=None, comm=None):
        site = CallSite("mpi_SparseTensor", comm, collective=True)
        self._comm = comm
        ilower = _int_arg(site, "ilower", ilower)
        iupper = _int_arg(site, "iupper", iupper)
        N = _int_arg(site, "N", N)
        if N < 1 or not 0 <= ilower <= iupper < N:
            raise site.error(
                ValueError,
                f"arguments 'ilower' = {ilower}, 'iupper' = {iupper}, 'N' = {N}: this rank's "
                "stripe must satisfy 0 <= ilower <= iupper < N (every rank owns at least one row)",
            )
        indices = _index_array(site, "indices", indices, 2)
        if indices.shape[1] != 2:
            raise site.error(
                ValueError, f"argument 'indices' must have shape (nnz, 2), got {indices.shape}"
            )
        rows, cols = indices[:, 0], indices[:, 1]
        bad = rows[(rows < ilower) | (rows > iupper)]
        if bad.size:
            raise site.error(
                ValueError,
                f"argument 'indices' has row {bad[0]}, outside this rank's stripe "
                f"ilower..iupper = {ilower}..{iupper}",
            )
        bad = cols[(cols < 0) | (cols >= N)]
        if bad.size:
            raise site.error(
                ValueError, f"argument 'indices' has column {bad[0]}, out of range [0, {N - 1}]"
            )
        values = _values(site, values, len(rows), dtype)
        self.ilower, self.iupper, self.N = ilower, iupper, N
        self.m = iupper - ilower + 1
        self._canonicalize(rows - ilower, cols, values)

    def _canonicalize(self, local_rows, cols, values):
        """CSR with sorted columns, repeated pairs summed (PETSc wants each
        entry once). The values are permuted and summed with differentiable
        ops; nothing is added when the pairs already are in order."""
        order = np.lexsort((cols, local_rows))
        local_rows, cols = local_rows[order], cols[order]
        first = np.ones(len(cols), dtype=bool)
        first[1:] = (local_rows[1:] != local_rows[:-1]) | (cols[1:] != cols[:-1])
        if not np.array_equal(order, np.arange(len(order))):
            values = tf.gather(values, order)
        if not first.all():
            values = tf.math.segment_sum(values, np.cumsum(first) - 1)
            local_rows, cols = local_rows[first], cols[first]
        counts = np.bincount(local_rows, minlength=self.m)
        self.row_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.cols = cols.astype(np.int64)
        self.local_rows = local_rows.astype(np.int64)  # the local row of each nonzero
        self.values = values

    @classmethod
    def from_csr(cls, rows, ncols, cols, values, ilower, iupper, N, *, dtype=None, comm=None):
        """ADCME's (and hypre's) second form: `rows` lists global row indices,
        `ncols[k]` the number of entries of row `rows[k]`, whose columns and
        values follow in `cols` and `values`.

        Example::

            # rank 0 of 2 owns rows 0..1 of a 4 x 4 matrix
            A = am.mpi_SparseTensor.from_csr([0, 1], [2, 3], [0, 1, 0, 1, 2],
                                             [2.0, -1.0, -1.0, 2.0, -1.0], 0, 1, 4)
        """
        site = CallSite("mpi_SparseTensor.from_csr", comm, collective=True)
        rows = _index_array(site, "rows", rows, 1)
        ncols = _index_array(site, "ncols", ncols, 1)
        cols = _index_array(site, "cols", cols, 1)
        if len(rows) != len(ncols) or (ncols < 0).any() or ncols.sum() != len(cols):
            raise site.error(
                ValueError,
                f"arguments 'rows' ({len(rows)}), 'ncols' ({len(ncols)}, summing to "
                f"{int(ncols.sum())}) and 'cols' ({len(cols)}) do not fit: one count per row, "
                "the counts summing to the number of columns",
            )
        pairs = np.stack([np.repeat(rows, ncols), cols], axis=1)
        return cls(pairs, values, ilower, iupper, N, dtype=dtype, comm=comm)

    @classmethod
    def from_scipy(cls, local, ilower, N, *, values=None, dtype=None, comm=None):
        """From a SciPy sparse matrix of this rank's rows (shape (m, N)), which
        are the global rows ilower..ilower+m-1. `values` (a tensor, one per
        stored entry in COO order) replaces the matrix's own values, to
        differentiate with respect to them.

        Example::

            G = scipy.sparse.diags([-1, 2, -1], [-1, 0, 1], shape=(N, N), format="csr")
            A = am.mpi_SparseTensor.from_scipy(G[lo : hi + 1], lo, N)
        """
        coo = local.tocoo()
        pairs = np.stack([coo.row.astype(np.int64) + ilower, coo.col.astype(np.int64)], axis=1)
        data = coo.data if values is None else values
        if coo.shape[1] != N:
            site = CallSite("mpi_SparseTensor.from_scipy", comm, collective=True)
            raise site.error(ValueError, f"argument 'local' has {coo.shape[1]} columns, N = {N}")
        return cls(pairs, data, ilower, ilower + coo.shape[0] - 1, N, dtype=dtype, comm=comm)

    # ---- what it is ----

    @property
    def shape(self):
        return (self.N, self.N)

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def nnz(self):
        return len(self.cols)

    def __repr__(self):
        return (
            f"mpi_SparseTensor(N={self.N}, rows {self.ilower}..{self.iupper}, "
            f"{self.nnz} local nonzeros, {self.dtype.name})"
        )

    @property
    def T(self):
        """The transpose: `A.T @ y` and `A.T.solve(b)`.

        Example::

            z = A.T @ y
        """
        return _Transposed(self)

    def to_dense(self):
        """The whole matrix as a dense N x N tensor on every rank (an
        allreduce; for debugging and tests on small N). Differentiable.

        Example::

            with am.Session() as sess:
                print(sess.run(A.to_dense()))   # N x N, on every rank
        """
        from .collectives import mpi_allreduce

        pairs = np.stack([self.local_rows + self.ilower, self.cols], axis=1)
        mine = tf.scatter_nd(pairs, self.values, [self.N, self.N])
        return mpi_allreduce(mine, comm=self._comm)

    # ---- operations ----

    def __matmul__(self, x):
        return mpi_sparse_matvec(self, x)

    def solve(self, b, solver=None, rtol=1e-10, atol=0.0, max_it=1000, options_prefix=None):
        """x with A x = b; see mpi_sparse_solve.

        Example::

            x = A.solve(b, solver="GAMG", rtol=1e-10, max_it=500)
        """
        return mpi_sparse_solve(self, b, solver, rtol, atol, max_it, options_prefix)


class _Transposed:
    def __init__(self, matrix):
        self.matrix = matrix

    @property
    def T(self):
        return self.matrix

    def __matmul__(self, y):
        return mpi_sparse_matvec(self.matrix, y, transpose=True)

    def solve(self, b, solver=None, rtol=1e-10, atol=0.0, max_it=1000, options_prefix=None):
        return mpi_sparse_solve(
            self.matrix, b, solver, rtol, atol, max_it, options_prefix, transpose=True
        )


def _vector(site, A, arg, v):
    if not isinstance(A, mpi_SparseTensor):
        raise site.error(TypeError, f"argument 'A' must be an mpi_SparseTensor, got {type(A)}")
    try:
        t = tf.convert_to_tensor(v, dtype=A.dtype)
    except (TypeError, ValueError) as err:
        raise site.error(
            TypeError, f"argument '{arg}' cannot be a {A.dtype.name} tensor: {err}"
        ) from None
    if t.shape.rank is not None and (t.shape.rank != 1 or t.shape[0] not in (None, A.m)):
        raise site.error(
            ValueError,
            f"argument '{arg}' has shape {t.shape}; it must be this rank's slice, shape "
            f"({A.m},) for rows ilower..iupper = {A.ilower}..{A.iupper}",
        )
    return t


def _site(op, A):
    return CallSite(op, A._comm if isinstance(A, mpi_SparseTensor) else None, True)


def _run(site, A, kernel, vector, name, **attrs):
    """One product or solve op of `A` with `vector`, in program order."""
    make = getattr(_lib(), kernel)
    row_ptr, cols = tf.constant(A.row_ptr), tf.constant(A.cols)
    return ordering.run_in_order(
        lambda token: make(
            row_ptr,
            cols,
            A.values,
            vector,
            token,
            N=A.N,
            ilower=A.ilower,
            name=name,
            **attrs,
            **site.comm_attrs,
        )
    )[0]


def mpi_sparse_matvec(A, x, transpose=False, *, name=None):
    """`A @ x` (or `A.T @ x`): this rank's rows of the product; `x` is this
    rank's slice. Gradient: with respect to x, the product with the
    transpose; with respect to the values, g_i x_j (x_j from its owner).

    Example::

        y = am.mpi_sparse_matvec(A, x)         # A @ x
        z = am.mpi_sparse_matvec(A, y, True)   # A.T @ y
    """
    site = _site("mpi_sparse_matvec", A)
    x = _vector(site, A, "x", x)
    return _run(site, A, "mpi_sparse_mat_vec", x, name, transpose=bool(transpose))


def mpi_sparse_solve(
    A,
    b,
    solver=None,
    rtol=1e-10,
    atol=0.0,
    max_it=1000,
    options_prefix=None,
    *,
    transpose=False,
    name=None,
):
    """x with A x = b (A^T x = b with transpose=True), by PETSc's KSP; `b` and
    x are this rank's slices. The initial guess is zero.

    solver: "BoomerAMG" (CG + hypre's BoomerAMG; the default where PETSc has
    hypre), "GAMG" (CG + PETSc's algebraic multigrid; the default otherwise),
    "GMRES" (GMRES + block Jacobi/ILU(0), for nonsymmetric A), "CG" (CG +
    Jacobi). CG needs A symmetric positive definite. `options_prefix="p_"`:
    after the named solver is set up, PETSc's options "-p_ksp_*", "-p_pc_*"
    (petsc_options or PETSC_OPTIONS) override it.

    Not converging within max_it iterations to rtol (relative to the norm of b) or
    atol is an InvalidArgumentError naming PETSc's reason, the iterations and
    the residual norm. Gradient: lambda = A^-T g (a transpose solve reusing
    the preconditioner) for b; -lambda_i x_j for the value at (i, j).

    Example::

        x = am.mpi_sparse_solve(A, b, solver="GAMG", rtol=1e-10)
        loss = am.mpi_allreduce(tf.reduce_sum(x ** 2))
        tf.gradients(loss, [A.values, b])   # one transpose solve
    """
    site = _site("mpi_sparse_solve", A)
    b = _vector(site, A, "b", b)
    solver = default_solver() if solver is None else solver
    if solver not in SOLVERS:
        raise site.error(ValueError, message("solver", solver, ", ".join(SOLVERS)))
    rtol, atol = float(rtol), float(atol)
    max_it = int(max_it)
    if not (0 <= rtol < 1 and atol >= 0 and max_it >= 1):
        raise site.error(
            ValueError,
            f"arguments 'rtol' = {rtol}, 'atol' = {atol}, 'max_it' = {max_it}: "
            "need 0 <= rtol < 1, atol >= 0, max_it >= 1",
        )
    settings = {"solver": solver, "rtol": rtol, "atol": atol, "max_it": max_it}
    return _run(
        site,
        A,
        "mpi_sparse_solve",
        b,
        name,
        transpose=bool(transpose),
        options_prefix=options_prefix or "",
        **settings,
    )


# ---- gradients: every one from the ops above, on the gradient communicator ----


def _layout(op):
    return {"N": op.get_attr("N"), "ilower": op.get_attr("ilower")}


def _rows_of(row_ptr):
    """The local row of each nonzero."""
    counts = row_ptr[1:] - row_ptr[:-1]
    return tf.repeat(tf.range(tf.size(counts, out_type=tf.int64)), counts)


def _value_gradient(op, token, local, remote):
    """local[row_k] * remote[col_k] for each nonzero k, with remote's entries
    gathered from their owners (the adjoint's second op)."""
    row_ptr, cols = op.inputs[0], op.inputs[1]
    at_cols, token = adjoint(
        op,
        token,
        lambda t, **c: _lib().mpi_sparse_gather(row_ptr, cols, remote, t, **_layout(op), **c),
    )
    return tf.gather(local, _rows_of(row_ptr)) * at_cols, token


@tf.RegisterGradient("MPISparseMatVec")
def _matvec_grad(op, grad, token_grad):
    row_ptr, cols, values, x = op.inputs[:4]
    g = cotangent(op, grad)
    transpose = op.get_attr("transpose")
    grad_x, token = adjoint(
        op,
        token_grad,
        lambda t, **c: _lib().mpi_sparse_mat_vec(
            row_ptr, cols, values, g, t, transpose=not transpose, **_layout(op), **c
        ),
    )
    # <g, A x>: d/dA_ij = g_i x_j;  <g, A^T x>: d/dA_ij = x_i g_j
    local, remote = (x, g) if transpose else (g, x)
    grad_values, token = _value_gradient(op, token, local, remote)
    return None, None, grad_values, grad_x, token


@tf.RegisterGradient("MPISparseSolve")
def _solve_grad(op, grad, token_grad):
    row_ptr, cols, values = op.inputs[:3]
    x = op.outputs[0]
    g = cotangent(op, grad)
    transpose = op.get_attr("transpose")
    settings = {k: op.get_attr(k) for k in ("solver", "rtol", "atol", "max_it", "options_prefix")}
    lam, token = adjoint(
        op,
        token_grad,
        lambda t, **c: _lib().mpi_sparse_solve(
            row_ptr, cols, values, g, t, transpose=not transpose, **settings, **_layout(op), **c
        ),
    )
    # A x = b: d/dA_ij = -lam_i x_j;  A^T x = b: d/dA_ij = -x_i lam_j
    local, remote = (x, lam) if transpose else (lam, x)
    grad_values, token = _value_gradient(op, token, local, remote)
    return None, None, -grad_values, lam, token


def _pair_gradient(adjoint_kernel):
    """The gather and the scatter-add are linear in their data and each
    other's adjoint: each one's gradient is the other op."""

    def gradient(op, grad, token_grad):
        row_ptr, cols = op.inputs[0], op.inputs[1]
        g = cotangent(op, grad)
        make = getattr(_lib(), adjoint_kernel)
        out, token = adjoint(
            op, token_grad, lambda t, **c: make(row_ptr, cols, g, t, **_layout(op), **c)
        )
        return None, None, out, token

    return gradient


tf.RegisterGradient("MPISparseGather")(_pair_gradient("mpi_sparse_scatter_add"))
tf.RegisterGradient("MPISparseScatterAdd")(_pair_gradient("mpi_sparse_gather"))
