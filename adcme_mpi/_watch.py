"""The Python side's blocking MPI calls (mpi4py's) under the op library's
watchdog: one wait service, one message, one abort code (ops/wait.h)."""

import contextlib

from . import _loader


@contextlib.contextmanager
def watched(who, waiting_for, timeout=None):
    """Run the block as a watched section: if it lasts longer than `timeout`
    seconds (None: ADCME_MPI_TIMEOUT; 0: not watched), the watchdog aborts
    the job with "adcme_mpi watchdog: <who> waited <s> s (...) for
    <waiting_for>; aborting the job". mpi4py releases the GIL while it
    blocks, and the watchdog is a C++ thread: it needs no Python to fire."""
    section = _loader.capi.adcme_mpi_watch_begin(
        who.encode(), waiting_for.encode(), -1.0 if timeout is None else float(timeout)
    )
    try:
        yield
    finally:
        _loader.capi.adcme_mpi_watch_end(section)
