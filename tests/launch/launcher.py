"""Run a script under `mpiexec -n N` with a timeout and capture everything."""
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mpiexec():
    default = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return [os.environ.get("MPIEXEC", default)] + shlex.split(os.environ.get("MPIEXEC_FLAGS", ""))


class Result:
    def __init__(self, code, out, seconds):
        self.code, self.out, self.seconds = code, out, seconds

    def __repr__(self):
        return f"exit {self.code} after {self.seconds:.1f} s:\n{self.out[-4000:]}"


def launch(n, script_or_args, timeout=180, env=None, code=None):
    """`script_or_args`: a path (relative to the repo) plus arguments, or None
    with `code` (Python source run with -c)."""
    args = [sys.executable, "-c", code] if code is not None else \
        [sys.executable] + (script_or_args if isinstance(script_or_args, list) else [script_or_args])
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    start = time.time()
    try:
        proc = subprocess.run(mpiexec() + ["-n", str(n)] + args, cwd=ROOT, env=full_env,
                              capture_output=True, text=True, timeout=timeout,
                              start_new_session=True)
        return Result(proc.returncode, proc.stdout + proc.stderr, time.time() - start)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return Result("timeout", out, time.time() - start)
