"""Second-order optimisation against L-BFGS on the Poisson NN-kappa inverse
problem (adcme_mpi.apps.poisson: network weights -> kappa -> the
adjoint-method CG solve -> misfit): scipy's Newton-CG, trust-ncg and
trust-krylov with Hessian-vector products from the graph
(apps.poisson.build_hessp, through the twice differentiable
linalg.symmetric_solve), and L-BFGS-B, through mpi_optimize, from the same
start, each run until the gradient norm falls below `--rtol` times its
initial value (a callback stops scipy there).

Counted per method: iterations, loss+gradient evaluations, Hessian-vector
products, and the wall time to the tolerance (the graph prepared before by
one untimed evaluation of each kind). Prints the table (benchmarks/NEWTON.md
shows it), also written to `--table`, and the records to
benchmarks/results/newton.json.

    mpiexec -n 2 python benchmarks/bench_newton.py --N 12 --rtol 1e-4

Run from the checkout with the package importable (PYTHONPATH=build, or installed).
"""

import argparse
import json
import os
import time

import numpy as np
import tensorflow as tf
from mpi4py import MPI

import adcme_mpi as am
from adcme_mpi.apps import poisson

HERE = os.path.dirname(os.path.abspath(__file__))
METHODS = ("L-BFGS-B", "Newton-CG", "trust-ncg", "trust-krylov")


def options_for(method, maxiter):
    """Stop rules loose enough never to stop before the callback does."""
    if method == "L-BFGS-B":
        return {"maxiter": maxiter, "gtol": 0.0, "ftol": 0.0, "maxfun": 10 * maxiter}
    if method == "Newton-CG":
        return {"maxiter": maxiter, "xtol": 1e-14}
    return {"maxiter": maxiter, "gtol": 1e-14}


def run_method(method, sess, loss, grad, weights0, p, hp, w0, rtol, maxiter):
    comm = MPI.COMM_WORLD
    counts = {"fg": 0, "hessp": 0, "iterations": 0}
    state = {"g0": None, "reached": None, "start": None}

    def fg(x):
        value, gradient = sess.run([loss, grad], {weights0: x})
        counts["fg"] += 1
        norm = float(np.linalg.norm(gradient))  # rank 0's is the real one
        if state["g0"] is None:
            state["g0"] = norm
        if state["reached"] is None and norm <= rtol * state["g0"]:
            state["reached"] = {
                "time": time.perf_counter() - state["start"],
                "fg": counts["fg"],
                "hessp": counts["hessp"],
                "iterations": counts["iterations"],
                "loss": float(value),
                "grad_norm": norm,
            }
        return value, gradient

    def hessp(x, v):
        counts["hessp"] += 1
        return sess.run(hp, {weights0: x, p: v})

    def callback(*_):
        counts["iterations"] += 1
        if state["reached"] is not None:
            raise StopIteration  # scipy ends the run normally (rank 0 only runs this)

    kw = {"hessp": hessp} if method != "L-BFGS-B" else {}
    state["start"] = time.perf_counter()
    result = am.mpi_optimize(
        fg=fg,
        x0=w0,
        method=method,
        options=options_for(method, maxiter),
        callback=callback,
        **kw,
    )
    elapsed = time.perf_counter() - state["start"]
    reached = comm.bcast(state["reached"], root=0)
    return {
        "method": method,
        "reached": reached,
        "total_time": elapsed,
        "final_loss": float(result.fun),
        "g0": comm.bcast(state["g0"], root=0),
        "message": str(result.message),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--N", type=int, default=12, help="grid N x N (default 12)")
    parser.add_argument("--rtol", type=float, default=1e-4, help="|grad| / |grad0| to reach")
    parser.add_argument("--maxiter", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=1, help="timed runs per method (median)")
    parser.add_argument("--table", help="also write the table (Markdown) here")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    problem = poisson.PoissonProblem(N=args.N)
    with tf.Graph().as_default() as g:
        u_true = problem.solve(tf.constant(poisson.exact_kappa(problem.xb, problem.yb)))
        with am.Session(graph=g) as sess:
            observed = sess.run(u_true)
    w0 = poisson.init_weights()
    rows = []
    with tf.Graph().as_default() as g:
        weights0, loss, grad = poisson.build_inverse(problem, tf.constant(observed))
        p, hp = poisson.build_hessp(weights0, grad)
        with am.Session(graph=g) as sess:
            sess.run([loss, grad], {weights0: w0})  # untimed: prepares the graph
            sess.run(hp, {weights0: w0, p: w0})
            for method in METHODS:
                runs = [
                    run_method(
                        method, sess, loss, grad, weights0, p, hp, w0, args.rtol, args.maxiter
                    )
                    for _ in range(args.rounds)
                ]
                times = [r["reached"]["time"] for r in runs if r["reached"]]
                row = dict(runs[0], times=times)
                rows.append(row)
                if comm.rank == 0:
                    print(method, json.dumps(row), flush=True)
    if comm.rank != 0:
        return
    meta = {
        "ranks": comm.size,
        "N": args.N,
        "rtol": args.rtol,
        "weights": int(w0.size),
        "cg_tol": problem.tol,
        "rounds": args.rounds,
    }
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "newton.json"), "w") as out:
        json.dump({"meta": meta, "rows": rows}, out, indent=1)
    lines = [
        "| method | iterations | loss+gradient evaluations | Hessian-vector products "
        "| time to tolerance (median [min..max]) | loss there |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        r = row["reached"]
        if r is None:
            lines.append(f"| {row['method']} | not reached: {row['message']} | | | | |")
            continue
        t = sorted(row["times"])
        lines.append(
            f"| {row['method']} | {r['iterations']} | {r['fg']} | {r['hessp']} "
            f"| {1e3 * t[len(t) // 2]:.0f} ms [{1e3 * t[0]:.0f}..{1e3 * t[-1]:.0f}] "
            f"| {r['loss']:.3e} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.table:
        with open(args.table, "w") as out:
            out.write(table + "\n")


if __name__ == "__main__":
    main()
