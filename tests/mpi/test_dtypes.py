"""float16, bfloat16, complex64 and complex128 over every collective and
point-to-point op: forward against NumPy references built from every rank's
inputs (data movement bit for bit; reductions against float64 references
rounded to the dtype, and float16/bfloat16 sums shown to accumulate in
float32), at sizes on both sides of the 256 bytes that travel inside the
check; dot-product (adjoint) tests with different cotangents per rank and,
for complex values, complex cotangents and the conjugating inner product
(<w, J v> = <J^H w, v>: TensorFlow's convention, a gradient is J^H w); the
product's and the extrema's gradients and the product's second derivative
against TensorFlow's own for the same computation done locally; graph, eager
and tf.function agreeing bit for bit; and bad input (dtypes that differ
across ranks, max and min of complex values) failing on every rank with a
message naming op, argument and rank."""

import re

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
import test_modes
from adcme_mpi import ordering
from adcme_mpi._loader import ops as lib
from adcme_mpi.wrappers._callsite import CallSite
from helpers import (
    COMM,
    RANK,
    SIZE,
    adjoint_test,
    hvp_test,
    even_odd_ring,
    every_rank,
    rng,
    run_graph,
)

NARROW = [tf.float16, tf.bfloat16]
COMPLEX = [tf.complex64, tf.complex128]
NEW = NARROW + COMPLEX
# 256 bytes (kInlineBytes) is 128 two-byte elements (64 once widened to
# float32 for a sum), 32 complex64 and 16 complex128: each on both sides
SHAPES = [(), (3, 2), (16,), (17,), (32,), (33,), (64,), (65,), (128,), (129,)]
# one unit in the last place at 1, as a float64
EPS = {tf.float16: 2.0**-10, tf.bfloat16: 2.0**-7, tf.complex64: 2.0**-23, tf.complex128: 2.0**-52}


def wide(dtype):
    """The NumPy dtype a reference is computed in."""
    return np.complex128 if dtype.is_complex else np.float64


def data(shape, dtype, salt, ints=False):
    """This rank's values: normal, or small integers (exact in float16 and
    bfloat16 through the sums and products of a dot-product test); complex
    ones with an imaginary part."""
    g = rng(salt)

    def part():
        return (
            g.integers(-4, 5, size=shape).astype(np.float64) if ints else g.standard_normal(shape)
        )

    x = part() + 1j * part() if dtype.is_complex else part()
    return np.asarray(x).astype(dtype.as_numpy_dtype)


def as_wide(x, dtype):
    return np.asarray(x).astype(wide(dtype))


def assert_same(actual, expected, dtype, what):
    """Bit for bit (compared widened: NumPy has no bfloat16 of its own)."""
    assert np.asarray(actual).dtype == np.dtype(dtype.as_numpy_dtype), what
    np.testing.assert_array_equal(
        as_wide(actual, dtype), as_wide(expected, dtype), err_msg=f"rank {RANK}: {what}"
    )


def assert_rounded(actual, reference, dtype, what, ulps=1.0, scale=1.0):
    """`actual` within `ulps` units of the dtype of the float64 `reference`
    (rounded once to the dtype, as the kernel's float32 accumulation does)."""
    assert np.asarray(actual).dtype == np.dtype(dtype.as_numpy_dtype), what
    tol = ulps * EPS[dtype] * max(scale, 1.0)
    np.testing.assert_allclose(
        as_wide(actual, dtype), reference, rtol=tol, atol=tol, err_msg=f"rank {RANK}: {what}"
    )


def ring_partners():
    return (RANK + 1) % SIZE, (RANK - 1) % SIZE


