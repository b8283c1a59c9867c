"""The whole test suite, as README.md and .ci/run call it:

    python tests/run_all.py

1. tests/mpi under `mpiexec -n N` for N in ADCME_MPI_TEST_SIZES (default
   "1 2 3 4 6"), each launch wrapped in a timeout; outcomes are agreed across
   ranks, so rank 0's report is the truth for that size. 1 rank runs as
   two jobs side by side (FIRST_OF_TWO_JOBS below). At 3 ranks and
   on the MPI thread (at 2 ranks), without the composite files (COMPOSITE
   below); at 4 and 6 ranks (2 x 2 and 2 x 3 grids) the grid-dependent
   files only (GRID below).
2. The collectives, point-to-point, halo and sparse files of tests/mpi
   once more on 2 hosts x 2 ranks over TCP (tools/netns_hosts.py; needs root, else skipped
   with the reason; ADCME_MPI_SKIP_HOSTS=1 skips it too).
3. tests/launch with plain pytest: each test starts its own short mpiexec
   jobs (examples, bad input, aborts, hangs, faults across hosts) and checks
   exit status and output.
4. tests/unit with plain pytest (no mpiexec).

Environment: MPIEXEC (default: the mpiexec next to this Python),
MPIEXEC_FLAGS (e.g. "--oversubscribe" for Open MPI), ADCME_MPI_TEST_SIZES,
ADCME_MPI_THREAD_SIZES (sizes rerun with ADCME_MPI_THREAD=1, default "2"),
ADCME_MPI_SUITE_TIMEOUT (seconds per launch, default 1200), ADCME_MPI_LAUNCH_FILES
(only these files of tests/launch; ADCME_MPI_UNIT_FILES likewise for tests/unit),
ADCME_MPI_TEST_IGNORE (these files of
tests/mpi left out of the runs at ADCME_MPI_TEST_SIZES and thread sizes),
ADCME_MPI_SUBSET_RUNS (runs that leave out the composite files, COMPOSITE
below: default "3 2thr", i.e. 3 ranks and the MPI-thread run at 2;
"" runs every file everywhere), ADCME_MPI_GRID_RUNS (runs that take only the
files whose outcome depends on the process grid, GRID below: default "4 6"),
ADCME_MPI_SKIP_{HOSTS,UNIT,LAUNCH}=1,
ADCME_MPI_REQUIRE_PETSC=1 (the sparse tests fail instead of skipping without PETSc).
Counts come from pytest's junit XML (rank 0 writes it for the MPI runs).
Before the total: a table of the adjoint (dot-product) and HVP tests that
passed, per public op and MPI run ("2thr": on the MPI thread, "2x2": hosts).
Ends with one line: "total: N passed, N failed, N skipped".
"""

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

from mpiexec import TOOLS, hosts_unavailable, mpiexec

HERE = os.path.dirname(os.path.abspath(__file__))


def junit_counts(path):
    """passed/failed/skipped from a pytest junit XML file (None if missing)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for suite in root.iter("testsuite"):
        tests, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
        failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
        counts["failed"] += failed
        counts["skipped"] += skipped
        counts["passed"] += tests - failed - skipped
    return counts


# (kind, public op) -> {run column: passed tests}: the adjoint and HVP tests
# (tests/mpi/helpers.py adjoint_test, hvp_test) that passed in each MPI run
OP_TESTS = {}


def tally_op_tests(path, column):
    """Adds the passed adjoint/HVP tests of one run's junit XML to OP_TESTS
    (tests/mpi/conftest.py writes an "op_test" property on each)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return
    for case in root.iter("testcase"):
        for prop in case.iter("property"):
            if prop.get("name") != "op_test":
                continue
            kind, ops = prop.get("value").split(":", 1)
            for op in ops.split(","):
                per_run = OP_TESTS.setdefault((kind, op), {})
                per_run[column] = per_run.get(column, 0) + 1


