"""Shared test helpers: per-rank random data, graph runs, NumPy references
from every rank's inputs, the dot-product (adjoint) test, and the tests'
lists keyed from the op table (adcme_mpi/op_table.py)."""

import os

import numpy as np
import pytest
import tensorflow as tf
from mpi4py import MPI

import adcme_mpi as am
from adcme_mpi import _loader, op_table
from adcme_mpi.wrappers import halo

COMM = MPI.COMM_WORLD
RANK = COMM.Get_rank()
SIZE = COMM.Get_size()

FLOAT_DTYPES = [np.float32, np.float64]
ALL_DTYPES = [np.float32, np.float64, np.int32, np.int64]
# Collectives of at most 256 bytes travel inside their check (ops/checks.cc,
# kInlineBytes): (32,) and (64,) are exactly 256 bytes for 8- and 4-byte
# dtypes, (64,) and (65,) are beyond it, so both paths run for every dtype.
SHAPES = [(), (5,), (3, 4), (2, 3, 2), (32,), (64,), (65,)]


def near_square_grid():
    """The most square m x n rank grid with m <= n (1x1, 1x2, 1x3, 2x2, 2x3)."""
    return halo.near_square_grid(SIZE)


def even_odd_ring(t):
    """(sent, got): every rank sends t to the next rank and receives the
    previous rank's; even ranks send first, odd ranks receive first (a
    rank-dependent order that is safe forward, and must be backward too)."""
    nxt, prv = (RANK + 1) % SIZE, (RANK - 1) % SIZE
    if RANK % 2 == 0:
        sent = am.mpi_send(t, nxt)
        return sent, am.mpi_recv(t, prv)
    got = am.mpi_recv(t, prv)
    return am.mpi_send(t, nxt), got


def assert_mpi_ops_in_one_chain(graph):
    """Every two MPI ops of `graph` that lower to XLA (op_table's `xla`
    column: all but the sparse ops, which XLA never compiles) are ordered by
    data dependencies alone: XLA keeps those and drops control edges, so
    under jit_compile or auto-clustering two MPI ops neither of which
    depends on the other may run in either order, and ranks could each pick
    another."""
    before = {}  # op name -> names of the MPI ops it depends on as data

    def find_mpi_before(op):
        # (not recursive: a graph may be deep; nor in creation order: a
        # while loop's gradient adds inputs to the forward loop afterwards)
        stack = [op]
        while stack:
            top = stack[-1]
            pending = [t.op for t in top.inputs if t.op.name not in before]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            deps = set()
            for t in top.inputs:
                deps |= before[t.op.name]
                if t.op.type.startswith("MPI"):
                    deps.add(t.op.name)
            before[top.name] = deps

    lowered = [
        op
        for op in graph.get_operations()
        if op.type.startswith("MPI") and op_table.by_type(op.type).xla
    ]
    mpi_ops = [op.name for op in lowered]
    for op in lowered:
        find_mpi_before(op)
    chain = sorted(mpi_ops, key=lambda name: len(before[name]))
    unordered = next(
        (
            f"{first} and {then}: neither depends on the other as data "
            f"(MPI ops in the graph: {mpi_ops})"
            for first, then in zip(chain, chain[1:])
            if first not in before[then]
        ),
        None,
    )
    # every rank fails together (graphs may differ by rank: the ring's order)
    failed = [f"rank {r}: {m}" for r, m in enumerate(COMM.allgather(unordered)) if m]
    assert not failed, "; ".join(failed)
    return chain


def rosenbrock_weighted_by_rank():
    """(graph, theta0, loss, gradient): theta0 broadcast from rank 0, rank r
    adding (r + 1) times Rosenbrock's function; minimum at [1, 1]."""
    graph = tf.Graph()
    with graph.as_default():
        theta0 = tf.compat.v1.placeholder(tf.float64, shape=[2])
        theta = am.mpi_bcast(theta0)
        x, y = theta[0], theta[1]
        loss = am.mpi_sum(((1 - x) ** 2 + 100 * (y - x**2) ** 2) * (RANK + 1))
        g = tf.gradients(loss, theta0)[0]
    return graph, theta0, loss, g


def rng(salt):
    """A generator that differs on every rank and for every salt."""
    return np.random.default_rng([salt, RANK])


def random(shape, dtype, salt):
    g = rng(salt)
    if np.issubdtype(dtype, np.integer):
        return g.integers(-50, 50, size=shape).astype(dtype)
    return g.standard_normal(shape).astype(dtype)


def every_rank(x):
    """[rank 0's x, rank 1's x, ...] on every rank."""
    return COMM.allgather(x)


def run_graph(build, **session_kw):
    """Build fetches in a fresh graph and run them once in an adcme_mpi Session."""
    graph = tf.Graph()
    with graph.as_default():
        fetches = build()
        with am.Session(graph=graph, **session_kw) as sess:
            return sess.run(fetches)


def tolerance(dtype):
    if np.dtype(dtype) == np.float32:
        return dict(rtol=2e-5, atol=2e-5)
    if np.dtype(dtype) == np.float64:
        return dict(rtol=1e-12, atol=1e-12)
    return dict(rtol=0, atol=0)


def assert_close(actual, expected, dtype, what=""):
    np.testing.assert_allclose(
        np.asarray(actual), np.asarray(expected), err_msg=f"rank {RANK}: {what}", **tolerance(dtype)
    )


def global_dot(a, b):
    return COMM.allreduce(float(np.vdot(np.asarray(a, np.float64), np.asarray(b, np.float64))))