# ---- forward ----


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", NEW, ids=lambda d: d.name)
def test_data_movement_forward(dtype, shape):
    x = data(shape, dtype, 1)
    rows = data((2 * SIZE,) + shape, dtype, 2)
    xs, all_rows = every_rank(x), every_rank(rows)
    nxt, prv = ring_partners()
    splits = [(k - RANK) % SIZE + 1 for k in range(SIZE)]  # rank r sends (k - r) % SIZE + 1 to k
    uneven = data((sum(splits),) + shape, dtype, 3)
    all_uneven = every_rank(uneven)

    def build():
        t, r, u = tf.constant(x), tf.constant(rows), tf.constant(uneven)
        out = {
            "bcast": am.mpi_bcast(t, SIZE - 1),
            "gather": am.mpi_gather(t, 0),
            "scatter": am.mpi_scatter(r, SIZE - 1),
            "allgather": am.mpi_allgather(t),
            "alltoall": am.mpi_alltoall(r),
            "alltoall_splits": am.mpi_alltoall(u, splits),
        }
        if SIZE > 1:
            out["exchange"] = am.mpi_exchange(t, nxt, prv)
            out["sendrecv"] = am.mpi_sendrecv(t, SIZE - 1, 0)
            out["sent"], out["recv"] = even_odd_ring(t)
        return out

    out = run_graph(build)
    stacked = np.stack(xs) if shape else np.asarray(xs)
    assert_same(out["bcast"], xs[SIZE - 1], dtype, "mpi_bcast")
    gathered = np.concatenate(xs) if shape else stacked
    assert_same(out["gather"], gathered if RANK == 0 else np.zeros_like(gathered), dtype, "gather")
    assert_same(out["scatter"], all_rows[SIZE - 1][2 * RANK : 2 * RANK + 2], dtype, "scatter")
    assert_same(out["allgather"], gathered, dtype, "mpi_allgather")
    mine = np.concatenate([all_rows[k][2 * RANK : 2 * RANK + 2] for k in range(SIZE)])
    assert_same(out["alltoall"], mine, dtype, "mpi_alltoall")
    pieces = []
    for k in range(SIZE):  # what rank k sends this rank: after its pieces for ranks < RANK
        sk = [(j - k) % SIZE + 1 for j in range(SIZE)]
        pieces.append(all_uneven[k][sum(sk[:RANK]) : sum(sk[: RANK + 1])])
    assert_same(out["alltoall_splits"], np.concatenate(pieces), dtype, "mpi_alltoall (splits)")
    if SIZE > 1:
        assert_same(out["exchange"], xs[prv], dtype, "mpi_exchange")
        expected = xs[0] if RANK == SIZE - 1 else x  # (sendrecv: others get their own a back)
        assert_same(out["sendrecv"], expected, dtype, "mpi_sendrecv")
        assert_same(out["recv"], xs[prv], dtype, "mpi_send/mpi_recv")


def reductions(dtype):
    return ["sum", "mean", "prod"] + ([] if dtype.is_complex else ["max", "min"])