def print_op_tests(columns):
    if not OP_TESTS:
        return
    print("\nadjoint (dot-product) and HVP tests passed, per public op and MPI run:")
    width = max(len(op) for _, op in OP_TESTS)
    print(f"{'kind':8} {'op':{width}} " + " ".join(f"{c:>6}" for c in columns))
    for (kind, op), per_run in sorted(OP_TESTS.items()):
        cells = " ".join(f"{per_run.get(c, 0):>6}" for c in columns)
        print(f"{kind:8} {op:{width}} {cells}")


def start_job(cmd, env=None, stdout=subprocess.PIPE):
    # outside the checkout: `python -m pytest` puts the working directory
    # on sys.path, and the source tree's adcme_mpi/ (no op library) must
    # not shadow the installed package
    return subprocess.Popen(
        cmd,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=tempfile.gettempdir(),
        env={**os.environ, **(env or {})},
    )


def wait_job(proc, deadline):
    """The job's exit status, or "timeout" (its process group killed) after deadline."""
    try:
        return proc.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        return "timeout"


def report(label, code, junits, start):
    """Prints and returns one run's counts, summed over its jobs' junit files."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for junit in junits:
        for k, v in (junit_counts(junit) or {}).items():
            counts[k] += v
    if code != 0 and counts["failed"] == 0:
        counts["failed"] = 1  # crashed, hung or killed: count the launch itself as a failure
        print(
            f"=== {label}: exit status {code} with no failing test reported; counted as 1 failure"
        )
    print(
        f"=== {label}: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['skipped']} skipped, exit {code}, {time.time() - start:.0f} s",
        flush=True,
    )
    return counts


def run(label, cmd, timeout, junit, env=None):
    print(f"\n=== {label}: {' '.join(cmd)}", flush=True)
    start = time.time()
    if os.path.exists(junit):
        os.remove(junit)
    try:
        proc = start_job(cmd, env)
        deadline = start + timeout
        for line in proc.stdout:
            sys.stdout.write(line)
            if time.time() > deadline:
                break
        code = wait_job(proc, deadline)
    except OSError as err:
        print(f"cannot start {cmd[0]}: {err}")
        code = "not started"
    return report(label, code, [junit], start)


def run_side_by_side(label, cmds, timeout, junits):
    """`run` for jobs that share no process, started together (the 1-rank
    run, split in two: one process per core). Each job's output is kept in a
    file and printed, job by job, once all have ended; the run's exit status
    is the first job's that is not 0."""
    print(f"\n=== {label}: {len(cmds)} jobs side by side", flush=True)
    start = time.time()
    jobs, code = [], 0
    try:
        for cmd, junit in zip(cmds, junits):
            print(" ".join(cmd), flush=True)
            if os.path.exists(junit):
                os.remove(junit)
            out = tempfile.TemporaryFile("w+")
            jobs.append((start_job(cmd, stdout=out), out))
    except OSError as err:
        print(f"cannot start {cmd[0]}: {err}")
        code = "not started"
    for proc, out in jobs:
        if code == "not started":
            os.killpg(proc.pid, 9)
        status = wait_job(proc, start + timeout)
        code = code or status
        out.seek(0)
        sys.stdout.write(out.read())
    return report(label, code, junits, start)


# The 1-rank run uses one core of the two here, so it runs as two jobs side
# by side: these files (about half of its time, measured at 2 ranks: 140 of
# 282 s) in the first, the others in the second.
FIRST_OF_TWO_JOBS = [
    "test_applications.py",
    "test_checkpoint.py",
    "test_linalg.py",
    "test_modes.py",
]


# the part of tests/mpi that runs again across hosts: the collectives,
# point-to-point and halo families and the sparse ops (PETSc); the rest is
# ordering and modes, which the network does not change, and compositions of
# these ops: the optimizer and the heat and Poisson inverse problems run
# across the same hosts in tests/launch/test_hosts.py (hosts_job.py, every
# array bitwise against one host). MPICH runs there over OFI's TCP provider:
# its UCX over TCP loses MPI_ANY_SOURCE receives across hosts, which PETSc's
# set-up uses (docs/sparse.md, "Across hosts").
ACROSS_HOSTS = [
    "test_collectives.py",
    "test_p2p.py",
    "test_halo.py",
    "test_sparse.py",
]


