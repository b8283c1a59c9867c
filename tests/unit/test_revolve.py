"""The binomial checkpointing schedule (adcme_mpi.revolve), no MPI:
Griewank's closed form against a brute-force minimum, and every schedule
replayed: each restore finds the state it expects, each reverse step gets
the state before it, at most K checkpoints live at once, and the backward
pass recomputes exactly the minimum less the primal loop's first sweep."""

from functools import cache

import pytest

from adcme_mpi import revolve


@cache
def brute_force(l, c):
    """The fewest forward steps to reverse l steps from a stored start with c more slots."""
    if l <= 1:
        return 0
    if c == 0:
        return l * (l - 1) // 2
    return min(m + brute_force(l - m, c - 1) + brute_force(m, c) for m in range(1, l))


def test_closed_form_is_the_minimum():
    for l in range(1, 60):
        for c in range(0, 7):
            assert revolve.min_advances(l, c) == brute_force(l, c), (l, c)


def replay(n, K):
    """Run the schedule on positions instead of states; return the steps recomputed."""
    s = revolve.schedule(n, K)
    held = {}  # slot -> position of the state it holds
    for i, slot in enumerate(s.forward_slot):
        held[slot] = i
    held.pop(s.dummy, None)
    assert held[0] == 0
    recomputed = 0
    for q, (slot, position, segments) in enumerate(s.records):
        assert held[slot] == position, (n, K, q)
        for steps, store in segments:
            position += steps
            recomputed += steps
            if store != s.dummy:
                held[store] = position
        assert position == n - 1 - q, (n, K, q)  # the state before the step to reverse
        assert len([k for k in held if k not in (0, s.last)]) <= K
    assert recomputed == s.advances
    return recomputed


@pytest.mark.parametrize("n", [1, 2, 3, 7, 13, 40, 101])
def test_every_schedule_replays_and_is_minimal(n):
    for K in range(0, n + 2):
        recomputed = replay(n, min(K, n))
        assert recomputed == revolve.min_advances(n, K) - (n - 1), (n, K)
    assert replay(n, 0) == (n - 1) * (n - 2) // 2
    assert replay(n, n) == 0


def test_rule_for_k():
    for n in (10, 200, 2000):
        K = revolve.checkpoints_for(n)
        assert revolve.schedule(n, K).advances <= n
        assert K == 0 or revolve.schedule(n, K - 1).advances > n
    assert revolve.checkpoints_for(2000) == 60


def test_a_long_schedule_is_quick():
    replay(2000, 20)  # the benchmark's: built in well under a second


def test_bad_arguments():
    with pytest.raises(ValueError, match="checkpointed_loop: need n_steps >= 1"):
        revolve.Schedule(0, 3)


def test_control_flow_v1_is_refused():
    import tensorflow as tf

    import adcme_mpi as am

    tf.compat.v1.disable_control_flow_v2()
    try:
        with tf.Graph().as_default():
            with pytest.raises(NotImplementedError, match="checkpointed_loop: control flow v1"):
                am.ordering.checkpointed_loop(lambda i, u: u, tf.ones(2), 3, 1)
    finally:
        tf.compat.v1.enable_control_flow_v2()
