"""The core under every op (ops/family.h, wait.h, checks.h, kernel.h), each
case in its own short mpiexec under a timeout:

- mpi_finalize while an op waits on the MPI thread: the op ends with an
  error naming mpi_finalize, finalize completes, nothing crashes;
- the watchdog ends a sparse op stuck inside PETSc (one rank never enters
  the solve), with the same message as every other wait;
- a collective given bad input on one rank fails on every rank, each
  message naming the rank with the bad input (forward, deferred halo check
  and sparse ops alike);
- ADCME's lifecycle guard `if not mpi_initialized(): mpi_init()`.
"""

import os
import re

import pytest

from launcher import ended_with, launch

EAGER = """
import threading, time
import numpy as np, tensorflow as tf, adcme_mpi as am
r, n = am.mpi_rank(), am.mpi_size()
"""


def test_finalize_ends_an_op_waiting_on_the_mpi_thread():
    """Rank 0's thread waits in mpi_recv (on the MPI thread) for a message
    rank 1 never sends; rank 0's main thread calls mpi_finalize. Before the
    core's OpInFlight and closing, finalize freed the communicators under
    the waiting op."""
    code = (
        EAGER
        + """
am.mpi_init()
errors = []
if r == 0:
    def receive():
        try:
            am.mpi_recv(tf.zeros(3), 1, tag=5)
        except Exception as err:
            errors.append(err)
    thread = threading.Thread(target=receive)
    thread.start()
    time.sleep(2.0)   # the receive is waiting by now
am.mpi_finalize()
if r == 0:
    thread.join(30)
    print("thread ended:", not thread.is_alive(), flush=True)
    print("op error:", type(errors[0]).__name__, str(errors[0]).replace(chr(10), " "), flush=True)
print(f"rank {r} finalized", flush=True)
"""
    )
    result = launch(2, None, code=code, timeout=120, env={"ADCME_MPI_THREAD": "1"})
    assert result.code == 0, result
    assert "thread ended: True" in result.out, result
    assert "op error: FailedPreconditionError " in result.out, result
    assert (
        "mpi_recv (rank 0 of 2): mpi_finalize was called while this op waited for rank 1 to "
        "send (tag 5); the op is abandoned" in result.out
    ), result
    assert "rank 0 finalized" in result.out and "rank 1 finalized" in result.out, result


def petsc_or_skip():
    import adcme_mpi as am

    try:
        am.petsc_info()
    except am.PETScUnavailableError as err:
        if os.environ.get("ADCME_MPI_REQUIRE_PETSC") == "1":
            raise
        pytest.skip(f"the sparse ops were not built: {err}")


SPARSE_DIAGONAL = """
lo, hi = 2 * r, 2 * r + 1
A = am.mpi_SparseTensor(np.array([[lo, lo], [hi, hi]]), np.array([2.0, 4.0]), lo, hi, 2 * n)
b = tf.constant([2.0, 4.0], tf.float64)
"""


def test_watchdog_ends_a_petsc_solve_stuck_on_one_rank():
    """Checks off, so rank 0 goes straight into PETSc (blocking calls that
    cannot be polled) and waits there for rank 1, which never enters the
    solve: the watched section around the sparse op ends the job."""
    petsc_or_skip()
    code = (
        EAGER
        + SPARSE_DIAGONAL
        + """
if r == 0:
    print(A.solve(b).numpy())
else:
    time.sleep(60)
"""
    )
    env = {"ADCME_MPI_TIMEOUT": "3", "ADCME_MPI_CHECK": "0"}
    result = launch(2, None, code=code, timeout=120, env=env)
    ended_with(
        result,
        r"adcme_mpi watchdog: mpi_sparse_solve \(rank 0 of 2\) waited [0-9.]+ s "
        r"\(ADCME_MPI_TIMEOUT=3\) for every rank to join this sparse op \(inside PETSc\)",
    )
    assert result.seconds < 40, result


def named_on_every_rank(code, n, own, peers):
    """Run `code` (which prints "<<rank R: <message>>>" for the error it
    catches; mpiexec may join the ranks' lines) and check that the bad rank
    reports `own` and every other rank `peers`, both regular expressions."""
    result = launch(n, None, code=EAGER + code, timeout=120)
    assert result.code == 0, result
    reports = dict(re.findall(r"<<rank (\d+): (.*?)>>", result.out, re.S))
    assert sorted(reports) == [str(rank) for rank in range(n)], result
    for rank, text in reports.items():
        assert re.search(own if rank == "1" else peers, text), (rank, text, result)


# (eager errors begin with "{{function_node ...}} ", which the message follows)
CATCH = """
import re
try:
    {op}
    print(f"<<rank {{r}}: no error>>", flush=True)
except tf.errors.OpError as err:
    text = re.sub(r"^\\{{\\{{function_node [^}}]*\\}}\\}} ", "", err.message).replace(chr(10), " ")
    print(f"<<rank {{r}}: {{type(err).__name__}}: {{text}}>>", flush=True)
"""


