"""The job that tests/launch/test_hosts.py runs on one host and across hosts.

python hosts_job.py results DIR   every op forward and backward, the
    optimizer, and the heat and Poisson inverse problems; each rank saves
    its arrays to DIR/rank<r>.npz, to compare one host with several
python hosts_job.py loop          allreduce 1 MiB in a loop, rank 0 printing
    "iteration k" after each, until a fault (link down, a killed rank) ends
    the job
"""

import os
import sys
import time

import numpy as np
import tensorflow as tf

import adcme_mpi as am
from adcme_mpi.apps import heat, poisson

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "mpi"))  # the tests' helpers
from helpers import near_square_grid, rosenbrock_weighted_by_rank  # noqa: E402

tf.compat.v1.disable_eager_execution()
am.mpi_init()
RANK, SIZE = am.mpi_rank(), am.mpi_size()


def forward_and_adjoint(name, op, x, rng):
    """op(x) and the gradient of <op(x), w> for a cotangent w of this rank's."""
    graph = tf.Graph()
    with graph.as_default():
        xt = tf.constant(x)
        y = op(xt)
        w = tf.constant(rng.standard_normal(y.shape.as_list()))
        (g,) = tf.gradients(tf.reduce_sum(y * w), [xt])
        with am.Session(graph=graph) as sess:
            y_value, g_value = sess.run([y, g])
    return {f"{name}": y_value, f"{name}.grad": g_value}


def ops_results():
    rng = np.random.default_rng(100 + RANK)
    x = rng.standard_normal(1000)
    whole = rng.integers(-1000, 1000, 1000).astype(np.float64)  # sums exact in any order
    right, left = (RANK + 1) % SIZE, (RANK - 1) % SIZE
    m, n = near_square_grid()
    block = rng.standard_normal((24, 32))
    cases = {
        "sum": (lambda a: am.mpi_sum(a, root=SIZE - 1), x),
        "sum.whole": (lambda a: am.mpi_sum(a, root=SIZE - 1), whole),
        "allreduce": (am.mpi_allreduce, x),
        "allreduce.whole": (am.mpi_allreduce, whole),
        "bcast": (lambda a: am.mpi_bcast(a, root=1 % SIZE), x),
        "gather": (lambda a: am.mpi_gather(a, root=SIZE - 1), x),
        "scatter": (lambda a: am.mpi_scatter(a[: 10 * SIZE], root=0), x),
        "sendrecv": (lambda a: am.mpi_sendrecv(a, dest=right, src=left), x),
        "halo": (lambda a: am.mpi_halo_exchange(a, m, n, fill_value=0.5), block),
    }
    results = {}
    for name, (op, data) in cases.items():
        results.update(forward_and_adjoint(name, op, data, rng))
    return results


def optimizer_results():
    graph, theta0, loss, g = rosenbrock_weighted_by_rank()
    with am.Session(graph=graph) as sess:
        result = am.mpi_optimize(
            fg=lambda v: sess.run([loss, g], {theta0: v}),
            x0=np.array([-1.2, 1.0]),
            method="L-BFGS-B",
        )
    return {"optimize.x": result.x, "optimize.fun": np.array(result.fun)}


def application_results():
    h = heat.run(N=12, maxiter=15)
    p = poisson.run(N=12, maxiter=6)
    return {
        "heat.theta": np.asarray(h["theta"]),
        "heat.loss": np.array([h["loss0"], h["loss"]]),
        "poisson.loss": np.array([p["loss0"], p["loss"], p["kappa_rel_error"]]),
        "poisson.solution_error": np.array(p["solution_error"]),
    }


def results(out_dir):
    found = {**ops_results(), **optimizer_results(), **application_results()}
    np.savez(os.path.join(out_dir, f"rank{RANK}.npz"), **found)
    am.mpi_finalize()
    if RANK == 0:
        print(f"hosts_job: {len(found)} results saved by each of {SIZE} ranks", flush=True)


def loop():
    import socket

    graph = tf.Graph()
    with graph.as_default():
        total = am.mpi_allreduce(tf.ones(1 << 17, tf.float64))  # 1 MiB
        with am.Session(graph=graph) as sess:
            print(f"rank {RANK} on {socket.gethostname()} pid {os.getpid()}", flush=True)
            for k in range(100000):
                assert sess.run(total)[0] == SIZE
                if RANK == 0:
                    print(f"iteration {k}", flush=True)
                time.sleep(0.05)


if __name__ == "__main__":
    if sys.argv[1] == "results":
        results(sys.argv[2])
    else:
        loop()
