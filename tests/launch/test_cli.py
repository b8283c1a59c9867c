"""`python -m adcme_mpi` (what this installation is made of) and its
self-test `--check`, whose last line is PASS or FAIL and why."""

import importlib.util
import os
import subprocess
import sys
import tempfile


def run_module(*args, env=None, timeout=300):
    proc = subprocess.run(
        [sys.executable, "-m", "adcme_mpi", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tempfile.gettempdir(),  # the installed package, not the source tree
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})),
    )
    return proc.returncode, proc.stdout, proc.stderr


def selftest_cases():
    """The installed op table's self-test cases, and those of the sparse ops
    (op_table.py is plain Python: loaded without importing the package)."""
    package = importlib.util.find_spec("adcme_mpi").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location("op_table", os.path.join(package, "op_table.py"))
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    sparse = {op.case for op in table.OPS if op.case and op.needs_petsc}
    return table.selftest_cases(), sparse


def test_describes_the_installation():
    code, out, err = run_module()
    assert code == 0, out + err
    for expected in (
        "adcme_mpi 0.2.0",
        "TensorFlow 2.",
        "libmpi: /",
        "thread level: MULTIPLE",
        "built against: TensorFlow 2.",
        "ADCME_MPI_TIMEOUT=",
    ):
        assert expected in out, out


def test_check_passes_on_two_ranks():
    code, out, err = run_module("--check", "-n", "2")
    lines = out.strip().splitlines()
    results = [line for line in lines if line.startswith("selftest ")]
    passed = [line for line in results if " ok (" in line]
    skipped = [line for line in results if " skipped (" in line]
    # one line per case of the op table; only those of the sparse ops may be
    # skipped (not built), and not where CI built them
    cases, sparse = selftest_cases()
    assert [line.split()[1] for line in results] == cases, out
    assert len(passed) + len(skipped) == len(cases), out
    assert all(line.split()[1] in sparse for line in skipped), out
    assert not skipped or os.environ.get("ADCME_MPI_REQUIRE_PETSC") != "1", out
    assert code == 0 and lines[-1].startswith(f"PASS: {len(passed)} checks on 2 ranks"), out + err


def test_check_says_why_it_fails():
    code, out, err = run_module("--check", env={"MPIEXEC": "/nonexistent/mpiexec"})
    assert code == 1, out + err
    assert out.strip().splitlines()[-1] == (
        "FAIL: cannot start /nonexistent/mpiexec (set MPIEXEC to your launcher)"
    ), out
