"""The one way the test launchers start MPI jobs: MPIEXEC (default: the
mpiexec next to this Python) plus MPIEXEC_FLAGS (e.g. "--oversubscribe" for
Open MPI); and whether they can start jobs across hosts."""

import os
import shlex
import sys

DEFAULT = os.path.join(os.path.dirname(sys.executable), "mpiexec")
TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


def mpiexec(n):
    return (
        [os.environ.get("MPIEXEC", DEFAULT)]
        + shlex.split(os.environ.get("MPIEXEC_FLAGS", ""))
        + ["-n", str(n)]
    )


def hosts_unavailable():
    """Why jobs across hosts (tools/netns_hosts.py) cannot run here, or None."""
    if os.environ.get("ADCME_MPI_SKIP_HOSTS") == "1":
        return "ADCME_MPI_SKIP_HOSTS=1"
    sys.path.insert(0, TOOLS)
    import netns_hosts

    return netns_hosts.why_not_available()
