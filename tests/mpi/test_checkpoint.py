"""ordering.checkpointed_loop: a heat-like loop with a halo exchange and an
allreduce in every step. Its forward and its gradients (initial state, an
explicit parameter, a tf.Variable the step reads) equal the stored loop's
(ordering.while_loop differentiated by TensorFlow) to rounding, for several
K, float32 and float64, eager, tf.function, tf.function(jit_compile=True)
(XLA compiles the loops whole, MPI ops included) and graph mode; the number of
steps it runs is the binomial schedule's; the cross-rank check stays on
during the recomputation."""

import numpy as np
import pytest
import tensorflow as tf

import adcme_mpi as am
from adcme_mpi.apps import heat
from helpers import RANK, assert_close, near_square_grid, rng

STEPS = 13
KS = [0, 1, 2, 5, STEPS + 2]  # none stored, one, two, a middle value, every step
SHAPE = (6, 5)  # this rank's block


def laplacian(up):
    return up[:-2, 1:-1] + up[2:, 1:-1] + up[1:-1, :-2] + up[1:-1, 2:] - 4.0 * up[1:-1, 1:-1]


class Problem:
    """One rank's data and the loop: u <- u + c kappa Lap(u) + i s (s a
    variable), e <- e + sum over ranks of |u|^2 (an allreduce per step)."""

    def __init__(self, dtype, salt=0):
        g = rng(100 + salt)
        self.dtype = dtype
        self.u0 = g.standard_normal(SHAPE).astype(dtype)
        self.kappa = (1.0 + 0.1 * g.standard_normal(SHAPE)).astype(dtype)
        self.w = g.standard_normal(SHAPE).astype(dtype)  # a different cotangent per rank
        self.source = (0.01 * g.standard_normal(SHAPE)).astype(dtype)
        self.m, self.n = near_square_grid()
        self.calls = None  # a counter variable, made with the graph that uses it

    def make_variables(self):
        self.s = tf.Variable(self.source)
        self.calls = tf.Variable(0, dtype=tf.int64, trainable=False)

    def step(self, i, state, kappa):
        u, e = state
        with tf.control_dependencies([self.calls.assign_add(1)]):  # (a v1 graph would prune it)
            u = tf.identity(u)
        up = am.mpi_halo_exchange(u, self.m, self.n, fill_value=0.0)
        un = u + 0.1 * kappa * laplacian(up) + 0.01 * tf.cast(i, u.dtype) * self.s
        return un, e + am.mpi_allreduce(tf.reduce_sum(un * un))

    def loss_and_grads(self, u0, kappa, K):
        """K None: the stored loop."""
        with tf.GradientTape() as tape:
            tape.watch([u0, kappa])
            u, e = self.loop(u0, kappa, K)
            loss = self.loss(u, e)
        return [loss, u] + tape.gradient(loss, [u0, kappa, self.s])

    def loss(self, u, e):
        # an MPI op after the loop: the loop's token then carries a gradient
        # (once, inside tf.function, TensorFlow then also differentiated the
        # checkpointed loop's stored forward loop: MPI ops racing the
        # block's own at 2 ranks, and under jit_compile=True XLA refused the
        # accumulators of that loop)
        return am.mpi_allreduce(tf.reduce_sum(self.w * u)) + 0.001 * e

    def loop(self, u0, kappa, K):
        e0 = tf.constant(0.0, u0.dtype)
        if K is None:
            _, u, e = am.ordering.while_loop(
                lambda i, u, e: i < STEPS,
                lambda i, u, e: [i + 1, *self.step(i, (u, e), kappa)],
                [tf.constant(0), u0, e0],
            )
            return u, e
        return am.ordering.checkpointed_loop(self.step, (u0, e0), STEPS, K, params=[kappa])

    def run(self, mode, K):
        """[loss, u, du0, dkappa, ds], steps run."""
        if mode == "graph":

            def build():
                self.make_variables()
                u0, kappa = tf.constant(self.u0), tf.constant(self.kappa)
                u, e = self.loop(u0, kappa, K)
                loss = self.loss(u, e)
                grads = tf.gradients(loss, [u0, kappa, self.s])
                with tf.control_dependencies(grads):
                    calls = self.calls.read_value()  # after every step has run
                return [loss, u] + grads, calls

            graph = tf.Graph()
            with graph.as_default():
                fetches = build()
                with am.Session(graph=graph) as sess:
                    sess.run(tf.compat.v1.global_variables_initializer())
                    return sess.run(fetches)
        self.make_variables()
        u0, kappa = tf.constant(self.u0), tf.constant(self.kappa)
        if mode == "eager":
            f = self.loss_and_grads
        else:
            f = tf.function(self.loss_and_grads, jit_compile=mode == "jit")
        out = f(u0, kappa, K)
        return [x.numpy() for x in out], int(self.calls.numpy())


