"""Weak and strong scaling of the heat, wave and Poisson applications (forward, and
forward + gradient), with each MPI op's share of the time, and the node's own
limit: the same arithmetic with no communication at all (--no-comm: the halo
exchange becomes tf.pad, collectives become identities; every rank then works
alone). One configuration per launch:

    mpiexec -n P python benchmarks/scaling.py --app heat --mode weak --block 300 \\
        --out benchmarks/results/scaling/heat_weak_P.json [--no-comm]

With TF_XLA_FLAGS="--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit" in the
environment, XLA auto-clustering compiles the arithmetic between the MPI ops;
the row records it ("xla") and scaling_report.py tables those runs apart.

weak: about block x block cells per rank (the global grid grows with P);
strong: a fixed --global N x N grid. Heat and wave run --steps explicit steps
(wave: the stored loop, or checkpointed with --checkpoints K); Poisson
runs exactly --iterations CG iterations (tolerance 0), so runs with and
without communication do the same arithmetic. benchmarks/scaling_report.py
turns the results into tables, plots and the latency-bandwidth model.

Across 2 hosts with shaped links (tools/netns_hosts.py --delay-us 0,10,...),
--link-delays-us 0,10,... measures every latency in one job, round by round:
rank 0 moves the link on to the next delay between measurements, and the
extra time over the first delay is the median of per-round differences.

    python tools/netns_hosts.py run --hosts 2 --delay-us 0,50,1000 -- python \
        benchmarks/scaling.py --app heat --mode weak --link-delays-us 0,50,1000 --out X.json

--app sparse is ADCME's MPI Poisson on PETSc (adcme_mpi.apps.sparse_poisson:
about block x block rows per rank, --solver GAMG to --rtol). PETSc decides
its messages, so the latency check counts them: with tools/mpi_count.c
preloaded (LD_PRELOAD, compiled by benchmarks/run_scaling.sh), a
--link-delays-us run records each run's MPI calls per rank (mpi_calls), and
scaling_report.py turns them into latency events.
"""

import argparse
import ctypes
import json
import os
import re
import signal
import time

import numpy as np
import tensorflow as tf

import adcme_mpi as am  # first: with a system MPI it picks the libmpi mpi4py loads
from adcme_mpi import op_table  # noqa: E402
from adcme_mpi.apps import heat, poisson, preconditioners, sparse_poisson, wave
from adcme_mpi.apps.communication import LocalOps, MPIOps
from adcme_mpi.apps.grid import default_grid
from mpi4py import MPI  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

COMM = MPI.COMM_WORLD
MPI_TYPES = op_table.TYPES  # every MPI op type (adcme_mpi/op_table.py)


def global_size(args, m, n):
    """N for the N x N global grid: fixed (strong) or about block^2 cells per rank (weak)."""
    if args.mode == "strong":
        return args.global_size
    N = int(round(args.block * np.sqrt(m * n)))
    lcm = m * n // np.gcd(m, n)
    return int(max(lcm, N - N % lcm))


def build(args, N, grid):
    # --no-comm: local stand-ins of the same shapes (the node's own limit)
    ops = LocalOps() if args.no_comm else MPIOps()
    if args.app == "heat":
        T = args.steps * 0.5 / (N + 1) ** 2 / (4 * heat.KAPPA_MAX)  # stable
        problem = heat.HeatProblem(N=N, steps=args.steps, T=T, grid=grid, snapshots=1, ops=ops)
        observed = tf.zeros([1, problem.patch.rows, problem.patch.cols], tf.float64)
        params, loss, grad = heat.build_inverse(problem, observed)
        return problem, params, loss, grad, heat.TRUE_THETA
    if args.app == "wave":
        # the velocity inversion's misfit: one halo exchange per leapfrog step
        # forward and one in the adjoint, as heat's; T is the stable limit for
        # the optimizer's largest velocity
        T = args.steps / (1.1 * wave.C_MAX * np.sqrt(2) * (N + 1))
        problem = wave.WaveProblem(
            N=N, T=T, steps=args.steps, grid=grid, checkpoints=args.checkpoints, ops=ops
        )
        observed = np.ones((problem.steps, N))  # the misfit's cost does not depend on the data
        params, loss, grad = wave.build_inverse(problem, observed)
        return problem, params, loss, grad, np.full(N * N, wave.C_BACKGROUND)
    if args.app == "sparse":
        # ADCME's MPI Poisson on PETSc: N x N rows in row stripes, solved to
        # a fixed tolerance (PETSc decides the iterations; the MPI calls are
        # counted instead, see mpi_calls)
        problem = sparse_poisson.SparsePoisson(N)
        weights0 = tf.compat.v1.placeholder(tf.float64, [poisson.n_weights()])
        weights = am.mpi_bcast(weights0)
        u = problem.solve(
            lambda x, y: poisson.network_kappa(weights, x, y), args.solver, rtol=args.rtol
        )
        loss = am.mpi_sum(tf.reduce_sum(u**2))
        return problem, weights0, loss, tf.gradients(loss, weights0)[0], poisson.init_weights()
    problem = poisson.PoissonProblem(
        N=N,
        grid=grid,
        tol=0.0,
        maxiter=args.iterations,
        preconditioner=args.preconditioner,
        ops=ops,
    )
    observed = tf.zeros([problem.patch.rows, problem.patch.cols], tf.float64)
    params, loss, grad = poisson.build_inverse(problem, observed)
    return problem, params, loss, grad, poisson.init_weights()


