"""XLA and the MPI ops: mpi_allreduce (the ops of op_table.xla_ops()) lowers
to a side-effecting custom call inside tf.function(jit_compile=True), with
the same numbers, gradients, ordering and cross-rank errors as the plain op;
every other MPI op made there fails at once, naming the op and the rank,
with what to do instead; XLA-compiled arithmetic between MPI ops made
outside it gives the same numbers as without XLA. (Auto-clustering, which
needs TF_XLA_FLAGS before TensorFlow starts, is tests/launch/test_xla.py.)"""

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from helpers import (
    RANK,
    SIZE,
    assert_close,
    every_rank,
    global_dot,
    near_square_grid,
    random,
)

REFERENCE = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}


def test_jit_compile_around_an_op_that_does_not_lower_fails_at_once_and_says_what_to_do():
    @tf.function(jit_compile=True)
    def step(u):
        return am.mpi_bcast(u * 2.0)

    with pytest.raises(am.XLACompilationError) as info:
        step(tf.constant([1.0, 2.0]))
    text = str(info.value)
    assert f"mpi_bcast (rank {RANK} of {SIZE})" in text
    assert "the ops that compile there: mpi_allreduce" in text
    assert "keep the other MPI ops outside" in text and "--tf_xla_auto_jit=2" in text


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_allreduce_compiles_and_matches_numpy(dtype, op):
    a = random((3, 4), dtype, 11)

    @tf.function(jit_compile=True)
    def f(x):
        return am.mpi_allreduce(x * 2.0, op=op) + 1.0

    out = f(tf.constant(a)).numpy()
    expected = REFERENCE[op](np.stack(every_rank(a * 2)), axis=0) + 1
    assert out.dtype == dtype
    assert_close(out, expected.astype(dtype), dtype, f"compiled mpi_allreduce {op}")


def test_compiled_and_plain_allreduces_interleave_in_program_order():
    a = random((5,), np.float64, 12)

    @tf.function(jit_compile=True)
    def two(x):
        s = am.mpi_allreduce(x)
        return s, am.mpi_allreduce(x * s, op="max")

    @tf.function
    def mixed(x):
        s, m = two(x)
        return s, m, am.mpi_allreduce(m - x, op="min")

    s, m, n = (t.numpy() for t in mixed(tf.constant(a)))
    everyone = np.stack(every_rank(a))
    s_ref = everyone.sum(axis=0)
    m_ref = (everyone * s_ref).max(axis=0)
    n_ref = (m_ref - everyone).min(axis=0)
    for got, ref in ((s, s_ref), (m, m_ref), (n, n_ref)):
        assert_close(got, ref, np.float64, "mixed program")
    # eager ones before and after: one sequence of checks with the compiled calls
    before = am.mpi_allreduce(tf.constant(a)).numpy()
    again = two(tf.constant(a))[0].numpy()
    assert_close(before, again, np.float64, "eager then compiled")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_allreduce_adjoint(dtype):
    x, w, v = (random((2, 3), dtype, salt) for salt in (21, 22, 23))

    @tf.function(jit_compile=True)
    def grad_and_op_v(xt, wt, vt):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = am.mpi_allreduce(xt)
        return tape.gradient(y, xt, output_gradients=wt), am.mpi_allreduce(vt)

    g, opv = (t.numpy() for t in grad_and_op_v(tf.constant(x), tf.constant(w), tf.constant(v)))
    lhs, rhs = global_dot(g, v), global_dot(w, opv)
    tol = 1e-4 if dtype == np.float32 else 1e-11
    assert abs(lhs - rhs) <= tol * max(abs(lhs), abs(rhs), 1.0), (lhs, rhs)
    assert_close(g, np.sum(every_rank(w), axis=0), dtype, "grad = sum of cotangents")
    hlo = grad_and_op_v.experimental_get_compiler_ir(
        tf.constant(x), tf.constant(w), tf.constant(v)
    )(stage="hlo")
    assert hlo.count('custom_call_target="adcme_mpi_allreduce"') == 3, hlo


@pytest.mark.parametrize("op", ["max", "min"])
def test_compiled_extremum_gradient_matches_plain(op):
    x = np.round(random((6,), np.float64, 24))  # ties across ranks

    def grad(xt):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = am.mpi_allreduce(xt, op=op)
            loss = tf.reduce_sum(y * tf.range(1.0, 7.0, dtype=tf.float64))
        return tape.gradient(loss, xt)

    plain = tf.function(grad)(tf.constant(x)).numpy()
    compiled = tf.function(grad, jit_compile=True)(tf.constant(x)).numpy()
    assert_close(compiled, plain, np.float64, f"gradient of compiled {op}")


def test_shape_differing_across_ranks_inside_a_compiled_function_fails_on_every_rank():
    if SIZE == 1:
        pytest.skip("needs two ranks")

    @tf.function(jit_compile=True)
    def f(x):
        return am.mpi_allreduce(x)

    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        f(tf.ones([2 + (RANK == 1)]))
    message = str(info.value)
    for text in (
        f"mpi_allreduce (rank {RANK} of {SIZE})",
        "argument 'a' must have the same dtype and shape on every rank",
        "rank 0: float[2], rank 1: float[3]",
    ):
        assert text in message, message
    # the ranks are still in step: the next op works
    assert_close(am.mpi_allreduce(tf.ones([2])).numpy(), np.full(2, SIZE), np.float32, "after")


def test_hlo_has_the_side_effecting_custom_call_in_order():
    @tf.function(jit_compile=True)
    def f(x):
        return am.mpi_allreduce(am.mpi_allreduce(x) * 2.0, op="max")

    hlo = f.experimental_get_compiler_ir(tf.constant([1.0, 2.0]))(stage="hlo")
    calls = [line for line in hlo.splitlines() if "adcme_mpi_allreduce" in line]
    assert len(calls) == 2, hlo
    for line in calls:
        assert "custom_call_has_side_effect=true" in line, line
        assert "API_VERSION_TYPED_FFI" in line, line


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
