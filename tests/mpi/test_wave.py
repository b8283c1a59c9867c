"""adcme_mpi.apps.wave, small enough for CI: the leapfrog scheme against a
manufactured solution (second-order convergence, the order computed), the
traces on N ranks against one rank (COMM_SELF, in-process), the gradient of
the inverse problem's misfit by a Taylor test, and the checkpointed loop's
gradient against the stored loop's, float64 and float32."""

import numpy as np
import pytest
import tensorflow as tf
from mpi4py import MPI

from helpers import RANK, run_graph

from adcme_mpi.apps import wave

N = 12  # divisible by every grid the default factorisation picks for 1, 2, 3, 4, 6 ranks


def test_leapfrog_converges_at_second_order():
    errors = [wave.manufactured_error(n) for n in (12, 24, 48)]
    h = [1.0 / (n + 1) for n in (12, 24, 48)]
    orders = [np.log(errors[k] / errors[k + 1]) / np.log(h[k] / h[k + 1]) for k in range(2)]
    assert errors[-1] < 5e-3, errors
    assert all(1.8 < p < 2.3 for p in orders), (errors, orders)


def test_traces_at_any_rank_count_equal_one_rank():
    dist = wave.WaveProblem(N=N, T=0.8, f0=6.0)
    serial = wave.WaveProblem(N=N, T=0.8, f0=6.0, grid=(1, 1), comm=MPI.COMM_SELF)
    c = lambda p: tf.constant(wave.true_velocity(p.x, p.y))  # noqa: E731
    local = run_graph(lambda: dist.traces(c(dist)))
    whole = run_graph(lambda: serial.traces(c(serial)))
    assert np.max(np.abs(whole)) > 1e-3  # the wave reached the receivers
    np.testing.assert_allclose(dist.gather_traces(local), whole, rtol=0, atol=1e-12)
    np.testing.assert_allclose(local, dist.local_traces(whole), rtol=0, atol=1e-12)


def loss_and_gradient(problem, observed, points):
    """[(loss, gradient)] at each c in points (rank 0's counts)."""
    graph = tf.Graph()
    with graph.as_default():
        c0, loss, grad = wave.build_inverse(problem, observed)
        with wave.Session(graph=graph) as sess:
            return [sess.run([loss, grad], {c0: c}) for c in points]


def observed_traces(problem):
    c_true = wave.true_velocity(problem.x, problem.y)
    return problem.gather_traces(run_graph(lambda: problem.traces(tf.constant(c_true))))


def test_gradient_passes_the_taylor_test():
    """|J(c + e dc) - J(c)| = O(e), |J(c + e dc) - J(c) - e <g, dc>| = O(e^2)."""
    problem = wave.WaveProblem(N=N, T=0.6, checkpoints=2)
    observed = observed_traces(problem)
    rng = np.random.default_rng(3)  # the same direction on every rank
    c = np.full(N * N, wave.C_BACKGROUND)
    dc = rng.uniform(-0.1, 0.1, N * N)
    eps = [0.01 / 2**k for k in range(4)]
    first, second = wave.taylor_remainders(problem, observed, c, dc, eps)
    rate1 = np.log2(np.array(first[:-1]) / first[1:])
    rate2 = np.log2(np.array(second[:-1]) / second[1:])
    assert np.all((rate1 > 0.9) & (rate1 < 1.1)), (first, rate1)
    assert np.all((rate2 > 1.8) & (rate2 < 2.2)), (second, rate2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_checkpointed_gradient_equals_the_stored_loop(dtype):
    """K = 0 (every step recomputed from the start) and a small K against
    the stored loop (float32: one K, the cheap case)."""
    Ks = (0, 3) if dtype == np.float64 else (2,)
    observed = observed_traces(wave.WaveProblem(N=N, T=0.4))
    results = []
    for K in (None, *Ks):
        problem = wave.WaveProblem(N=N, T=0.4, checkpoints=K, dtype=dtype)
        c = (wave.C_BACKGROUND + 0.05 * np.sin(np.arange(N * N))).astype(dtype)
        results.append(loss_and_gradient(problem, observed, [c])[0])
    if RANK != 0:
        return
    assert np.max(np.abs(results[0][1])) > 1e-4, results[0]  # a gradient that can differ
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == np.float64 else dict(rtol=2e-5, atol=1e-7)
    for K, (loss, grad) in zip(Ks, results[1:]):
        np.testing.assert_allclose(loss, results[0][0], **tol, err_msg=f"loss K={K}")
        np.testing.assert_allclose(
            grad, results[0][1], rtol=tol["rtol"], atol=tol["rtol"] * np.max(np.abs(grad))
        )
