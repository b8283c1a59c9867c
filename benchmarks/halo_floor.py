"""The halo exchange's cost per op and per session run, against the plain
copy and against two raw-MPI exchanges of the same block (issue 32, item 5).

bench_ops.py times 32 exchanges of 1 MiB a run, so its halo row carries a
32nd of what one session run costs beyond its ops. Here every round times
runs of R = 8, 32 and 128 exchanges for each implementation (interleaved,
slowest rank) and fits time = per_run + R * per_op within the round; the
report gives the median [min..max] of the per-round fits and of the
per-round ratios of per-op costs. Implementations (1 x SIZE rank grid, a
square block of float64 per rank, as bench_ops.py's halo row):

- adcme: am.mpi_halo_exchange in a graph (a new padded output each op);
- mpi4py: subarray datatypes straight on a padded array kept from op to op
  (bench_ops.py's reference, a careful mpi4py user);
- packed: the block copied into the padded array, each edge column packed
  into a contiguous buffer, Sendrecv with each neighbour, ghost columns
  unpacked (the least raw MPI does for the same result);
- copy: np.copyto of the block into a kept buffer (bench_ops.py's floor).

    mpiexec -n 2 python benchmarks/halo_floor.py --out benchmarks/results/halo_floor.json
"""

import argparse
import time

import numpy as np

from bench_ops import COMM, RANK, MPI, halo_impls, halo_setup, release, save

RUNS = (8, 32, 128)


def packed_halo(nbytes, reps):
    side, u, padded, left, right = halo_setup(nbytes)
    send_left, send_right = np.empty(side), np.empty(side)
    from_left, from_right = np.zeros(side), np.zeros(side)

    def run():
        for _ in range(reps):
            padded[1:-1, 1:-1] = u
            send_left[:] = u[:, 0]
            send_right[:] = u[:, -1]
            COMM.Sendrecv(send_right, dest=right, recvbuf=from_left, source=left)
            COMM.Sendrecv(send_left, dest=left, recvbuf=from_right, source=right)
            padded[1:-1, 0] = from_left
            padded[1:-1, -1] = from_right

    return run


def fit(runs, seconds):
    """(per_run, per_op) in us, least squares over the run lengths."""
    per_op, per_run = np.polyfit(runs, seconds, 1)
    return per_run * 1e6, per_op * 1e6


def spread(values):
    values = np.asarray(values)
    return [float(np.median(values)), float(values.min()), float(values.max())]


def row(nbytes, rounds):
    impls = {}
    for reps in RUNS:
        block_bytes, made = halo_impls(nbytes, reps)
        for name in ("adcme", "mpi4py", "copy"):
            impls[name, reps] = made[name]
        impls["packed", reps] = packed_halo(nbytes, reps)
    names = ["adcme", "mpi4py", "packed", "copy"]
    for run in impls.values():
        run()  # warm up
    seconds = {key: [] for key in impls}
    for _ in range(rounds):
        for key, run in impls.items():
            COMM.Barrier()
            t0 = time.perf_counter()
            run()
            seconds[key].append(COMM.allreduce(time.perf_counter() - t0, op=MPI.MAX))
    fits = {
        name: [fit(RUNS, [seconds[name, reps][i] for reps in RUNS]) for i in range(rounds)]
        for name in names
    }
    out = {"op": "halo", "bytes": block_bytes, "runs": list(RUNS), "rounds": rounds}
    for name in names:
        out[f"{name}_per_run_us"] = spread([f[0] for f in fits[name]])
        out[f"{name}_per_op_us"] = spread([f[1] for f in fits[name]])
    for name, ref in [("adcme", "copy"), ("mpi4py", "copy"), ("packed", "copy")]:
        out[f"{name}/{ref}_per_op"] = spread([a[1] / b[1] for a, b in zip(fits[name], fits[ref])])
    for name in ("mpi4py", "packed"):
        out[f"adcme/{name}_per_op"] = spread(
            [a[1] / b[1] for a, b in zip(fits["adcme"], fits[name])]
        )
    for reps in RUNS:  # what bench_ops.py's row shows at its run length
        ratios = np.array(seconds["adcme", reps]) / np.array(seconds["copy", reps])
        out[f"adcme/copy_at_{reps}"] = spread(ratios)
    release()
    return out


def show(r):
    def f(key):
        m, lo, hi = r[key]
        return f"{m:.2f} [{lo:.2f}..{hi:.2f}]"

    print(f"halo {r['bytes']} B, {r['rounds']} rounds, runs of {r['runs']} ops:")
    for name in ("adcme", "mpi4py", "packed", "copy"):
        print(
            f"  {name:7s} per op {f(name + '_per_op_us')} us, per run {f(name + '_per_run_us')} us"
        )
    for key in ("adcme/copy_per_op", "mpi4py/copy_per_op", "packed/copy_per_op"):
        print(f"  {key} {f(key)}")
    for key in ("adcme/mpi4py_per_op", "adcme/packed_per_op"):
        print(f"  {key} {f(key)}")
    for reps in r["runs"]:
        print(f"  adcme/copy, runs of {reps}: {f(f'adcme/copy_at_{reps}')}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/halo_floor.json")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--sizes", default="1048576", help="comma-separated block bytes")
    args = parser.parse_args()
    rows = []
    for nbytes in [int(b) for b in args.sizes.split(",")]:
        rows.append(row(nbytes, args.rounds))
        if RANK == 0:
            show(rows[-1])
    save(args.out, rows, args.rounds, {"runs": list(RUNS)})


if __name__ == "__main__":
    main()
