"""Binomial checkpointing schedules (Griewank & Walther's revolve) for
`ordering.checkpointed_loop`: pure Python, no TensorFlow.

A loop of n steps is reversed with the initial state and K more stored
states. The schedule depends only on n and K, so every rank runs the same
one (and so creates the same MPI ops in the same order).

Cost model (Griewank 1992; Griewank & Walther 2000): reversing l steps from a
stored state at the start of the range, with c free slots besides it, needs
at least `min_advances(l, c)` forward steps besides the l steps taped for
their adjoint: r l - C(s + r, s + 1) with s = c + 1 and r the smallest
integer with C(s + r, s) >= l. The recursion below attains it: advance m
steps, store, reverse the last l - m steps with one slot less, then the
first m with the slot back. `checkpointed_loop` runs the first sweep (the
advances along the right spine of that recursion, up to step n - 1) inside
the primal loop and keeps the state before the last step, so its backward
pass recomputes exactly `min_advances(n, K) - (n - 1)` steps.
"""

from functools import cache, lru_cache
from math import comb

__all__ = ["min_advances", "schedule", "checkpoints_for"]


def _reps(l, s):
    """The smallest r with C(s + r, s) >= l (s >= 1 stored states)."""
    r = 0
    while comb(s + r, s) < l:
        r += 1
    return r


def min_advances(l, c):
    """The fewest forward steps (besides the l taped ones) that reverse l
    steps with the start state stored and c more slots.

    Example::

        am.revolve.min_advances(2000, 60)   # 3984: the first sweep (1999) + 1985 recomputed
    """
    if l <= 1:
        return 0
    s = c + 1
    r = _reps(l, s)
    return r * l - comb(s + r, s + 1)


@cache
def _split(l, c):
    """An m (1 <= m < l) attaining min_advances(l, c) = m + cost(l - m, c - 1) + cost(m, c)."""
    best = min_advances(l, c)
    # the optimal m is near the largest one (the right part needs fewer
    # recomputations per step than the left); scan from there
    for m in range(l - 1, 0, -1):
        if m + min_advances(l - m, c - 1) + min_advances(m, c) == best:
            return m
    raise AssertionError(f"no binomial split for l={l}, c={c}")  # pragma: no cover


class Schedule:
    """The schedule of n steps with K slots besides the initial state.

    Slots: 0 holds the initial state, 1..K the checkpoints, `dummy` = K + 1
    takes writes that keep nothing, `last` = K + 2 the state before step
    n - 1 (kept by the primal loop).

    - `forward_slot[i]`: where the primal loop writes the state before step i
      (`dummy` for most i).
    - `records[q]` for the q-th reverse step, step j = n - 1 - q:
      (restore slot, position of that slot's state, [(advance, store slot), ...]);
      after its segments the state is the one before step j.
    - `advances`: steps recomputed in the backward pass.
    """

    def __init__(self, n, K):
        if n < 1 or K < 0:
            raise ValueError(
                f"checkpointed_loop: need n_steps >= 1 and checkpoints >= 0, got {n}, {K}"
            )
        self.n, self.K = n, K
        self.dummy, self.last = K + 1, K + 2
        self.forward_slot = [self.dummy] * n
        self.forward_slot[0] = 0
        self.records = []
        self._position = {0: 0}  # slot -> position of the state it holds
        self._actions = []
        free = list(range(K, 0, -1))  # pop() hands out slot 1 first
        self._reverse(0, n, 0, free, spine=True)
        self._group()
        self.advances = sum(m for _, _, segs in self.records for m, _ in segs)

    def _reverse(self, a, b, slot_a, free, spine):
        """Reverse steps b-1..a with the state at a in slot_a. On the spine the
        primal loop has stored the checkpoints and the state before step n - 1."""
        emit = self._actions.append
        l = b - a
        if l == 1:
            emit(("restore", slot_a, a))
            emit(("reverse", a))
        elif not free:
            for j in range(b - 1, a - 1, -1):
                if spine and j == b - 1:
                    emit(("restore", self.last, j))
                else:
                    emit(("restore", slot_a, a))
                    if j > a:
                        emit(("advance", j - a))
                emit(("reverse", j))
        else:
            m = _split(l, len(free))
            s = free.pop()
            if spine:
                self.forward_slot[a + m] = s
            else:
                emit(("restore", slot_a, a))
                emit(("advance", m))
                emit(("store", s))
            self._reverse(a + m, b, s, free, spine)
            free.append(s)
            self._reverse(a, a + m, slot_a, free, False)
        if spine and b - 1 == self.n - 1 and self.forward_slot[self.n - 1] == self.dummy:
            self.forward_slot[self.n - 1] = self.last

    def _group(self):
        """Actions -> one record per reverse step, dropping a restore of the
        state that is already current (right after the store of that slot)."""
        current = None  # (slot, position) of the state in hand, if stored
        record = None
        for action in self._actions:
            kind = action[0]
            if kind == "restore":
                _, slot, pos = action
                if record is None:
                    record = [slot, pos, []]
                # else: the state in hand is this slot's (just stored): nothing to do
                current = pos
            elif kind == "advance":
                record[2].append([action[1], self.dummy])
                current += action[1]
            elif kind == "store":
                if record[2] and record[2][-1][1] == self.dummy:
                    record[2][-1][1] = action[1]
                else:
                    record[2].append([0, action[1]])
            else:  # reverse
                assert current == action[1], (current, action)
                self.records.append((record[0], record[1], [tuple(s) for s in record[2]]))
                record = None
        assert len(self.records) == self.n


@lru_cache(maxsize=64)
def schedule(n, K):
    """The (cached) Schedule of n steps with K checkpoint slots.

    Example::

        s = am.revolve.schedule(2000, 60)
        s.advances        # 1985 steps recomputed by the backward pass
        s.records[0]      # the last step's: (restore slot, its position, [])
    """
    return Schedule(n, K)


def checkpoints_for(n, recompute=1.0):
    """The documented rule for K: the fewest checkpoints whose backward pass
    recomputes at most `recompute` * n steps. With the default 1.0 a
    forward+gradient costs at most (2 + g + 1) / (1 + g) times the stored
    loop's, g the cost of one step's adjoint in steps (about 1.5 for the
    heat stencil): under 2x.

    Example::

        K = am.revolve.checkpoints_for(2000)   # 60
    """
    K = 0
    while schedule(n, K).advances > recompute * n:
        K = max(1, 2 * K) if schedule(n, max(1, 2 * K)).advances > recompute * n else K + 1
    return K
