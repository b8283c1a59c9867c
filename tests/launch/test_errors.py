"""Bad input: every case must give a message naming the op, the argument
and the rank, under a timeout, never a hang.

- Cases whose error every rank raises, after which the ranks are still in
  step, run together: one mpiexec per rank count (BATCHED), each case's
  error caught on every rank, then one allreduce proving the ranks can go on.
  An error a program does not catch ends the job the same way for all of
  them; the witnesses in ALONE show that.
- The others (ALONE, each with the reason) run in an mpiexec of their own and
  must end the whole job (non-zero exit) with the message.

Set ADCME_MPI_ERROR_TABLE=path to also write the table of messages and
times (for the docs)."""

import json
import os
import re
import textwrap

import pytest

from launcher import ended_with, launch, petsc_built

PRELUDE = """
import numpy as np, tensorflow as tf, adcme_mpi as am
from mpi4py import MPI
tf.compat.v1.disable_eager_execution()
am.mpi_init()
r, n = am.mpi_rank(), am.mpi_size()
def run(t):
    with am.Session() as s:
        return s.run(t)
"""

CASES = [
    (
        "unsupported dtype",
        2,
        "run(am.mpi_sum(tf.constant([1], tf.uint8)))",
        r"mpi_sum \(rank \d of 2\): argument 'a' has dtype uint8; supported",
    ),
    (
        "root out of range (int)",
        2,
        "run(am.mpi_bcast(tf.ones(3), root=5))",
        r"mpi_bcast \(rank \d of 2\): argument 'root' = 5 is out of range \[0, 1\]",
    ),
    (
        "root out of range (tensor)",
        2,
        "run(am.mpi_bcast(tf.ones(3), root=tf.constant(-1)))",
        r"mpi_bcast \(rank \d of 2\): argument 'root' = -1 is out of range \[0, 1\]",
    ),
    (
        "root differs across ranks",
        2,
        "run(am.mpi_sum(tf.ones(3), root=tf.constant(r)))",
        r"mpi_sum \(rank \d of 2\): argument 'root' must be the same on every rank; got rank 0: 0, rank 1: 1",
    ),
    (
        "negative tag",
        2,
        "run(am.mpi_send(tf.ones(3), dest=1 - r, tag=-4))",
        r"mpi_send \(rank \d of 2\): argument 'tag' = -4 is out of range \[0, \d+\]",
    ),
    (
        "tag above MPI_TAG_UB",
        2,
        "run(am.mpi_recv(tf.ones(3), src=1 - r, tag=2**40))",
        r"mpi_recv \(rank \d of 2\): argument 'tag' = 1099511627776 is out of range \[0, \d+\]",
    ),
    (
        "dest out of range",
        2,
        "run(am.mpi_send(tf.ones(3), dest=2))",
        r"mpi_send \(rank \d of 2\): argument 'dest' = 2 is out of range \[0, 1\]",
    ),
    (
        "send to oneself",
        2,
        "run(am.mpi_send(tf.ones(3), dest=r))",
        r"mpi_send \(rank \d of 2\): argument 'dest' = \d is this rank; sending to oneself is an error",
    ),
    (
        "shape differs across ranks",
        2,
        "run(am.mpi_allreduce(tf.ones([3 + r])))",
        r"mpi_allreduce \(rank \d of 2\): argument 'a' must have the same dtype and shape on every rank; "
        r"got rank 0: float\[3\], rank 1: float\[4\]",
    ),
    (
        "dtype differs across ranks",
        2,
        "run(am.mpi_bcast(tf.ones([2], tf.float32 if r == 0 else tf.float64)))",
        r"mpi_bcast \(rank \d of 2\): argument 'a' must have the same dtype and shape on every rank; "
        r"got rank 0: float\[2\], rank 1: double\[2\]",
    ),
    (
        "float16 and bfloat16 across ranks (a sum widened to float32 still compares them)",
        2,
        "run(am.mpi_allreduce(tf.ones([2], tf.float16 if r == 0 else tf.bfloat16)))",
        r"mpi_allreduce \(rank \d of 2\): argument 'a' must have the same dtype and shape on every "
        r"rank; got rank 0: half\[2\], rank 1: bfloat16\[2\]",
    ),
    (
        "max of complex values",
        2,
        "run(am.mpi_allreduce(tf.ones([2], tf.complex64), op='max'))",
        r"mpi_allreduce \(rank \d of 2\): argument 'op' = 'max' is not defined for complex64 "
        r"\(complex numbers are not ordered\)",
    ),
    (
        "scan op differs across ranks",
        2,
        "run(am.mpi_scan(tf.ones(3), 'sum' if r == 0 else 'max'))",
        r"mpi_scan \(rank \d of 2\): argument 'op' and 'exclusive' must be the same on every rank; "
        r"got rank 0: sum \(inclusive\), rank 1: max \(inclusive\)",
    ),
    (
        # splits given as a tensor (the wrapper cannot check them): rank 1's
        # add up to 3 for 2 slices; the kernel shares that with rank 0, whose
        # message quotes rank 1's (each rank prints its own before the job ends)
        "alltoall splits that do not add up on one rank",
        2,
        """
try:
    run(am.mpi_alltoall(tf.ones([2, 2]), tf.constant([1, 1 + r])))
except tf.errors.InvalidArgumentError as err:
    print(" ".join(err.message.split()), flush=True)
    MPI.COMM_WORLD.Barrier()  # (every rank has printed before an uncaught error ends the job)
    raise
""",
        r"mpi_alltoall \(rank 0 of 2\): rank 1 has bad input, so this op fails on every rank: "
        r"mpi_alltoall \(rank 1 of 2\): argument 'splits' adds up to 3 but 'a' has 2 slices "
        r"along axis 0",
    ),
    (
        "recv size differs from send",
        2,
        "run(am.mpi_send(tf.ones(5), 1) if r == 0 else am.mpi_recv(tf.ones(3), 0))",
        r"mpi_recv \(rank 1 of 2\): rank 0 sent 20 bytes \(tag 0\) but argument 'a' is float\[3\]",
    ),
    (
        "halo m * n != size",
        2,
        "run(am.mpi_halo_exchange(tf.ones([3, 3]), 3, 2))",
        r"mpi_halo_exchange \(rank \d of 2\): m \* n = 3 \* 2 = 6 must equal the communicator size 2",
    ),
    (
        "halo block edges disagree",
        4,
        "run(am.mpi_halo_exchange(tf.ones([3, 3 + (r == 1)]), 2, 2))",
        # Found by the halo messages themselves: rank 1 receives a short edge
        # from rank 3, rank 3 a long one from rank 1; whichever aborts first.
        r"mpi_halo_exchange \(rank \d of 4\): blocks of up/down neighbours must have the same number of "
        r"columns: rank (1 has \[3,4\] but rank 3 sent an edge of 3|3 has \[3,3\] but rank 1 sent an "
        r"edge of more than 3) columns",
    ),
    (
        "halo block edges disagree (left/right)",
        2,
        "run(am.mpi_halo_exchange(tf.ones([4 + r, 3]), 1, 2))",
        r"blocks of left/right neighbours must have the same number of rows: rank (0 has \[4,3\] but "
        r"rank 1 sent an edge of more than 4|1 has \[5,3\] but rank 0 sent an edge of 4) rows",
    ),
    (
        # m, n, width and dtype go into the check's digest; only on a mismatch
        # do the ranks gather each other's grid for this message.
        "halo width differs across ranks",
        2,
        "run(am.mpi_halo_exchange(tf.ones([4, 4]), 1, 2, width=1 + r))",
        r"mpi_halo_exchange \(rank \d of 2\): rank \d called with m=1, n=2, width=[12], dtype float but "
        r"rank \d with m=1, n=2, width=[12], dtype float",
    ),
    (
        "halo block smaller than width",
        2,
        "run(am.mpi_halo_exchange(tf.ones([1, 5]), 1, 2, width=2))",
        r"mpi_halo_exchange \(rank \d of 2\): argument 'u' has shape \(1, 5\); each dimension must be "
        r"at least width = 2",
    ),
    (
        "ranks call different collectives",
        2,
        "run(am.mpi_sum(tf.ones(2)) if r == 0 else am.mpi_bcast(tf.ones(2)))",
        r"mpi_(sum|bcast) \(rank \d of 2\): ranks disagree on which collective comes next \(their "
        r"programs differ\): rank 0 is at mpi_sum \(checked collective #1\); rank 1 is at mpi_bcast",
    ),
    (
        # the halo's check is deferred (it does not delay the exchange), but a
        # rank in a halo exchange still watches it, so it meets the other
        # rank's check and both get the error instead of waiting forever
        "one rank in a halo exchange, the other in a collective",
        2,
        "run(am.mpi_halo_exchange(tf.ones([4, 4]), 1, 2) if r == 0 else am.mpi_sum(tf.ones(2)))",
        r"mpi_(halo_exchange|sum) \(rank \d of 2\): ranks disagree on which collective comes next "
        r"\(their programs differ\): rank 0 is at mpi_halo_exchange \(checked collective #1\); "
        r"rank 1 is at mpi_sum \(checked collective #1\)",
    ),
    (
        # 1x2 and 2x1 grids exchange edges of the same size, so the exchange
        # itself succeeds; the deferred check then reports the grids, in the
        # halo op or, when its verdict arrives later, in the op that completes
        # it (here the end of the program), naming the halo op
        "halo grids differ but the exchange succeeds",
        2,
        "run(am.mpi_halo_exchange(tf.ones([4, 4]), 1 + r, 2 - r))",
        r"mpi_halo_exchange \(rank \d of 2\): rank \d called with m=[12], n=[12], width=1, "
        r"dtype float but rank \d with m=[12], n=[12], width=1, dtype float",
    ),
    (
        "one rank builds no backward pass",
        4,
        "x = tf.constant(2.0); y = am.mpi_allreduce(x)\nrun(y if r == 0 else tf.gradients(y, x)[0])",
        r"ranks disagree on which collective comes next \(their programs differ\): rank 0 is at the "
        r"end of its program \(mpi_finalize or exit\); rank 1 is at gradient of mpi_allreduce "
        r"\(checked collective #2\)",
    ),
    (
        "gradient send nobody receives",
        2,
        """
x = tf.ones(2) * (r + 1)
if r == 0:
    c = am.mpi_recv(x, 1)
    run(tf.gradients(tf.reduce_sum(c * x), x)[0])
else:
    sent = am.mpi_send(x * x, 0)
    run([sent, tf.gradients(tf.reduce_sum(x), x)[0]])   # its loss leaves the send out
""",
        r"adcme_mpi \(rank 0\): gradient of mpi_recv \(rank 0 of 2\) sent a gradient to rank 1 "
        r"\(tag 0\) that rank 1 never received",
    ),
    (
        "checkpointed loop: a rank recomputes a different collective",
        2,
        """
calls = []
def step(i, u):
    calls.append(1)  # traced by the primal loop first, then by the backward pass
    if len(calls) > 1 and r == 1:
        return u + am.mpi_sum(u)
    return u + am.mpi_allreduce(u)
x = tf.ones(3)
u = am.ordering.checkpointed_loop(step, x, 4, 1)
run(tf.gradients(tf.reduce_sum(u), x)[0])
""",
        # collectives #1-#4 are the primal loop's: #5 is the first recomputed
        r"ranks disagree on which collective comes next \(their programs differ\): rank 0 is at "
        r"mpi_allreduce \(checked collective #5\); rank 1 is at mpi_sum \(checked collective #5\)",
    ),
    (
        "isend never waited on",
        2,
        """
h = am.mpi_isend(tf.ones(3), 1, tag=7) if r == 0 else am.mpi_irecv(tf.ones(3), 0, tag=7)
run(h)
if r == 1:
    run(am.mpi_wait(h))   # rank 0 never waits on its send
""",
        r"adcme_mpi \(rank 0\): mpi_isend \(rank 0 of 2\) posted a send to rank 1 \(tag 7, "
        r"float\[3\]\) that was never waited on \(handle \d+\)",
    ),
    (
        "irecv never waited on (mpi_finalize)",
        2,
        """
h = am.mpi_isend(tf.ones(3), 1, tag=8) if r == 0 else am.mpi_irecv(tf.ones(3), 0, tag=8)
run(am.mpi_wait(h) if r == 0 else h)
am.mpi_finalize()
""",
        r"adcme_mpi \(rank 1\): mpi_irecv \(rank 1 of 2\) posted a receive from rank 0 \(tag 8, "
        r"float\[3\]\) that was never waited on",
    ),
    (
        "handle waited on twice",
        2,
        """
h = am.mpi_isend(tf.ones(3), 1 - r, tag=9); g = am.mpi_irecv(tf.ones(3), 1 - r, tag=9)
run([am.mpi_wait(g), am.mpi_wait(h)])
run(am.mpi_wait(h))
""",
        r"mpi_wait \(rank \d of 2\): argument 'handle' = \d+ was already waited on",
    ),
    (
        "isend partner out of range (tensor)",
        2,
        "run(am.mpi_isend(tf.ones(3), tf.constant(2)))",
        r"mpi_isend \(rank \d of 2\): argument 'dest' = 2 is out of range \[0, 1\]",
    ),
    (
        "op created after mpi_finalize",
        2,
        "am.mpi_finalize(); am.mpi_sum(tf.ones(2))",
        r"mpi_sum: MPI is already finalized",
    ),
    (
        "op run after mpi_finalize",
        2,
        "t = am.mpi_allreduce(tf.ones(2)); s = am.Session(); am.mpi_finalize(); s.run(t)",
        r"mpi_allreduce: MPI is already finalized",
    ),
]

