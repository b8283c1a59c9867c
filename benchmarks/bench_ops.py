"""Per-op time of adcme_mpi ops inside a TF graph against (a) mpi4py on NumPy
buffers doing the same MPI call and (b) tf.numpy_function wrapping mpi4py
(what a TF user writes without this library). Forward, and forward+backward.

    mpiexec -n 2 python benchmarks/bench_ops.py --out benchmarks/results/ops_check.json

Noise on a shared machine comes in bursts, so the implementations of one op
and size are interleaved: every round times each of them once (REPS ops back
to back, slowest rank), for at least 7 rounds. A ratio is taken within each
round and the report gives the median of the per-round ratios with their
[min..max] spread, not a ratio of medians measured minutes apart.
"""

import argparse
import json
import os
import time

import numpy as np
import tensorflow as tf
import adcme_mpi as am  # first: with a system MPI it picks the libmpi mpi4py loads
from mpi4py import MPI  # noqa: E402


tf.compat.v1.disable_eager_execution()
am.mpi_init()  # the sendrecv rows may make the first op
COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
PEER = 1 - RANK if SIZE == 2 else None
CLEANUPS = []  # sessions to close and MPI types to free once their row is done


def release():
    while CLEANUPS:
        CLEANUPS.pop()()


def session_runner(graph, variable, target):
    """A callable running `target` in a new session of `graph` (closed by release())."""
    with graph.as_default():
        sess = am.Session(graph=graph)
        sess.run(variable.initializer)
    CLEANUPS.append(sess.close)
    return lambda: sess.run(target)


def round_time(fn, reps):
    """One timed run of `fn` (reps ops), per op, on the slowest rank."""
    COMM.Barrier()
    t0 = time.perf_counter()
    fn()
    return COMM.allreduce((time.perf_counter() - t0) / reps, op=MPI.MAX)


def interleaved(impls, reps, rounds):
    """{name: [per-op time of each round]}; every round runs every implementation."""
    for fn in impls.values():
        fn()  # warm up (first runs allocate and build)
    times = {name: [] for name in impls}
    for _ in range(rounds):
        for name, fn in impls.items():
            times[name].append(round_time(fn, reps))
    return times


def summary(times, base="mpi4py", floors=()):
    """Median time of each implementation, and the median [min..max] of its
    per-round ratio to `base` (and of fwd+bwd to fwd, and of ours to each of
    `floors`)."""
    out = {name: float(np.median(t)) for name, t in times.items()}
    pairs = [(name, base) for name in times if name != base]
    pairs += [("adcme", floor) for floor in floors]
    if "adcme_fwd_bwd" in times:
        pairs.append(("adcme_fwd_bwd", "adcme"))
    if "numpy_function" in times:
        pairs.append(("adcme", "numpy_function"))
    for name, ref in pairs:
        ratios = np.array(times[name]) / np.array(times[ref])
        key = f"{name}/{ref}"
        out[key] = [float(np.median(ratios)), float(ratios.min()), float(ratios.max())]
    out["rounds"] = len(times[base])
    return out


# ---- the three implementations of each op --------------------------------
def mpi4py_call(kind, buf, out):
    if kind == "bcast":
        COMM.Bcast(buf, root=0)
    elif kind == "sum":
        COMM.Reduce(buf, out if RANK == 0 else None, op=MPI.SUM, root=0)
    elif kind == "allreduce":
        COMM.Allreduce(buf, out, op=MPI.SUM)
    elif kind == "sendrecv":
        if RANK == 0:
            COMM.Send(buf, dest=1)
        else:
            COMM.Recv(out, source=0)
    elif kind == "gather":  # `out` holds every rank's piece
        COMM.Gather(buf, out if RANK == 0 else None, root=0)


