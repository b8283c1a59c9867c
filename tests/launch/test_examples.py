"""Every example as README.md shows it (exact commands), the numbers ADCME printed
asserted; examples refuse wrong rank counts and unstable settings with one line."""

import os
import re

import pytest

from launcher import ROOT, launch, petsc_built


SPARSE_EXAMPLES = ("examples/sparse_poisson.py", "examples/fem_inverse.py")


def halo_rank3_block(out):
    block = re.search(r"rank = 3 =+\n((?:.*\n){4})", out).group(1)
    rows = [[float(x) for x in line.split()] for line in block.strip().splitlines()]
    return rows == [[6, 7, 8, 1], [10, 11, 12, 1], [14, 15, 16, 1], [18, 19, 20, 1]]


def sparse_poisson_ok(out):
    """O(h^2) from the manufactured solution; the fit gains 100x, kappa within 20%."""
    found = re.search(
        r"max \|u - u_exact\| = ([0-9.eE+-]+); inverse: loss ([0-9.eE+-]+) -> ([0-9.eE+-]+) .*"
        r"max relative kappa error ([0-9.eE+-]+)",
        out,
    )
    if found is None:
        return False
    err, loss0, loss, kappa_err = (float(v) for v in found.groups())
    return err < 1e-3 and loss < loss0 / 100 and kappa_err < 0.2


def lbfgs_root(out):
    t = float(re.search(r"minimizer \[([0-9.eE+-]+)\]", out).group(1))
    return abs(t - 0.5437) < 1e-4 and abs(1 + t + t * t + t**3 - 2) < 1e-6


@pytest.mark.parametrize("n", [1, 2, 4])
def test_optimizer_worker_exception_ends_the_job(n):
    """A worker raising inside f while rank 0 waits inside an MPI op: the job
    ends (non-zero exit) quickly with the worker's traceback, no hang."""
    code = """
import numpy as np, tensorflow as tf, adcme_mpi as am
tf.compat.v1.disable_eager_execution()
th = tf.compat.v1.placeholder(tf.float64, [1])
L = am.mpi_sum(tf.reduce_sum(am.mpi_bcast(th) ** 2))
g = tf.gradients(L, th)[0]
sess = am.Session()
calls = [0]
def f(x):
    calls[0] += 1
    if am.mpi_rank() == am.mpi_size() - 1 and calls[0] == 2:
        raise RuntimeError("worker exploded")
    return sess.run(L, {th: x})
am.mpi_optimize(f, lambda x: sess.run(g, {th: x}), np.ones(1), error_wait=5)
print("finished normally")
"""
    result = launch(n, None, code=code, timeout=120)
    if n == 1:  # rank 0 itself raises: a plain exception, every rank (one) raises
        assert result.code != 0 and "worker exploded" in result.out, result
        return
    assert result.code not in (0, "timeout"), result
    assert "worker exploded" in result.out and "finished normally" not in result.out, result
    assert result.seconds < 60, result


README = os.path.join(ROOT, "README.md")
COMMAND = re.compile(
    r'(?:TF_XLA_FLAGS="([^"]*)" )?'  # an environment prefix (README "XLA")
    r"(?:\.venv/bin/)?mpiexec -n (\d+) (?:\.venv/bin/)?python (examples/[\w/]+\.py)"
    r"([^`#\n|]*)"
)


def readme_commands():
    """Every `mpiexec -n N python examples/...` command README.md shows, as written."""
    with open(README) as f:
        found = {
            (int(n), script, args.strip(), xla)
            for xla, n, script, args in COMMAND.findall(f.read())
        }
    return sorted(found)