# The cases that run in a job of their own, and why. A case can share a job
# only if every rank raises its error and the ranks stay in step after it.
ALONE = {
    # witnesses: an error the program does not catch ends the whole job, from
    # the Python wrapper's checks and from the kernel's cross-rank check alike
    "unsupported dtype": "witness: the wrapper's error, uncaught, ends the job",
    "root differs across ranks": "witness: the kernel's error, uncaught, ends the job",
    # only some ranks see the error: the others' part of the op succeeded
    "recv size differs from send": "only the receiver fails; the send has completed",
    "halo block edges disagree": "only ranks 1 and 3 exchange the mismatched edge",
    "halo grids differ but the exchange succeeds": "the exchange succeeds; the check's verdict "
    "reaches some ranks only after",
    # the error is found at the end of the program or at mpi_finalize
    "one rank builds no backward pass": "rank 0 reaches the end of its program",
    "gradient send nobody receives": "found at the end of the program",
    "isend never waited on": "found at the end of the program",
    "irecv never waited on (mpi_finalize)": "found at mpi_finalize",
    "op created after mpi_finalize": "MPI is finalized",
    "op run after mpi_finalize": "MPI is finalized",
    # rank 0's halo check is deferred: it may leave the exchange, with the
    # error, before rank 1's check names it, and be at the next collective
    "one rank in a halo exchange, the other in a collective": "rank 0 may be one collective "
    "further when rank 1's message names it",
    # their messages count the checked collectives from the program's start
    "ranks call different collectives": "the message names collective #1",
    "checkpointed loop: a rank recomputes a different collective": "the message names "
    "collective #5, the first one recomputed",
}