def adcme_op(kind, t):
    if kind == "bcast":
        return am.mpi_bcast(t, 0)
    if kind == "sum":
        return am.mpi_sum(t, 0)
    if kind == "allreduce":
        return am.mpi_allreduce(t)
    if kind == "sendrecv":
        return am.mpi_sendrecv(t, 1, 0)
    if kind == "gather":
        return am.mpi_gather(t, 0)


def numpy_function_op(kind, t):
    def call(x):
        out = np.zeros(x.size * SIZE) if kind == "gather" else np.empty_like(x)
        mpi4py_call(kind, np.ascontiguousarray(x), out)
        received = kind in ("sum", "allreduce", "gather") or (kind == "sendrecv" and RANK == 1)
        return out if received else x

    return tf.numpy_function(call, [t], t.dtype, stateful=True)


# ---- the optional peer: mpi4jax (benchmarks/install_mpi4jax.sh), the same libmpi ----
jax = jnp = mpi4jax = None


def load_mpi4jax():
    """The peer, if installed (bash benchmarks/install_mpi4jax.sh)."""
    global jax, jnp, mpi4jax
    # One XLA thread: these ops do no arithmetic, and idle XLA worker threads
    # would compete with the other columns for this machine's cores.
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    try:
        import jax
        import jax.numpy as jnp
        import mpi4jax
    except ImportError as error:  # one line, then the columns without it
        if RANK == 0:
            print(f"mpi4jax column skipped: {error}", flush=True)
        jax = jnp = mpi4jax = None
        return
    jax.config.update("jax_enable_x64", True)  # float64 like the other columns


def mpi4jax_runner(kind, n, reps):
    """`reps` mpi4jax ops chained inside one jax.jit (ordered by their effects)."""

    def one(y):
        if kind == "bcast":
            return mpi4jax.bcast(y, 0)
        if kind == "sum":
            return mpi4jax.reduce(y, MPI.SUM, 0)
        if kind == "allreduce":
            return mpi4jax.allreduce(y, MPI.SUM)
        if RANK == 0:  # sendrecv: rank 0 sends, rank 1 receives
            mpi4jax.send(y, 1)
            return y
        return mpi4jax.recv(y, 0)

    def chain(y):
        for _ in range(reps):
            y = one(y)
        return y

    def gathers(y):
        # its output is not its input's shape: every op gathers the same y,
        # and every result is returned, so XLA must write each one
        return [mpi4jax.gather(y, 0) for _ in range(reps)]

    return jit_runner(gathers if kind == "gather" else chain, np.ones(n))


def jit_runner(body, x):
    """A callable running jax.jit(body) on `x` to completion (compiled here)."""
    body, x = jax.jit(body), jnp.asarray(x)
    jax.block_until_ready(body(x))
    return lambda: jax.block_until_ready(body(x))


def mpi4jax_halo_runner(u, reps):
    """mpi4jax has no halo op: pad, then sendrecv the shared edge with the
    neighbour, as its shallow-water example does (1 x 2 grid)."""
    peer = 1 - RANK
    edge, ghost = (-2, -1) if RANK == 0 else (1, 0)

    def chain(u):
        # Every padded array is returned, so XLA must build each one (as the
        # other columns do) instead of slicing the edge straight out of u.
        padded = []
        for _ in range(reps):
            p = jnp.pad(u, 1)
            received = mpi4jax.sendrecv(p[1:-1, edge], p[1:-1, edge], source=peer, dest=peer)
            padded.append(p.at[1:-1, ghost].set(received))
        return padded

    return jit_runner(chain, u)


CHAIN = False  # --chain: each op takes the previous op's output


