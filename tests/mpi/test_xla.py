"""XLA and the MPI ops: every op but the sparse ones (op_table's `xla`
column) lowers to a side-effecting custom call inside
tf.function(jit_compile=True) that runs the op's own kernel, with the same
numbers, gradients, ordering and cross-rank errors as the plain op (every
op forward and gradient, bit for bit: test_modes.py's jit mode; HVPs:
test_second_order.py's; Keras: test_data_parallel.py). Here: allreduce
against NumPy, compiled and plain ops in one sequence, errors inside a
compiled function (bad input, shapes that only the other ranks decide),
the HLO, a whole compiled heat step, and the sparse ops' refusal, naming
the op and the rank, with what to do instead. (Auto-clustering, which
needs TF_XLA_FLAGS before TensorFlow starts, is tests/launch/test_xla.py.)"""

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from helpers import (
    RANK,
    SIZE,
    assert_close,
    assert_mpi_ops_in_one_chain,
    every_rank,
    global_dot,
    near_square_grid,
    random,
    sparse_matrix,
    sparse_rows,
)

REFERENCE = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}


def test_jit_compile_around_a_sparse_op_fails_at_once_and_says_why_and_what_to_do():
    A = sparse_matrix()  # (skips without PETSc; fails there under ADCME_MPI_REQUIRE_PETSC=1)
    lo, hi = sparse_rows()

    @tf.function(jit_compile=True)
    def step(u):
        return A @ (u * 2.0)

    with pytest.raises(am.XLACompilationError) as info:
        step(tf.ones([hi - lo + 1], tf.float64))
    text = str(info.value)
    assert f"mpi_sparse_matvec (rank {RANK} of {SIZE})" in text
    assert "the sparse ops do not lower to XLA" in text
    assert "Keep it outside" in text and "--tf_xla_auto_jit=2" in text


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
    calls = [line for line in hlo.splitlines() if 'custom_call_target="adcme_mpi_op"' in line]
    assert len(calls) == 3 and all('op_type="MPIAllreduce"' in line for line in calls), hlo


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
    calls = [line for line in hlo.splitlines() if 'custom_call_target="adcme_mpi_op"' in line]
    assert len(calls) == 2, hlo
    for line in calls:
        assert 'op_type="MPIAllreduce"' in line, line
        assert "custom_call_has_side_effect=true" in line, line
        assert "API_VERSION_TYPED_FFI" in line, line


def tape_loss_and_gradient(k0):
    """The loss's last op (mpi_sum) ends the tape's token chain: the tape
    fills its token's gradient with a constant zero. An mpi_bcast made
    outside the tape: the tape never sees it, yet it comes after mpi_sum.
    An mpi_scan made after the gradient, of data the adjoints do not feed:
    its forward token predates them, so only the order they were made in
    puts it after them."""
    m, n = near_square_grid()
    u0 = tf.constant(random((6, 5), np.float64, 7))
    with tf.GradientTape() as tape:
        tape.watch(k0)
        k = am.mpi_bcast(k0)
        p = am.mpi_halo_exchange(u0 * k, m, n)
        loss = am.mpi_sum(am.mpi_allreduce(tf.reduce_sum(p * p)))
    outside = am.mpi_bcast(tf.constant(float(RANK + 1), tf.float64))
    gradient = tape.gradient(loss, k0)
    return loss, gradient, am.mpi_scan(outside * 2.0)


def test_gradient_tape_under_jit_orders_every_mpi_op_by_data_not_control_edges():
    """XLA keeps data dependencies and drops control edges. Every MPI op of
    a compiled function must depend as data on the one made before it:
    before the fix the first adjoint took the tape's constant zero as its
    token, and at 2 ranks one rank reached the adjoint of mpi_sum while the
    other was still at its forward mpi_allreduce (bench_xla's FEM job).
    (Second derivatives, where a first-order adjoint's token went through
    arithmetic: test_second_order.py checks every op's chain.)"""
    k0 = tf.constant(0.5, tf.float64)
    compiled = tf.function(tape_loss_and_gradient, jit_compile=True)
    chain = assert_mpi_ops_in_one_chain(compiled.get_concrete_function(k0).graph)
    # bcast halo allreduce sum, bcast (outside) | sum' allreduce' halo' bcast' | scan
    assert len(chain) == 10, chain
    assert [name.startswith("gradient_tape/") for name in chain] == [False] * 5 + [True] * 4 + [
        False
    ], chain
    results = compiled(k0)
    for name, got, want in zip(["loss", "gradient", "scan"], results, tape_loss_and_gradient(k0)):
        assert_close(got, want, np.float64, name)


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