_table = []


def batch_program(cases):
    """One program running `cases` [(index, code)] in turn on every rank:
    each case's error is caught and printed as "<<case I rank R: message>>"
    (one line; mpiexec may join the ranks' lines), then an allreduce on a
    fresh graph must give the number of ranks ("<<after I rank R: ...>>"
    and the end of the job if not)."""
    parts = [
        PRELUDE,
        """
def report(kind, i, text):
    print(f"<<{kind} {i} rank {r}: {' '.join(text.split())}>>", flush=True)
""",
    ]
    for i, code in cases:
        parts.append(
            f"""
def case_{i}():
{textwrap.indent(code.strip(chr(10)), "    ")}
tf.compat.v1.reset_default_graph()
try:
    case_{i}()
    report("case", {i}, "no error")
except Exception as err:
    text = str(getattr(err, "message", err)).split("Original stack trace")[0]
    report("case", {i}, f"{{type(err).__name__}}: {{text}}")
tf.compat.v1.reset_default_graph()
try:
    assert run(am.mpi_allreduce(tf.constant(1.0))) == n, "the allreduce of 1 is not the number of ranks"
except Exception as err:
    report("after", {i}, f"{{type(err).__name__}}: {{err}}")
    raise
"""
        )
    parts.append('print(f"<<done rank {r}>>", flush=True)\n')
    return "".join(parts)


