"""The heat stencil and a Poisson CG solve with and without XLA auto-clustering
around the MPI ops, compiled whole by tf.function(jit_compile=True), and the
same code in JAX + mpi4jax.

Issue 24's setup: the explicit 5-point heat stencil, 20 steps, 512 x 512 per
rank on a 1 x P grid, from public ops only (slices, no custom adjoint),
scalar kappa by bcast, loss summed over the ranks; one intra-op thread.
`--problem poisson`: 20 unpreconditioned CG iterations on the same grid
(-Laplace(x) = kappa f), differentiated through the iterations. TensorFlow
reads TF_XLA_FLAGS when it starts, so each setting is its own job; the
driver alternates the settings `--alternations` times (each job times
`--rounds` runs and reports the median), and prints the medians of the
jobs with their spread. Writes benchmarks/results/xla_<problem>_<P>.json.

The third setting (`jit`) is the same TF code, eager, forward and
forward+gradient each one tf.function(jit_compile=True): the MPI ops lower
to custom calls inside one XLA program. Its first calls (tracing and XLA
compilation) are timed apart: `jit_compile_s`.

The fourth setting, when mpi4jax is installed (bash
benchmarks/install_mpi4jax.sh), is the same code in JAX + mpi4jax under
one jax.jit, single-threaded: the ghost columns by mpi4jax.sendrecv, the
loss by mpi4jax.allreduce, the gradient by jax.grad. kappa is the same
number on every rank there (mpi4jax's bcast has no reverse-mode rule).

    python benchmarks/bench_xla.py --ranks 2 [--problem poisson]   # the driver
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
AUTO_JIT = "--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit"
KAPPA = 0.5


def heat(halo, dot_sum, u0, kappa, steps, total):
    """The explicit 5-point heat stencil, `steps` steps; this rank's part of
    the loss sum(u^2) (the caller sums it over the ranks). `halo` pads a
    block with its neighbours' edges (zero at the physical boundary),
    `dot_sum` sums a scalar over the ranks, `total` sums a block's entries
    (tf.reduce_sum or jnp.sum)."""
    u = u0
    for _ in range(steps):
        p = halo(u)
        u = u + 0.1 * kappa * (p[1:-1, :-2] + p[1:-1, 2:] + p[:-2, 1:-1] + p[2:, 1:-1] - 4 * u)
    return total(u * u)


def poisson(halo, dot_sum, f0, theta, iterations, total):
    """Poisson's equation -Laplace(x) = theta f0 (5-point stencil, zero
    Dirichlet boundary) by `iterations` unpreconditioned CG iterations, one
    halo exchange and two global sums each; this rank's part of the loss
    sum(x^2), differentiated through the iterations."""

    def apply(p):
        q = halo(p)
        return 4 * p - (q[1:-1, :-2] + q[1:-1, 2:] + q[:-2, 1:-1] + q[2:, 1:-1])

    def dot(a, b):
        return dot_sum(total(a * b))

    r = theta * f0
    x, p, rr = 0 * r, r, dot(r, r)
    for _ in range(iterations):
        Ap = apply(p)
        alpha = rr / dot(p, Ap)
        x, r = x + alpha * p, r - alpha * Ap
        rr_next = dot(r, r)
        p, rr = r + (rr_next / rr) * p, rr_next
    return total(x * x)


PROBLEMS = {"heat": heat, "poisson": poisson}


def job(problem, rounds, size, steps):
    """One TF setting: median forward and forward+gradient seconds on rank 0."""
    import numpy as np
    import tensorflow as tf

    import adcme_mpi as am

    tf.compat.v1.disable_eager_execution()
    P = am.mpi_size()
    u0 = np.random.default_rng(am.mpi_rank()).standard_normal((size, size))
    kappa0 = tf.compat.v1.placeholder(tf.float64, [])
    kappa = am.mpi_bcast(kappa0)
    local = PROBLEMS[problem](
        lambda u: am.mpi_halo_exchange(u, 1, P),
        am.mpi_allreduce,
        tf.constant(u0),
        kappa,
        steps,
        tf.reduce_sum,
    )
    loss = am.mpi_sum(local)
    grad = tf.gradients(loss, kappa0)[0]
    sess = am.Session(intra_op_parallelism_threads=1)
    feed = {kappa0: KAPPA}
    for _ in range(3):  # warm-up: XLA compiles its clusters here
        sess.run([loss, grad], feed)
    forward, both = [], []
    for _ in range(rounds):
        for fetch, times in ((loss, forward), ([loss, grad], both)):
            am.mpi_barrier()
            start = time.perf_counter()
            sess.run(fetch, feed)
            times.append(time.perf_counter() - start)
    value, gradient = sess.run([loss, grad], feed)  # every rank: collectives
    if am.mpi_rank() == 0:
        print("VALUES", json.dumps([float(value), float(gradient)]))  # the settings agree
        print(
            "JOB",
            json.dumps({"forward": float(np.median(forward)), "both": float(np.median(both))}),
        )


def jit_job(problem, rounds, size, steps):
    """The TF code under tf.function(jit_compile=True): median forward and
    forward+gradient seconds, and the first calls' (compilation) seconds."""
    import numpy as np
    import tensorflow as tf

    import adcme_mpi as am

    tf.config.threading.set_intra_op_parallelism_threads(1)
    P = am.mpi_size()
    u0 = tf.constant(np.random.default_rng(am.mpi_rank()).standard_normal((size, size)))

    def loss_of(kappa0):
        halo = lambda u: am.mpi_halo_exchange(u, 1, P)  # noqa: E731
        kappa = am.mpi_bcast(kappa0)
        local = PROBLEMS[problem](halo, am.mpi_allreduce, u0, kappa, steps, tf.reduce_sum)
        return am.mpi_sum(local)

    @tf.function(jit_compile=True)
    def forward(kappa0):
        return loss_of(kappa0)

    @tf.function(jit_compile=True)
    def both(kappa0):
        with tf.GradientTape() as tape:
            tape.watch(kappa0)
            loss = loss_of(kappa0)
        return loss, tape.gradient(loss, kappa0)

    kappa = tf.constant(KAPPA, tf.float64)
    am.mpi_barrier()
    start = time.perf_counter()
    forward(kappa).numpy()
    both(kappa)[0].numpy()
    compile_seconds = time.perf_counter() - start
    for _ in range(2):
        forward(kappa).numpy()
        both(kappa)[0].numpy()
    times = {"forward": [], "both": []}
    for _ in range(rounds):
        for name, fn in (("forward", forward), ("both", both)):
            am.mpi_barrier()
            start = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), fn(kappa))
            times[name].append(time.perf_counter() - start)
    value, gradient = both(kappa)
    if am.mpi_rank() == 0:
        print("VALUES", json.dumps([float(value), float(gradient)]))  # the settings agree
        medians = {k: float(np.median(v)) for k, v in times.items()}
        print("JOB", json.dumps({**medians, "compile": compile_seconds}))


