"""Runs the same pytest session on every rank of `mpiexec -n N python -m pytest tests/mpi`.

- Every test's outcome is agreed across ranks: a test that fails on any rank
  fails on all, and the report names the failing ranks and their messages.
- Launch through tests/mpi_pytest.py so only rank 0 writes the report.
- A test that runs longer than ADCME_MPI_TEST_TIMEOUT seconds (default 300)
  dumps every thread's stack and ends this rank, which ends the job: nothing hangs.
"""

import faulthandler
import os
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("ADCME_MPI_TIMEOUT", "120")  # stuck MPI waits abort with a named op

import adcme_mpi  # noqa: E402  (first: it picks the libmpi mpi4py loads)
from mpi4py import MPI  # noqa: E402

# as ADCME scripts begin: point-to-point tests may be the first to make an op
adcme_mpi.mpi_init()

RANK = MPI.COMM_WORLD.Get_rank()
SIZE = MPI.COMM_WORLD.Get_size()
_VOTES = MPI.COMM_WORLD.Dup()  # the harness's own traffic stays off the ops' communicators
TEST_TIMEOUT = float(os.environ.get("ADCME_MPI_TEST_TIMEOUT", "300"))


def pytest_report_header(config):
    return (
        f"adcme_mpi: {SIZE} MPI rank(s); this terminal shows rank 0, outcomes agreed across ranks"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _summary(call, report):
    """The exception line(s) first (TF puts the cause at the top), then where."""
    text = report.longreprtext
    if call.excinfo is not None:
        value = call.excinfo.value
        # a TF OpError's own message (the kernel's) is more useful than its traceback
        text = (
            f"{type(value).__name__}: {getattr(value, 'message', None) or call.excinfo.exconly()}"
        )
        text = "\n".join(line for line in text.splitlines() if not line.startswith("    File "))
    return f"{text[:2500]}\n  at {report.location[0]}:{report.location[1]}"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "op_test(kind, *ops): an adjoint or hvp test of these public ops "
        "(helpers.adjoint_test, hvp_test; counted by tests/run_all.py)",
    )


def _count_op_tests(item, report):
    """A passed adjoint or HVP test leaves "kind:op,op" in the junit XML, from
    which tests/run_all.py tallies passed tests per op and rank count."""
    if report.when == "call" and report.passed:
        for mark in item.iter_markers("op_test"):
            kind, *ops = mark.args
            item.user_properties.append(("op_test", f"{kind}:{','.join(ops)}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    try:
        _agree_on_outcome(call, report)
    finally:
        _count_op_tests(item, report)


def _agree_on_outcome(call, report):
    if SIZE == 1:
        return
    failed = report.failed
    mine = (failed, _summary(call, report) if failed else "")
    votes = _VOTES.allgather(mine)
    bad = [r for r, (f, _) in enumerate(votes) if f]
    if not bad:
        return
    text = "\n".join(f"----- rank {r} -----\n{msg}" for r, (f, msg) in enumerate(votes) if f)
    report.outcome = "failed"
    report.longrepr = f"failed on rank(s) {bad} of {SIZE}\n{text}"