# The files whose outcome depends on the process grid: the halo exchange
# and the wave problem on 2 x 2 and 2 x 3 grids (the only grids with both
# sides above 1: square, and unequal), the two-way exchange's pairs, the
# sub-communicators of Split (2 groups of 2 and of 3). The runs in
# ADCME_MPI_GRID_RUNS (4 and 6 ranks: two and three processes per core
# here) take only these. The others run at 1-3 ranks: the collectives,
# reductions, scans and alltoall over 2 and 3 contributions (a power of
# two and not; MPIs choose their algorithms by that), dtypes,
# point-to-point, non-blocking, ordering, modes, sparse, XLA, ...; the
# collectives, point-to-point and sparse ops also at 4 ranks across 2
# hosts (ACROSS_HOSTS).
GRID = [
    "test_halo.py",
    "test_wave.py",
    "test_exchange.py",
    "test_comm.py",
]


# The composite files: applications, solvers, optimizers, checkpointed loops,
# second order, data-parallel training and the execution modes. They use only
# ops the op-family files test one by one, and cost most of tests/mpi (at 6
# ranks, measured: 373 of 535 s). The runs where they would repeat what 1
# and 2 ranks already show at several times the cost (3 ranks: more
# processes than the 2 cores here; the MPI thread, which moves where
# kernels run, not what they compute) leave them out:
# ADCME_MPI_SUBSET_RUNS (4 and 6 ranks take GRID only). The optimizer and the heat
# and Poisson inverse problems still run on 4 ranks across 2 hosts
# (tests/launch/test_hosts.py, as root).
# test_wave.py stays everywhere: its grids leave some ranks without
# receivers, the case that once hung only at some sizes.
COMPOSITE = [
    "test_applications.py",
    "test_linalg.py",
    "test_checkpoint.py",
    "test_second_order.py",
    "test_data_parallel.py",
    "test_modes.py",
    "test_optimize.py",
    "test_optimize_newton.py",
]


def run_across_hosts(pytest_args, timeout, junit):
    """ACROSS_HOSTS on 2 hosts x 2 ranks over TCP (tools/netns_hosts.py makes
    the hosts as network namespaces and removes them after); needs root."""
    label = "tests/mpi on 2 hosts x 2 ranks over TCP"
    reason = hosts_unavailable()
    if reason:
        print(f"\n=== {label}: SKIPPED: {reason}", flush=True)
        return {}
    cmd = [
        sys.executable,
        os.path.join(TOOLS, "netns_hosts.py"),
        "run",
        "--hosts=2",
        "--per-host=2",
        f"--mpiexec={mpiexec(1)[0]}",
        f"--timeout={timeout - 30:.0f}",
        "--",
        sys.executable,
        os.path.join(HERE, "mpi_pytest.py"),
        *pytest_args,
        *(os.path.join(HERE, "mpi", name) for name in ACROSS_HOSTS),
    ]
    return run(label, cmd, timeout, junit)


