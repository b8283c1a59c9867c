"""Checkpointed time loop (ordering.checkpointed_loop) against the stored
loop (ordering.while_loop, TensorFlow keeping every step for the gradient):
peak memory and forward+gradient time of the heat step, 256 x 256 cells per
rank (float64, a 1 x P grid of ranks, a halo exchange per step), the
gradient of sum(w u_n) with respect to kappa and u0.

Each configuration runs in a fresh `mpiexec -n RANKS` process (peak RSS,
ru_maxrss, is per process and only grows):

    python benchmarks/bench_checkpoint.py --out benchmarks/results/checkpoint.json
    mpiexec -n 2 python benchmarks/bench_checkpoint.py --one --steps 2000 --checkpoints 60
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CELLS = 256  # per rank, each way


def one(steps, K, rounds):
    import resource

    import numpy as np
    import tensorflow as tf

    import adcme_mpi as am  # first: with a system MPI it picks the libmpi mpi4py loads
    from adcme_mpi.apps.heat import laplacian
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # noqa: E731 (MiB)
    g = np.random.default_rng(rank)
    with tf.Graph().as_default() as graph:
        u0 = tf.constant(g.random((CELLS, CELLS)))
        kappa = tf.constant(1.0 + 0.1 * g.random((CELLS, CELLS)))
        w = tf.constant(g.standard_normal((CELLS, CELLS)))

        def step(i, u, kappa):
            return u + 0.2 * kappa * laplacian(am.mpi_halo_exchange(u, 1, size, fill_value=0.0))

        if K is None:
            u = am.ordering.while_loop(
                lambda i, u: i < steps,
                lambda i, u: (i + 1, step(i, u, kappa)),
                [tf.constant(0), u0],
            )[1]
        else:
            u = am.ordering.checkpointed_loop(step, u0, steps, K, params=[kappa])
        loss = am.mpi_sum(tf.reduce_sum(w * u))
        grads = tf.gradients(loss, [kappa, u0])
        with am.Session(graph=graph, intra_op_parallelism_threads=1) as sess:
            sess.run(loss)  # the forward alone: its memory is the baseline
            base = rss()
            times = {"forward": [], "both": []}
            # (no warm-up round beyond the forward above: at 2,000 steps a
            # round takes minutes on the shared machine, and the first run of
            # the gradient costs a few milliseconds more than the next)
            for _ in range(rounds):
                for name, fetch in (("forward", loss), ("both", [loss, grads])):
                    comm.Barrier()
                    t0 = time.perf_counter()
                    sess.run(fetch)
                    times[name].append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
            peak = rss()
    state_mib = CELLS * CELLS * 8 / 2**20
    result = {
        "ranks": size,
        "steps": steps,
        "checkpoints": K,
        "recomputed_steps": 0 if K is None else am.revolve.schedule(steps, min(K, steps)).advances,
        "forward_s": float(np.median(times["forward"])),
        "forward_and_gradient_s": float(np.median(times["both"])),
        "peak_rss_mib": max(comm.allgather(peak)),
        "forward_rss_mib": max(comm.allgather(base)),
        "state_mib": state_mib,
    }
    result["gradient_memory_states"] = (
        result["peak_rss_mib"] - result["forward_rss_mib"]
    ) / state_mib
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


def launch(ranks, steps, K, rounds, timeout):
    cmd = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(ranks)]
    cmd += [sys.executable, os.path.abspath(__file__), "--one", "--steps", str(steps)]
    cmd += ["--rounds", str(rounds)] + ([] if K is None else ["--checkpoints", str(K)])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{cmd} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--one", action="store_true", help="run one configuration (under mpiexec)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--checkpoints", type=int, default=None, help="K (none: the stored loop)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--stored-steps", default="500,2000", help="stored-loop lengths to measure")
    p.add_argument("--ks", default="20,60,250", help="K values at --steps")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.one:
        one(a.steps, a.checkpoints, a.rounds)
        return
    # the schedule module alone: importing adcme_mpi here would start MPI in the driver
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "revolve", os.path.join(HERE, "..", "adcme_mpi", "revolve.py")
    )
    revolve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(revolve)

    configs = [(s, None) for s in map(int, a.stored_steps.split(","))]
    configs += [(a.steps, K) for K in map(int, a.ks.split(","))]
    rule = revolve.checkpoints_for(a.steps)
    if rule not in [K for _, K in configs]:
        configs.append((a.steps, rule))
    results = []
    for steps, K in configs:
        r = launch(a.ranks, steps, K, a.rounds, timeout=1800)
        r["rule"] = K == rule
        results.append(r)
        print(json.dumps(r), flush=True)
        if a.out:
            with open(a.out, "w") as f:
                json.dump({"cells_per_rank": CELLS, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
