"""mpi_alltoall: forward against a NumPy reference built from every rank's
inputs (equal pieces, and uneven splits that differ across ranks, with
zero-length pieces); dot-product (adjoint) tests with different cotangents
per rank in graph mode, eagerly (GradientTape) and in tf.function; a
Hessian-vector product against central differences; bad input on one rank
failing on every rank."""

import re

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from helpers import (
    hvp_test,
    ALL_DTYPES,
    COMM,
    FLOAT_DTYPES,
    RANK,
    SIZE,
    adjoint_test,
    assert_close,
    every_rank,
    global_dot,
    random,
    run_graph,
)

# splits patterns: rank r sends splits(r)[k] slices to rank k
PATTERNS = {
    # equal pieces written out as splits
    "equal": lambda r: [2] * SIZE,
    # differ across ranks, with zeros (rank r sends nothing to rank k when r + 2k = 0 mod 3)
    "mixed": lambda r: [(r + 2 * k) % 3 for k in range(SIZE)],
    # rank 0 sends nothing at all (no rows); the last rank receives nothing
    "empty_ends": lambda r: [0 if r == 0 or k == SIZE - 1 else k + r for k in range(SIZE)],
}


def received_from(pattern, j, k):
    """(offset, length) in rank j's input of the piece it sends rank k."""
    splits = PATTERNS[pattern](j)
    return sum(splits[:k]), splits[k]


def rows_in(pattern, r=RANK):
    return sum(PATTERNS[pattern](r))


def rows_out(pattern, k=RANK):
    return sum(PATTERNS[pattern](j)[k] for j in range(SIZE))


def reference(pattern, a):
    """What this rank receives: from every rank j, j's piece for this rank."""
    pieces = []
    for j, x in enumerate(every_rank(a)):
        offset, length = received_from(pattern, j, RANK)
        pieces.append(x[offset : offset + length])
    return np.concatenate(pieces)


def expected_gradient(pattern, w):
    """The adjoint: this rank's input piece for rank k gets the slice of rank
    k's cotangent where k put that piece."""
    ws, pieces = every_rank(w), []
    for k in range(SIZE):
        start = sum(PATTERNS[pattern](j)[k] for j in range(RANK))  # before this rank's piece
        pieces.append(ws[k][start : start + PATTERNS[pattern](RANK)[k]])
    return np.concatenate(pieces)


# ---- forward ----


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("tail", [(), (3,), (2, 2)])
def test_equal_pieces(tail, dtype):
    a = random((2 * SIZE,) + tail, dtype, 1)

    def build():
        out = am.mpi_alltoall(tf.constant(a))
        assert out.shape == a.shape  # equal pieces keep a's static shape
        return out

    out = run_graph(build)
    assert out.dtype == dtype
    assert_close(out, reference("equal", a), dtype, "mpi_alltoall, equal pieces")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("pattern", ["mixed", "empty_ends"])
@pytest.mark.parametrize("as_tensor", [False, True], ids=["list", "tensor"])
def test_uneven_splits(as_tensor, pattern, dtype):
    a = random((rows_in(pattern), 3), dtype, 2)
    splits = PATTERNS[pattern](RANK)

    def build():
        given = tf.constant(splits, tf.int32) if as_tensor else splits
        out = am.mpi_alltoall(tf.constant(a), given)
        assert out.shape.as_list() == [None, 3]  # the received length is known at run time
        return out

    out = run_graph(build)
    assert out.shape == (rows_out(pattern), 3)
    assert_close(out, reference(pattern, a), dtype, f"mpi_alltoall, {pattern} splits")


def test_eager_and_function_forward():
    a = random((rows_in("mixed"), 2), np.float64, 3)
    splits = PATTERNS["mixed"](RANK)
    eager = am.mpi_alltoall(tf.constant(a), splits).numpy()
    function = tf.function(lambda t: am.mpi_alltoall(t, splits))(tf.constant(a)).numpy()
    expected = reference("mixed", a)
    np.testing.assert_array_equal(eager, expected)
    np.testing.assert_array_equal(function, expected)


