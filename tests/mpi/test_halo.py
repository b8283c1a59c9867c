"""mpi_halo_exchange: forward equals the window of the globally padded array;
gradient is the exact adjoint (dot-product test and explicit scatter-add)."""

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from helpers import (
    ALL_DTYPES,
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


def grids():
    return [(m, SIZE // m) for m in range(1, SIZE + 1) if SIZE % m == 0]


def block_shape(m, n, square):
    """Rectangular blocks that differ across block rows/columns (neighbours agree)."""
    i, j = divmod(RANK, n)
    return (3, 3) if square else (3 + i, 4 + 2 * j)


def layout(m, n, square):
    shapes = every_rank(block_shape(m, n, square))
    rows = [shapes[i * n][0] for i in range(m)]
    cols = [shapes[j][1] for j in range(n)]
    return np.concatenate([[0], np.cumsum(rows)]), np.concatenate([[0], np.cumsum(cols)])


def global_padded(blocks, m, n, w, fill, row_off, col_off, dtype):
    G = np.full((row_off[-1] + 2 * w, col_off[-1] + 2 * w), fill, dtype=dtype)
    for r, b in enumerate(blocks):
        i, j = divmod(r, n)
        G[w + row_off[i] : w + row_off[i + 1], w + col_off[j] : w + col_off[j + 1]] = b
    return G


def window(r, n, w, row_off, col_off):
    i, j = divmod(r, n)
    return (slice(row_off[i], row_off[i + 1] + 2 * w), slice(col_off[j], col_off[j + 1] + 2 * w))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("width", [1, 2])
@pytest.mark.parametrize("square", [True, False])
@pytest.mark.parametrize("grid", grids())
def test_halo_forward(grid, square, width, dtype):
    m, n = grid
    u = random(block_shape(m, n, square), dtype, 100)
    fill = 7 if np.issubdtype(dtype, np.integer) else -1.5
    out = run_graph(
        lambda: am.mpi_halo_exchange(tf.constant(u), m, n, fill_value=fill, width=width)
    )
    row_off, col_off = layout(m, n, square)
    G = global_padded(every_rank(u), m, n, width, fill, row_off, col_off, dtype)
    expected = G[window(RANK, n, width, row_off, col_off)]
    assert out.shape == (u.shape[0] + 2 * width, u.shape[1] + 2 * width)
    assert_close(out, expected, dtype, f"halo grid {m}x{n} width {width}")


@adjoint_test("mpi_halo_exchange")
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("width", [1, 2])
@pytest.mark.parametrize("square", [True, False])
@pytest.mark.parametrize("grid", grids())
def test_halo_adjoint(grid, square, width, dtype):
    m, n = grid
    shape = block_shape(m, n, square)
    padded = (shape[0] + 2 * width, shape[1] + 2 * width)
    x, v = random(shape, dtype, 110), random(shape, dtype, 111)
    w = random(padded, dtype, 112)

    def build():
        xt, vt = tf.constant(x), tf.constant(v)
        fill = tf.constant(0.5, dtype)
        y = am.mpi_halo_exchange(xt, m, n, fill_value=fill, width=width)
        gx, gf = tf.gradients(y, [xt, fill], grad_ys=tf.constant(w))
        # the op is affine in u; with fill 0 it is linear: the dot-product test
        return gx, gf, am.mpi_halo_exchange(vt, m, n, fill_value=0.0, width=width)

    gx, gf, opv = run_graph(build)
    lhs, rhs = global_dot(gx, v), global_dot(w, opv)
    assert abs(lhs - rhs) <= (1e-4 if dtype == np.float32 else 1e-11) * max(1, abs(lhs)), (lhs, rhs)

    # explicit adjoint: scatter-add every rank's cotangent window into the global padded array
    row_off, col_off = layout(m, n, square)
    acc = np.zeros((row_off[-1] + 2 * width, col_off[-1] + 2 * width))
    for r, wr in enumerate(every_rank(w)):
        acc[window(r, n, width, row_off, col_off)] += wr
    i, j = divmod(RANK, n)
    expected = acc[
        width + row_off[i] : width + row_off[i + 1], width + col_off[j] : width + col_off[j + 1]
    ]
    assert_close(gx, expected, dtype, "grad u")
    # fill_value's gradient: this rank's cotangent on its boundary ghost cells
    mask = np.zeros(padded, bool)
    if i == 0:
        mask[:width, :] = True  # noqa: E701
    if i == m - 1:
        mask[-width:, :] = True  # noqa: E701
    if j == 0:
        mask[:, :width] = True  # noqa: E701
    if j == n - 1:
        mask[:, -width:] = True  # noqa: E701
    assert_close(gf, w[mask].sum(), dtype, "grad fill_value")


@pytest.mark.skipif(SIZE != 6, reason="ADCME's example runs on a 3x2 grid")
def test_adcme_halo_example():
    """ADCME's test_halo_exchange.jl: U = 6x4 array 1..24 (row-major), 2x2 blocks
    on a 3x2 grid, fill 1.0."""
    U = np.arange(1.0, 25.0).reshape(6, 4)
    i, j = divmod(RANK, 2)
    u = U[2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
    out = run_graph(lambda: am.mpi_halo_exchange(tf.constant(u), 3, 2, fill_value=1.0))
    P = np.pad(U, 1, constant_values=1.0)
    np.testing.assert_array_equal(out, P[2 * i : 2 * i + 4, 2 * j : 2 * j + 4])
    if RANK == 3:  # block (1, 1): rows 3-4, cols 3-4 of U, in 1-based terms
        np.testing.assert_array_equal(
            out, [[6, 7, 8, 1], [10, 11, 12, 1], [14, 15, 16, 1], [18, 19, 20, 1]]
        )


def test_halo_tags_and_repeat():
    """Two exchanges with different tags in one graph, and their gradient."""
    m, n = grids()[-1]
    x = random((4, 5), np.float64, 120)

    def build():
        xt = tf.constant(x)
        a = am.mpi_halo_exchange(xt, m, n, tag=3)
        b = am.mpi_halo_exchange(2 * xt, m, n, tag=9)
        return a, b, tf.gradients(tf.reduce_sum(a) + tf.reduce_sum(b), xt)[0]

    a, b, g = run_graph(build)
    np.testing.assert_allclose(b, 2 * a)
    # each interior cell appears once in its own block and once in each
    # neighbour's ghost band that covers it; the count is at least 1, times 3
    assert np.all(g >= 3.0) and np.all(np.mod(g, 3.0) == 0)


@pytest.mark.skipif(SIZE != 2, reason="1x2 and 2x1 grids have same-sized edges on 2 ranks only")
def test_deferred_check_reports_a_grid_mismatch_the_exchange_survives():
    """The halo's check is deferred: with a 1x2 grid on rank 0 and a 2x1 grid
    on rank 1 the exchange itself succeeds, and the mismatch is reported on
    both ranks, by the halo op or by the next checked op (which names the
    halo). The ranks' checks stay in step: the next collective works."""
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"mpi_halo_exchange \(rank \d of 2\): rank \d called with m=[12], n=[12]",
    ):
        run_graph(lambda: am.mpi_halo_exchange(tf.ones([4, 4]), 1 + RANK, 2 - RANK))
        run_graph(lambda: am.mpi_sum(tf.ones(2)))
    total = run_graph(lambda: am.mpi_allreduce(tf.constant([1.0 + RANK])))
    assert_close(total, np.array([3.0]), np.float32)


def test_checks_left_in_flight_agree_with_collectives_between_them():
    """36 halo exchanges in a row (each leaves its check in flight: more than
    the 15 a family's ring of 16 slots allows, so the oldest are completed as
    new ones are posted), then
    collectives, which complete all earlier checks first, between more
    exchanges: the values are the NumPy reference's."""
    m, n = grids()[-1]
    x = random((3, 4), np.float64, 130)
    row_off = np.arange(m + 1) * 3
    col_off = np.arange(n + 1) * 4
    G = global_padded(every_rank(x), m, n, 1, 0.0, row_off, col_off, np.float64)
    padded_sums = [G[window(r, n, 1, row_off, col_off)].sum() for r in range(SIZE)]

    def build():
        u = tf.constant(x)
        total = tf.constant(0.0, tf.float64)
        for k in range(44):
            total += tf.reduce_sum(am.mpi_halo_exchange(u, m, n, tag=k % 5))
            if k in (35, 39):
                total = am.mpi_allreduce(total)
        return total

    first = 36 * sum(padded_sums)  # every rank's 36 sums, added by the first allreduce
    second = SIZE * first + 4 * sum(padded_sums)
    expected = second + 4 * padded_sums[RANK]
    assert_close(np.array(run_graph(build)), np.array(expected), np.float64)