BATCHED = [case for case in CASES if case[0] not in ALONE]
_batch_results = {}


def batch_result(n):
    """The job of the BATCHED cases on n ranks (run once, on first need)."""
    if n not in _batch_results:
        cases = [(i, code) for i, (_, size, code, _) in enumerate(BATCHED) if size == n]
        # the watchdog turns a case that hangs into an error within seconds
        _batch_results[n] = launch(
            n, None, code=batch_program(cases), timeout=300, env={"ADCME_MPI_TIMEOUT": "20"}
        )
    return _batch_results[n]


@pytest.mark.parametrize("name,n,code,pattern", BATCHED, ids=[c[0] for c in BATCHED])
def test_bad_input_raises_clear_error_on_every_rank(name, n, code, pattern):
    result = batch_result(n)
    i = next(i for i, case in enumerate(BATCHED) if case[0] == name)
    reports = dict(re.findall(rf"<<case {i} rank (\d+): (.*?)>>", result.out, re.S))
    assert sorted(reports) == [str(rank) for rank in range(n)], result
    assert not re.search(rf"<<after {i} rank", result.out), result
    for rank, text in reports.items():
        # every rank raised an error that names it
        assert re.search(rf"\(rank {rank}( of {n})?\)", text), (rank, text, result)
    # and the case's message, on at least one rank (some name the rank with
    # the bad input only there)
    match = next((m for m in (re.search(pattern, t) for t in reports.values()) if m), None)
    assert match, (pattern, reports, result)
    _table.append(
        {
            "case": name,
            "ranks": n,
            "message": match.group(0),
            "exit": "raised on every rank (batched)",
            "seconds": None,
        }
    )