NUMPY = {"sum": np.sum, "mean": np.mean, "prod": np.prod, "max": np.max, "min": np.min}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", NEW, ids=lambda d: d.name)
def test_reductions_forward(dtype, shape):
    x = data(shape, dtype, 4)
    block = data((SIZE,) + shape, dtype, 5)
    xs = np.stack([as_wide(a, dtype) for a in every_rank(x)])
    blocks = np.stack([as_wide(b, dtype) for b in every_rank(block)])
    ops = reductions(dtype)
    scans = [op for op in ops if op != "mean"]

    def build():
        t, b = tf.constant(x), tf.constant(block)
        out = {}
        for op in ops:
            out["allreduce", op] = am.mpi_allreduce(t, op=op)
            out["sum", op] = am.mpi_sum(t, SIZE - 1, op=op)
            out["reduce_scatter", op] = am.mpi_reduce_scatter(b, op)
        for op in scans:
            out["scan", op] = am.mpi_scan(t, op)
            out["exscan", op] = am.mpi_scan(t, op, exclusive=True)
        return out

    out = run_graph(build)
    # products and extrema are exact or rounded once; a sum's error is
    # relative to its terms, a mean's has one more rounding (the 1/size)
    terms = float(np.max(np.abs(xs))) if xs.size else 1.0
    for op in ops:
        ref = NUMPY[op](xs, axis=0)
        scale = terms * SIZE if op in ("sum", "mean") else 1.0
        ulps = 2.0 if op == "mean" else 1.0
        if dtype.is_complex:  # (computed in the dtype: a few roundings per rank)
            ulps = 4.0 * SIZE
        assert_rounded(out["allreduce", op], ref, dtype, f"allreduce {op}", ulps, scale)
        root = ref if RANK == SIZE - 1 else np.zeros_like(ref)
        assert_rounded(out["sum", op], root, dtype, f"mpi_sum {op}", ulps, scale)
        part = NUMPY[op](blocks, axis=0)[RANK : RANK + 1]
        bscale = float(np.max(np.abs(blocks))) * SIZE if op in ("sum", "mean") else 1.0
        assert_rounded(out["reduce_scatter", op], part, dtype, f"reduce_scatter {op}", ulps, bscale)
    identity = {"sum": 0.0, "prod": 1.0, "max": -np.inf, "min": np.inf}
    for op in scans:
        scale = terms * SIZE if op == "sum" else 1.0
        ulps = 4.0 * SIZE if dtype.is_complex else 1.0
        ref = NUMPY[op](xs[: RANK + 1], axis=0)
        assert_rounded(out["scan", op], ref, dtype, f"scan {op}", ulps, scale)
        exref = NUMPY[op](xs[:RANK], axis=0) if RANK else np.full(np.shape(x), identity[op])
        if RANK == 0:  # (identities exactly, infinities included)
            assert_same(out["exscan", op], exref, dtype, f"exclusive scan {op} on rank 0")
        else:
            assert_rounded(out["exscan", op], exref, dtype, f"exclusive scan {op}", ulps, scale)


@pytest.mark.parametrize("elements", [4, 100], ids=["inline", "separate"])
@pytest.mark.parametrize("dtype", NARROW, ids=lambda d: d.name)
def test_narrow_sums_accumulate_in_float32(dtype, elements):
    """Rank 0 holds 1, every other rank half a unit in the last place at 1:
    added in the dtype each addition would round back to 1 (to even); in
    float32 they add up before the one rounding."""
    if SIZE < 3:
        pytest.skip("two ranks add once: one rounding either way")
    half_ulp = EPS[dtype] / 2
    x = np.full([elements], 1.0 if RANK == 0 else half_ulp).astype(dtype.as_numpy_dtype)
    expected = np.asarray(1.0 + (SIZE - 1) * half_ulp).astype(dtype.as_numpy_dtype)
    assert float(expected) > 1.0  # (so the test can fail)
    out = run_graph(
        lambda: {
            "allreduce": am.mpi_allreduce(tf.constant(x)),
            "sum": am.mpi_sum(tf.constant(x), 0),
            "reduce_scatter": am.mpi_reduce_scatter(tf.constant(np.tile(x, SIZE))),
            "scan": am.mpi_scan(tf.constant(x)),
        }
    )
    for name, got in out.items():
        if name == "sum" and RANK != 0:
            continue
        if name == "scan" and RANK != SIZE - 1:
            continue
        assert_same(got, np.full(got.shape, expected), dtype, name)


# ---- gradients ----

# the linear cases of tests/mpi/test_modes.py (every collective and
# point-to-point op; not the halo exchange, which keeps its four dtypes, nor
# the sparse ops, which are float32/float64)
LINEAR = {
    case: spec
    for variants in test_modes.CASES.values()
    for case, spec in variants.items()
    if not case.startswith(("halo", "sparse", "sum_min"))
    and case not in ("allreduce_max", "allreduce_prod")
}
TOLERANCE = {tf.float16: 1e-2, tf.bfloat16: 5e-2, tf.complex64: 1e-5, tf.complex128: 1e-12}


def global_vdot(a, b):
    """sum over ranks of <a, b> = sum conj(a) b (complex128)."""
    return COMM.allreduce(complex(np.vdot(as_wide(a, tf.complex128), as_wide(b, tf.complex128))))