def jax_job(problem, rounds, size, steps):
    """The same computation in JAX + mpi4jax: median forward and forward+gradient seconds."""
    os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    import jax
    import jax.numpy as jnp
    import mpi4jax
    import numpy as np
    from mpi4py import MPI

    jax.config.update("jax_enable_x64", True)
    comm = MPI.COMM_WORLD
    rank, P = comm.Get_rank(), comm.Get_size()
    left = rank - 1 if rank > 0 else None
    right = rank + 1 if rank < P - 1 else None
    u0 = jnp.asarray(np.random.default_rng(rank).standard_normal((size, size)))

    def exchange(u, peer, send_col):
        return mpi4jax.sendrecv(u[:, send_col], u[:, send_col], source=peer, dest=peer)

    def padded(u):
        # 1 x P grid: ghost columns from the neighbours (even ranks talk to
        # the right first, odd ranks to the left, so pairs meet), zero rows
        zero = jnp.zeros((size,), u.dtype)
        order = [("right", right, -1), ("left", left, 0)]
        ghosts = {}
        for side, peer, col in order if rank % 2 == 0 else order[::-1]:
            ghosts[side] = exchange(u, peer, col) if peer is not None else zero
        p = jnp.concatenate([ghosts["left"][:, None], u, ghosts["right"][:, None]], axis=1)
        return jnp.pad(p, ((1, 1), (0, 0)))

    def allreduce(x):
        return mpi4jax.allreduce(x, op=MPI.SUM)

    def loss(kappa):
        return allreduce(PROBLEMS[problem](padded, allreduce, u0, kappa, steps, jnp.sum))

    def loss_and_gradient(kappa):
        # the gradient summed over ranks, as the TF side's bcast adjoint does
        value, gradient = jax.value_and_grad(loss)(kappa)
        return value, allreduce(gradient)

    forward = jax.jit(loss)
    both = jax.jit(loss_and_gradient)
    kappa = jnp.asarray(KAPPA)
    for _ in range(3):
        jax.block_until_ready(forward(kappa))
        jax.block_until_ready(both(kappa))
    times = {"forward": [], "both": []}
    for _ in range(rounds):
        for name, fn in (("forward", forward), ("both", both)):
            comm.Barrier()
            start = time.perf_counter()
            jax.block_until_ready(fn(kappa))
            times[name].append(time.perf_counter() - start)
    value, gradient = both(kappa)
    if rank == 0:
        print("VALUES", json.dumps([float(value), float(gradient)]))  # the settings agree
        print("JOB", json.dumps({k: float(np.median(v)) for k, v in times.items()}))