SUB = COMM.Split(RANK % 2, RANK)  # (made at import, on every rank)


def test_on_a_sub_communicator():
    n, me = SUB.Get_size(), SUB.Get_rank()
    a = np.arange(n, dtype=np.float64) + 100 * RANK  # piece k: one number
    out = run_graph(lambda: am.mpi_alltoall(tf.constant(a), comm=SUB))
    members = SUB.allgather(RANK)  # world ranks of the sub-communicator, in its order
    np.testing.assert_array_equal(out, [100 * r + me for r in members])


# ---- adjoint ----


def forward_and_gradient(mode, pattern, x, w, v):
    """(y, g, op(v)) with g = d/dx sum_ranks <w, alltoall(x)>, in one mode."""
    splits = None if pattern is None else PATTERNS[pattern](RANK)

    def op(t):
        return am.mpi_alltoall(t, splits)

    if mode == "graph":

        def build():
            xt, vt = tf.constant(x), tf.constant(v)
            y = op(xt)
            return y, tf.gradients(y, xt, grad_ys=tf.constant(w))[0], op(vt)

        return run_graph(build)

    def run(xt, vt):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = op(xt)
        return y, tape.gradient(y, xt, output_gradients=tf.constant(w)), op(vt)

    if mode == "function":
        run = tf.function(run)
    return [t.numpy() for t in run(tf.constant(x), tf.constant(v))]