def test_batched_jobs_ran_to_the_end():
    """Each batched job reached its end on every rank, exit 0."""
    for n in sorted({case[1] for case in BATCHED}):
        result = batch_result(n)
        assert result.code == 0, result
        assert len(re.findall(r"<<done rank \d+>>", result.out)) == n, result


ALONE_CASES = [case for case in CASES if case[0] in ALONE]
assert len(ALONE_CASES) == len(ALONE), "ALONE names a case CASES lacks"


@pytest.mark.parametrize("name,n,code,pattern", ALONE_CASES, ids=[c[0] for c in ALONE_CASES])
def test_bad_input_ends_job_with_clear_message(name, n, code, pattern):
    result = launch(n, None, code=PRELUDE + code, timeout=120)
    match = ended_with(result, pattern)
    _table.append(
        {
            "case": name,
            "ranks": n,
            "message": match.group(0),
            "exit": result.code,
            "seconds": round(result.seconds, 1),
        }
    )


def test_an_op_in_a_backward_pass_is_named_by_its_rows_backward_name():
    """MPISparseGather runs in the gradient of A @ x with respect to the
    matrix values; a rank that leaves that part out makes the others report
    what they are at by the op table's backward name of the gather."""
    if not petsc_built():
        pytest.skip("the sparse ops were not built (no PETSc)")
    code = """
values = tf.constant([2.0, 1.0], tf.float64)
A = am.mpi_SparseTensor([[r, 0], [r, 1]], values, r, r, 2)
x = tf.constant([1.0], tf.float64)
gx, gv = tf.gradients(A @ x, [x, values])
run(gv if r == 0 else gx)   # rank 1 leaves the values' gradient out
"""
    result = launch(2, None, code=PRELUDE + code, timeout=120)
    ended_with(
        result,
        r"rank 0 is at gradient of mpi_sparse_matvec or mpi_sparse_solve for the matrix values "
        r"\(checked collective #3\); rank 1 is at the end of its program",
    )


