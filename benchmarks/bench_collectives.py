"""The collectives added since bench_ops.py (issue 31) against the same MPI
call in mpi4py and in mpi4jax, in bench_ops.py's interleaved rounds: its
runners, ratios and JSON (forward, and forward+backward for ours).

    mpiexec -n 2 python benchmarks/bench_collectives.py --rounds 15 \
        --out benchmarks/results/ops_new_collectives.json

Every column of a row makes the same MPI call, on equal pieces (mpi4jax
has no varying sizes), ours after its cross-rank check (ADCME_MPI_CHECK=0
leaves that out): allgather (MPI_Allgather; ours posts
MPI_Iallgatherv after exchanging the lengths, which it must because they
may differ), reduce_scatter (MPI_Reduce_scatter with equal counts; mpi4jax
has none), alltoall (MPI_Alltoall), scan (MPI_Scan, sum), exchange (a ring:
every rank sends to rank + 1 and receives from rank - 1, MPI_Sendrecv; on 2
ranks both are the other rank), and the reductions other than the sum on
allreduce and on sum (reduce to rank 0): max, min, prod, and mean (the sum,
then times 1/size: in place in mpi4py, a multiply in jax.jit and in ours).

A row's bytes are each rank's input (float64); reduce_scatter and alltoall
need one element per rank at least, so at 8 B theirs is 16 B. The
allgather row also times mpi4py doing our allgather's MPI work (the
lengths, then MPI_Allgatherv: *mpi4py_lengths*). Our ops read one input
tensor, as in bench_ops.py; mpi4jax's chain as there, except allgather's.
"""

import os
import sys

import numpy as np

import bench_ops as bench  # first: graph mode, MPI initialized, adcme_mpi before mpi4py
from bench_ops import COMM, RANK, SIZE, Build, graph_runner, measure, reps_for

import adcme_mpi as am
from mpi4py import MPI

RIGHT, LEFT = (RANK + 1) % SIZE, (RANK - 1) % SIZE  # the exchange's ring


def mean_of(call):
    """mpi4py's mean: the sum `call` makes into `out`, times 1/size in place
    (on every rank, as ours and jax's)."""

    def mean(buf, out):
        call(buf, out, MPI.SUM)
        np.multiply(out, 1.0 / SIZE, out=out)

    return mean


def allreduce(buf, out, op):
    COMM.Allreduce(buf, out, op=op)


def reduce_to_0(buf, out, op):
    COMM.Reduce(buf, out if RANK == 0 else None, op=op, root=0)


REDUCTIONS = {"max": MPI.MAX, "min": MPI.MIN, "prod": MPI.PROD}


def cases():
    """{row: (ours(t), mpi4py(buf, out), mpi4jax(x) or None, output length
    per input element)}. mpi4jax's lambdas read the module when called (it
    is loaded after import)."""
    rows = {
        "allgather": (
            am.mpi_allgather,
            COMM.Allgather,
            lambda x: bench.mpi4jax.allgather(x),
            SIZE,
        ),
        "reduce_scatter": (
            am.mpi_reduce_scatter,
            lambda buf, out: COMM.Reduce_scatter(buf, out, [out.size] * SIZE, op=MPI.SUM),
            None,
            1 / SIZE,
        ),
        "alltoall": (
            am.mpi_alltoall,
            COMM.Alltoall,
            lambda x: bench.mpi4jax.alltoall(x.reshape(SIZE, -1)).reshape(-1),
            1,
        ),
        "scan": (
            am.mpi_scan,
            lambda buf, out: COMM.Scan(buf, out, op=MPI.SUM),
            lambda x: bench.mpi4jax.scan(x, MPI.SUM),
            1,
        ),
        "exchange": (
            lambda t: am.mpi_exchange(t, RIGHT, LEFT),
            lambda buf, out: COMM.Sendrecv(buf, RIGHT, recvbuf=out, source=LEFT),
            lambda x: bench.mpi4jax.sendrecv(x, x, source=LEFT, dest=RIGHT),
            1,
        ),
    }
    for name, ours, call, jax_call in (
        ("allreduce", am.mpi_allreduce, allreduce, lambda x, op: bench.mpi4jax.allreduce(x, op)),
        ("sum", am.mpi_sum, reduce_to_0, lambda x, op: bench.mpi4jax.reduce(x, op, 0)),
    ):
        for op, mpi_op in REDUCTIONS.items():
            rows[f"{name}_{op}"] = (
                lambda t, ours=ours, op=op: ours(t, op=op),
                lambda buf, out, call=call, mpi_op=mpi_op: call(buf, out, mpi_op),
                lambda x, jax_call=jax_call, mpi_op=mpi_op: jax_call(x, mpi_op),
                1,
            )
        rows[f"{name}_mean"] = (
            lambda t, ours=ours: ours(t, op="mean"),
            mean_of(call),
            lambda x, jax_call=jax_call: jax_call(x, MPI.SUM) * (1.0 / SIZE),
            1,
        )
    return rows


