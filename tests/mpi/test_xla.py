"""XLA and the MPI ops: tf.function(jit_compile=True) around code that makes
an MPI op fails at once, naming the op and the rank, with what to do
instead; XLA-compiled arithmetic between MPI ops made outside it gives the
same numbers as without XLA. (Auto-clustering, which needs TF_XLA_FLAGS
before TensorFlow starts, is tests/launch/test_xla.py.)"""

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from helpers import RANK, SIZE, near_square_grid, random


def test_jit_compile_around_an_mpi_op_fails_at_once_and_says_what_to_do():
    @tf.function(jit_compile=True)
    def step(u):
        return am.mpi_allreduce(u * 2.0)

    with pytest.raises(am.XLACompilationError) as info:
        step(tf.constant([1.0, 2.0]))
    text = str(info.value)
    assert f"mpi_allreduce (rank {RANK} of {SIZE})" in text
    assert "keep the MPI ops outside" in text and "--tf_xla_auto_jit=2" in text


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_arithmetic_between_mpi_ops_matches_plain(dtype):
    m, n = near_square_grid()
    u0 = random((6, 5), dtype, 1)

    def stencil(padded, u):
        return u + 0.1 * (
            padded[1:-1, :-2] + padded[1:-1, 2:] + padded[:-2, 1:-1] + padded[2:, 1:-1] - 4 * u
        )

    compiled = tf.function(stencil, jit_compile=True)

    def run(step):
        @tf.function
        def loss_and_grad(u):
            with tf.GradientTape() as tape:
                tape.watch(u)
                v = u
                for _ in range(3):
                    v = step(am.mpi_halo_exchange(v, m, n), v)
                loss = am.mpi_allreduce(tf.reduce_sum(v * v))
            return loss, tape.gradient(loss, u)

        return [t.numpy() for t in loss_and_grad(tf.constant(u0))]

    plain, xla = run(stencil), run(compiled)
    tol = dict(rtol=2e-5) if dtype == np.float32 else dict(rtol=1e-12)
    for a, b in zip(plain, xla):
        np.testing.assert_allclose(b, a, **tol)