@adjoint_test("mpi_alltoall")
@pytest.mark.parametrize("mode", ["graph", "eager", "function"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("pattern", [None, "mixed", "empty_ends"])
def test_adjoint(pattern, dtype, mode):
    shape_in = (2 * SIZE, 2) if pattern is None else (rows_in(pattern), 2)
    shape_out = (2 * SIZE, 2) if pattern is None else (rows_out(pattern), 2)
    x, v = random(shape_in, dtype, 4), random(shape_in, dtype, 5)
    w = random(shape_out, dtype, 6)  # a different cotangent on every rank
    y, g, opv = forward_and_gradient(mode, pattern, x, w, v)
    assert g.shape == shape_in and g.dtype == dtype
    lhs, rhs = global_dot(g, v), global_dot(w, opv)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    assert abs(lhs - rhs) <= tol * max(abs(lhs), abs(rhs), 1.0), (lhs, rhs)
    name = pattern or "equal"
    assert_close(y, reference(name, x), dtype, "forward")
    assert_close(g, expected_gradient(name, w), dtype, "grad = alltoall back, transposed splits")


def test_int_dtypes_have_no_gradient():
    def build():
        t = tf.constant(np.arange(2 * SIZE, dtype=np.int32))
        return tf.gradients(am.mpi_alltoall(t), t)

    graph = tf.Graph()
    with graph.as_default():
        assert build() == [None]


# ---- second order ----


@hvp_test("mpi_alltoall")
@pytest.mark.parametrize("pattern", [None, "mixed"])
def test_hvp_against_differences(pattern):
    """H v of f(x) = sum_ranks sum(alltoall(x)^3 * c) against central
    differences of the gradient, and against the formula
    H v = A^T (6 c A(x) A(v)) (A the alltoall, A^T its adjoint)."""
    splits = None if pattern is None else PATTERNS[pattern](RANK)
    name = pattern or "equal"
    rows = 2 * SIZE if pattern is None else rows_in(pattern)
    x = np.random.default_rng([20, RANK]).uniform(0.5, 1.5, size=(rows, 2))
    v = np.random.default_rng([21, RANK]).standard_normal((rows, 2))
    c = np.random.default_rng([22, RANK]).standard_normal((rows_out(name), 2))

    def gradient(xt):
        y = am.mpi_alltoall(xt, splits)
        return tf.gradients(tf.reduce_sum(y**3 * tf.constant(c)), xt)[0]

    def build_hvp():
        xt = tf.constant(x)
        g = gradient(xt)
        return tf.gradients(tf.reduce_sum(g * tf.constant(v)), xt)[0]

    hv = run_graph(build_hvp)
    eps = 1e-4
    difference = run_graph(lambda: gradient(tf.constant(x + eps * v))) - run_graph(
        lambda: gradient(tf.constant(x - eps * v))
    )
    assert_close(hv, difference / (2 * eps), np.float32, "H v against differences")
    formula = expected_gradient(name, 6 * c * reference(name, x) * reference(name, v))
    assert_close(hv, formula, np.float64, "H v against its formula")


# ---- errors ----


def bad_on_one_rank(build, own, bad=SIZE - 1):
    """Rank `bad` gives bad input (the kernel finds it); every rank must get
    an InvalidArgumentError: `bad` its own message, the others one that names
    it and quotes it. Then the ranks are still in step."""
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run_graph(build)
    # (first: an assertion failing on one rank must not leave the others here)
    total = run_graph(lambda: am.mpi_allreduce(tf.constant([1.0])))
    assert_close(total, [float(SIZE)], np.float32, "the next collective")
    text = info.value.message
    mine = rf"mpi_alltoall \(rank {bad} of {SIZE}\): {own}"
    if RANK == bad:
        assert re.search(mine, text) and "has bad input" not in text, text[-600:]
    else:
        peers = (
            rf"mpi_alltoall \(rank {RANK} of {SIZE}\): rank {bad} has bad input, so this op "
            rf"fails on every rank: {mine}"
        )
        assert re.search(peers, text), text[-600:]


def test_splits_that_do_not_add_up_fail_on_every_rank():
    rows, bad = rows_in("mixed"), rows_in("mixed", SIZE - 1)

    def build():
        splits = PATTERNS["mixed"](RANK)
        if RANK == SIZE - 1:
            splits = [s + 1 if k == 0 else s for k, s in enumerate(splits)]
        return am.mpi_alltoall(tf.ones([rows, 2]), tf.constant(splits))

    bad_on_one_rank(
        build, rf"argument 'splits' adds up to {bad + 1} but 'a' has {bad} slices along axis 0"
    )


def test_wrong_number_of_splits_fails_on_every_rank():
    def build():
        n = SIZE + 1 if RANK == SIZE - 1 else SIZE
        return am.mpi_alltoall(tf.ones([n, 2]), tf.ones([n], tf.int64))

    bad_on_one_rank(
        build, rf"argument 'splits' has {SIZE + 1} entries; it must have one per rank \({SIZE}\)"
    )


def test_negative_split_fails_on_every_rank():
    def build():
        splits = [-1] + [1] * (SIZE - 1) if RANK == 0 else [1] * SIZE
        return am.mpi_alltoall(tf.ones([SIZE, 2]), tf.constant(splits))

    bad_on_one_rank(build, r"argument 'splits' has a negative entry -1 \(for rank 0\)", bad=0)


def test_first_dimension_not_divisible_fails_on_every_rank():
    bad = SIZE - 1
    rows = 2 * SIZE + 1 if RANK == bad else 2 * SIZE

    def build():
        # (a shape Python does not know: the kernel finds it)
        a = tf.compat.v1.placeholder_with_default(np.ones((rows, 2), np.float32), [None, 2])
        return am.mpi_alltoall(a)

    divisible_by = f"divisible by the communicator size {SIZE}" if SIZE > 1 else None
    if divisible_by is None:
        pytest.skip("every first dimension is divisible by 1")
    bad_on_one_rank(
        build,
        rf"argument 'a' must have a first dimension {divisible_by} when 'splits' is not given, "
        rf"got shape \[{2 * SIZE + 1},2\]",
    )


def needs_two():
    if SIZE == 1:
        pytest.skip("a difference across ranks needs two ranks")


def expect_on_every_rank(build, pattern):
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        run_graph(build)
    text = info.value.message
    assert re.search(rf"mpi_alltoall \(rank {RANK} of {SIZE}\): {pattern}", text), text[-600:]


def test_trailing_dimensions_that_differ_fail_on_every_rank():
    needs_two()
    cols = 3 if RANK == SIZE - 1 else 2
    expect_on_every_rank(
        lambda: am.mpi_alltoall(tf.ones([2 * SIZE, cols])),
        r"argument 'a' must have the same dtype and the same dimensions after the first on "
        rf"every rank; got rank 0: float\[{2 * SIZE},2\].*rank {SIZE - 1}: float\[{2 * SIZE},3\]",
    )


def test_dtypes_that_differ_fail_on_every_rank():
    needs_two()
    dtype = tf.float64 if RANK == SIZE - 1 else tf.float32
    splits = [1] * SIZE
    expect_on_every_rank(
        lambda: am.mpi_alltoall(tf.ones([SIZE, 2], dtype), splits),
        r"argument 'a' must have the same dtype and the same dimensions after the first on "
        rf"every rank; got rank 0: float\[{SIZE},2\].*rank {SIZE - 1}: double\[{SIZE},2\]",
    )


def test_splits_given_on_some_ranks_only_fail_on_every_rank():
    needs_two()
    splits = [2] * SIZE if RANK == 0 else None
    expect_on_every_rank(
        lambda: am.mpi_alltoall(tf.ones([2 * SIZE]), splits),
        r"argument 'splits' \(given or None\) and, when None, the first dimension of 'a' must be "
        rf"the same on every rank; got rank 0: given, rank 1: None with a.shape\[0\] = {2 * SIZE}",
    )


def test_equal_pieces_need_the_same_first_dimension():
    needs_two()
    rows = SIZE * (2 if RANK == 0 else 1)
    expect_on_every_rank(
        lambda: am.mpi_alltoall(tf.ones([rows, 2])),
        r"argument 'splits' \(given or None\) and, when None, the first dimension of 'a' must be "
        rf"the same on every rank; got rank 0: None with a.shape\[0\] = {2 * SIZE}, "
        rf"rank 1: None with a.shape\[0\] = {SIZE}",
    )


@pytest.mark.parametrize(
    "a_shape,splits,kind,text",
    [
        (
            (4, 2),
            [1] * (SIZE + 1),
            ValueError,
            r"argument 'splits' has {n} entries; it must have one per rank \({size}\)",
        ),
        (
            (4, 2),
            [5] + [0] * (SIZE - 1),
            ValueError,
            r"argument 'splits' adds up to 5 but 'a' has 4 slices along axis 0",
        ),
        (
            (4, 2),
            [-1] + [0] * (SIZE - 2) + [5] if SIZE > 1 else [-1],
            ValueError,
            r"argument 'splits' has a negative entry -1 \(for rank 0\)",
        ),
        ((), None, ValueError, r"argument 'a' must have at least one dimension, got a scalar"),
        ((2, 2), [1.5] * SIZE, TypeError, r"argument 'splits' must be a list or a 1-D int tensor"),
    ],
    ids=["count", "sum", "negative", "scalar", "float_splits"],
)
def test_static_errors_are_raised_when_the_op_is_made(a_shape, splits, kind, text):
    text = text.format(n=SIZE + 1, size=SIZE)
    with pytest.raises(kind, match=rf"^mpi_alltoall \(rank {RANK} of {SIZE}\): {text}"):
        am.mpi_alltoall(tf.ones(a_shape), splits)


def test_static_first_dimension_not_divisible():
    if SIZE == 1:
        pytest.skip("every first dimension is divisible by 1")
    with pytest.raises(
        ValueError,
        match=rf"argument 'a' must have a first dimension divisible by the communicator size "
        rf"{SIZE}",
    ):
        am.mpi_alltoall(tf.ones([2 * SIZE + 1]))