def graph_runner(build, reps, grad=False):
    """A callable that runs `reps` chained ops (or their gradient) in a graph.
    By default every op reads the same input tensor, so TF cannot hand an op
    its input's buffer and each op allocates its output; with --chain each op
    reads the previous op's output, which TF can forward."""
    g = tf.Graph()
    with g.as_default():
        x = tf.Variable(np.ones(build.n, np.float64))
        value = x.read_value()  # read once: the ops, not variable copies, are timed
        outs, prev = [], None
        for _ in range(reps):
            chained = CHAIN and prev is not None and build.kind != "gather"  # (shape grows)
            with tf.control_dependencies([prev] if prev is not None else []):
                y = build(prev if chained else value)
            prev = y
            outs.append(y)
        if grad:
            target = tf.gradients(tf.add_n([tf.reduce_sum(o) for o in outs]), x)[0]
        else:
            target = tf.group(*outs)
    return session_runner(g, x, target)


class Build:
    def __init__(self, fn, kind, n):
        self.fn, self.kind, self.n = fn, kind, n

    def __call__(self, t):
        return self.fn(self.kind, t)


def halo_block(nbytes):
    return max(2, int(np.sqrt(nbytes / 8)))


def halo_setup(nbytes):
    """(side, this rank's block, a padded array for it, left and right
    neighbours) on a 1 x SIZE rank grid: square blocks of `side`^2 doubles
    (nbytes per block)."""
    side = halo_block(nbytes)
    u = np.random.default_rng(RANK).random((side, side))
    padded = np.zeros((side + 2, side + 2))
    left = RANK - 1 if RANK > 0 else MPI.PROC_NULL
    right = RANK + 1 if RANK < SIZE - 1 else MPI.PROC_NULL
    return side, u, padded, left, right


def halo_impls(nbytes, reps):
    side, u, padded, left, right = halo_setup(nbytes)

    def region(start_col):
        return MPI.DOUBLE.Create_subarray([side + 2, side + 2], [side, 1], [1, start_col]).Commit()

    # the careful mpi4py user: subarray datatypes straight on the padded array,
    # no packing; the block is copied into the padded array as the op does
    ghost_left, ghost_right = region(0), region(side + 1)
    edge_left, edge_right = region(1), region(side)
    CLEANUPS.extend(t.Free for t in (ghost_left, ghost_right, edge_left, edge_right))

    def mpi4py_halo():
        for _ in range(reps):
            padded[1:-1, 1:-1] = u
            reqs = [
                COMM.Irecv([padded, 1, ghost_left], source=left),
                COMM.Irecv([padded, 1, ghost_right], source=right),
                COMM.Isend([padded, 1, edge_left], dest=left),
                COMM.Isend([padded, 1, edge_right], dest=right),
            ]
            MPI.Request.Waitall(reqs)

    def graph(grad):
        g = tf.Graph()
        with g.as_default():
            x = tf.Variable(u)
            value = x.read_value()
            outs = [am.mpi_halo_exchange(value, 1, SIZE) for _ in range(reps)]
            target = (
                tf.gradients(tf.add_n([tf.reduce_sum(o) for o in outs]), x)[0]
                if grad
                else tf.group(*outs)
            )
        return session_runner(g, x, target)

    # The floor: the same bytes copied once, into a buffer kept from round to
    # round (a new buffer each time measured the same: 17-20 us at 1 MiB).
    copy_into = np.empty_like(u)

    def plain_copy():
        for _ in range(reps):
            np.copyto(copy_into, u)

    impls = {
        "mpi4py": mpi4py_halo,
        "adcme": graph(False),
        "adcme_fwd_bwd": graph(True),
        "copy": plain_copy,
    }
    if mpi4jax is not None and SIZE == 2:
        impls["mpi4jax"] = mpi4jax_halo_runner(u, reps)
    return side * side * 8, impls


def reps_for(nbytes):
    """How many ops of `nbytes` one timed run chains."""
    # A session run costs about 80 us on top of its ops: 32 ops a run at
    # 1 MiB keep that under a few percent (8 added about 10 us an op). At
    # 8 MiB 8 ops a run do (32 made every run fault in 32 new 8 MiB
    # outputs: 3.7x mpi4py for bcast instead of about 1.4x).
    return 200 if nbytes <= 4096 else 40 if nbytes <= 262144 else 32 if nbytes <= 1 << 20 else 8


