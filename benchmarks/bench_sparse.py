"""The sparse solve on PETSc, weak scaling at ADCME's size (300 x 300 rows of a
5-point Laplacian per rank; rank r owns a band of 300 grid rows):

- forward (solve) and forward+gradient (solve, transpose solve, gather) times;
- the op's overhead: the forward run against PETSc's own KSPSolve time in the
  same run (adcme_mpi_sparse_last_solve; KSPSolve includes the
  preconditioner's set-up, which every run redoes: the values change);
- the iteration count per solver;
- RSS over many solves with changing values (a smaller matrix).

Rounds are interleaved (forward, then forward+gradient, per round); medians
with the spread [min..max]. Writes benchmarks/results/sparse_<solver>_<P>.json
and prints one table row on rank 0:

    mpiexec -n 2 python benchmarks/bench_sparse.py --solver GAMG --rounds 11
"""

import argparse
import ctypes
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import adcme_mpi as am  # noqa: E402
from adcme_mpi import _loader  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def laplacian_band(n, rows_per_rank, rank):
    """COO pairs and values of the 5-point Laplacian's rows for grid rows
    rank*rows_per_rank .. +rows_per_rank-1 of an n-wide grid (Dirichlet)."""
    total_rows = rows_per_rank * am.mpi_size()
    i, j = np.meshgrid(
        np.arange(rank * rows_per_rank, (rank + 1) * rows_per_rank), np.arange(n), indexing="ij"
    )
    i, j = i.ravel(), j.ravel()
    row = i * n + j
    pairs, values = [np.stack([row, row], 1)], [np.full(row.size, 4.0)]
    for di, dj in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        ok = (i + di >= 0) & (i + di < total_rows) & (j + dj >= 0) & (j + dj < n)
        pairs.append(np.stack([row[ok], ((i + di) * n + j + dj)[ok]], 1))
        values.append(np.full(ok.sum(), -1.0))
    return np.concatenate(pairs), np.concatenate(values), total_rows * n


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build(n, rows_per_rank, solver):
    rank = am.mpi_rank()
    pairs, values, N = laplacian_band(n, rows_per_rank, rank)
    ilower = rank * rows_per_rank * n
    scale = tf.compat.v1.placeholder(tf.float64, [])
    vals = tf.constant(values) * scale
    A = am.mpi_SparseTensor(pairs, vals, ilower, ilower + rows_per_rank * n - 1, N)
    b = tf.constant(np.random.default_rng(rank).standard_normal(rows_per_rank * n))
    x = A.solve(b, solver=solver, rtol=1e-8, max_it=500)
    loss = tf.reduce_sum(x * x)
    grads = tf.gradients(loss, [vals, b])
    return scale, x, grads


def last_solve():
    capi = _loader.sparse_library()[1]
    seconds, setups = ctypes.c_double(), ctypes.c_int64()
    iterations = capi.adcme_mpi_sparse_last_solve(ctypes.byref(seconds), ctypes.byref(setups))
    return iterations, seconds.value


def timed(sess, fetches, feed):
    am.mpi_barrier()
    start = time.perf_counter()
    sess.run(fetches, feed)
    return time.perf_counter() - start


def stats(values):
    v = np.asarray(values)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="grid width (rows per rank: n x n)")
    parser.add_argument("--solver", default="GAMG")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--rss-solves", type=int, default=1000)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    tf.compat.v1.disable_eager_execution()
    rank, size = am.mpi_rank(), am.mpi_size()

    graph = tf.Graph()
    with graph.as_default():
        scale, x, grads = build(args.n, args.n, args.solver)
        sess = am.Session(graph=graph)
        sess.run([x, grads], {scale: 1.0})  # warm-up: set-up, first preconditioner
        forward, both, ksp, iterations = [], [], [], []
        for k in range(args.rounds):
            feed = {scale: 1.0 + 1e-3 * (k + 1)}  # new values: a new preconditioner each run
            forward.append(timed(sess, x, feed))
            its, seconds = last_solve()
            ksp.append(seconds)
            iterations.append(its)
            feed = {scale: 1.0 - 1e-3 * (k + 1)}
            both.append(timed(sess, [x, grads], feed))
        sess.close()
    overhead = [f / s - 1 for f, s in zip(forward, ksp)]
    ratio = [b / f for f, b in zip(forward, both)]

    small = tf.Graph()
    with small.as_default():
        scale, x, _ = build(50, 50, args.solver)
        with am.Session(graph=small) as s:
            rss = []
            for k in range(args.rss_solves):
                s.run(x, {scale: 1.0 + 1e-6 * k})
                if k + 1 in (100, args.rss_solves):
                    rss.append(rss_mb())

    result = {
        "ranks": size,
        "rows_per_rank": args.n * args.n,
        "solver": args.solver,
        "petsc": am.petsc_info()["version"],
        "rounds": args.rounds,
        "forward_s": stats(forward),
        "forward_gradient_s": stats(both),
        "ksp_solve_s": stats(ksp),
        "op_overhead": stats(overhead),
        "gradient_over_forward": stats(ratio),
        "iterations": sorted(set(iterations)),
        "rss_mb_after_100_and_all": rss,
        "rss_solves": args.rss_solves,
    }
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, f"sparse_{args.solver}_{size}.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=1)

        def m(d):
            return f"{d['median'] * 1e3:.0f} ms [{d['min'] * 1e3:.0f}..{d['max'] * 1e3:.0f}]"

        over = {k: v * 100 for k, v in result["op_overhead"].items()}
        print(
            f"| {size} | {args.solver} | {result['iterations']} | {m(result['forward_s'])} | "
            f"{m(result['ksp_solve_s'])} | {over['median']:.1f}% "
            f"[{over['min']:.1f}..{over['max']:.1f}] | {m(result['forward_gradient_s'])} | "
            f"{result['gradient_over_forward']['median']:.2f} | {rss[0]:.0f} -> {rss[-1]:.0f} MB |"
        )


if __name__ == "__main__":
    main()