@adjoint_test(
    "mpi_sum",
    "mpi_allreduce",
    "mpi_bcast",
    "mpi_gather",
    "mpi_scatter",
    "mpi_allgather",
    "mpi_reduce_scatter",
    "mpi_scan",
    "mpi_alltoall",
    "mpi_send",
    "mpi_recv",
    "mpi_exchange",
    "mpi_sendrecv",
)
@pytest.mark.parametrize("case", sorted(LINEAR))
@pytest.mark.parametrize("dtype", NEW, ids=lambda d: d.name)
def test_adjoint(dtype, case):
    """sum_r <J^H w, v> == sum_r <w, J v>, with g = J^H w what tf.gradients
    returns for the cotangent w (different on every rank; complex ones for
    complex dtypes). float16 and bfloat16 use small integers, exact in them."""
    in_shape, out_shape, op = LINEAR[case]
    narrow = not dtype.is_complex
    x, v = data(in_shape, dtype, 10, narrow), data(in_shape, dtype, 11, narrow)
    w = data(out_shape, dtype, 12, narrow)

    def build():
        xt, vt = tf.constant(x), tf.constant(v)
        y = op(xt)
        return y, tf.gradients(y, xt, grad_ys=tf.constant(w))[0], op(vt)

    y, g, jv = run_graph(build)
    assert g.dtype == np.dtype(dtype.as_numpy_dtype) and g.shape == in_shape
    lhs, rhs = global_vdot(g, v), global_vdot(w, jv)
    scale = max(abs(lhs), abs(rhs), 1.0)
    assert abs(lhs - rhs) <= TOLERANCE[dtype] * scale, (
        f"rank {RANK}: {case} {dtype.name}: <J^H w, v> = {lhs!r} but <w, J v> = {rhs!r}"
    )


def local_equivalent(xs, ws, fn):
    """TensorFlow's own gradient of fn over axis 0 of every rank's x
    stacked, for the cotangents ws summed as the op's adjoint sums them:
    this rank's row."""
    X = tf.constant(np.stack(xs))
    G = tf.gradients(fn(X), X, grad_ys=tf.constant(np.sum(np.stack(ws), 0)))[0]
    return run_graph_local(G)[RANK]


def run_graph_local(t):
    with tf.compat.v1.Session(graph=t.graph) as sess:
        return sess.run(t)


NONLINEAR = {
    "allreduce_prod": (lambda t: am.mpi_allreduce(t, op="prod"), lambda X: tf.reduce_prod(X, 0)),
    "sum_prod": (lambda t: am.mpi_sum(t, SIZE - 1, op="prod"), lambda X: tf.reduce_prod(X, 0)),
    "allreduce_max": (lambda t: am.mpi_allreduce(t, op="max"), lambda X: tf.reduce_max(X, 0)),
    "sum_min": (lambda t: am.mpi_sum(t, 0, op="min"), lambda X: tf.reduce_min(X, 0)),
}


@pytest.mark.parametrize("case", sorted(NONLINEAR))
@pytest.mark.parametrize("dtype", NEW, ids=lambda d: d.name)
def test_nonlinear_gradient_against_tensorflow(dtype, case):
    """The product's (conj of the other ranks' product, in TF's convention)
    and the extrema's gradients equal tf.reduce_prod's / tf.reduce_max's for
    every rank's x stacked, with the cotangents the op's adjoint sums (root's
    only for mpi_sum)."""
    if dtype.is_complex and case in ("allreduce_max", "sum_min"):
        pytest.skip("complex numbers have no max or min (test_complex_max_min_*)")
    op, fn = NONLINEAR[case]
    x, w = data((5,), dtype, 20), data((5,), dtype, 21)

    def build():
        xt = tf.constant(x)
        return tf.gradients(op(xt), xt, grad_ys=tf.constant(w))[0]

    g = run_graph(build)
    xs, ws = every_rank(x), every_rank(w)
    if case.startswith("sum"):  # only the root's output is the reduction
        root = SIZE - 1 if case == "sum_prod" else 0
        ws = [w_ if r == root else np.zeros_like(w_) for r, w_ in enumerate(ws)]
    with tf.Graph().as_default():
        expected = local_equivalent(xs, ws, fn)
    assert g.dtype == np.dtype(dtype.as_numpy_dtype)
    # (the same products in another order: a few units in the last place)
    assert_rounded(g, as_wide(expected, dtype), dtype, f"{case} gradient", 8.0, 4.0)