def test_bad_root_on_one_rank_is_named_on_every_rank():
    """Rank 1's root is out of range (a tensor, so only the kernel can tell):
    before, rank 1 failed alone and rank 0 waited in the check until the
    watchdog or the abort."""
    op = "am.mpi_bcast(tf.ones(3), root=tf.constant(5 if r == 1 else 0))"
    named_on_every_rank(
        CATCH.format(op=op),
        2,
        own=r"InvalidArgumentError: mpi_bcast \(rank 1 of 2\): argument 'root' = 5 is out of "
        r"range \[0, 1\]",
        peers=r"InvalidArgumentError: mpi_bcast \(rank 0 of 2\): rank 1 has bad input, so this op "
        r"fails on every rank: mpi_bcast \(rank 1 of 2\): argument 'root' = 5 is out of range",
    )


def test_bad_input_on_one_rank_of_three_in_a_gradient():
    """The same in a backward pass (the gradient of mpi_sum is an mpi_bcast
    on the gradient communicator), at 3 ranks: both peers name rank 1."""
    op = """x = tf.ones(2)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = am.mpi_sum(x, root=tf.constant(7 if r == 1 else 0))
    tape.gradient(y, x)"""
    named_on_every_rank(
        CATCH.format(op=op),
        3,
        own=r"mpi_sum \(rank 1 of 3\): argument 'root' = 7 is out of range \[0, 2\]",
        peers=r"mpi_sum \(rank [02] of 3\): rank 1 has bad input, so this op fails on every "
        r"rank: mpi_sum \(rank 1 of 3\): argument 'root' = 7",
    )


def test_bad_tag_on_one_rank_of_a_halo_exchange_is_named_on_every_rank():
    """The halo exchange's check is deferred: the peers' exchange is already
    posted when rank 1 fails; they learn of it while they wait."""
    op = "am.mpi_halo_exchange(tf.ones([3, 3]), 1, n, tag=tf.constant(-3 if r == 1 else 0))"
    named_on_every_rank(
        CATCH.format(op=op),
        2,
        own=r"mpi_halo_exchange \(rank 1 of 2\): argument 'tag' = -3 is out of range",
        peers=r"mpi_halo_exchange \(rank 0 of 2\): rank 1 has bad input, so this op fails on "
        r"every rank: mpi_halo_exchange \(rank 1 of 2\): argument 'tag' = -3",
    )


def test_bad_sparse_input_on_one_rank_is_named_on_every_rank():
    """A sparse product whose vector has the wrong length on rank 1 only
    (inside a tf.function whose signature hides the length from the
    wrapper's own check, so the kernel finds it)."""
    petsc_or_skip()
    op = """unknown_length = [tf.TensorSpec([None], tf.float64)]
    product = tf.function(lambda v: A @ v, input_signature=unknown_length)
    product(tf.ones([3 if r == 1 else 2], tf.float64))"""
    named_on_every_rank(
        SPARSE_DIAGONAL + CATCH.format(op=op),
        2,
        own=r"mpi_sparse_matvec \(rank 1 of 2\): argument 'x' has 3 entries; it must have 2",
        peers=r"mpi_sparse_matvec \(rank 0 of 2\): rank 1 has bad input, so this op fails on "
        r"every rank: mpi_sparse_matvec \(rank 1 of 2\): argument 'x' has 3 entries",
    )


def test_adcme_guard_prepares_the_world_before_a_point_to_point_op():
    """ADCME scripts begin `if !mpi_initialized() mpi_init() end`; with
    mpi_initialized() true right after the import, the guard skipped
    mpi_init and the first point-to-point op raised 'COMM_WORLD is not
    prepared'."""
    code = (
        EAGER
        + """
print(f"initialized after import: {am.mpi_initialized()}", flush=True)
if not am.mpi_initialized():
    am.mpi_init()
print(f"initialized after the guard: {am.mpi_initialized()}", flush=True)
if r == 1:
    am.mpi_send(tf.constant([1.0, 2.0]), 0)
elif r == 0:
    print("rank 0 got", am.mpi_recv(tf.zeros(2), 1).numpy().tolist(), flush=True)
am.mpi_finalize()
print(f"initialized after mpi_finalize: {am.mpi_initialized()}", flush=True)
"""
    )
    result = launch(3, None, code=code, timeout=120)
    assert result.code == 0, result
    assert result.out.count("initialized after import: False") == 3, result
    assert result.out.count("initialized after the guard: True") == 3, result
    assert result.out.count("initialized after mpi_finalize: False") == 3, result
    assert "rank 0 got [1.0, 2.0]" in result.out, result