def run_time(sess, fetch, feed):
    """Seconds of one sess.run, on the slowest rank."""
    COMM.Barrier()
    start = time.perf_counter()
    sess.run(fetch, feed)
    return COMM.allreduce(time.perf_counter() - start, op=MPI.MAX)


def warmed_up_fetches(sess, loss, grad, feed):
    """The forward and the forward+gradient fetches, each run once."""
    fetches = {"forward": loss, "forward_gradient": [loss, grad]}
    for fetch in fetches.values():
        sess.run(fetch, feed)
    return fetches


def forward_and_gradient_times(sess, loss, grad, feed, rounds):
    """Forward and forward+gradient times, interleaved round by round."""
    fetches = warmed_up_fetches(sess, loss, grad, feed)
    times = {name: [] for name in fetches}
    for _ in range(rounds):
        for name, fetch in fetches.items():
            times[name].append(run_time(sess, fetch, feed))
    return times["forward"], times["forward_gradient"]


def op_shares(sess, fetch, feed):
    """Seconds each MPI op type took in one traced run, and that run's wall time."""
    options = tf.compat.v1.RunOptions(trace_level=tf.compat.v1.RunOptions.FULL_TRACE)
    metadata = tf.compat.v1.RunMetadata()
    start = time.perf_counter()
    sess.run(fetch, feed, options=options, run_metadata=metadata)
    wall = time.perf_counter() - start
    per_type = {}
    for device in metadata.step_stats.dev_stats:
        for node in device.node_stats:
            # loop bodies are lowered into the graph under new names, but an
            # MPI op keeps its type as its own name: ".../MPIHaloExchange_3"
            kind = re.sub(r"_\d+$", "", node.node_name.rsplit("/", 1)[-1])
            if kind in MPI_TYPES:
                per_type[kind] = per_type.get(kind, 0.0) + node.all_end_rel_micros * 1e-6
    return per_type, wall


# tools/mpi_count.c's counters, in its order
MPI_CALLS = (
    "allreduce iallreduce reduce bcast allgather alltoall isend send irecv recv waitall "
    "barrier allreduce_c startall start isend_c irecv_c"
).split()


def mpi_call_counts():
    """This process's MPI calls so far, by name, when tools/mpi_count.c is
    preloaded (LD_PRELOAD); else None."""
    try:
        read = ctypes.CDLL(None).mpi_count_read
    except AttributeError:
        return None
    buffer = (ctypes.c_double * 64)()
    n = read(buffer, 64)
    return dict(zip(MPI_CALLS, buffer[:n]))


def mpi_calls(sess, fetches, feed):
    """MPI calls of one run of each fetch, the largest count over ranks per
    call (the critical path goes through the busiest rank), or None without
    the counting library."""
    if mpi_call_counts() is None:
        return None
    calls = {}
    for name, fetch in fetches.items():
        COMM.Barrier()
        before = mpi_call_counts()
        sess.run(fetch, feed)
        after = mpi_call_counts()
        mine = np.array([after[k] - before[k] for k in after])
        busiest = np.empty_like(mine)
        COMM.Allreduce(mine, busiest, op=MPI.MAX)
        calls[name] = {k: float(v) for k, v in zip(after, busiest) if v}
    return calls


def half_round_trip_us(repeats):
    """The link as MPI sees it: median half round trip of an 8-byte mpi4py
    ping-pong between ranks 0 and 1 (the latency the model is then given for
    the shaped link, whose user-space delay overshoots a little)."""
    rank, buf, trips = COMM.Get_rank(), np.zeros(1), []
    for _ in range(repeats):
        COMM.Barrier()
        start = time.perf_counter()
        if rank == 0:
            COMM.Send(buf, dest=1)
            COMM.Recv(buf, source=1)
        elif rank == 1:
            COMM.Recv(buf, source=0)
            COMM.Send(buf, dest=0)
        trips.append(time.perf_counter() - start)
    return COMM.bcast(float(np.median(trips)) / 2 * 1e6)


