"""Every example under mpiexec, with the numbers ADCME printed asserted."""
import re

import pytest

from launcher import launch


def run_ok(n, script, *args, timeout=300):
    result = launch(n, [script, *args], timeout=timeout)
    assert result.code == 0, result
    return result.out


def test_test_simple():
    assert "(15.0, 17.0)" in run_ok(4, "examples/test_simple.py")


def test_lbfgs():
    out = run_ok(4, "examples/lbfgs.py")
    t = float(re.search(r"minimizer \[([0-9.eE+-]+)\]", out).group(1))
    assert abs(t - 0.5437) < 1e-4 and abs(1 + t + t * t + t ** 3 - 2) < 1e-6


def test_reduce_sum():
    out = run_ok(4, "examples/reduce_sum.py")
    assert "rank 0: b = [6.0, 12.0, 18.0, 24.0, 30.0, 36.0, 42.0, 48.0, 54.0, 60.0]" in out
    assert out.count("grad = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]") == 4


def test_broadcast():
    out = run_ok(4, "examples/broadcast.py")
    assert out.count("b = [3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]") == 4
    assert "rank 3: b = [3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0] grad = [24.0" in out


def test_send_recv():
    out = run_ok(4, "examples/send_recv.py")
    assert "rank 0: a = [2.0, 2.0" in out and "rank 0: a = [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0] grad = [0.0" in out
    assert "rank 2: a = [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0] grad = [8.0" in out
    assert "rank 3: a = [3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0] grad = [6.0" in out


def test_adcme_inverse():
    out = run_ok(4, "examples/adcme_inverse.py")
    assert "minimizer [1.0, 1.0]" in out


def test_halo_exchange_example():
    out = run_ok(6, "examples/halo_exchange.py")
    block = re.search(r"rank = 3 =+\n((?:.*\n){4})", out).group(1)
    rows = [[float(x) for x in line.split()] for line in block.strip().splitlines()]
    assert rows == [[6, 7, 8, 1], [10, 11, 12, 1], [14, 15, 16, 1], [18, 19, 20, 1]]


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


def test_heat_application_script(tmp_path):
    out = run_ok(4, "examples/heat.py", "--N", "16", "--steps", "40", "--out", str(tmp_path),
                 timeout=600)
    error = float(re.search(r"max error=([0-9.eE+-]+)", out).group(1))
    assert error < 1e-6, out
    for name in ("heat_fields.png", "heat_loss.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_poisson_application_script(tmp_path):
    out = run_ok(4, "examples/poisson.py", "--N", "16", "--maxiter", "40", "--out", str(tmp_path),
                 timeout=600)
    match = re.search(r"max \|u - u_exact\| = ([0-9.eE+-]+); inverse: loss ([0-9.eE+-]+) -> "
                      r"([0-9.eE+-]+)", out)
    assert match, out
    err, before, after = (float(g) for g in match.groups())
    assert err < 1e-3 and after < before / 50, out
    for name in ("poisson_fields.png", "poisson_loss.png"):
        assert (tmp_path / name).stat().st_size > 1000
