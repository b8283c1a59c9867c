"""The wave application's two correctness tables, written out (the tests in
tests/mpi/test_wave.py assert the same at CI's sizes):

- convergence: max |u - u_exact| of the leapfrog scheme against the
  manufactured solution (adcme_mpi.apps.wave.manufactured_error) for N = 12
  ... 96 nodes per side (dt = h / 4), and the observed order between sizes;
- Taylor: the inverse problem's misfit J along a random direction dc from the
  background model, |J(c + e dc) - J(c)| and |J(c + e dc) - J(c) - e <g, dc>|
  for halving e, and their rates (1 and 2 when the gradient g is right).

    mpiexec -n P python benchmarks/wave_checks.py --out benchmarks/results/wave_checks_P.json
"""

import argparse
import json

import numpy as np
import tensorflow as tf
from mpi4py import MPI

from adcme_mpi.apps import wave


def rates(values, ratio=2.0):
    """The observed orders between consecutive values, each a ratio apart."""
    return [float(np.log(a / b) / np.log(ratio)) for a, b in zip(values[:-1], values[1:])]


def main():
    tf.compat.v1.disable_eager_execution()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="12,24,48,96")
    parser.add_argument("--taylor-N", type=int, default=24)
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    sizes = [int(s) for s in args.sizes.split(",")]
    errors = [wave.manufactured_error(n) for n in sizes]
    h = [1.0 / (n + 1) for n in sizes]
    orders = [
        float(np.log(errors[k] / errors[k + 1]) / np.log(h[k] / h[k + 1]))
        for k in range(len(sizes) - 1)
    ]
    N = args.taylor_N
    problem = wave.WaveProblem(N=N, T=0.8, checkpoints=args.checkpoints)
    c_true = wave.true_velocity(problem.x, problem.y)
    observed = problem.gather_traces(wave.evaluate(lambda: problem.traces(tf.constant(c_true))))
    dc = np.random.default_rng(3).uniform(-0.1, 0.1, N * N)  # the same on every rank
    eps = [0.02 / 2**k for k in range(6)]
    c = np.full(N * N, wave.C_BACKGROUND)
    first, second = wave.taylor_remainders(problem, observed, c, dc, eps)
    if comm.Get_rank() != 0:
        return
    print(f"## leapfrog against the manufactured solution ({comm.Get_size()} ranks)\n")
    print("| N | h | max error | order |\n|---:|---:|---:|---:|")
    for k, n in enumerate(sizes):
        order = f"{orders[k - 1]:.3f}" if k else ""
        print(f"| {n} | {h[k]:.5f} | {errors[k]:.3e} | {order} |")
    print(f"\n## Taylor test, N = {N}, {problem.steps} steps, K = {args.checkpoints}\n")
    print("| e | abs(J(c+e dc) - J(c)) | rate | abs(J(c+e dc) - J(c) - e <g,dc>) | rate |")
    print("|---:|---:|---:|---:|---:|")
    r1, r2 = rates(first), rates(second)
    for k, e in enumerate(eps):
        a = f"{r1[k - 1]:.3f}" if k else ""
        b = f"{r2[k - 1]:.3f}" if k else ""
        print(f"| {e:.2e} | {first[k]:.3e} | {a} | {second[k]:.3e} | {b} |")
    if args.out:
        with open(args.out, "w") as f:
            row = dict(ranks=comm.Get_size(), sizes=sizes, errors=errors, orders=orders)
            row.update(taylor_N=N, steps=problem.steps, eps=eps, first=first, second=second)
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
