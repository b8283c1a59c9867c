"""Distributed sparse matrices on PETSc (mpi_SparseTensor), at every rank count:

- uneven row stripes (rank 0 owns a single row when there are several
  ranks), nonzeros in columns owned by other ranks;
- forward against SciPy on the gathered matrix (the same global matrix at
  every rank count, so the answers are the same too): A @ x, A.T @ y, solves
  with every solver and their transposes, in float32 and float64;
- dot-product (adjoint) tests with different cotangents per rank, with
  respect to the vector and to the values, for the product, its transpose
  and the solve;
- a Taylor test of the solve, and Hessian-vector products through the
  product and the solve against differences of the gradient;
- every cross-rank error: stripes with a gap or an overlap, N differing,
  solver arguments differing, non-convergence; and the local ones.

Skipped where the sparse ops were not built (no PETSc); with
ADCME_MPI_REQUIRE_PETSC=1 (CI's PETSc stages) that is a failure instead."""

import os

import numpy as np
import pytest
import scipy.sparse as sp
import tensorflow as tf

import adcme_mpi as am
from helpers import (
    COMM,
    RANK,
    SIZE,
    adjoint_check,
    adjoint_test,
    global_dot,
    rng,
    run_graph,
    hvp_test,
)

UNUSABLE = None  # why the sparse ops cannot run here, where CI requires them
try:
    PETSC = am.petsc_info()
except (am.PETScUnavailableError, am.MPILibraryMismatchError) as err:
    if os.environ.get("ADCME_MPI_REQUIRE_PETSC") != "1" and isinstance(
        err, am.PETScUnavailableError
    ):
        pytest.skip(f"sparse ops not built: {err}", allow_module_level=True)
    UNUSABLE, PETSC = err, {"hypre": False}


@pytest.fixture(autouse=True)
def _sparse_ops_usable():
    """Every test here fails (not the whole session) where the sparse ops
    should work and do not."""
    if UNUSABLE is not None:
        pytest.fail(f"the sparse ops cannot run: {type(UNUSABLE).__name__}: {UNUSABLE}")


SOLVERS = ["GAMG", "CG", "GMRES"] + (["BoomerAMG"] if PETSC["hypre"] else [])
FLOATS = [np.float32, np.float64]


def stripes():
    """Rows per rank: uneven, and a single row on rank 0 when there are several ranks."""
    sizes = [1 if r == 0 and SIZE > 1 else 3 + r for r in range(SIZE)]
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return sizes, starts


SIZES, STARTS = stripes()
N = int(STARTS[-1])
LO, HI = int(STARTS[RANK]), int(STARTS[RANK + 1]) - 1


def global_matrix(n=N, seed=7):
    """The same matrix on every rank: symmetric positive definite, with
    entries far from the diagonal (columns owned by other ranks)."""
    B = sp.random(n, n, density=0.35, random_state=seed, format="csr")
    A = (B + B.T).tocsr()
    A = A + sp.diags(np.asarray(abs(A).sum(axis=1)).ravel() + 1.0)
    return A.tocsr()


def nonsymmetric_matrix(n=N, seed=11):
    B = sp.random(n, n, density=0.35, random_state=seed, format="csr")
    return (B + sp.diags(np.asarray(abs(B).sum(axis=1)).ravel() + 1.0)).tocsr()


def local(G, dtype=np.float64, values=None):
    return am.mpi_SparseTensor.from_scipy(G[LO : HI + 1], LO, N, values=values, dtype=dtype)


def my(v):
    return np.asarray(v)[LO : HI + 1]


def global_vector(seed):
    return np.random.default_rng(seed).standard_normal(N)


def tol(dtype):
    return dict(rtol=2e-4, atol=2e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)


def test_columns_owned_by_other_ranks_are_used():
    G = global_matrix()
    mine = G[LO : HI + 1].tocoo()
    outside = (mine.col < LO) | (mine.col > HI)
    counts = COMM.allgather(int(outside.sum()))
    assert SIZE == 1 or sum(counts) > 0


@pytest.mark.parametrize("dtype", FLOATS)
def test_products_match_scipy(dtype):
    G = global_matrix()
    x = global_vector(1)

    def build():
        A = local(G, dtype)
        xt = tf.constant(my(x).astype(dtype))
        return A @ xt, A.T @ xt

    y, yt = run_graph(build)
    assert y.dtype == dtype and y.shape == (HI - LO + 1,)
    np.testing.assert_allclose(y, my(G @ x), **tol(dtype))
    np.testing.assert_allclose(yt, my(G.T @ x), **tol(dtype))