def mpi4jax_runner(one, n, reps):
    """`reps` mpi4jax ops inside one jax.jit, each on the previous op's
    output as bench_ops.py's mpi4jax rows (so XLA keeps mean's multiplies),
    or on the input where the shape changes (allgather)."""

    def body(x):
        y = x
        for _ in range(reps):
            out = one(y)
            y = out if out.shape == x.shape else x
        return out

    return bench.jit_runner(body, np.ones(n))


def impls_of(case, n, reps):
    ours, call, jax_call, grows = case
    buf, out = np.ones(n), np.empty(max(1, int(n * grows)))

    def loop():
        for _ in range(reps):
            call(buf, out)

    build = Build(lambda kind, t: ours(t), None, n)
    impls = {
        "mpi4py": loop,
        "adcme": graph_runner(build, reps),
        "adcme_fwd_bwd": graph_runner(build, reps, grad=True),
    }
    if bench.mpi4jax is not None and jax_call is not None:
        impls["mpi4jax"] = mpi4jax_runner(jax_call, n, reps)
    return impls


def allgather_with_lengths(reps, n):
    """mpi4py doing our allgather's MPI work: the lengths, then MPI_Allgatherv."""
    buf, out, lengths = np.ones(n), np.empty(n * SIZE), np.empty(SIZE, np.int64)

    def loop():
        for _ in range(reps):
            COMM.Allgather(np.array([n], np.int64), lengths)
            COMM.Allgatherv(buf, [out, lengths])

    return loop


def versions():
    """The versions of the packages this process loaded."""
    names = ("tensorflow", "numpy", "mpi4py", "jax", "jaxlib", "mpi4jax", "ml_dtypes")
    return {name: sys.modules[name].__version__ for name in names if name in sys.modules}


def main():
    parser = bench.arguments(
        "benchmarks/results/ops_new_collectives.json", "8,8192,1048576,8388608"
    )
    parser.add_argument("--ops", default="", help="comma-separated rows (default: all)")
    args = parser.parse_args()
    if not args.no_mpi4jax:
        bench.load_mpi4jax()
    # The machine is shared: its load goes into the results beside the ratios.
    load_before = os.getloadavg()
    table = cases()
    names = args.ops.split(",") if args.ops else list(table)
    rows = []
    for nbytes in [int(b) for b in args.sizes.split(",")]:
        reps = reps_for(nbytes)
        for name in names:
            # (reduce_scatter and alltoall need a multiple of size elements)
            n = max(1, nbytes // 8)
            if name in ("reduce_scatter", "alltoall"):
                n = -(-n // SIZE) * SIZE
            impls = impls_of(table[name], n, reps)
            if name == "allgather":
                impls["mpi4py_lengths"] = allgather_with_lengths(reps, n)
            floors = tuple(f for f in ("mpi4jax", "mpi4py_lengths") if f in impls)
            rows.append(measure(name, n * 8, impls, reps, args.rounds, floors=floors))
    meta = {"load_before": load_before, "load_after": os.getloadavg(), "versions": versions()}
    bench.save(args.out, rows, args.rounds, meta)


if __name__ == "__main__":
    main()