def have_mpi4jax():
    import importlib.util

    return importlib.util.find_spec("mpi4jax") is not None


def driver(args):
    import numpy as np

    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    settings = [("plain", "", "--job"), ("xla", AUTO_JIT, "--job"), ("jit", "", "--jit-job")]
    if have_mpi4jax():
        settings.append(("jax_mpi4jax", "", "--jax-job"))
    else:
        print("the JAX + mpi4jax setting skipped: bash benchmarks/install_mpi4jax.sh adds it")
    rows = {name: [] for name, _, _ in settings}
    values = {}
    for _ in range(args.alternations):
        for name, flags, job_flag in settings:
            env = dict(os.environ, TF_XLA_FLAGS=flags, TF_CPP_MIN_LOG_LEVEL="2")
            cmd = [mpiexec, "-n", str(args.ranks), sys.executable, __file__, job_flag]
            cmd += [
                "--problem",
                args.problem,
                "--rounds",
                str(args.rounds),
                "--size",
                str(args.size),
                "--steps",
                str(args.steps),
            ]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600).stdout
            found = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines()}
            rows[name].append(json.loads(found["JOB"]))
            values[name] = json.loads(found["VALUES"])
    # Every setting computes the same loss, and the TF settings the same
    # gradient (to rounding). JAX's gradient is recorded beside them: through
    # CG's global sums it differs (mpi4jax's allreduce transposes to the
    # identity, not to a sum over the ranks). For Poisson x is linear in
    # kappa, so the exact gradient is 2 loss / kappa: recorded too.
    reference = values["plain"]
    for name, (value, gradient) in values.items():
        tf_setting = name in ("plain", "xla", "jit")
        if not np.allclose(
            [value, gradient] if tf_setting else [value],
            reference if tf_setting else reference[:1],
            rtol=1e-9,
        ):
            raise SystemExit(f"{name} computes {value}, {gradient}; plain TF {reference}")
    gradient_error = {name: v[1] / reference[1] - 1 for name, v in values.items()}
    result = {
        "problem": args.problem,
        "ranks": args.ranks,
        "size": args.size,
        "steps": args.steps,
        "values": values,
        "gradient_relative_to_plain": gradient_error,
    }
    if args.problem == "poisson":
        exact = 2 * reference[0] / KAPPA
        result["exact_gradient"] = exact
        result["gradient_relative_to_exact"] = {n: v[1] / exact - 1 for n, v in values.items()}
    for name, jobs in rows.items():
        for key in ("forward", "both"):
            values = np.array([j[key] for j in jobs]) * 1e3
            result[f"{name}_{key}_ms"] = [
                float(np.median(values)),
                float(values.min()),
                float(values.max()),
            ]
    for name, jobs in rows.items():
        if "compile" in jobs[0]:
            compiles = np.array([j["compile"] for j in jobs])
            result[f"{name}_compile_s"] = [
                float(np.median(compiles)),
                float(compiles.min()),
                float(compiles.max()),
            ]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"xla_{args.problem}_{args.ranks}.json"), "w") as f:
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
    parser.add_argument("--jax-job", action="store_true", help="(internal) JAX + mpi4jax")
    parser.add_argument("--jit-job", action="store_true", help="(internal) jit_compile=True")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--alternations", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--problem", choices=sorted(PROBLEMS), default="heat")
    parser.add_argument(
        "--steps", type=int, default=20, help="heat: time steps; poisson: CG iterations"
    )
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    if args.job:
        job(args.problem, args.rounds, args.size, args.steps)
    elif args.jax_job:
        jax_job(args.problem, args.rounds, args.size, args.steps)
    elif args.jit_job:
        jit_job(args.problem, args.rounds, args.size, args.steps)
    else:
        driver(args)


if __name__ == "__main__":
    main()