def show(row):
    def ratio(key):
        if key not in row:
            return ""
        med, lo, hi = row[key]
        return f"{key} {med:5.2f} [{lo:4.2f}..{hi:4.2f}]  "

    print(
        f"{row['op']:10s} {row['bytes']:>8d} B  mpi4py {row['mpi4py'] * 1e6:9.1f} us  "
        f"adcme {row['adcme'] * 1e6:9.1f} us  "
        + ratio("adcme/mpi4py")
        + ratio("mpi4jax/mpi4py")
        + ratio("adcme/mpi4jax")
        + ratio("numpy_function/mpi4py")
        + ratio("adcme_fwd_bwd/adcme")
        + ratio("adcme/copy"),
        flush=True,
    )


def measure(op, nbytes, impls, reps, rounds, floors=()):
    """The row of `op` at `nbytes`: `impls` timed in interleaved rounds and
    summarized (printed on rank 0); their sessions are closed after."""
    row = {"op": op, "bytes": nbytes, **summary(interleaved(impls, reps, rounds), floors=floors)}
    release()
    if RANK == 0:
        show(row)
    return row


def arguments(out, sizes):
    """The options of a benchmark of ops (it may add its own)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=out)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--sizes", default=sizes, help="comma-separated bytes")
    parser.add_argument("--no-mpi4jax", action="store_true", help="leave jax out of the process")
    return parser


def main():
    parser = arguments(
        "benchmarks/results/ops.json", "8,64,512,4096,8192,32768,262144,1048576,8388608"
    )
    parser.add_argument("--build", default="", help="which build this is, for the report")
    parser.add_argument("--chain", action="store_true", help="feed each op the previous output")
    args = parser.parse_args()
    global CHAIN
    CHAIN = args.chain
    if not args.no_mpi4jax:
        load_mpi4jax()
    rows, last_side = [], None
    for nbytes in [int(b) for b in args.sizes.split(",")]:
        n, reps = max(1, nbytes // 8), reps_for(nbytes)
        buf, out = np.ones(n), np.empty(n * SIZE)  # (gather's root receives SIZE pieces)
        for kind in ["bcast", "sum", "allreduce", "sendrecv", "gather"]:
            if kind == "sendrecv" and SIZE != 2:
                continue

            def loop(kind=kind, reps=reps, buf=buf, out=out if kind == "gather" else out[:n]):
                for _ in range(reps):
                    mpi4py_call(kind, buf, out)

            impls = {
                "mpi4py": loop,
                "adcme": graph_runner(Build(adcme_op, kind, n), reps),
                "numpy_function": graph_runner(Build(numpy_function_op, kind, n), reps),
                "adcme_fwd_bwd": graph_runner(Build(adcme_op, kind, n), reps, grad=True),
            }
            if mpi4jax is not None:
                impls["mpi4jax"] = mpi4jax_runner(kind, n, reps)
            rows.append(measure(kind, nbytes, impls, reps, args.rounds))
        if halo_block(nbytes) == last_side:
            continue  # the same 2x2 block as the previous size
        last_side = halo_block(nbytes)
        halo_bytes, impls = halo_impls(nbytes, reps)
        rows.append(measure("halo", halo_bytes, impls, reps, args.rounds, floors=("copy",)))
    meta = {"chain": args.chain, **({"build": args.build} if args.build else {})}
    save(args.out, rows, args.rounds, meta)


def save(path, rows, rounds, meta):
    """Rank 0 writes {"meta": ..., "rows": rows} to `path`, `meta` added to
    the run's common facts."""
    if RANK != 0:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta = {
        "ranks": SIZE,
        "check": os.environ.get("ADCME_MPI_CHECK", "1"),
        "mpi": MPI.Get_library_version().splitlines()[0],
        "tf": tf.__version__,
        "rounds": rounds,
        **meta,
    }
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
