"""The heat stencil with and without XLA auto-clustering around the MPI ops.

Issue 24's setup: the explicit 5-point heat stencil, 20 steps, 512 x 512 per
rank on a 1 x P grid, from public ops only (slices, no custom adjoint),
scalar kappa by bcast, loss by mpi_sum; one intra-op thread. TensorFlow
reads TF_XLA_FLAGS when it starts, so each setting is its own job; the
driver alternates the two settings `--alternations` times (each job times
`--rounds` runs and reports the median), and prints the medians of the
jobs with their spread. Writes benchmarks/results/xla_heat_<P>.json.

    python benchmarks/bench_xla.py --ranks 2            # the driver
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
AUTO_JIT = "--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit"


def job(rounds, size, steps):
    """One setting: median forward and forward+gradient seconds on rank 0."""
    import numpy as np
    import tensorflow as tf

    import adcme_mpi as am

    tf.compat.v1.disable_eager_execution()
    P = am.mpi_size()
    u0 = np.random.default_rng(am.mpi_rank()).standard_normal((size, size))
    kappa0 = tf.compat.v1.placeholder(tf.float64, [])
    kappa = am.mpi_bcast(kappa0)
    u = tf.constant(u0)
    for _ in range(steps):
        p = am.mpi_halo_exchange(u, 1, P)
        u = u + 0.1 * kappa * (p[1:-1, :-2] + p[1:-1, 2:] + p[:-2, 1:-1] + p[2:, 1:-1] - 4 * u)
    loss = am.mpi_sum(tf.reduce_sum(u * u))
    grad = tf.gradients(loss, kappa0)[0]
    sess = am.Session(intra_op_parallelism_threads=1)
    feed = {kappa0: 0.5}
    for _ in range(3):  # warm-up: XLA compiles its clusters here
        sess.run([loss, grad], feed)
    forward, both = [], []
    for _ in range(rounds):
        for fetch, times in ((loss, forward), ([loss, grad], both)):
            am.mpi_barrier()
            start = time.perf_counter()
            sess.run(fetch, feed)
            times.append(time.perf_counter() - start)
    if am.mpi_rank() == 0:
        print(
            "JOB",
            json.dumps({"forward": float(np.median(forward)), "both": float(np.median(both))}),
        )


def driver(args):
    import numpy as np

    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    rows = {"plain": [], "xla": []}
    for _ in range(args.alternations):
        for name, flags in (("plain", ""), ("xla", AUTO_JIT)):
            env = dict(os.environ, TF_XLA_FLAGS=flags, TF_CPP_MIN_LOG_LEVEL="2")
            cmd = [mpiexec, "-n", str(args.ranks), sys.executable, __file__, "--job"]
            cmd += [
                "--rounds",
                str(args.rounds),
                "--size",
                str(args.size),
                "--steps",
                str(args.steps),
            ]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600).stdout
            line = next(line for line in out.splitlines() if line.startswith("JOB "))
            rows[name].append(json.loads(line[4:]))
    result = {"ranks": args.ranks, "size": args.size, "steps": args.steps}
    for name, jobs in rows.items():
        for key in ("forward", "both"):
            values = np.array([j[key] for j in jobs]) * 1e3
            result[f"{name}_{key}_ms"] = [
                float(np.median(values)),
                float(values.min()),
                float(values.max()),
            ]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"xla_heat_{args.ranks}.json"), "w") as f:
        json.dump(result, f, indent=1)
    for name in rows:
        fwd, both = result[f"{name}_forward_ms"], result[f"{name}_both_ms"]
        print(
            f"| {name} | {args.ranks} | {fwd[0]:.1f} ms [{fwd[1]:.1f}..{fwd[2]:.1f}] | "
            f"{both[0]:.1f} ms [{both[1]:.1f}..{both[2]:.1f}] |"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", action="store_true", help="(internal) one setting, under mpiexec")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--alternations", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    if args.job:
        job(args.rounds, args.size, args.steps)
    else:
        driver(args)


if __name__ == "__main__":
    main()
