"""bench_xla's heat and Poisson problems with no MPI op at all: the floor of
each framework's own execution, against which the MPI settings of
bench_xla's race are read.

Each rank computes its block alone: the halo is `tf.pad` / `jnp.pad` (zero
ghosts), the global sums are the identity. Same size, steps, thread count
(one intra-op thread) and execution as bench_xla: TF as a user writes it
(a v1 graph, tf.gradients, a plain Session: no flags), and JAX under one
jax.jit, single-threaded. The ranks run at once, with no message between
them, so that the memory traffic is that of bench_xla's 2-rank race.
Within each round rank 0 times all four (TF and JAX, forward and
forward+gradient) in turn; medians over rounds, [min..max], and the median
of the per-round TF/JAX ratios. Writes benchmarks/results/tf_floor_<P>.json.

    mpiexec -n 2 python benchmarks/tf_floor.py [--rounds 15]
"""

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
from mpi4py import MPI  # noqa: E402

from bench_xla import JAX_ONE_THREAD, KAPPA, PROBLEMS, median_range  # noqa: E402

os.environ["XLA_FLAGS"] = JAX_ONE_THREAD  # (jax is imported later)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def tf_functions(problem, u0, steps):
    """(forward, forward+gradient) as session runs of one v1 graph."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        kappa = tf.compat.v1.placeholder(tf.float64, [])
        x0 = tf.constant(u0)
        halo = lambda u: tf.pad(u, [[1, 1], [1, 1]])  # noqa: E731
        loss = PROBLEMS[problem](halo, lambda s: s, x0, kappa, steps, tf.reduce_sum)
        grad = tf.gradients(loss, kappa)[0]
    config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1)
    sess = tf.compat.v1.Session(graph=graph, config=config)
    feed = {kappa: KAPPA}
    return (lambda: sess.run(loss, feed)), (lambda: sess.run([loss, grad], feed))


def jax_functions(problem, u0, steps):
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    x0 = jnp.asarray(u0)

    def loss(kappa):
        return PROBLEMS[problem](lambda u: jnp.pad(u, 1), lambda s: s, x0, kappa, steps, jnp.sum)

    forward, both = jax.jit(loss), jax.jit(jax.value_and_grad(loss))
    kappa = jnp.asarray(KAPPA)
    return (lambda: jax.block_until_ready(forward(kappa))), (
        lambda: jax.block_until_ready(both(kappa))
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    import importlib.util

    if importlib.util.find_spec("jax") is None:
        raise SystemExit("tf_floor.py needs jax: bash benchmarks/install_mpi4jax.sh installs it")
    comm = MPI.COMM_WORLD
    u0 = np.random.default_rng(comm.Get_rank()).standard_normal((args.size, args.size))
    result = {"ranks": comm.Get_size(), "size": args.size, "steps": args.steps}
    for problem in ("heat", "poisson"):
        runs = {}
        for framework, make in (("tf", tf_functions), ("jax", jax_functions)):
            forward, both = make(problem, u0, args.steps)
            for _ in range(3):  # warm-up (JAX compiles here)
                forward(), both()
            runs[f"{framework}_forward"], runs[f"{framework}_both"] = forward, both
        times = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                comm.Barrier()
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        row = {f"{name}_ms": median_range(np.array(s) * 1e3) for name, s in times.items()}
        for kind in ("forward", "both"):
            ratio = np.array(times[f"tf_{kind}"]) / np.array(times[f"jax_{kind}"])
            row[f"tf_over_jax_{kind}"] = median_range(ratio)
        result[problem] = row
        if comm.Get_rank() == 0:
            print(problem, json.dumps(row))
    if comm.Get_rank() == 0:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"tf_floor_{comm.Get_size()}.json"), "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
