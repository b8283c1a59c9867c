"""`python -m adcme_mpi`: what this installation is made of.
`python -m adcme_mpi --check [-n N]`: a short self-test of every op, forward
and backward, on N ranks (default 2) under the matching mpiexec; its last
line is PASS or FAIL and why."""

import argparse
import os
import shlex
import subprocess
import sys
import time

from .settings import VARIABLES

# the package's variables (adcme_mpi/settings.py) and the launcher's for --check
ENV_VARS = {
    **{variable.name: variable.meaning for variable in VARIABLES},
    "MPIEXEC": "launcher for --check (default: the mpiexec next to this Python)",
    "MPIEXEC_FLAGS": "extra launcher flags for --check (e.g. --oversubscribe)",
}


def describe():
    import adcme_mpi  # first: it picks the libmpi that mpi4py loads
    import mpi4py
    import tensorflow as tf
    from adcme_mpi import _loader
    from mpi4py import MPI

    build = _loader._build_info
    libs = sorted(_loader._mapped_mpi_libraries())
    levels = {
        MPI.THREAD_SINGLE: "SINGLE",
        MPI.THREAD_FUNNELED: "FUNNELED",
        MPI.THREAD_SERIALIZED: "SERIALIZED",
        MPI.THREAD_MULTIPLE: "MULTIPLE",
    }

    lines = [
        f"adcme_mpi {adcme_mpi.__version__} ({os.path.dirname(adcme_mpi.__file__)})",
        f"TensorFlow {tf.__version__}; mpi4py {mpi4py.__version__}; "
        f"Python {sys.version.split()[0]}",
        f"MPI: {MPI.Get_library_version().splitlines()[0].strip()} "
        f"(standard {'.'.join(map(str, MPI.Get_version()))})",
        f"libmpi: {', '.join(libs) or '?'} (vendor {MPI.get_vendor()[0]} "
        f"{'.'.join(map(str, MPI.get_vendor()[1]))})",
        f"thread level: {levels.get(MPI.Query_thread(), MPI.Query_thread())}",
        f"op library: {_loader._library_path()}",
        "built against: "
        + (
            f"TensorFlow {build.TF_VERSION}, MPI from {build.MPI_SOURCE or 'CMake FindMPI'}"
            + (f" ({build.PRELOAD_LIBMPI})" if build.PRELOAD_LIBMPI else "")
            if build
            else "(no build record: a source tree)"
        ),
        "environment:",
    ]
    for name, meaning in ENV_VARS.items():
        value = os.environ.get(name)
        lines.append(f"  {name}={value if value is not None else '(unset)'}  # {meaning}")
    return "\n".join(lines)


def check(n, timeout):
    default = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    launcher = [os.environ.get("MPIEXEC", default)] + shlex.split(
        os.environ.get("MPIEXEC_FLAGS", "")
    )
    cmd = launcher + ["-n", str(n), sys.executable, "-m", "adcme_mpi._selftest"]
    print("running:", " ".join(cmd), flush=True)
    start = time.time()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.setdefault("ADCME_MPI_TIMEOUT", str(max(10, timeout // 2)))
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, start_new_session=True
        )
    except FileNotFoundError:
        return f"FAIL: cannot start {launcher[0]} (set MPIEXEC to your launcher)"
    except subprocess.TimeoutExpired:
        return f"FAIL: the self-test did not finish within {timeout} s (a hang?)"
    results = [line for line in proc.stdout.splitlines() if line.startswith("selftest ")]
    print("\n".join(results), flush=True)
    seconds = time.time() - start
    passed = [r for r in results if " ok (" in r]
    skipped = [r for r in results if " skipped (" in r]  # the sparse ops, where not built
    if proc.returncode == 0 and passed and len(passed) + len(skipped) == len(results):
        note = f" ({len(skipped)} skipped: the sparse ops were not built)" if skipped else ""
        return f"PASS: {len(passed)} checks on {n} ranks in {seconds:.1f} s{note}"
    bad = [r for r in results if " ok (" not in r and " skipped (" not in r]
    why = bad[0] if bad else (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return f"FAIL (exit {proc.returncode}): {why}"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m adcme_mpi", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="run the self-test under mpiexec")
    parser.add_argument("-n", type=int, default=2, help="ranks for --check (default 2)")
    parser.add_argument("--timeout", type=int, default=180, help="seconds for --check")
    args = parser.parse_args(argv)
    if not args.check:
        print(describe())
        return 0
    verdict = check(args.n, args.timeout)
    print(verdict)
    return 0 if verdict.startswith("PASS") else 1


if __name__ == "__main__":
    sys.exit(main())