@hvp_test("mpi_allreduce", "mpi_sum")
@pytest.mark.parametrize("case", ["allreduce_prod", "sum_prod"])
@pytest.mark.parametrize("dtype", COMPLEX, ids=lambda d: d.name)
def test_complex_prod_hvp_against_central_differences(dtype, case):
    """h, the gradient of <u, g> (g the gradient for cotangent w), through
    the product's adjoint: in TF's convention the change of L = sum_r
    Re<u_r, g_r> along v is sum_r Re<h_r, v_r>, which must equal that of the
    central difference of g along v. (tf.reduce_prod's own second derivative
    is no reference here: for complex values it disagrees with the product
    written out, which ours agrees with.)"""
    op, _ = NONLINEAR[case]
    x, v, w, u = (data((4,), dtype, s) for s in (30, 31, 32, 33))
    # The differences in complex128 for both dtypes, from the same (rounded)
    # data: in complex64 no step is both small enough for the product of up
    # to 6 ranks' values (truncation) and large enough for its rounding.
    eps = 1e-6
    wide = [a.astype(np.complex128) for a in (x, v, w)]

    def gradient(xt, wt):
        return tf.gradients(op(xt), xt, grad_ys=tf.constant(wt))[0]

    def build():
        xt = tf.constant(x)
        h = tf.gradients(gradient(xt, w), xt, grad_ys=tf.constant(u))[0]
        xw, vw, ww = wide
        return h, gradient(tf.constant(xw + eps * vw), ww), gradient(tf.constant(xw - eps * vw), ww)

    h, plus, minus = run_graph(build)
    change = global_vdot(h, v).real
    dg = (plus - minus) / (2 * eps)
    expected = global_vdot(u, dg).real
    tol = 1e-7 if dtype == tf.complex128 else 1e-3
    assert abs(change - expected) <= tol * max(abs(expected), 1.0), (
        f"rank {RANK}: {case} {dtype.name}: Re<h, v> = {change!r} but the central "
        f"difference gives {expected!r}"
    )


MODE_CASES = sorted(LINEAR) + ["allreduce_prod", "allreduce_max", "sum_min"]


@pytest.mark.parametrize("case", MODE_CASES)
@pytest.mark.parametrize("dtype", NEW, ids=lambda d: d.name)
def test_modes_agree(dtype, case):
    """Graph, eager and tf.function: the same forward and gradient bits."""
    if dtype.is_complex and case in ("allreduce_max", "sum_min"):
        pytest.skip("complex numbers have no max or min")
    variants = {k: v for vs in test_modes.CASES.values() for k, v in vs.items()}
    in_shape, out_shape, op = variants[case]
    x, w = data(in_shape, dtype, 40), data(out_shape, dtype, 41)
    results = {mode: test_modes.run_mode(mode, op, x, w) for mode in test_modes.MODES}
    y_graph, g_graph = results["graph"]
    assert y_graph.shape == out_shape and g_graph.shape == in_shape
    for mode in ("eager", "function"):
        y, g = results[mode]
        assert_same(y, y_graph, dtype, f"{mode} forward")
        assert_same(g, g_graph, dtype, f"{mode} gradient")


def test_int_dtypes_stay_forward_only():
    with tf.Graph().as_default():
        x = tf.constant([1, 2], tf.int32)
        assert tf.gradients(am.mpi_allreduce(x), x) == [None]


# ---- bad input ----