@pytest.mark.parametrize("dtype", FLOATS)
def test_nonsymmetric_transpose_product(dtype):
    G = nonsymmetric_matrix()
    x = global_vector(2)
    y, yt = run_graph(
        lambda: (
            local(G, dtype) @ tf.constant(my(x).astype(dtype)),
            local(G, dtype).T @ tf.constant(my(x).astype(dtype)),
        )
    )
    np.testing.assert_allclose(y, my(G @ x), **tol(dtype))
    np.testing.assert_allclose(yt, my(G.T @ x), **tol(dtype))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("solver", SOLVERS)
def test_solves_match_scipy(solver, dtype):
    G = nonsymmetric_matrix() if solver == "GMRES" else global_matrix()
    b = global_vector(3)
    rtol = 1e-6 if dtype == np.float32 else 1e-12

    def build():
        A = local(G, dtype)
        bt = tf.constant(my(b).astype(dtype))
        return A.solve(bt, solver=solver, rtol=rtol), A.T.solve(bt, solver=solver, rtol=rtol)

    x, xt = run_graph(build)
    dense = G.toarray()
    np.testing.assert_allclose(x, my(np.linalg.solve(dense, b)), **tol(dtype))
    np.testing.assert_allclose(xt, my(np.linalg.solve(dense.T, b)), **tol(dtype))


def test_coo_and_csr_forms_with_repeated_and_unordered_entries():
    """The (indices, values) form sums repeated pairs and takes any order;
    from_csr is ADCME's (rows, ncols, cols) form."""
    G = global_matrix()
    mine = G[LO : HI + 1].tocoo()
    rows, cols, vals = mine.row + LO, mine.col, mine.data
    order = rng(5).permutation(len(vals))
    # every entry split in two halves, in shuffled order
    indices = np.concatenate([np.stack([rows, cols], 1)[order]] * 2)
    values = np.concatenate([vals[order] * 0.25, vals[order] * 0.75])
    csr = G[LO : HI + 1].tocsr()
    x = global_vector(4)

    def build():
        xt = tf.constant(my(x))
        A = am.mpi_SparseTensor(indices, values, LO, HI, N)
        B = am.mpi_SparseTensor.from_csr(
            np.arange(LO, HI + 1), np.diff(csr.indptr), csr.indices, csr.data, LO, HI, N
        )
        return A @ xt, B @ xt, A.to_dense()

    y1, y2, dense = run_graph(build)
    np.testing.assert_allclose(y1, my(G @ x), rtol=1e-12)
    np.testing.assert_allclose(y2, my(G @ x), rtol=1e-12)
    np.testing.assert_allclose(dense, G.toarray(), rtol=1e-12)


# ---- adjoints ----


@adjoint_test("mpi_sparse_matvec", "mpi_sparse_solve")
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("kind", ["matvec", "transpose", "solve", "transpose solve"])
def test_adjoint_with_respect_to_the_vector(kind, dtype):
    G = nonsymmetric_matrix() if "transpose" in kind else global_matrix()
    solver = "GMRES" if "transpose" in kind else "GAMG"
    rtol = 1e-7 if dtype == np.float32 else 1e-13

    def op(x):
        A = local(G, dtype)
        return {
            "matvec": lambda: A @ x,
            "transpose": lambda: A.T @ x,
            "solve": lambda: A.solve(x, solver=solver, rtol=rtol),
            "transpose solve": lambda: A.T.solve(x, solver=solver, rtol=rtol),
        }[kind]()

    m = HI - LO + 1
    x, w, v = (rng(s).standard_normal(m).astype(dtype) for s in (10, 11, 12))
    adjoint_check(op, x, w, v, kind)


@adjoint_test("mpi_sparse_matvec")
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("transpose", [False, True])
def test_adjoint_of_the_product_with_respect_to_the_values(transpose, dtype):
    """values -> A(values) @ x0 is linear in the values."""
    G = nonsymmetric_matrix()
    x0 = my(global_vector(13)).astype(dtype)
    nnz = G[LO : HI + 1].nnz

    def op(values):
        A = local(G, dtype, values=values)
        return (A.T if transpose else A) @ tf.constant(x0)

    m = HI - LO + 1
    values = rng(14).standard_normal(nnz).astype(dtype)
    w = rng(15).standard_normal(m).astype(dtype)
    v = rng(16).standard_normal(nnz).astype(dtype)
    adjoint_check(op, values, w, v, f"values transpose={transpose}")


