"""The one way the test launchers start MPI jobs: MPIEXEC (default: the
mpiexec next to this Python) plus MPIEXEC_FLAGS (e.g. "--oversubscribe" for
Open MPI)."""

import os
import shlex
import sys


def mpiexec(n):
    default = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return (
        [os.environ.get("MPIEXEC", default)]
        + shlex.split(os.environ.get("MPIEXEC_FLAGS", ""))
        + ["-n", str(n)]
    )