def main():
    sizes = [int(s) for s in os.environ.get("ADCME_MPI_TEST_SIZES", "1 2 3 4 6").split()]
    timeout = float(os.environ.get("ADCME_MPI_SUITE_TIMEOUT", "1200"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    total = {"passed": 0, "failed": 0, "skipped": 0}
    # the same suite once more with every kernel on the dedicated MPI thread
    thread_sizes = [int(s) for s in os.environ.get("ADCME_MPI_THREAD_SIZES", "2").split()]
    runs = [(n, False) for n in sizes] + [(n, True) for n in thread_sizes]
    junit = os.path.join(tempfile.mkdtemp(prefix="adcme_mpi_junit_"), "report.xml")
    quiet = ["-q", "-p", "no:cacheprovider"]
    pytest_args = [*quiet, f"--junitxml={junit}"]
    columns = []  # the MPI runs, as the adjoint/HVP table's columns
    # ADCME_MPI_TEST_IGNORE: files of tests/mpi a stage that repeats stage 1's
    # leaves out (e.g. the applications, which add no op the other files lack)
    ignored_names = os.environ.get("ADCME_MPI_TEST_IGNORE", "").split()
    subset_runs = os.environ.get("ADCME_MPI_SUBSET_RUNS", "3 2thr").split()
    grid_runs = os.environ.get("ADCME_MPI_GRID_RUNS", "4 6").split()

    def files(names):
        return [os.path.join(HERE, "mpi", f) for f in names if f not in ignored_names]

    def all_but(names):
        return [f"--ignore={os.path.join(HERE, 'mpi', f)}" for f in dict.fromkeys(names)] + [
            os.path.join(HERE, "mpi")
        ]

    def command(n, args, where):
        return mpiexec(n) + [sys.executable, os.path.join(HERE, "mpi_pytest.py"), *args, *where]

    for n, on_thread in runs:
        column = f"{n}" + ("thr" if on_thread else "")
        os.environ["ADCME_MPI_THREAD"] = "1" if on_thread else "0"
        label = f"tests/mpi on {n} rank(s)" + (" with ADCME_MPI_THREAD=1" if on_thread else "")
        junits = [junit]
        left_out = ignored_names + (COMPOSITE if column in subset_runs else [])
        first = files(f for f in FIRST_OF_TWO_JOBS if f not in left_out)
        if column in grid_runs:
            label += " (the grid-dependent files)"
            counts = run(label, command(n, pytest_args, files(GRID)), timeout, junit)
        elif n == 1 and first:
            # two 1-rank jobs side by side, each with its own report and
            # pytest folder (--basetemp), the second taking what the first does not
            junits = [junit + ".first", junit + ".second"]
            basetemp = tempfile.mkdtemp(prefix="adcme_mpi_pytest_")
            halves = [first, all_but(left_out + FIRST_OF_TWO_JOBS)]
            cmds = [
                command(1, [*quiet, f"--junitxml={j}", f"--basetemp={basetemp}/{i}"], where)
                for i, (j, where) in enumerate(zip(junits, halves))
            ]
            counts = run_side_by_side(label, cmds, timeout, junits)
        else:
            if column in subset_runs:
                label += " without the composite files"
            counts = run(label, command(n, pytest_args, all_but(left_out)), timeout, junit)
        for k, v in counts.items():
            total[k] += v
        columns.append(column)
        for j in junits:
            tally_op_tests(j, column)
    os.environ.pop("ADCME_MPI_THREAD", None)
    across_hosts = run_across_hosts(pytest_args, timeout, junit)
    for k, v in across_hosts.items():
        total[k] += v
    if across_hosts:
        columns.append("2x2")
        tally_op_tests(junit, "2x2")
    plain = [
        ("unit", "tests/unit (no mpiexec)", timeout),
        ("launch", "tests/launch (one mpiexec per case)", 3 * timeout),
    ]
    for folder, label, limit in plain:
        if os.environ.get(f"ADCME_MPI_SKIP_{folder.upper()}") == "1":
            continue
        # ADCME_MPI_LAUNCH_FILES: a representative part of tests/launch for a
        # stage that repeats stage 1's (e.g. "test_errors.py test_hosts.py")
        chosen = os.environ.get(f"ADCME_MPI_{folder.upper()}_FILES", "").split()
        where = [os.path.join(HERE, folder, name) for name in chosen] or [
            os.path.join(HERE, folder)
        ]
        # the slowest cases, so CI logs show where a stage's time goes
        durations = ["--durations=8"] if folder == "launch" else []
        cmd = [sys.executable, "-m", "pytest", *pytest_args, *durations, *where]
        for k, v in run(label, cmd, limit, junit).items():
            total[k] += v
    print_op_tests(columns)
    print(
        f"\ntotal: {total['passed']} passed, {total['failed']} failed, {total['skipped']} skipped"
    )
    return 1 if total["failed"] or total["passed"] == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