def solve_loss_and_gradient(G, values, b, w, transpose=False):
    """sum over ranks of <w, A(values)^-1 b> and its gradient (values, b)."""

    def build():
        vt, bt = tf.constant(values), tf.constant(b)
        A = local(G, values=vt)
        x = (A.T if transpose else A).solve(bt, solver="GMRES", rtol=1e-14)
        loss = tf.reduce_sum(x * w)
        return loss, tf.gradients(loss, [vt, bt])

    loss, (gv, gb) = run_graph(build)
    return COMM.allreduce(float(loss)), gv, gb


@pytest.mark.parametrize("transpose", [False, True])
def test_solve_gradient_taylor(transpose):
    """|L(v + h dv) - L(v) - h <dL/dv, dv>| falls as h^2 (and the same for b)."""
    G = nonsymmetric_matrix()
    values = G[LO : HI + 1].tocoo().data.copy()
    m = HI - LO + 1
    b, w = rng(20).standard_normal(m), rng(21).standard_normal(m)
    dv = rng(22).standard_normal(len(values)) * values  # relative perturbations
    L0, gv, gb = solve_loss_and_gradient(G, values, b, w, transpose)
    slope = global_dot(gv, dv)
    residuals = []
    for h in (1e-2, 5e-3, 2.5e-3):
        L, _, _ = solve_loss_and_gradient(G, values + h * dv, b, w, transpose)
        residuals.append(abs(L - L0 - h * slope))
    ratios = [residuals[i] / residuals[i + 1] for i in range(2)]
    assert all(3.0 < r < 5.0 for r in ratios), (residuals, ratios)
    # the solve is linear in b: the gradient is exact
    db = rng(23).standard_normal(m)
    L, _, _ = solve_loss_and_gradient(G, values, b + db, w, transpose)
    assert abs(L - L0 - global_dot(gb, db)) <= 1e-9 * max(1.0, abs(L0))


@adjoint_test("mpi_sparse_solve")
def test_solve_adjoint_with_respect_to_the_values_by_differences():
    """The gradient's direction derivative agrees with a central difference."""
    G = global_matrix()
    values = G[LO : HI + 1].tocoo().data.copy()
    m = HI - LO + 1
    b, w = rng(24).standard_normal(m), rng(25).standard_normal(m)
    dv = rng(26).standard_normal(len(values))
    _, gv, _ = solve_loss_and_gradient(G, values, b, w)
    h = 1e-6
    Lp, _, _ = solve_loss_and_gradient(G, values + h * dv, b, w)
    Lm, _, _ = solve_loss_and_gradient(G, values - h * dv, b, w)
    assert abs((Lp - Lm) / (2 * h) - global_dot(gv, dv)) <= 1e-6 * max(1.0, abs(Lp))


# ---- second derivatives ----


def hvp(G, values, x, dv, dx):
    """Gradient of f(values, x) = sum_ranks |A^-1 (A x)|^2 / 2 + |A x|^2 / 2 ... and
    its Hessian-vector product along (dv, dx)."""

    def build():
        vt, xt = tf.constant(values), tf.constant(x)
        A = local(G, values=vt)
        y = A @ xt
        z = A.solve(y * y, solver="GMRES", rtol=1e-14)
        f = 0.5 * tf.reduce_sum(z * z) + 0.5 * tf.reduce_sum(y * y)
        gv, gx = tf.gradients(f, [vt, xt])
        inner = tf.reduce_sum(gv * dv) + tf.reduce_sum(gx * dx)
        hv, hx = tf.gradients(inner, [vt, xt])
        return gv, gx, hv, hx

    return run_graph(build)


@hvp_test("mpi_sparse_matvec", "mpi_sparse_solve")
def test_hessian_vector_product_through_product_and_solve():
    G = nonsymmetric_matrix()
    values = G[LO : HI + 1].tocoo().data.copy()
    m = HI - LO + 1
    x = rng(30).standard_normal(m) * 0.3
    dv, dx = rng(31).standard_normal(len(values)), rng(32).standard_normal(m)
    _, _, hv, hx = hvp(G, values, x, dv, dx)
    eps = 1e-5
    gvp, gxp, _, _ = hvp(G, values + eps * dv, x + eps * dx, dv, dx)
    gvm, gxm, _, _ = hvp(G, values - eps * dv, x - eps * dx, dv, dx)
    fd_v, fd_x = (gvp - gvm) / (2 * eps), (gxp - gxm) / (2 * eps)
    scale = max(np.abs(fd_v).max(), np.abs(fd_x).max(), 1.0)
    err = max(np.abs(hv - fd_v).max(), np.abs(hx - fd_x).max()) / scale
    assert COMM.allreduce(err, op=__import__("mpi4py").MPI.MAX) < 1e-6