def expect_on_every_rank(build, op, pattern, error=tf.errors.InvalidArgumentError):
    with pytest.raises(error) as info:
        run_graph(build)
    text = str(info.value)
    assert re.search(rf"{op} \(rank {RANK} of {SIZE}\): {pattern}", text), text[-600:]


def needs_two():
    if SIZE == 1:
        pytest.skip("a difference across ranks needs two ranks")


@pytest.mark.parametrize(
    "op,mine,other,names",
    [
        ("mpi_allreduce", tf.float16, tf.bfloat16, ("half", "bfloat16")),
        ("mpi_sum", tf.float32, tf.float16, ("float", "half")),
        ("mpi_bcast", tf.complex64, tf.complex128, ("complex64", "complex128")),
        ("mpi_scan", tf.bfloat16, tf.float32, ("bfloat16", "float")),
        ("mpi_allgather", tf.complex128, tf.float64, ("complex128", "double")),
    ],
)
def test_dtypes_that_differ_fail_on_every_rank(op, mine, other, names):
    """A widened sum still compares the dtypes the ranks passed."""
    needs_two()
    dtype = other if RANK == SIZE - 1 else mine
    fn = getattr(am, op)
    extent = "the same dimensions after the first" if op == "mpi_allgather" else "shape"
    expect_on_every_rank(
        lambda: fn(tf.cast(tf.ones([3]), dtype)),
        op,
        rf"argument 'a' must have the same dtype and {extent} on every rank; got rank 0: "
        rf"{names[0]}\[3\].*rank {SIZE - 1}: {names[1]}\[3\]",
    )


@pytest.mark.parametrize(
    "name,call",
    [
        ("mpi_allreduce", lambda t: am.mpi_allreduce(t, op="max")),
        ("mpi_sum", lambda t: am.mpi_sum(t, op="min")),
        ("mpi_reduce_scatter", lambda t: am.mpi_reduce_scatter(tf.tile(t, [SIZE]), "max")),
        ("mpi_scan", lambda t: am.mpi_scan(t, "max")),
        ("mpi_scan", lambda t: am.mpi_scan(t, "min", exclusive=True)),
    ],
)
@pytest.mark.parametrize("dtype", COMPLEX, ids=lambda d: d.name)
def test_complex_max_min_are_python_errors(dtype, name, call):
    with pytest.raises(TypeError) as info:
        call(tf.constant([1 + 2j, 3j], dtype))
    assert re.fullmatch(
        rf"{name} \(rank {RANK} of {SIZE}\): argument 'op' = '(max|min)' is not defined for "
        rf"{dtype.name} \(complex numbers are not ordered\); use sum, mean or prod",
        str(info.value),
    ), str(info.value)


@pytest.mark.parametrize("reduction", ["max", "min"])
def test_complex_max_min_refused_by_the_kernel(reduction):
    """The raw op (the wrappers refuse first) fails on every rank too."""
    site = CallSite("mpi_allreduce", None, collective=True)

    def build():
        a = tf.constant([1 + 2j], tf.complex64)
        return ordering.run_in_order(
            lambda token: lib.mpi_allreduce(a, token, reduction=reduction, **site.comm_attrs)
        )[0]

    expect_on_every_rank(
        build,
        "mpi_allreduce",
        rf"argument 'op' = '{reduction}' is not defined for complex64 \(complex numbers are not "
        "ordered\\)",
    )


def test_unsupported_dtype_lists_the_new_ones():
    with pytest.raises(TypeError) as info:
        am.mpi_allreduce(tf.constant([1], tf.uint8))
    assert str(info.value) == (
        f"mpi_allreduce (rank {RANK} of {SIZE}): argument 'a' has dtype uint8; supported: "
        "float32, float64, int32, int64, float16, bfloat16, complex64, complex128"
    )


def test_halo_exchange_keeps_its_dtypes():
    m, n = test_modes.grid()
    with pytest.raises(TypeError, match=r"argument 'u' has dtype complex64; supported: float32, "):
        am.mpi_halo_exchange(tf.zeros([2, 2], tf.complex64), m, n)
