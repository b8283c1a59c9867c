"""The whole test suite, as README.md and .ci/run call it:

    python tests/run_all.py

1. tests/mpi under `mpiexec -n N` for N in ADCME_MPI_TEST_SIZES (default
   "1 2 3 4 6"), each launch wrapped in a timeout; outcomes are agreed across
   ranks, so rank 0's report is the truth for that size.
2. tests/launch with plain pytest: each test starts its own short mpiexec
   jobs (examples, bad input, aborts, hangs) and checks exit status and output.

Environment: MPIEXEC (default: the mpiexec next to this Python),
MPIEXEC_FLAGS (e.g. "--oversubscribe" for Open MPI), ADCME_MPI_TEST_SIZES,
ADCME_MPI_THREAD_SIZES (sizes rerun with ADCME_MPI_THREAD=1, default "3"),
ADCME_MPI_SUITE_TIMEOUT (seconds per launch, default 1200).
Ends with one line: "total: N passed, N failed, N skipped".
"""
import os
import re
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|error|errors)\b")


def mpiexec():
    default = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return [os.environ.get("MPIEXEC", default)] + shlex.split(os.environ.get("MPIEXEC_FLAGS", ""))


def run(label, cmd, timeout):
    print(f"\n=== {label}: {' '.join(cmd)}", flush=True)
    start = time.time()
    tail = []
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        deadline = start + timeout
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line)
            tail = tail[-50:]
            if time.time() > deadline:
                break
        try:
            code = proc.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            code = "timeout"
    except OSError as err:
        print(f"cannot start {cmd[0]}: {err}")
        code = "not started"
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for line in reversed(tail):
        found = SUMMARY.findall(line)
        if found and ("passed" in line or "failed" in line or "error" in line) and " in " in line:
            for n, kind in found:
                key = "failed" if kind.startswith("error") else kind
                counts[key] += int(n)
            break
    if code != 0 and counts["failed"] == 0:
        counts["failed"] = 1  # crashed, hung or killed: count the launch itself as a failure
        print(f"=== {label}: exit status {code} with no failing test reported; counted as 1 failure")
    print(f"=== {label}: {counts['passed']} passed, {counts['failed']} failed, "
          f"{counts['skipped']} skipped, exit {code}, {time.time() - start:.0f} s", flush=True)
    return counts


def main():
    sizes = [int(s) for s in os.environ.get("ADCME_MPI_TEST_SIZES", "1 2 3 4 6").split()]
    timeout = float(os.environ.get("ADCME_MPI_SUITE_TIMEOUT", "1200"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    total = {"passed": 0, "failed": 0, "skipped": 0}
    # the same suite once more with every kernel on the dedicated MPI thread
    thread_sizes = [int(s) for s in os.environ.get("ADCME_MPI_THREAD_SIZES", "3").split()]
    runs = [(n, False) for n in sizes] + [(n, True) for n in thread_sizes]
    for n, on_thread in runs:
        cmd = mpiexec() + ["-n", str(n), sys.executable, os.path.join(HERE, "mpi_pytest.py"),
                           "-q", "-p", "no:cacheprovider", os.path.join(HERE, "mpi")]
        os.environ["ADCME_MPI_THREAD"] = "1" if on_thread else "0"
        label = f"tests/mpi on {n} rank(s)" + (" with ADCME_MPI_THREAD=1" if on_thread else "")
        for k, v in run(label, cmd, timeout).items():
            total[k] += v
    os.environ.pop("ADCME_MPI_THREAD", None)
    launch = os.path.join(HERE, "launch")
    if os.path.isdir(launch) and os.environ.get("ADCME_MPI_SKIP_LAUNCH") != "1":
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", launch]
        for k, v in run("tests/launch (one mpiexec per case)", cmd, 3 * timeout).items():
            total[k] += v
    print(f"\ntotal: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped")
    return 1 if total["failed"] or total["passed"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
