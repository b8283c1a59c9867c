"""Application timings: heat-equation step rate (same global grid, and same
grid per rank) and gradient time / forward time for the heat and Poisson
applications.

    mpiexec -n 1 python benchmarks/bench_apps.py --out benchmarks/out/apps1.json
    mpiexec -n 2 python benchmarks/bench_apps.py --out benchmarks/out/apps2.json
    mpiexec -n 2 python benchmarks/bench_apps.py --xla --out benchmarks/out/apps2_session_xla.json

--xla: every session is am.Session(xla=True) (XLA auto-clustering), the
setting whose default this measures (issue 32, item 2).
"""

import argparse
import json
import os
import time

import numpy as np
import tensorflow as tf
import adcme_mpi as am  # first: with a system MPI it picks the libmpi mpi4py loads
from adcme_mpi.apps import heat, poisson
from mpi4py import MPI  # noqa: E402

COMM = MPI.COMM_WORLD


def forward_and_gradient_times(sess, loss, grad, feed, rounds=7):
    """Median times of the forward and of forward+gradient, interleaved round
    by round (slowest rank), and the median of the per-round ratio
    (fwd+grad - fwd) / fwd: noise bursts hit both sides of a ratio alike."""
    fetches = {"forward": loss, "both": [loss, grad]}
    for fetch in fetches.values():
        sess.run(fetch, feed)  # warm up
    times = {name: [] for name in fetches}
    for _ in range(rounds):
        for name, fetch in fetches.items():
            COMM.Barrier()
            t0 = time.perf_counter()
            sess.run(fetch, feed)
            times[name].append(COMM.allreduce(time.perf_counter() - t0, op=MPI.MAX))
    forward, both = np.array(times["forward"]), np.array(times["both"])
    return float(np.median(forward)), float(np.median(both)), float(np.median(both / forward - 1))


def stable_T(N, steps):
    """A final time for which `steps` explicit steps are stable on an N x N grid."""
    return steps * 0.5 / (N + 1) ** 2 / (4 * heat.KAPPA_MAX)


def heat_times(N, steps, xla=False):
    problem = heat.HeatProblem(N=N, steps=steps, T=stable_T(N, steps), snapshots=1)
    with tf.Graph().as_default() as g:
        theta0, loss, grad = heat.build_inverse(
            problem, tf.zeros([1, problem.patch.rows, problem.patch.cols], tf.float64)
        )
        with am.Session(graph=g, intra_op_parallelism_threads=1, xla=xla) as sess:
            feed = {theta0: heat.TRUE_THETA}
            forward, both, ratio = forward_and_gradient_times(sess, loss, grad, feed)
    return {
        "N": N,
        "steps": steps,
        "ranks": COMM.Get_size(),
        "forward_s": forward,
        "forward_and_gradient_s": both,
        "steps_per_s": steps / forward,
        "gradient_over_forward": ratio,
    }


def heat_graph_ops(steps):
    """Operations in the heat inverse problem's graph (loss and gradient)."""
    problem = heat.HeatProblem(N=16, steps=steps, T=stable_T(16, steps), snapshots=1)
    with tf.Graph().as_default() as g:
        heat.build_inverse(
            problem, tf.zeros([1, problem.patch.rows, problem.patch.cols], tf.float64)
        )
        return len(g.get_operations())


def poisson_times(N, xla=False):
    problem = poisson.PoissonProblem(N=N)
    with tf.Graph().as_default() as g:
        weights0, loss, grad = poisson.build_inverse(
            problem, tf.zeros([problem.patch.rows, problem.patch.cols], tf.float64)
        )
        with am.Session(graph=g, intra_op_parallelism_threads=1, xla=xla) as sess:
            feed = {weights0: poisson.init_weights()}
            forward, both, ratio = forward_and_gradient_times(sess, loss, grad, feed, rounds=5)
    return {
        "N": N,
        "ranks": COMM.Get_size(),
        "forward_s": forward,
        "forward_and_gradient_s": both,
        "gradient_over_forward": ratio,
    }


def main():
    tf.compat.v1.disable_eager_execution()
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--xla", action="store_true", help="am.Session(xla=True): auto-clustering")
    args = parser.parse_args()
    size = COMM.Get_size()
    # same global grid on every rank count; and (about) the same grid per rank:
    # 128 x 128 on one rank, 180 x 90 on each of two (1 x 2 patches)
    per_rank_N = {1: 128, 2: 180, 4: 256}.get(size, 128)
    rows = {
        "heat_global_128": heat_times(128, 50, args.xla),
        "heat_per_rank": heat_times(per_rank_N, 50, args.xla),
        # 256 x 256 per rank on square grids (1 and 4 ranks); 256 x 128 on 2 ranks
        "heat_256_per_rank": heat_times({1: 256, 4: 512}.get(size, 256), 20, args.xla),
        "heat_graph_ops": {"steps_10": heat_graph_ops(10), "steps_10000": heat_graph_ops(10000)},
        "poisson_64": poisson_times(64, args.xla),
    }
    if COMM.Get_rank() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
        for key, row in rows.items():
            print(key, json.dumps(row))


if __name__ == "__main__":
    main()