# ---- modes, reuse ----


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_eager_and_tf_function(mode):
    G = global_matrix()
    b = my(global_vector(40))
    values = tf.constant(G[LO : HI + 1].tocoo().data.copy())

    def f(vals, bt):
        with tf.GradientTape() as tape:
            tape.watch([vals, bt])
            x = local(G, values=vals).solve(bt, solver="GAMG", rtol=1e-12)
            loss = tf.reduce_sum(x)
        return x, tape.gradient(loss, [vals, bt])

    run = tf.function(f) if mode == "function" else f
    x, (gv, gb) = run(values, tf.constant(b))
    expected, (ev, eb) = run_graph(lambda: graph_reference(G, b))
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gb.numpy(), eb, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(gv.numpy(), ev, rtol=1e-8, atol=1e-12)


def graph_reference(G, b):
    vals = tf.constant(G[LO : HI + 1].tocoo().data.copy())
    bt = tf.constant(b)
    x = local(G, values=vals).solve(bt, solver="GAMG", rtol=1e-12)
    return x, tf.gradients(tf.reduce_sum(x), [vals, bt])


def test_setup_is_reused_and_values_update_in_place():
    """One matrix set up for a pattern, however many solves and values; the
    backward pass's transpose solve reuses it."""
    import ctypes

    from adcme_mpi import _loader

    capi = _loader.sparse_library()[1]
    seconds, setups = ctypes.c_double(), ctypes.c_int64()
    G = global_matrix(seed=17)  # a pattern no other test uses
    b = my(global_vector(41))

    def build():
        scale = tf.compat.v1.placeholder(tf.float64, [])
        vals = tf.constant(G[LO : HI + 1].tocoo().data.copy()) * scale
        x = local(G, values=vals).solve(tf.constant(b), solver="GAMG", rtol=1e-12)
        return scale, x, tf.gradients(tf.reduce_sum(x), vals)[0]

    graph = tf.Graph()
    with graph.as_default():
        scale, x, g = build()
        with am.Session(graph=graph) as sess:
            results = []
            for k, s in enumerate([1.0, 2.0, 1.0]):
                results.append(sess.run([x, g], {scale: s}))
                capi.adcme_mpi_sparse_last_solve(ctypes.byref(seconds), ctypes.byref(setups))
                if k == 0:
                    first = setups.value
    assert setups.value == first  # no new set-up after the first run
    np.testing.assert_allclose(results[1][0], results[0][0] / 2, rtol=1e-9)
    np.testing.assert_allclose(results[2][0], results[0][0], rtol=1e-9)


# ---- errors ----


def expect_error(build, *patterns, kind=tf.errors.InvalidArgumentError):
    with pytest.raises(kind) as info:
        run_graph(build)
    for p in patterns:
        assert p in str(info.value), str(info.value)
    return str(info.value)


def test_stripes_with_a_gap():
    lo = LO + 1 if RANK == SIZE - 1 else LO  # the last rank leaves its first row out
    G = global_matrix()
    sub = G[lo : HI + 1]

    def build():
        A = am.mpi_SparseTensor.from_scipy(sub, lo, N)
        return A @ tf.constant(np.ones(HI - lo + 1))

    message = expect_error(build, "tile rows", f"rank {SIZE - 1}")
    assert "mpi_sparse_matvec (rank" in message


def test_stripes_that_overlap():
    if SIZE == 1:
        pytest.skip("an overlap needs two ranks")
    lo = LO - 1 if RANK == 1 else LO  # rank 1 also claims rank 0's last row
    sub = global_matrix()[lo : HI + 1]
    expect_error(
        lambda: am.mpi_SparseTensor.from_scipy(sub, lo, N) @ tf.constant(np.ones(HI - lo + 1)),
        "tile rows",
        "rank 1 starts at row",
    )


def test_N_differs_across_ranks():
    if SIZE == 1:
        pytest.skip("needs two ranks")
    n = N + 1 if RANK == SIZE - 1 else N
    hi = n - 1 if RANK == SIZE - 1 else HI  # the last rank's stripe reaches its N
    G = global_matrix(n)
    expect_error(
        lambda: (
            am.mpi_SparseTensor.from_scipy(G[LO : hi + 1], LO, n)
            @ tf.constant(np.ones(hi - LO + 1))
        ),
        "argument 'N' must be the same on every rank",
        f"rank {SIZE - 1}: {N + 1}",
    )


