"""Entry point for `mpiexec -n N python tests/mpi_pytest.py [pytest args]`.

Rank 0 writes pytest's report to the terminal; the other ranks' stdout goes to
$ADCME_MPI_TEST_LOGDIR/rank<r>.log (their failures still reach rank 0's report
through tests/mpi/conftest.py, and their stderr stays on the terminal).
"""

import os
import sys
import tempfile

import adcme_mpi  # noqa: F401  (first: it makes mpi4py load the MPI the ops were built with)
from mpi4py import MPI  # noqa: E402

rank = MPI.COMM_WORLD.Get_rank()
if rank != 0:
    logdir = os.environ.get("ADCME_MPI_TEST_LOGDIR") or tempfile.gettempdir()
    os.makedirs(logdir, exist_ok=True)
    log = open(os.path.join(logdir, f"adcme_mpi_rank{rank}.log"), "w")
    sys.stdout.flush()
    os.dup2(log.fileno(), 1)

import pytest  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))
args = sys.argv[1:] or [os.path.join(here, "mpi")]
if rank != 0:  # rank 0 alone writes the junit report (outcomes are agreed across ranks)
    args = [a for a in args if not a.startswith("--junitxml")]
code = pytest.main(args)
sys.stdout.flush()
sys.exit(int(code))