def expected_calls(K):
    """The primal loop, the recomputed steps, the taped steps."""
    if K is None:
        return STEPS
    return 2 * STEPS + am.revolve.schedule(STEPS, min(K, STEPS)).advances


@pytest.mark.parametrize("mode", ["eager", "function", "jit", "graph"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gradients_equal_the_stored_loop(mode, dtype):
    problem = Problem(dtype)
    # compiled, the checkpointed loop is held to the uncompiled stored loop
    stored, calls = problem.run("function" if mode == "jit" else mode, None)
    assert calls == expected_calls(None)
    # a wrong gradient would differ by far more than rounding: check that it can
    assert np.max(np.abs(stored[3])) > 1e-3 and np.max(np.abs(stored[4])) > 1e-3
    names = ["loss", "u", "du0", "dkappa", "dsource"]
    for K in KS:
        got, calls = problem.run(mode, K)
        for name, a, b in zip(names, got, stored):
            assert_close(a, b, dtype, f"K={K} {mode}: {name}")
        assert calls == expected_calls(K), f"K={K} {mode}: {calls} steps run"


def test_the_recomputation_is_the_binomial_minimum():
    """The backward pass recomputes Griewank's minimum less the first sweep
    (which the primal loop does); for K = 0 every step from the start."""
    for K in range(0, STEPS + 1):
        advances = am.revolve.schedule(STEPS, K).advances
        assert advances == am.revolve.min_advances(STEPS, K) - (STEPS - 1), K
    assert am.revolve.schedule(STEPS, 0).advances == (STEPS - 1) * (STEPS - 2) // 2
    assert am.revolve.schedule(STEPS, STEPS - 1).advances == 0


def test_nested_state_and_no_params():
    """A dict state and no params: the structure comes back, the gradient of
    the initial state equals the stored loop's."""
    problem = Problem(np.float64, salt=1)
    problem.make_variables()

    def step(i, state):
        u, e = problem.step(i, (state["u"], state["e"]), tf.constant(problem.kappa))
        return {"u": u, "e": e}

    u0 = tf.constant(problem.u0)
    e0 = tf.constant(0.0, tf.float64)
    results = []
    for K in (None, 3):
        with tf.GradientTape() as tape:
            tape.watch(u0)
            if K is None:
                state = {"u": u0, "e": e0}
                for i in range(STEPS):
                    state = step(tf.constant(i), state)
            else:
                state = am.ordering.checkpointed_loop(step, {"u": u0, "e": e0}, STEPS, K)
            assert sorted(state) == ["e", "u"]
            loss = tf.reduce_sum(problem.w * state["u"]) + 0.001 * state["e"]
        results.append(tape.gradient(loss, u0).numpy())
    assert_close(results[1], results[0], np.float64, "du0 of a dict state")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"checkpointed_loop: need n_steps >= 1"):
        am.ordering.checkpointed_loop(lambda i, u: u, tf.ones(2), 0, 3)
    with pytest.raises(ValueError, match=r"checkpointed_loop: step returned 2 tensors"):
        am.ordering.checkpointed_loop(lambda i, u: (u, u), tf.ones(2), 3, 1)


def test_heat_gradient_equals_the_stored_loop():
    """The heat application (adcme_mpi.apps.heat) with checkpointed segments:
    loss and gradient of its inverse problem equal the stored loop's."""
    results = []
    for K in (None, 1, 4):
        problem = heat.HeatProblem(N=12, snapshots=2, checkpoints=K)
        graph = tf.Graph()
        with graph.as_default():
            observed = tf.zeros([2, problem.patch.rows, problem.patch.cols], tf.float64)
            theta0, loss, grad = heat.build_inverse(problem, observed)
            with am.Session(graph=graph) as sess:
                results.append(sess.run([loss, grad], {theta0: [1.2, 0.3, -0.2]}))
    assert RANK != 0 or np.max(np.abs(results[0][1])) > 1e-6  # (theta is rank 0's)
    for K, (loss, grad) in zip((1, 4), results[1:]):
        assert_close(loss, results[0][0], np.float64, f"heat loss, K={K}")
        assert_close(grad, results[0][1], np.float64, f"heat gradient, K={K}")