# What each example must print (beyond exiting 0), checked on README's commands.
TEN = lambda v: "[" + ", ".join([v] * 10)  # noqa: E731
EXPECT = {
    # sum over ranks of 2^r, and of r 2^(r-1): (15.0, 17.0) on 4 ranks
    "examples/test_simple.py": lambda out, n: (
        f"({2.0**n - 1}, {float(sum(r * 2 ** (r - 1) for r in range(n)))})" in out
    ),
    "examples/lbfgs.py": lambda out, n: lbfgs_root(out),
    "examples/adcme_inverse.py": lambda out, n: "minimizer [1.0, 1.0]" in out,
    "examples/reduce_sum.py": lambda out, n: (
        "rank 0: b = [6.0, 12.0, 18.0, 24.0, 30.0, 36.0, 42.0, 48.0, 54.0, 60.0]" in out
        and out.count(f"grad = {TEN('1.0')}]") == 4
    ),
    "examples/broadcast.py": lambda out, n: (
        out.count(f"b = {TEN('3.0')}]") == 4 and f"rank 3: b = {TEN('3.0')}] grad = [24.0" in out
    ),
    "examples/send_recv.py": lambda out, n: (
        f"rank 0: a = {TEN('2.0')}] grad = [0.0" in out
        and f"rank 2: a = {TEN('2.0')}] grad = [8.0" in out
        and f"rank 3: a = {TEN('3.0')}] grad = [6.0" in out
    ),
    "examples/halo_exchange.py": lambda out, n: halo_rank3_block(out),
    "examples/heat.py": lambda out, n: (
        float(re.search(r"max error=([0-9.eE+-]+)", out).group(1)) < 1e-6
    ),
    "examples/sparse_poisson.py": lambda out, n: sparse_poisson_ok(out),
    "examples/wave_inverse.py": lambda out, n: (
        re.search(r"misfit ([0-9.eE+-]+) -> ([0-9.eE+-]+)", out) is not None
        and float(re.search(r"misfit [0-9.eE+-]+ -> ([0-9.eE+-]+)", out).group(1))
        < float(re.search(r"misfit ([0-9.eE+-]+) ->", out).group(1)) / 5
    ),
    "examples/fem_inverse.py": lambda out, n: (
        float(re.search(r"max error ([0-9.eE+-]+)", out).group(1)) < 1e-6
        and f"on {n} rank(s)" in out
    ),
    "examples/poisson.py": lambda out, n: (
        re.search(
            r"max \|u - u_exact\| = [0-9.eE+-]+; inverse: loss ([0-9.eE+-]+) -> ([0-9.eE+-]+) .*"
            r"max relative kappa error ([0-9.eE+-]+)",
            out,
        )
        is not None
    ),
}


def test_readme_shows_every_example():
    shown = {script for _, script, _, _ in readme_commands()}
    present = {
        f"examples/{f}"
        for f in os.listdir(os.path.join(ROOT, "examples"))
        if f.endswith(".py") and f != "quiet.py"
    }
    assert present <= shown, f"README.md shows no command for {sorted(present - shown)}"


@pytest.mark.parametrize(
    "n,script,args,xla_flags",
    readme_commands(),
    ids=[f"{s} {a}{' (XLA)' if x else ''}".strip() for _, s, a, x in readme_commands()],
)
def test_readme_command(n, script, args, xla_flags, tmp_path):
    """README.md's example commands, exactly as written (run in a fresh
    directory, where their --out folders land): exit 0, the right numbers,
    and the figures where --out is given."""
    if script in SPARSE_EXAMPLES and not petsc_built():
        pytest.skip("the sparse ops were not built (no PETSc); README 'Sparse matrices'")
    env = {"TF_XLA_FLAGS": xla_flags}
    result = launch(n, [script, *args.split()], timeout=300, cwd=str(tmp_path), env=env)
    assert result.code == 0, result
    check = EXPECT.get(script)
    assert check is None or check(result.out, n), result
    out_dir = re.search(r"--out (\S+)", args)
    if out_dir and "matplotlib" not in result.out:
        pngs = list((tmp_path / out_dir.group(1)).glob("*.png"))
        assert len(pngs) == 2 and all(p.stat().st_size > 1000 for p in pngs), result


def test_example_with_the_wrong_rank_count_says_so():
    result = launch(4, ["examples/halo_exchange.py"], timeout=120)
    assert result.code == 2, result
    assert (
        "halo_exchange.py needs exactly 6 ranks, got 4: mpiexec -n 6 python "
        "examples/halo_exchange.py" in result.out
    ), result
    assert result.seconds < 60, result


def test_unstable_heat_setting_is_refused():
    result = launch(2, ["examples/heat.py", "--steps", "10"], timeout=120)
    assert result.code == 2, result
    assert re.search(
        r"heat: unstable explicit scheme: dt \* max\(kappa\) \* 4 / h\^2 = [0-9.]+ >= 1 "
        r".*use --steps \d+ or more",
        result.out,
    ), result


def test_the_demo_prints_its_answer_and_nothing_else():
    """README's first command: the answer, not a screen of TensorFlow's
    start-up lines from every rank (examples/quiet.py; TF_CPP_MIN_LOG_LEVEL
    empty, as a new user has it)."""
    result = launch(4, ["examples/test_simple.py"], timeout=120, env={"TF_CPP_MIN_LOG_LEVEL": ""})
    assert result.code == 0, result
    assert result.out.strip() == "(15.0, 17.0)", result
