"""Overlap: a heat step that updates the interior while its halo is in
flight (mpi_isend / mpi_irecv / mpi_wait), against the blocking halo
exchange (mpi_exchange, then the whole strip). 2 ranks, 1-D row strips of
a (2 rows) x cols global grid, `--steps` explicit steps unrolled in one
tf.compat.v1 graph; both variants compute the same numbers (checked).

    mpiexec -n 2 python benchmarks/bench_overlap.py --out benchmarks/results/overlap_shm.json
    python tools/netns_hosts.py run --hosts 2 --per-host 1 --delay-us 1000 -- \\
        python benchmarks/bench_overlap.py --label "netns 1000 us" --out X.json

Each round runs every variant once (interleaved; barrier before each, the
slowest rank's time); reported: the median time per step over rounds, and
the median and [min..max] over rounds of the per-round ratio
overlapped / blocking.
"""

import argparse
import json
import os
import time

import numpy as np
import tensorflow as tf

import adcme_mpi as am  # first: with a system MPI it picks the libmpi mpi4py loads
from mpi4py import MPI  # noqa: E402

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
DOWN = RANK + 1 if RANK + 1 < SIZE else None  # the strip below (rows after ours)
UP = RANK - 1 if RANK > 0 else None
ALPHA = 0.1


def laplacian_rows(up, mid, down):
    """Explicit update of rows `mid` given the rows above and below (columns
    are clamped: the left and right ghost columns copy the edge)."""
    left = tf.concat([mid[:, :1], mid[:, :-1]], 1)
    right = tf.concat([mid[:, 1:], mid[:, -1:]], 1)
    return mid + ALPHA * (up + down + left + right - 4.0 * mid)


def update(u, top, bottom, interior):
    """The step from the halo rows: the edge rows, and the interior (given,
    or computed here), joined. Both variants run exactly these ops, so they
    differ only in when the halo travels."""
    if interior is None:
        interior = laplacian_rows(u[:-2], u[1:-1], u[2:])
    first = laplacian_rows(top, u[:1], u[1:2])
    last = laplacian_rows(u[-2:-1], u[-1:], bottom)
    return tf.concat([first, interior, last], 0)


def blocking_step(u):
    top = am.mpi_exchange(u[-1:], DOWN, UP, tag=1)  # the last row of the strip above
    bottom = am.mpi_exchange(u[:1], UP, DOWN, tag=2)  # the first row of the strip below
    return update(u, top, bottom, None)


def overlapped_step(u):
    posts, top, bottom = [], None, None
    if DOWN is not None:
        posts.append(am.mpi_isend(u[-1:], DOWN, tag=1))
        bottom = am.mpi_irecv(u[:1], DOWN, tag=2)
        posts.append(bottom)
    if UP is not None:
        posts.append(am.mpi_isend(u[:1], UP, tag=2))
        top = am.mpi_irecv(u[-1:], UP, tag=1)
        posts.append(top)
    # the interior after the posts (a control dependency): it runs while the rows travel
    with tf.control_dependencies(posts):
        interior = laplacian_rows(u[:-2], u[1:-1], u[2:])
    got = {id(h): am.mpi_wait(h) for h in posts}
    zeros = tf.zeros_like(u[:1])  # (a boundary, as mpi_exchange's missing partner)
    top_row = got[id(top)] if top is not None else zeros
    bottom_row = got[id(bottom)] if bottom is not None else zeros
    return update(u, top_row, bottom_row, interior)


def build(step, rows, cols, steps):
    # a variable, not a constant: nothing may be folded at graph optimisation
    u = tf.compat.v1.Variable(np.random.default_rng([3, RANK]).standard_normal((rows, cols)))
    u = tf.identity(u)
    for _ in range(steps):
        u = step(u)
    return tf.reduce_sum(u * u)


def measure(rows, cols, steps, rounds):
    # one graph and session per variant: in one graph a fetch would also run
    # the MPI ops created before it (program order), i.e. the other variant
    variants = {"blocking": blocking_step, "overlapped": overlapped_step}
    sessions, values = {}, {}
    for name, step in variants.items():
        with tf.Graph().as_default():
            fetch = build(step, rows, cols, steps)
            sess = am.Session()
            sess.run(tf.compat.v1.global_variables_initializer())
            values[name] = sess.run(fetch)  # warm up
            sessions[name] = (sess, fetch)
    assert abs(values["blocking"] - values["overlapped"]) <= 1e-12 * abs(values["blocking"]), values
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (sess, fetch) in sessions.items():
            COMM.Barrier()
            t0 = time.perf_counter()
            sess.run(fetch)
            times[name].append(COMM.allreduce(time.perf_counter() - t0, op=MPI.MAX))
    for sess, _ in sessions.values():
        sess.close()
    block, over = np.array(times["blocking"]), np.array(times["overlapped"])
    ratio = over / block
    return {
        "rows_per_rank": rows,
        "cols": cols,
        "steps": steps,
        "rounds": rounds,
        "blocking_us_per_step": float(np.median(block)) / steps * 1e6,
        "overlapped_us_per_step": float(np.median(over)) / steps * 1e6,
        "ratio_median": float(np.median(ratio)),
        "ratio_min": float(ratio.min()),
        "ratio_max": float(ratio.max()),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="64x256,512x2048", help="rows_per_rank x cols, ...")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--label", default="one host, shared memory")
    parser.add_argument("--out")
    args = parser.parse_args()
    am.mpi_init()
    results = []
    for size in args.sizes.split(","):
        rows, cols = (int(s) for s in size.split("x"))
        r = measure(rows, cols, args.steps, args.rounds)
        results.append(r)
        if RANK == 0:
            print(
                f"{args.label}: {rows}x{cols} per rank: blocking "
                f"{r['blocking_us_per_step']:.0f} us/step, overlapped "
                f"{r['overlapped_us_per_step']:.0f} us/step, overlapped/blocking "
                f"{r['ratio_median']:.2f} [{r['ratio_min']:.2f}..{r['ratio_max']:.2f}]",
                flush=True,
            )
    # every rank takes part in the allgather (inside `if RANK == 0` it hung
    # rank 0 while rank 1 went on to mpi_finalize: no JSON was ever written)
    hosts = len(set(COMM.allgather(MPI.Get_processor_name())))
    if RANK == 0 and args.out:
        meta = {
            "label": args.label,
            "ranks": SIZE,
            "hosts": hosts,
            "mpi": MPI.Get_library_version().splitlines()[0],
            "tensorflow": tf.__version__,
            "delay_us": os.environ.get("ADCME_DELAY_US"),
        }
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)
    am.mpi_finalize()


if __name__ == "__main__":
    main()