def test_allgather_whose_length_other_ranks_decide_fails_on_every_rank_then_works_outside():
    """XLA fixes the output shape when it compiles, from this rank's input;
    first dimensions that differ across ranks make another shape: every rank
    fails with the same message, and the ranks stay in step."""
    if SIZE == 1:
        pytest.skip("needs two ranks")
    mine = tf.ones([1 + RANK, 2])

    @tf.function(jit_compile=True)
    def f(x):
        return am.mpi_allgather(x)

    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        f(mine)
    message = str(info.value)
    total = SIZE * (SIZE + 1) // 2
    compiled = SIZE * (1 + RANK)  # what this rank's input makes XLA assume
    for text in (
        f"mpi_allgather (rank {RANK} of {SIZE})",
        "output shape is fixed when XLA compiles, from this rank's input",
        f"compiled as [{compiled}, 2] and the ranks' inputs make [{total}, 2]"
        if compiled != total  # (at 3 ranks, rank 1's guess is right: it fails all the same)
        else "another rank's compiled shape differs",
        "call it outside jit_compile=True",
    ):
        assert text in message, message
    assert am.mpi_allgather(mine).shape == (total, 2)  # plain: lengths exchanged inside


def test_bad_root_inside_a_compiled_function_is_the_plain_ops_error_on_every_rank():
    @tf.function(jit_compile=True)
    def f(x, root):
        return am.mpi_bcast(x, root)

    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        f(tf.ones([3]), tf.constant(SIZE + 2))
    message = str(info.value)
    assert f"mpi_bcast (rank {RANK} of {SIZE}): argument 'root' = {SIZE + 2}" in message, message
    assert_close(f(tf.ones([3]) * (RANK + 1), tf.constant(0)).numpy(), np.ones(3), np.float32, "")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_whole_heat_steps_compiled_with_their_halo_exchanges_match_plain(dtype):
    """Halo exchanges, stencil and the loss's allreduce in one XLA function,
    forward and gradient, against the same steps without XLA."""
    m, n = near_square_grid()
    u0 = random((6, 5), dtype, 2)

    def loss_and_grad(u):
        with tf.GradientTape() as tape:
            tape.watch(u)
            v = u
            for _ in range(3):
                p = am.mpi_halo_exchange(v, m, n)
                v = v + 0.1 * (p[1:-1, :-2] + p[1:-1, 2:] + p[:-2, 1:-1] + p[2:, 1:-1] - 4 * v)
            loss = am.mpi_allreduce(tf.reduce_sum(v * v))
        return loss, tape.gradient(loss, u)

    plain = [t.numpy() for t in tf.function(loss_and_grad)(tf.constant(u0))]
    compiled_fn = tf.function(loss_and_grad, jit_compile=True)
    compiled = [t.numpy() for t in compiled_fn(tf.constant(u0))]
    # (XLA fuses the stencil's arithmetic: rounding differs, near zero too)
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(plain, compiled):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * np.abs(a).max())
    hlo = compiled_fn.experimental_get_compiler_ir(tf.constant(u0))(stage="hlo")
    ops = [line for line in hlo.splitlines() if 'custom_call_target="adcme_mpi_op"' in line]
    # 3 exchanges, 3 adjoint exchanges, the allreduce and its gradient's
    assert sum('op_type="MPIHaloExchange"' in line for line in ops) == 3, hlo
    assert sum('op_type="MPIHaloExchangeGrad"' in line for line in ops) == 3, hlo