def next_link_delay():
    """Move the shaped link (tools/delay_link.c) on to its next delay."""
    COMM.Barrier()
    if COMM.Get_rank() == 0:
        os.kill(int(os.environ["ADCME_DELAY_LINK_PID"]), signal.SIGUSR1)
    COMM.Barrier()


def across_link_delays(sess, loss, grad, feed, delays, rounds):
    """Per delay: the link's half round trip, forward and forward+gradient
    times, and their extra over delays[0] as medians of per-round differences."""
    fetches = warmed_up_fetches(sess, loss, grad, feed)
    calls = mpi_calls(sess, fetches, feed)
    times = {(d, name): [] for d in delays for name in [*fetches, "half_round_trip_us"]}
    for _ in range(rounds):
        for delay in delays:  # the link is at `delay` now; moved on at the end
            times[delay, "half_round_trip_us"].append(half_round_trip_us(30))
            for name, fetch in fetches.items():
                times[delay, name].append(run_time(sess, fetch, feed))
            next_link_delay()
    rows = []
    for delay in delays:
        row = {"delay_us": delay}
        for name in [*fetches, "half_round_trip_us"]:
            values = np.array(times[delay, name])
            extra = values - np.array(times[delays[0], name])
            row[name] = float(np.median(values))
            row[name + "_spread"] = [float(values.min()), float(values.max())]
            row["extra_" + name] = float(np.median(extra))
            row["extra_" + name + "_spread"] = [float(extra.min()), float(extra.max())]
        rows.append(row)
    return rows, calls


def transport():
    """ "MPICH 5.0.2 OFI/tcp" when a run chose MPICH's network module
    (MPIR_CVAR_CH4_NETMOD, as tools/netns_hosts.py does), else None."""
    netmod = os.environ.get("MPIR_CVAR_CH4_NETMOD")
    version = re.search(r"MPICH Version:\s*(\S+)", MPI.Get_library_version())
    if not netmod or not version:
        return None
    return f"MPICH {version.group(1)} {netmod.upper()}/tcp"


def write_result(path, row):
    if COMM.Get_rank() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(row, f, indent=1)
        print(json.dumps(row))


def count_iterations(args, N, grid):
    problem = poisson.PoissonProblem(N=N, grid=grid, preconditioner=args.preconditioner)
    with tf.Graph().as_default() as graph:
        _, counted = problem.solve_counted(tf.constant(poisson.exact_kappa(problem.xb, problem.yb)))
        with am.Session(graph=graph) as sess:
            iterations = int(sess.run(counted))
    row = {
        "app": "poisson",
        "blocks_per_side": grid[0],
        "grid": list(grid),
        "N": N,
        "block": [problem.patch.rows, problem.patch.cols],
        "iterations_to_tol": iterations,
        "preconditioner": args.preconditioner,
    }
    write_result(args.out, row)


def time_v_cycle(args):
    """The V-cycle every rank runs on the gathered coarse grid at P = block^2
    ranks (one cell per rank): the same grid gathered on one rank at once and
    cycled there (the median of --rounds, each 20 V-cycles in a
    tf.while_loop, per V-cycle; its one-rank gather included)."""
    k = args.block
    problem = poisson.PoissonProblem(N=k, grid=(1, 1), comm=MPI.COMM_SELF, preconditioner=None)
    problem.preconditioner = preconditioners.Multigrid(problem, coarsen_blocks=False)
    cycles = 20
    with tf.Graph().as_default() as graph:
        kappa = tf.constant(poisson.exact_kappa(problem.xb, problem.yb))
        precondition = problem.preconditioner.prepare(problem.faces(kappa))

        def body(i, z):
            z = precondition(z)
            return i + 1, z / tf.reduce_max(tf.abs(z))  # keep it finite

        r = tf.constant(np.random.default_rng(0).standard_normal((k, k)))
        _, z = tf.while_loop(lambda i, z: i < cycles, body, [tf.constant(0), r])
        with am.Session(graph=graph, intra_op_parallelism_threads=1) as sess:
            sess.run(z)
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                sess.run(z)
                times.append((time.perf_counter() - start) / cycles)
    row = {
        "app": "poisson",
        "mode": "vcycle",
        "block": k,
        "v_cycle_s": float(np.median(times)),
        "spread_s": [float(min(times)), float(max(times))],
        "rounds": args.rounds,
        "levels": [[lv.rows, lv.cols] for lv in problem.preconditioner.gathered_levels],
    }
    write_result(args.out, row)


