"""Per-op time of adcme_mpi ops inside a TF graph against (a) mpi4py on NumPy
buffers doing the same MPI call and (b) tf.numpy_function wrapping mpi4py
(what a TF user writes without this library). Forward, and forward+backward.

    mpiexec -n 2 python benchmarks/bench_ops.py --out benchmarks/out/ops.json

Each measurement runs REPS ops back to back (the ops of one graph are chained
in program order) and reports the median over TRIALS runs, per op.
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
COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
PEER = 1 - RANK if SIZE == 2 else None


def median_time(fn, reps, trials):
    fn()  # warm up
    times = []
    for _ in range(trials):
        COMM.Barrier()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) / reps)
    return COMM.allreduce(float(np.median(times)), op=MPI.MAX)


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


def adcme_op(kind, t):
    if kind == "bcast":
        return am.mpi_bcast(t, 0)
    if kind == "sum":
        return am.mpi_sum(t, 0)
    if kind == "allreduce":
        return am.mpi_allreduce(t)
    if kind == "sendrecv":
        return am.mpi_sendrecv(t, 1, 0)


def numpy_function_op(kind, t):
    def call(x):
        out = np.empty_like(x)
        mpi4py_call(kind, np.ascontiguousarray(x), out)
        return out if kind in ("sum", "allreduce") or (kind == "sendrecv" and RANK == 1) else x

    return tf.numpy_function(call, [t], t.dtype, stateful=True)


def graph_time(build, reps, trials, grad=False):
    g = tf.Graph()
    with g.as_default():
        x = tf.Variable(np.ones(build.n, np.float64))
        value = x.read_value()  # read once: the ops, not variable copies, are timed
        outs, prev = [], None
        for _ in range(reps):
            with tf.control_dependencies([prev] if prev is not None else []):
                y = build(value)
            prev = y
            outs.append(y)
        if grad:
            target = tf.gradients(tf.add_n([tf.reduce_sum(o) for o in outs]), x)[0]
        else:
            target = tf.group(*outs)
        with am.Session(graph=g) as sess:
            sess.run(x.initializer)
            return median_time(lambda: sess.run(target), reps, trials)


class Build:
    def __init__(self, fn, kind, n):
        self.fn, self.kind, self.n = fn, kind, n

    def __call__(self, t):
        return self.fn(self.kind, t)


def halo_block(nbytes):
    side = max(2, int(np.sqrt(nbytes / 8)))
    return side


def bench_halo(nbytes, reps, trials):
    """1 x SIZE rank grid, square blocks of `side`^2 doubles (nbytes per block)."""
    side = halo_block(nbytes)
    u = np.random.default_rng(RANK).random((side, side))
    padded = np.zeros((side + 2, side + 2))
    left = RANK - 1 if RANK > 0 else MPI.PROC_NULL
    right = RANK + 1 if RANK < SIZE - 1 else MPI.PROC_NULL

    def region(start_col):
        return MPI.DOUBLE.Create_subarray([side + 2, side + 2], [side, 1], [1, start_col]).Commit()

    # the careful mpi4py user: subarray datatypes straight on the padded array, no packing
    ghost_left, ghost_right = region(0), region(side + 1)
    edge_left, edge_right = region(1), region(side)
    types = [ghost_left, ghost_right, edge_left, edge_right]

    def mpi4py_halo():
        padded[1:-1, 1:-1] = u
        reqs = [
            COMM.Irecv([padded, 1, ghost_left], source=left),
            COMM.Irecv([padded, 1, ghost_right], source=right),
            COMM.Isend([padded, 1, edge_left], dest=left),
            COMM.Isend([padded, 1, edge_right], dest=right),
        ]
        MPI.Request.Waitall(reqs)

    def loop():
        for _ in range(reps):
            mpi4py_halo()

    t_mpi4py = median_time(loop, reps, trials)

    def op_time(grad):
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
            with am.Session(graph=g) as sess:
                sess.run(x.initializer)
                return median_time(lambda: sess.run(target), reps, trials)

    for t in types:
        t.Free()
    return {
        "op": "halo",
        "bytes": side * side * 8,
        "side": side,
        "mpi4py": t_mpi4py,
        "adcme": op_time(False),
        "adcme_fwd_bwd": op_time(True),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/out/ops.json")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [8, 64, 512, 4096, 32768, 262144, 1 << 20, 8 << 20]
    rows = []
    for nbytes in sizes:
        n = max(1, nbytes // 8)
        reps = 200 if nbytes <= 4096 else 40 if nbytes <= 262144 else 8
        trials = 5 if not args.quick else 2
        buf, out = np.ones(n), np.empty(n)
        for kind in ["bcast", "sum", "allreduce", "sendrecv"]:
            if kind == "sendrecv" and SIZE != 2:
                continue

            def loop(kind=kind, reps=reps, buf=buf, out=out):
                for _ in range(reps):
                    mpi4py_call(kind, buf, out)

            row = {
                "op": kind,
                "bytes": nbytes,
                "mpi4py": median_time(loop, reps, trials),
                "adcme": graph_time(Build(adcme_op, kind, n), reps, trials),
                "numpy_function": graph_time(Build(numpy_function_op, kind, n), reps, trials),
                "adcme_fwd_bwd": graph_time(Build(adcme_op, kind, n), reps, trials, grad=True),
            }
            rows.append(row)
            if RANK == 0:
                print(
                    f"{kind:10s} {nbytes:>8d} B  mpi4py {row['mpi4py'] * 1e6:9.1f} us  "
                    f"adcme {row['adcme'] * 1e6:9.1f} us ({row['adcme'] / row['mpi4py']:5.2f}x)  "
                    f"numpy_function {row['numpy_function'] * 1e6:9.1f} us "
                    f"(adcme/np_fn {row['adcme'] / row['numpy_function']:5.2f})  "
                    f"fwd+bwd {row['adcme_fwd_bwd'] * 1e6:9.1f} us",
                    flush=True,
                )
        if nbytes >= 512:
            row = bench_halo(nbytes, reps, trials)
            rows.append(row)
            if RANK == 0:
                print(
                    f"{'halo':10s} {row['bytes']:>8d} B  mpi4py {row['mpi4py'] * 1e6:9.1f} us  "
                    f"adcme {row['adcme'] * 1e6:9.1f} us ({row['adcme'] / row['mpi4py']:5.2f}x)  "
                    f"fwd+bwd {row['adcme_fwd_bwd'] * 1e6:9.1f} us",
                    flush=True,
                )
    if RANK == 0:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        meta = {
            "ranks": SIZE,
            "check": os.environ.get("ADCME_MPI_CHECK", "1"),
            "mpi": MPI.Get_library_version().splitlines()[0],
            "tf": tf.__version__,
        }
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