def adjoint_check(op, x, w, v, salt_note=""):
    """Dot-product test for a linear distributed op: with y = op(x) and
    g = (d/dx) sum_ranks <w, y>, check sum_ranks <g, v> == sum_ranks <w, op(v)>.
    Returns (y, g, op(v)) as NumPy arrays on this rank."""

    def build():
        xt, vt = tf.constant(x), tf.constant(v)
        y = op(xt)
        g = tf.gradients(y, xt, grad_ys=tf.constant(w))[0]
        return y, g, op(vt)

    y, g, opv = run_graph(build)
    lhs, rhs = global_dot(g, v), global_dot(w, opv)
    scale = max(abs(lhs), abs(rhs), 1.0)
    tol = 1e-4 if np.dtype(x.dtype) == np.float32 else 1e-11
    assert abs(lhs - rhs) <= tol * scale, (
        f"rank {RANK}: adjoint test failed {salt_note}: <g,v> = {lhs!r} but <w,op(v)> = {rhs!r}"
    )
    return y, g, opv


# ---- the tests' lists, keyed from the op table ----
# tests/unit/test_op_table.py reads them from the source (no mpiexec) and
# fails for a public op without an adjoint test, a modes case or a
# second-order case, unless its row's `untested` says why.


def _public(names):
    unknown = [n for n in names if n not in op_table.public_ops()]
    if unknown:
        raise ValueError(f"{unknown} are not public ops of the op table (adcme_mpi/op_table.py)")
    return names


def adjoint_test(*names):
    """Marks a test as the adjoint (dot-product) test of these public ops;
    the names are written out (tests/unit/test_op_table.py reads them).
    tests/run_all.py counts the passed ones per op and rank count."""
    return pytest.mark.op_test("adjoint", *_public(names))


def hvp_test(*names):
    """Marks a test as a Hessian-vector-product test through these public ops
    (counted by tests/run_all.py, as adjoint_test)."""
    return pytest.mark.op_test("hvp", *_public(names))


def count_table_case(request, kind, cases, case_id):
    """Marks a table-driven test (test_modes, test_second_order) as a `kind`
    test ("adjoint" or "hvp") of the public op(s) its case belongs to."""
    for names, variants in cases.items():
        if case_id in variants:
            names = (names,) if isinstance(names, str) else names
            request.node.add_marker(pytest.mark.op_test(kind, *names))


def table_cases(kind, cases):
    """The case ids to parametrize a test over: `cases` maps a public op (or
    a tuple of them) to {case id: case}. A public op of the op table with no
    case here, and no reason in its row's `untested`, adds the id
    "missing:<op>", on which table_case fails."""
    covered, ids = set(), []
    for names, variants in cases.items():
        covered |= set(_public((names,) if isinstance(names, str) else names))
        ids += list(variants)
    assert len(ids) == len(set(ids)), f"case ids repeat: {ids}"
    for name in op_table.public_ops():
        if name not in covered and kind not in op_table.row_of(name).untested:
            ids.append(f"missing:{name}")
    return ids


def table_case(kind, cases, case_id):
    for variants in cases.values():
        if case_id in variants:
            return variants[case_id]
    name = case_id.removeprefix("missing:")
    pytest.fail(
        f"{name}, a public op of the op table (adcme_mpi/op_table.py), has no {kind} case: "
        f"add one, or the reason to its row's untested"
    )


def jit_refusal(cases, case_id):
    """What XLACompilationError must say for a table case's ops under
    tf.function(jit_compile=True), or None where they all lower (op_table's
    `xla` column: every op but the sparse ones)."""
    names = next(k for k, variants in cases.items() if case_id in variants)
    names = (names,) if isinstance(names, str) else names
    if not _loader.xla_loaded:
        return "this build has no XLA lowerings"
    if not set(names) <= set(op_table.xla_ops()):
        return "the sparse ops do not lower to XLA"
    return None


# ---- a small distributed sparse matrix (the sparse ops' cases) ----


def sparse_ops_usable():
    """Skips the test where the sparse ops were not built (no PETSc); with
    ADCME_MPI_REQUIRE_PETSC=1 (CI) that fails instead."""
    try:
        am.petsc_info()
    except am.PETScUnavailableError as err:
        if os.environ.get("ADCME_MPI_REQUIRE_PETSC") == "1":
            pytest.fail(f"the sparse ops cannot run: {err}")
        pytest.skip(f"sparse ops not built: {err}")


def sparse_rows():
    """This rank's rows of sparse_matrix(): 2 per rank, 3 on the last."""
    lo = 2 * RANK
    return lo, lo + (2 if RANK < SIZE - 1 else 3) - 1


def sparse_matrix(dtype=tf.float64):
    """This rank's rows of a symmetric positive definite N x N matrix, N =
    2 * SIZE + 1, coupling the first rank with the last (every column range
    is used by another rank)."""
    sparse_ops_usable()
    (lo, hi), n = sparse_rows(), 2 * SIZE + 1
    A = 4 * np.eye(n) - np.eye(n, k=1) - np.eye(n, k=-1)
    A += 0.5 * np.eye(n)[::-1] + n * np.eye(n)  # row i with row n-1-i; diagonally dominant
    rows, cols = np.nonzero(A[lo : hi + 1])
    indices = np.stack([rows + lo, cols], 1)
    return am.mpi_SparseTensor(indices, A[lo + rows, cols], lo, hi, n, dtype=dtype)