def test_watchdog_names_op_rank_and_peers():
    """Rank 1 never joins the collective: rank 0's wait is aborted by the
    watchdog after ADCME_MPI_TIMEOUT seconds with a message naming the op,
    the rank and whom it waits for."""
    code = (
        PRELUDE
        + """
import time
if r == 0:
    run(am.mpi_bcast(tf.ones(3), root=1))
else:
    time.sleep(60)
"""
    )
    result = launch(2, None, code=code, timeout=120, env={"ADCME_MPI_TIMEOUT": "3"})
    ended_with(
        result,
        r"adcme_mpi watchdog: mpi_bcast \(rank 0 of 2\) waited [0-9.]+ s "
        r"\(ADCME_MPI_TIMEOUT=3\) for every rank \(metadata check\)",
    )
    assert result.seconds < 40, result
    _table.append(
        {
            "case": "peer never arrives (watchdog, ADCME_MPI_TIMEOUT=3)",
            "ranks": 2,
            "message": re.search(r"adcme_mpi watchdog: .*", result.out).group(0),
            "exit": result.code,
            "seconds": round(result.seconds, 1),
        }
    )


def test_uncaught_exception_on_one_rank_aborts_all_with_traceback():
    code = (
        PRELUDE
        + """
if r == 1:
    raise RuntimeError("only rank 1 fails")
run(am.mpi_allreduce(tf.ones(3)))   # rank 0 would wait here forever
"""
    )
    result = launch(2, None, code=code, timeout=120)
    assert result.code not in (0, "timeout"), result
    assert "[rank 1] RuntimeError: only rank 1 fails" in result.out, result
    assert "uncaught exception on rank 1; aborting all ranks" in result.out, result
    assert result.seconds < 40, result
    _table.append(
        {
            "case": "uncaught exception on rank 1 only",
            "ranks": 2,
            "message": "[rank 1] RuntimeError: only rank 1 fails ... aborting all ranks (MPI_Abort)",
            "exit": result.code,
            "seconds": round(result.seconds, 1),
        }
    )


def test_rank_killed_by_sigkill_ends_job():
    code = (
        PRELUDE
        + """
import os, signal
if r == 1:
    os.kill(os.getpid(), signal.SIGKILL)
run(am.mpi_allreduce(tf.ones(3)))
"""
    )
    result = launch(2, None, code=code, timeout=120)
    assert result.code not in (0, "timeout"), result
    assert result.seconds < 40, result
    _table.append(
        {
            "case": "rank 1 killed by SIGKILL",
            "ranks": 2,
            "message": (re.findall(r".*(?:KILLED|Killed|signal 9).*", result.out) or ["(mpiexec)"])[
                0
            ].strip(),
            "exit": result.code,
            "seconds": round(result.seconds, 1),
        }
    )


def teardown_module(module):
    path = os.environ.get("ADCME_MPI_ERROR_TABLE")
    if path and _table:
        with open(path, "w") as f:
            json.dump(_table, f, indent=1)
