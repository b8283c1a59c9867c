"""The heat stencil, a Poisson CG solve and a finite-element CG solve with and
without XLA auto-clustering around the MPI ops, compiled whole by
tf.function(jit_compile=True), and the same code in JAX + mpi4jax.

Issue 24's setup: the explicit 5-point heat stencil, 20 steps, 512 x 512 per
rank on a 1 x P grid, from public ops only (slices, no custom adjoint),
scalar kappa by bcast, loss summed over the ranks; one intra-op thread.
`--problem poisson`: 20 unpreconditioned CG iterations on the same grid
(-Laplace(x) = kappa f), differentiated through the iterations. TensorFlow
reads TF_XLA_FLAGS when it starts, so each setting is its own job; the
driver alternates the settings `--alternations` times (each job times
`--rounds` runs and reports the median), and prints the medians of the
jobs with their spread. Writes benchmarks/results/xla_<problem>_<P>.json.

`--problem fem`: P1 finite elements on a Delaunay triangle mesh
(adcme_mpi.apps.fem's mesh and assembly, seed 0, the same on every rank),
the interior nodes split into row stripes along x; the coefficient
kappa_T = exp(theta x_T) per triangle (x_T its centroid's x, theta = 0.5
by bcast), 20 unpreconditioned CG iterations on the diagonally scaled
K(theta) x = load (plain CG is chaotic on this mesh: `fem` says why), loss
sum(x^2), differentiated through the iterations and the assembly.
Matrix-free from public ops (the sparse PETSc ops do not compile and
mpi4jax has no sparse solver): this rank's rows in ELL form (a gather of
[p, ghost values] and a row sum), the ghost values by one exchange per
neighbouring stripe (mpi_exchange; in JAX mpi4jax.sendrecv), padded to one
length both ways and scheduled so that pairs meet. For fem `--size s`
means P s^2 / 2 mesh nodes: about s^2 / 2 unknowns per rank (130560 at
512 on 2 ranks; the mesh takes ~8 s to build there, outside the timing).

The third setting (`jit`) is the same TF code, eager, forward and
forward+gradient each one tf.function(jit_compile=True): the MPI ops lower
to custom calls inside one XLA program. Its first calls (tracing and XLA
compilation) are timed apart: `jit_compile_s`.

The fourth setting, when mpi4jax is installed (bash
benchmarks/install_mpi4jax.sh), is the same code in JAX + mpi4jax under
one jax.jit, single-threaded: the ghost columns by mpi4jax.sendrecv, the
loss by mpi4jax.allreduce, the gradient by jax.grad. kappa is the same
number on every rank there (mpi4jax's bcast has no reverse-mode rule).
mpi4jax's allreduce transposes to the identity, which is not the adjoint
of a sum over the ranks once its result feeds per-rank terms (CG's global
sums): heat and Poisson keep it (their recorded gradients), fem's global
sums use an allreduce whose adjoint is an allreduce, so its gradient is
compared with TF's like its loss. (fem's set-up imports adcme_mpi.apps.fem,
so TensorFlow is loaded there too, unused.)

    python benchmarks/bench_xla.py --ranks 2 [--problem poisson|fem]   # the driver
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
AUTO_JIT = "--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit"
# JAX on one thread, as TF runs with one intra-op thread (set before importing jax)
JAX_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
KAPPA = 0.5


def median_range(values):
    """[median, min, max] of `values`, as floats (the results' cells)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    return [float(np.median(values)), float(values.min()), float(values.max())]


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


def cg(apply, dot, b, iterations):
    """`iterations` unpreconditioned CG iterations on apply(x) = b from x = 0:
    one apply and two global sums (`dot`) each."""
    r = b
    x, p, rr = 0 * r, r, dot(r, r)
    for _ in range(iterations):
        Ap = apply(p)
        alpha = rr / dot(p, Ap)
        x, r = x + alpha * p, r - alpha * Ap
        rr_next = dot(r, r)
        p, rr = r + (rr_next / rr) * p, rr_next
    return x


def poisson(halo, dot_sum, f0, theta, iterations, total):
    """Poisson's equation -Laplace(x) = theta f0 (5-point stencil, zero
    Dirichlet boundary) by `iterations` unpreconditioned CG iterations, one
    halo exchange and two global sums each; this rank's part of the loss
    sum(x^2), differentiated through the iterations."""

    def apply(p):
        q = halo(p)
        return 4 * p - (q[1:-1, :-2] + q[1:-1, 2:] + q[:-2, 1:-1] + q[2:, 1:-1])

    x = cg(apply, lambda a, b: dot_sum(total(a * b)), theta * f0, iterations)
    return total(x * x)


def fem_operator(halo, mesh, theta):
    """p -> K(theta) p on this rank's rows, and K's diagonal there: the
    stiffness matrix's entries assembled as adcme_mpi.apps.fem does (the sum
    of kappa_T times the element coefficients feeding each entry), kappa_T =
    exp(theta x_T). `mesh` is a FEMStripe's arrays and ops in one framework
    (FEMStripe.bind); `halo` appends the ghost values p's columns need."""
    kappa = mesh.exp(theta * mesh.centroid_x)  # the triangles at my rows
    values = mesh.assemble(mesh.gather(kappa, mesh.triangle) * mesh.coefficient)

    def apply(p):
        return mesh.row_sum(values * mesh.gather(halo(p), mesh.column))

    return apply, mesh.row_sum(values * mesh.diagonal)


def fem(halo, dot_sum, mesh, theta, iterations, total):
    """P1 finite elements, -div(kappa grad x) = 1 with zero Dirichlet
    boundary: `iterations` unpreconditioned CG iterations on the diagonally
    scaled system S K S y = S load, x = S y, S = diag(K)^(-1/2), matrix-free:
    one ghost exchange and two global sums each; this rank's part of the
    loss sum(x^2), differentiated through the iterations and the assembly.
    Why scaled (Jacobi-preconditioned CG, in effect): the random mesh's
    sliver triangles give K a few outlying eigenvalues, and plain CG on K
    amplifies rounding along them up to ~100 times an iteration once it has
    found them (with 1k-16k unknowns a 1e-14 change of the first step moves
    the loss after 20 iterations by 1e-4..1e-2), so no two settings could
    agree; on the scaled system the 1e-14 stays 1e-14."""
    apply, diagonal = fem_operator(halo, mesh, theta)
    scale = diagonal**-0.5
    y = cg(
        lambda p: scale * apply(scale * p),
        lambda a, b: dot_sum(total(a * b)),
        scale * mesh.load,
        iterations,
    )
    x = scale * y
    return total(x * x)


PROBLEMS = {"heat": heat, "poisson": poisson, "fem": fem}


class FEMStripe:
    """fem's set-up in NumPy: adcme_mpi.apps.fem's mesh and assembly (seed 0:
    every rank builds the same mesh), `ranks * size**2 // 2` nodes, this
    rank's rows of the stiffness matrix in ELL form (`width` slots a row;
    padding slots hold 0 times column 0), and the exchanges of ghost values:
    `exchanges` lists (peer, my rows it needs, how many of its rows I need)."""

    def __init__(self, size, ranks):
        import numpy as np

        from adcme_mpi.apps.fem import FEMProblem

        start = time.perf_counter()
        self.problem = fp = FEMProblem(ranks * size * size // 2)
        rank, n = fp.comm.Get_rank(), fp.iupper - fp.ilower + 1
        rows, cols = fp.pairs[:, 0] - fp.ilower, fp.pairs[:, 1]  # sorted by row, then column
        owner = np.searchsorted(fp.bounds, cols, side="right") - 1
        extended = np.where(owner == rank, cols - fp.ilower, -1)  # column -> index into [p, ghosts]
        self.exchanges, ghosts = [], n
        for peer in sorted(set(owner.tolist()) - {rank}, key=lambda q: self.turn(rank, q)):
            needed = owner == peer
            columns = np.unique(cols[needed])  # the peer's rows I need, in its row order
            extended[needed] = ghosts + np.searchsorted(columns, cols[needed])
            # The pattern is symmetric, so the peer needs the rows of mine
            # that have a column of its rows, in my row order: both sides
            # know both lengths without asking.
            self.exchanges.append((peer, np.unique(rows[needed]), len(columns)))
            ghosts += len(columns)
        slot = np.arange(len(rows)) - np.searchsorted(rows, rows)  # position in the row
        self.width = int(slot.max()) + 1
        self.column = np.zeros((n, self.width), np.int64)
        self.column[rows, slot] = extended
        self.diagonal = np.zeros((n, self.width))  # 1 at (i, i)
        self.diagonal[rows, slot] = extended == rows
        self.rows = n
        # per (triangle, row, column) contribution: its triangle among mine and its slot
        triangles, self.triangle = np.unique(fp.triangle_of, return_inverse=True)
        self.centroid_x = fp.centroids[triangles, 0]
        self.coefficient = fp.coefficient
        self.slot = (rows * self.width + slot)[fp.entry]
        self.load = fp.load
        if rank == 0:  # the driver records it
            mesh = {"nodes": len(fp.nodes), "triangles": len(fp.triangles), "unknowns": fp.N}
            mesh["rows"] = np.diff(fp.bounds).tolist()
            mesh["setup_s"] = time.perf_counter() - start
            print("MESH", json.dumps(mesh))

    @staticmethod
    def turn(rank, peer):
        """When `rank` meets `peer` (blocking sendrecv, so pairs must meet):
        nearer stripes first; at distance d the ranks r, r + d, r + 2d, ...
        form a chain, in which r // d even meets its right peer first and odd
        its left, as heat's JAX code does with d = 1."""
        d = abs(peer - rank)
        right_first = (rank // d) % 2 == 0
        return d, (peer < rank) if right_first else (peer > rank)

    def bind(self, constant, exp, gather, segment_sum, row_sum):
        """The arrays as `constant`s of one framework, with fem_operator's ops."""
        import types

        shape, slot = (self.rows, self.width), constant(self.slot)
        return types.SimpleNamespace(
            load=constant(self.load),
            centroid_x=constant(self.centroid_x),
            triangle=constant(self.triangle),
            coefficient=constant(self.coefficient),
            column=constant(self.column),
            diagonal=constant(self.diagonal),
            exp=exp,
            gather=gather,
            assemble=lambda data: segment_sum(data, slot, shape),
            row_sum=row_sum,
        )


def tf_inputs(problem, size):
    """A TF setting's halo and problem data: heat's and Poisson's random
    block (seeded by the rank) or fem's stripe."""
    import numpy as np
    import tensorflow as tf

    import adcme_mpi as am

    P = am.mpi_size()
    if problem != "fem":
        u0 = np.random.default_rng(am.mpi_rank()).standard_normal((size, size))
        return (lambda u: am.mpi_halo_exchange(u, 1, P)), tf.constant(u0)
    am.mpi_init()  # a point-to-point op may be fem's first (mpi_init prepares the communicator)
    stripe = FEMStripe(size, P)
    exchanges = [
        (peer, tf.constant(send), len(send), count) for peer, send, count in stripe.exchanges
    ]

    def halo(p):
        # one length both ways (mpi_exchange's rule): the longer of the two
        pieces = [p]
        for peer, send, sent, count in exchanges:
            out = tf.pad(tf.gather(p, send), [[0, max(sent, count) - sent]])
            pieces.append(am.mpi_exchange(out, peer, peer)[:count])
        return tf.concat(pieces, 0)

    def segment_sum(data, index, shape):
        return tf.reshape(tf.math.unsorted_segment_sum(data, index, shape[0] * shape[1]), shape)

    mesh = stripe.bind(tf.constant, tf.exp, tf.gather, segment_sum, lambda a: tf.reduce_sum(a, 1))
    return halo, mesh


def job(problem, rounds, size, steps):
    """One TF setting: median forward and forward+gradient seconds on rank 0."""
    import numpy as np
    import tensorflow as tf

    import adcme_mpi as am

    tf.compat.v1.disable_eager_execution()
    halo, x0 = tf_inputs(problem, size)
    kappa0 = tf.compat.v1.placeholder(tf.float64, [])
    kappa = am.mpi_bcast(kappa0)
    local = PROBLEMS[problem](halo, am.mpi_allreduce, x0, kappa, steps, tf.reduce_sum)
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
    halo, x0 = tf_inputs(problem, size)

    def loss_of(kappa0):
        kappa = am.mpi_bcast(kappa0)
        local = PROBLEMS[problem](halo, am.mpi_allreduce, x0, kappa, steps, tf.reduce_sum)
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
    os.environ["XLA_FLAGS"] = JAX_ONE_THREAD
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

    @jax.custom_vjp
    def summed(x):
        return allreduce(x)

    # the adjoint of a sum over the ranks (TF's): the cotangents summed
    summed.defvjp(lambda x: (allreduce(x), None), lambda _, g: (allreduce(g),))

    if problem == "fem":
        halo, x0 = jax_fem_inputs(size, P)
        dot_sum = summed
    else:
        u0 = np.random.default_rng(rank).standard_normal((size, size))
        halo, x0, dot_sum = padded, jnp.asarray(u0), allreduce

    def loss(kappa):
        return allreduce(PROBLEMS[problem](halo, dot_sum, x0, kappa, steps, jnp.sum))

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


def jax_fem_inputs(size, P):
    """fem's halo and stripe in JAX."""
    import jax
    import jax.numpy as jnp
    import mpi4jax

    stripe = FEMStripe(size, P)

    def halo(p):
        pieces = [p]
        for peer, send, count in stripe.exchanges:
            # one length both ways, as in TF: mpi4jax.sendrecv's forward
            # could receive another length than it sends, but its transpose
            # receives the cotangent in the shape it sent
            out = jnp.pad(p[send], (0, max(len(send), count) - len(send)))
            pieces.append(mpi4jax.sendrecv(out, out, source=peer, dest=peer)[:count])
        return jnp.concatenate(pieces)

    def segment_sum(data, index, shape):
        return jax.ops.segment_sum(data, index, shape[0] * shape[1]).reshape(shape)

    mesh = stripe.bind(jnp.asarray, jnp.exp, lambda a, i: a[i], segment_sum, lambda a: a.sum(1))
    return halo, mesh


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
            mesh = json.loads(found.get("MESH", "null"))
    # Every setting computes the same loss, and the TF settings the same
    # gradient (to rounding). JAX's gradient is recorded beside them: through
    # Poisson's CG global sums it differs (mpi4jax's allreduce transposes to
    # the identity, not to a sum over the ranks); fem's sum their adjoints,
    # so its JAX gradient is compared too. For Poisson x is linear in
    # kappa, so the exact gradient is 2 loss / kappa: recorded too.
    reference = values["plain"]
    for name, (value, gradient) in values.items():
        full = name in ("plain", "xla", "jit") or args.problem == "fem"
        if not np.allclose(
            [value, gradient] if full else [value],
            reference if full else reference[:1],
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
    if mesh:
        result["mesh"] = mesh
    if args.problem == "poisson":
        exact = 2 * reference[0] / KAPPA
        result["exact_gradient"] = exact
        result["gradient_relative_to_exact"] = {n: v[1] / exact - 1 for n, v in values.items()}
    for name, jobs in rows.items():
        for key in ("forward", "both"):
            result[f"{name}_{key}_ms"] = median_range(np.array([j[key] for j in jobs]) * 1e3)
    for name, jobs in rows.items():
        if "compile" in jobs[0]:
            result[f"{name}_compile_s"] = median_range([j["compile"] for j in jobs])
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
        "--steps", type=int, default=20, help="heat: time steps; poisson, fem: CG iterations"
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
