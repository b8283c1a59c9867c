"""Importing adcme_mpi is not a collective; the first use of a communicator is.
Each case is its own short mpiexec under a timeout."""

from launcher import ended_with, launch


def test_import_alone_blocks_nobody():
    """Rank 0 imports the package and makes no op; rank 1 never imports it and
    only sends rank 0 a message. When the import duplicated COMM_WORLD (a
    collective), rank 0 waited there for rank 1 forever."""
    code = """
import sys
from mpi4py import MPI
if MPI.COMM_WORLD.Get_rank() == 0:
    import adcme_mpi as am
    assert not am.runtime._pairs, "the import prepared a communicator"
    print("rank 0 got", MPI.COMM_WORLD.recv(source=1), flush=True)
else:
    MPI.COMM_WORLD.send("hello", dest=0)
"""
    result = launch(2, None, code=code, timeout=90)
    assert result.code == 0, result
    assert "rank 0 got hello" in result.out, result


def test_rank_that_never_makes_an_op_does_not_block_the_others():
    """Every rank imports; ranks 0 and 2 reduce on their own communicator,
    rank 1 makes no op at all and ends first."""
    code = """
import tensorflow as tf, adcme_mpi as am
from mpi4py import MPI
r = am.mpi_rank()
pair = MPI.COMM_WORLD.Split(0 if r != 1 else MPI.UNDEFINED, r)
if r != 1:
    total = am.mpi_allreduce(tf.constant(float(r + 1)), comm=pair)
    print(f"rank {r} total {float(total)}", flush=True)
"""
    result = launch(3, None, code=code, timeout=120)
    assert result.code == 0, result
    assert "rank 0 total 4.0" in result.out and "rank 2 total 4.0" in result.out, result


def test_first_collective_op_prepares_comm_world():
    """No mpi_init: the first collective op duplicates COMM_WORLD on every
    rank; point-to-point ops after it need nothing more."""
    code = """
import tensorflow as tf, adcme_mpi as am
r = am.mpi_rank()
assert not am.runtime._pairs
s = am.mpi_allreduce(tf.constant(1.0))
got = am.mpi_send(tf.constant(5.0), 1) if r == 0 else am.mpi_recv(tf.constant(0.0), 0)
print(f"rank {r}: {float(s)} {float(got)}", flush=True)
"""
    result = launch(2, None, code=code, timeout=120)
    assert result.code == 0, result
    assert "rank 0: 2.0 5.0" in result.out and "rank 1: 2.0 5.0" in result.out, result


def test_point_to_point_before_mpi_init_is_an_error():
    code = """
import tensorflow as tf, adcme_mpi as am
r = am.mpi_rank()
if r == 2:
    am.mpi_send(tf.ones(3), 0)
elif r == 0:
    am.mpi_recv(tf.ones(3), 2)
"""
    ended_with(
        launch(4, None, code=code, timeout=120),
        r"mpi_(send|recv) \(rank [02] of 4\): COMM_WORLD is not prepared for the ops yet; call "
        r"adcme_mpi.mpi_init\(\) on every rank first",
    )


def test_adcme_pattern_with_mpi_init():
    """ADCME's send/receive: mpi_init first on every rank; then only ranks 2
    and 0 make ops."""
    code = """
import tensorflow as tf, adcme_mpi as am
am.mpi_init()
r = am.mpi_rank()
if r == 2:
    am.mpi_send(tf.constant([1.0, 2.0]), 0)
elif r == 0:
    print("rank 0 got", am.mpi_recv(tf.zeros(2), 2).numpy().tolist(), flush=True)
"""
    result = launch(4, None, code=code, timeout=120)
    assert result.code == 0, result
    assert "rank 0 got [1.0, 2.0]" in result.out, result


def test_first_use_waits_under_the_watchdog():
    """Rank 1 never makes an op: rank 0's first op waits for it to duplicate
    COMM_WORLD, and the watchdog ends the job with a message saying so."""
    code = """
import time, tensorflow as tf, adcme_mpi as am
if am.mpi_rank() == 0:
    am.mpi_allreduce(tf.ones(3))
else:
    time.sleep(60)
"""
    result = launch(2, None, code=code, timeout=120, env={"ADCME_MPI_TIMEOUT": "3"})
    ended_with(
        result,
        r"adcme_mpi watchdog: mpi_allreduce \(rank 0 of 2\) waited [0-9.]+ s "
        r"\(ADCME_MPI_TIMEOUT=3\) for every rank of COMM_WORLD to make its first op on it",
    )
    assert result.seconds < 40, result
