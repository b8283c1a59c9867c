"""Run a script under `mpiexec -n N` with a timeout and capture everything."""

import contextlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from mpiexec import mpiexec  # noqa: E402


def petsc_built():
    """Whether this build has the sparse ops; ADCME_MPI_REQUIRE_PETSC=1
    (CI's PETSc stages) makes their absence a failure, not a skip."""
    # read the build's facts without importing the package (that starts MPI)
    package = os.path.dirname(importlib.util.find_spec("adcme_mpi").origin)
    info = open(os.path.join(package, "_build_info.py")).read()
    built = re.search(r'^PETSC_LIBRARY = "(.+)"', info, re.M) is not None
    assert built or os.environ.get("ADCME_MPI_REQUIRE_PETSC") != "1", "no sparse ops in this build"
    return built


class Result:
    def __init__(self, code, out, seconds):
        self.code, self.out, self.seconds = code, out, seconds

    def __repr__(self):
        return f"exit {self.code} after {self.seconds:.1f} s:\n{self.out[-4000:]}"


SHM = "/dev/shm"


def _mpich_segments():
    try:
        return {f for f in os.listdir(SHM) if f.startswith("mpich_shm_")}
    except OSError:
        return set()


@contextlib.contextmanager
def removing_new_mpich_segments():
    """MPICH leaves its shared-memory segments behind when a job is aborted
    (many cases here abort on purpose); the jobs run one at a time, so the
    segments that appear during one are its own: remove them after it."""
    before = _mpich_segments()
    try:
        yield
    finally:
        for name in _mpich_segments() - before:
            try:
                os.remove(os.path.join(SHM, name))
            except OSError:
                pass


def launch(n, script_or_args, timeout=180, env=None, code=None, cwd=None):
    """`script_or_args`: a path (relative to the repo) plus arguments, or None
    with `code` (Python source run with -c)."""
    if code is not None:
        args = [sys.executable, "-c", code]
    else:
        parts = script_or_args if isinstance(script_or_args, list) else [script_or_args]
        args = [sys.executable, os.path.join(ROOT, parts[0])] + parts[1:]
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    start = time.time()
    with removing_new_mpich_segments():
        return _run(mpiexec(n) + args, cwd, full_env, timeout, start)


def _run(cmd, cwd, full_env, timeout, start):
    try:
        # run outside the checkout: `python -c` puts the working directory on
        # sys.path, and the source tree's adcme_mpi/ must not shadow the installed one
        proc = subprocess.run(
            cmd,
            cwd=cwd or tempfile.gettempdir(),
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
        return Result(proc.returncode, proc.stdout + proc.stderr, time.time() - start)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return Result("timeout", out, time.time() - start)


def ended_with(result, pattern):
    """Assert that the job ended on its own (non-zero exit, not the timeout)
    with output matching `pattern`; return the match."""
    assert result.code not in (0, "timeout"), result
    match = re.search(pattern, result.out)
    assert match, result
    return match