def main():
    tf.compat.v1.disable_eager_execution()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--app", choices=["heat", "wave", "poisson", "sparse"], required=True)
    parser.add_argument("--mode", choices=["weak", "strong", "iterations", "vcycle"], required=True)
    parser.add_argument("--block", type=int, default=300, help="weak: cells per rank per side")
    parser.add_argument("--global-size", type=int, default=600, help="strong: global N")
    parser.add_argument("--steps", type=int, default=20, help="heat, wave: time steps")
    parser.add_argument(
        "--checkpoints", type=int, default=None, help="wave: K stored states (default: every step)"
    )
    parser.add_argument("--iterations", type=int, default=30, help="poisson: CG iterations")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--preconditioner",
        default="block-jacobi",
        choices=["block-jacobi", "two-level", "multigrid"],
        help="poisson",
    )
    parser.add_argument("--solver", default="GAMG", help="sparse: the PETSc solver")
    parser.add_argument("--rtol", type=float, default=1e-10, help="sparse: the solve's tolerance")
    parser.add_argument("--no-comm", action="store_true")
    parser.add_argument(
        "--link-delays-us",
        default=None,
        help="the shaped link's delays, in its order (tools/netns_hosts.py --delay-us)",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.no_comm:
        if args.app == "poisson" and args.preconditioner == "multigrid" and COMM.Get_size() > 1:
            # its coarse grid is gathered by an allreduce: without one, the other
            # ranks' cells are zeros and the coarsest matrix is singular
            parser.error("--no-comm with --preconditioner multigrid needs 1 rank")
    size = COMM.Get_size()
    grid = default_grid(size)
    N = global_size(args, *grid)
    if args.mode == "iterations":  # Poisson: CG iterations to 1e-12 on k x k blocks of --block
        return count_iterations(args, N, grid)
    if args.mode == "vcycle":  # Poisson: one multigrid V-cycle of --block x --block on one rank
        return time_v_cycle(args)
    with tf.Graph().as_default() as graph:
        problem, params, loss, grad, value = build(args, N, grid)
        feed = {params: value}
        row = {
            "app": args.app,
            "mode": args.mode,
            "ranks": size,
            "grid": list(grid),
            "N": N,
            "block": (
                [int(problem.iupper - problem.ilower + 1), 1]  # a stripe of rows
                if args.app == "sparse"
                else [problem.patch.rows, problem.patch.cols]
            ),
            "no_comm": args.no_comm,
            "check": os.environ.get("ADCME_MPI_CHECK", "1") != "0",
            # how the halo's check ran: "deferred" (since 51cec46) or "off";
            # runs of earlier builds are marked "blocking" by hand
            "halo_check": "off" if os.environ.get("ADCME_MPI_CHECK") == "0" else "deferred",
            # XLA auto-clustering around the MPI ops (TF_XLA_FLAGS, read when TF starts)
            "xla": "--tf_xla_auto_jit" in os.environ.get("TF_XLA_FLAGS", ""),
        }
        if args.app in ("heat", "wave"):
            row["steps"] = args.steps
            if args.app == "wave":
                row["checkpoints"] = args.checkpoints
        elif args.app == "poisson":
            row["iterations"] = args.iterations
        else:
            row.update(solver=args.solver, rtol=args.rtol)
        if args.app == "poisson":
            row["preconditioner"] = args.preconditioner
            if isinstance(problem.preconditioner, preconditioners.Multigrid):
                mg = problem.preconditioner
                row["multigrid_levels"] = [[lv.rows, lv.cols] for lv in mg.levels]
                row["multigrid_exchanges"] = [mg.halo_exchanges(lv) for lv in mg.levels]
                row["multigrid_gathered"] = [[lv.rows, lv.cols] for lv in mg.gathered_levels]
        config = {"intra_op_parallelism_threads": 1}
        with am.Session(graph=graph, **config) as sess:
            if args.link_delays_us:
                delays = [float(d) for d in args.link_delays_us.split(",")]
                row["rounds"] = args.rounds
                if transport():
                    row["build"] = transport()
                row["link"], calls = across_link_delays(sess, loss, grad, feed, delays, args.rounds)
                if calls:
                    row["mpi_calls"] = calls  # per run, the busiest rank's count of each call
                return write_result(args.out, row)
            forward, both = forward_and_gradient_times(sess, loss, grad, feed, args.rounds)
            shares, traced_wall = op_shares(sess, [loss, grad], feed)
    shares = {k: COMM.allreduce(v, op=MPI.MAX) for k, v in shares.items()}
    row.update(
        forward_s=float(np.median(forward)),
        forward_spread=[float(min(forward)), float(max(forward))],
        forward_gradient_s=float(np.median(both)),
        forward_gradient_spread=[float(min(both)), float(max(both))],
        traced_wall_s=traced_wall,
        mpi_op_s=shares,
    )
    write_result(args.out, row)


if __name__ == "__main__":
    main()
