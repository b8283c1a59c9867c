"""ADCME's seed-page examples, with the numbers ADCME gets."""

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from helpers import RANK, SIZE, run_graph


def test_simple_theta_powers():
    """test_simple.jl: L = sum_r theta^r, dL/dtheta, at theta = 2 (4 ranks: (15, 17))."""

    def build():
        theta = tf.constant(2.0, tf.float64)
        l = am.mpi_bcast(theta) ** am.mpi_rank()
        L = am.mpi_sum(l)
        return L, tf.gradients(L, theta)[0]

    L, g = run_graph(build)
    if RANK == 0:
        assert L == sum(2.0**r for r in range(SIZE))
        assert g == sum(r * 2.0 ** (r - 1) for r in range(SIZE))
        if SIZE == 4:
            assert (L, g) == (15.0, 17.0)
    else:
        assert L == 0.0


def test_reduce_sum_example():
    """'Reduce Sum': a = (1:10) * r, b = mpi_sum(a), gradient of sum(b) w.r.t. a."""

    def build():
        a = tf.constant(np.arange(1, 11, dtype=np.float64) * RANK)
        b = am.mpi_sum(a)
        return b, tf.gradients(tf.reduce_sum(b), a)[0]

    v, G = run_graph(build)
    expected = np.arange(1, 11) * sum(range(SIZE)) if RANK == 0 else np.zeros(10)
    np.testing.assert_array_equal(v, expected)
    # sum(b) is differentiated on every rank; only root's b depends on a.
    np.testing.assert_array_equal(G, np.ones(10))


@pytest.mark.skipif(SIZE < 4, reason="broadcasts from rank 3")
def test_broadcast_example():
    """'Broadcast': b = mpi_bcast(ones(10) * r, 3); L = mpi_sum(sum(b^2))."""

    def build():
        a = tf.constant(np.ones(10) * RANK)
        b = am.mpi_bcast(a, 3)
        L = am.mpi_sum(tf.reduce_sum(b**2))
        return b, tf.gradients(L, a)[0]

    v, G = run_graph(build)
    np.testing.assert_array_equal(v, np.full(10, 3.0))
    # On root 0, L = sum_r sum(b_r^2) and every b_r = a_3: dL/da_3 = SIZE * 2 * 3.
    expected = np.full(10, 2 * 3.0 * SIZE) if RANK == 3 else np.zeros(10)
    np.testing.assert_array_equal(G, expected)