@pytest.mark.parametrize("argument", ["rtol", "solver", "max_it"])
def test_solver_arguments_differ_across_ranks(argument):
    if SIZE == 1:
        pytest.skip("needs two ranks")
    G = global_matrix()
    mine = {"rtol": 1e-8, "solver": "GAMG", "max_it": 100}
    last = {"rtol": 1e-9, "solver": "CG", "max_it": 50}[argument]
    if RANK == SIZE - 1:
        mine[argument] = last
    expect_error(
        lambda: local(G).solve(tf.constant(np.ones(HI - LO + 1)), **mine),
        f"argument '{argument}' must be the same on every rank",
        f"rank {SIZE - 1}: {last}",
    )


def test_non_convergence_is_an_error():
    G = global_matrix()
    expect_error(
        lambda: local(G).solve(
            tf.constant(my(global_vector(50))), solver="CG", rtol=1e-15, max_it=1
        ),
        "did not converge",
        "DIVERGED_ITS",
        "after 1 iterations",
        "residual norm",
    )


def test_indices_as_a_graph_constant_adcme_form():
    """ADCME's scripts pass tf.constant(indices) in graph mode: taken as the
    NumPy form is; indices computed when the graph runs are a clear error."""
    mine = global_matrix()[LO : HI + 1].tocoo()
    indices = np.stack([mine.row + LO, mine.col], 1)
    x = global_vector(8)

    def build():
        xt = tf.constant(my(x))
        A = am.mpi_SparseTensor(tf.constant(indices), mine.data, LO, HI, N)
        B = am.mpi_SparseTensor(indices, mine.data, LO, HI, N)
        return A @ xt, B @ xt

    y_constant, y_array = run_graph(build)
    np.testing.assert_array_equal(y_constant, y_array)
    np.testing.assert_allclose(y_array, my(global_matrix() @ x), rtol=1e-12)
    with tf.Graph().as_default():
        computed = tf.compat.v1.placeholder(tf.int64, shape=indices.shape)
        with pytest.raises(TypeError, match=r"'indices' is computed when the graph runs") as info:
            am.mpi_SparseTensor(computed, mine.data, LO, HI, N)
    assert f"mpi_SparseTensor (rank {RANK} of {SIZE})" in str(info.value)


def test_local_errors_name_op_argument_and_rank():
    G = global_matrix()
    sub = G[LO : HI + 1].tocoo()
    pairs = np.stack([sub.row + LO, sub.col], 1)
    where = f"(rank {RANK} of {SIZE})"
    with pytest.raises(ValueError, match=r"column .* out of range") as info:
        am.mpi_SparseTensor(pairs + [[0, N]], sub.data, LO, HI, N)
    assert where in str(info.value) and "'indices'" in str(info.value)
    with pytest.raises(ValueError, match="outside this rank's stripe"):
        am.mpi_SparseTensor(
            pairs + [[1, 0]] if HI + 1 < N else pairs - [[1, 0]], sub.data, LO, HI, N
        )
    with pytest.raises(ValueError, match="0 <= ilower <= iupper < N"):
        am.mpi_SparseTensor(pairs, sub.data, LO, LO - 1, N)
    with pytest.raises(TypeError, match="'values' has dtype"):
        am.mpi_SparseTensor(pairs, sub.data.astype(np.complex64), LO, HI, N)
    A = local(G)
    with pytest.raises(ValueError, match=r"argument 'x' has shape .* it must be this rank's slice"):
        A @ np.ones(HI - LO + 2)
    with pytest.raises(ValueError, match="argument 'solver' = 'LU' is not one of"):
        A.solve(np.ones(HI - LO + 1), solver="LU")


def test_options_prefix_hands_control_to_petsc_and_its_errors_come_back():
    """PETSc's options database overrides the named solver; an option PETSc
    rejects is a TensorFlow error naming the call and PETSc's message, on
    every rank, and the process lives on (the next solve works)."""
    G = global_matrix()
    b = my(global_vector(60))
    am.petsc_options("-ctl_ksp_type gmres -ctl_pc_type jacobi -ctl_ksp_rtol 1e-12")
    x = run_graph(lambda: local(G).solve(tf.constant(b), solver="GAMG", options_prefix="ctl_"))
    np.testing.assert_allclose(x, my(np.linalg.solve(G.toarray(), global_vector(60))), rtol=1e-8)
    am.petsc_options("-bad_pc_type no_such_preconditioner")
    message = expect_error(
        lambda: local(G).solve(tf.constant(b), options_prefix="bad_"),
        "mpi_sparse_solve (rank",
        "KSPSetFromOptions",
        "no_such_preconditioner",
        kind=tf.errors.InternalError,
    )
    assert "PETSc error" in message
    again = run_graph(lambda: local(G).solve(tf.constant(b), solver="GAMG", rtol=1e-12))
    np.testing.assert_allclose(again, x, rtol=1e-8)
