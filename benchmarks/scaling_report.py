"""Tables, plots and the latency-bandwidth model for benchmarks/scaling.py.

    python benchmarks/scaling_report.py benchmarks/results/scaling \\
        benchmarks/results/ops_check.json benchmarks/SCALING.md benchmarks/scaling.png

Efficiency is reported two ways: against 1 rank (T1 / TP for weak scaling,
T1 / (P TP) for strong), and against the node's own limit: the same arithmetic
with no communication at the same rank count (T_nocomm,P / TP), which separates
what communication costs from what the shared memory bandwidth of one node costs.

The model: an op that moves b bytes to a neighbour costs alpha + b / beta.
alpha and beta are fitted (least squares) to the 2-rank op benchmarks; a link
of latency L replaces alpha by alpha + L and caps beta at 10 Gbit/s. Heat (and
the wave's leapfrog, stored loop): each step of the gradient does two halo
exchanges (forward and adjoint) whose cost does not depend on P. Poisson: each
CG iteration does one halo exchange and one allreduce (2 log2 P latencies), and
block-Jacobi iterations grow with the number of blocks per side k = sqrt(P) as
fitted to measured counts; with the two-level preconditioner they stop growing
(the largest measured count is used), at the price of a coarse problem whose
size grows with P. Multigrid keeps the count of one rank's solve flat (12), and
each V-cycle adds two halo exchanges per level (six on levels under 3 cells a
side), one gather, and the gathered coarse grid's V-cycle on every rank
(measured on its own).

The model's latency term is checked against 2 hosts joined by a link of
injected latency (tools/netns_hosts.py, benchmarks/run_scaling.sh): the extra
time over a 0-us link should be the latency-bound events on the critical
path times the link's extra latency, as an MPI ping-pong measures it. Since
51cec46 a halo exchange's cross-rank check is deferred (it no longer adds a
latency before each exchange); the injected-latency runs say which way their
halo check ran, and keep the last runs of the blocking check (build 0c53d2c,
measured in the same sitting) for comparison. The 1-2 rank tables and the
multigrid counts are from the build of the multigrid on rings (after that
change); the block-Jacobi and two-level counts are older (their code did not
change).

At P ranks (latency_events) a halo exchange stays one latency event and a
small reduction costs ceil(log2 P), model()'s rule. On 4 hosts (2x2 grid,
heat) it held over MPICH's UCX: measured/predicted 0.88-1.01. Over MPICH's
OFI/TCP the same run measured 1.14-1.56 (the forward up to 2.1), with the
same ping-pong latency, so that transport adds latency that a ping-pong does
not show. The sparse solve (PETSc decides its messages) is predicted from its
MPI calls, counted by tools/mpi_count.c: each PETSc reduction ceil(log2 P)
events, each neighbour exchange one. On 4 hosts it measured 1.53-1.58 times
that, over OFI only: UCX cannot run it across hosts (its any-source receives
hang; docs/sparse.md). Telling PETSc's own extra latencies from OFI's needs
this run on another transport (Open MPI, or real hosts).
"""

import glob
import json
import math
import os
import sys

import numpy as np

LINK_BYTES_PER_S = 10e9 / 8  # a 10 Gbit/s link
LATENCIES_US = [1, 10, 50]
RANKS = [64, 1024, 4096]


def load(folder):
    rows = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as f:
            rows.append(json.load(f))
    return rows


def fit_alpha_beta(ops_json, op):
    """alpha: the time of the smallest message; beta: the bandwidth between the
    smallest and the largest (a least-squares fit lets the large messages
    drive alpha negative)."""
    with open(ops_json) as f:
        rows = sorted((r for r in json.load(f)["rows"] if r["op"] == op), key=lambda r: r["bytes"])
    small, large = rows[0], rows[-1]
    beta = (large["bytes"] - small["bytes"]) / max(large["adcme"] - small["adcme"], 1e-12)
    return small["adcme"], beta


def lookup(rows, **key):
    for r in rows:
        if all(r.get(k) == v for k, v in key.items()):
            return r
    return None


def efficiency_table(rows, app, mode):
    lines = [
        f"### {app}, {mode} scaling",
        "",
        "| ranks | grid | block | fwd s | fwd+grad s [min..max] | fwd+grad no-comm s | "
        "eff. vs 1 rank | eff. vs node limit | MPI ops share (fwd+grad) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    base = lookup(rows, label=app, mode=mode, ranks=1, no_comm=False)
    for r in sorted(
        (r for r in rows if r["label"] == app and r["mode"] == mode and not r["no_comm"]),
        key=lambda r: r["ranks"],
    ):
        nocomm = lookup(rows, label=app, mode=mode, ranks=r["ranks"], no_comm=True)
        t = r["forward_gradient_s"]
        vs1 = (base["forward_gradient_s"] / t) if base else float("nan")
        if mode == "strong":
            vs1 /= r["ranks"]
        vs_node = nocomm["forward_gradient_s"] / t if nocomm else float("nan")
        share = ", ".join(
            f"{k} {v / r['traced_wall_s']:.0%}" for k, v in sorted(r["mpi_op_s"].items())
        )
        spread = r["forward_gradient_spread"]
        lines.append(
            f"| {r['ranks']} | {r['grid'][0]}x{r['grid'][1]} | "
            f"{r['block'][0]}x{r['block'][1]} | "
            f"{r['forward_s']:.4f} | {t:.4f} [{spread[0]:.4f}..{spread[1]:.4f}] | "
            f"{nocomm['forward_gradient_s'] if nocomm else float('nan'):.4f} | {vs1:.2f} | "
            f"{vs_node:.2f} | {share} |"
        )
    return lines


def xla_table(rows, with_xla):
    """The runs made with XLA auto-clustering beside the same runs without it."""
    if not with_xla:
        return []
    lines = [
        "### With XLA auto-clustering",
        "",
        'The same runs with `TF_XLA_FLAGS="--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit"` '
        "(made in the same sitting as the runs without it; run_scaling.sh).",
        "",
        "| run | ranks | fwd s | fwd+grad s | XLA: fwd s | XLA: fwd+grad s | fwd+grad / XLA |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(with_xla, key=lambda r: (r["label"], r["mode"], r["ranks"])):
        plain = lookup(rows, label=r["label"], mode=r["mode"], ranks=r["ranks"], no_comm=False)
        if plain is None:
            continue
        lines.append(
            f"| {r['label']}, {r['mode']} | {r['ranks']} | {plain['forward_s']:.4f} | "
            f"{plain['forward_gradient_s']:.4f} | {r['forward_s']:.4f} | "
            f"{r['forward_gradient_s']:.4f} | "
            f"{plain['forward_gradient_s'] / r['forward_gradient_s']:.2f} |"
        )
    return lines + [""]


CHECK_PACKET_BYTES = 64 + 256  # ops/checks.cc: digest header + inline data
# One multigrid level on a tiny grid is all op-launch overhead: a 24 x 24 solve on
# 1 rank (6 levels) takes 11 CG iterations in 17 ms, about 0.25 ms per level and
# iteration, CG's own ops included (an upper bound for a gathered level).
TINY_LEVEL_S = 0.25e-3
CHOLESKY_FLOPS = 10e9  # an assumed rate for the dense coarse factorisation


def check_cost(p, alpha, beta, check):
    """The cross-rank check before a collective of more than 256 bytes: one
    allreduce of a fixed-size packet (recursive doubling: log2 p latencies,
    the same bytes at any p). Collectives of at most 256 bytes, such as CG's
    dot products, travel inside it and pay nothing extra. A halo exchange's
    check is deferred (ops/checks.cc): posted with the exchange and completed
    while later ops wait, so it adds only its posting, which the halo's alpha,
    fitted with checks on, already holds. A blocking check first completes the
    deferred ones: at most this cost once more, per blocking check."""
    if not check or p == 1:
        return 0.0
    return math.log2(p) * (alpha + CHECK_PACKET_BYTES / beta)


def model(rows, ops_json, iterations, v_cycles):
    """Predicted weak-scaling efficiency of the gradient at 300x300 per rank."""
    a_halo, b_halo = fit_alpha_beta(ops_json, "halo")
    a_ar, _ = fit_alpha_beta(ops_json, "allreduce")
    heat1 = lookup(rows, label="heat", mode="weak", ranks=1, no_comm=True)
    wave1 = lookup(rows, label="wave", mode="weak", ranks=1, no_comm=True)
    pois1 = lookup(rows, label="poisson", mode="weak", ranks=1, no_comm=True)
    mg1 = lookup(rows, label="poisson, multigrid", mode="weak", ranks=1, no_comm=True)
    edge = 300 * 8  # bytes of one block edge
    lines = [
        "### Model (latency-bandwidth), weak scaling of the gradient at 300x300 per rank",
        "",
        f"Fitted on the 2-rank op benchmarks: halo alpha = {a_halo * 1e6:.1f} us, "
        f"beta = {b_halo / 1e9:.2f} GB/s; allreduce alpha = {a_ar * 1e6:.1f} us. A link of "
        f"latency L adds L to alpha and caps beta at {LINK_BYTES_PER_S / 1e9:.2f} GB/s. With "
        "checks on (the default), every collective of more than 256 bytes is preceded by one "
        f"allreduce of a {CHECK_PACKET_BYTES}-byte packet (log2 P latencies, the same bytes at "
        "any P); smaller collectives (CG's dot products) travel inside that packet at no extra "
        "cost. A halo exchange's check is deferred: posted with the exchange, completed while "
        "later ops wait (up to 15 in flight), so it costs its posting (inside the fitted halo "
        "alpha, measured with checks on) and no latency. The first blocking check after them "
        "completes them first: the model charges Poisson log2 P latencies more per CG "
        "iteration for it (heat has no blocking check inside its time loop).",
        "",
    ]
    if heat1 is None or pois1 is None:
        return lines + ["(needs the 1-rank no-comm weak runs of both applications)"]
    heat_step = heat1["forward_gradient_s"] / heat1["steps"]
    # the wave's leapfrog step: the same two halo exchanges per step as heat's
    wave_step = wave1["forward_gradient_s"] / wave1["steps"] if wave1 else None
    pois_it = pois1["forward_gradient_s"] / (2 * pois1["iterations"])  # forward + adjoint solve
    a_it, c_it, it_one, it_two_level, mg_one, mg_most = iterations
    lines += [
        f"Compute per heat step (fwd+grad, 1 rank, no comm): {heat_step * 1e3:.2f} ms; "
        + (f"per wave step: {wave_step * 1e3:.2f} ms; " if wave_step else "")
        + "per "
        f"Poisson CG iteration: {pois_it * 1e3:.2f} ms. Block-Jacobi iterations to 1e-12 with "
        f"k x k blocks: {a_it:.1f} + {c_it:.1f} k (fitted to the counts above for k >= 2; "
        f"k = sqrt(P)). One block needs {it_one:g}: the preconditioner is then nearly the inverse.",
        "",
        f"Two-level (block-Jacobi plus the bilinear coarse space on block corners): the model "
        f"takes the largest count measured for k >= 2 ({it_two_level:g}) as the count at every "
        "P (the counts level off: 164, 199, 205 at k = 2, 3, 4 above, and 54, 64, 65 with 32-cell "
        "blocks). "
        "Its extra costs: per iteration, the dot-product allreduce also carries the P coarse "
        "residuals (8 (P + 2) bytes, so it is checked separately); per solve, the coarse "
        f"matrix is assembled by one dense allreduce of 8 P^2 bytes and factored (P^3 / 3 "
        f"flops at {CHOLESKY_FLOPS / 1e9:g} GFLOP/s, on every rank). Both grow with P: the "
        "dense assembly and factorisation are the next thing to replace (sparse, or a "
        "coarse solve on a subset of ranks).",
        "",
    ]
    multigrid = multigrid_model(mg1, mg_one, mg_most, v_cycles)
    if multigrid:
        lines += [multigrid.description, ""]
    lines += [
        "| app | checks | link latency | " + " | ".join(f"{p} ranks" for p in RANKS) + " |",
        "|---|---|---:|" + "---:|" * len(RANKS),
    ]
    for check in (True, False):
        for latency in LATENCIES_US:
            alpha_h, alpha_r = a_halo + latency * 1e-6, a_ar + latency * 1e-6
            beta = min(b_halo, LINK_BYTES_PER_S)
            heat, wave, pois, two_level, mg = [], [], [], [], []
            for p in RANKS:
                halo = alpha_h + 4 * edge / beta  # its check deferred: posting is in alpha_h
                heat.append(heat_step / (heat_step + 2 * halo))
                if wave_step:
                    wave.append(wave_step / (wave_step + 2 * halo))
                # two scalars (each rides inside its check); the first also completes
                # the iteration's deferred halo checks
                allreduce = 2 * math.log2(p) * alpha_r + check_cost(p, alpha_r, beta, check)
                it1, itp = it_one, a_it + c_it * math.sqrt(p)
                pois.append(it1 * pois_it / (itp * (pois_it + halo + allreduce)))
                coarse_bytes = 8 * (p + 2)
                allreduce_2l = (
                    2 * math.log2(p) * alpha_r
                    + 2 * coarse_bytes / beta
                    + check_cost(p, alpha_r, beta, check)
                )
                per_solve = (
                    2 * math.log2(p) * alpha_r + 2 * 8 * p * p / beta + p**3 / 3 / CHOLESKY_FLOPS
                )
                solve_2l = it_two_level * (pois_it + halo + allreduce_2l) + per_solve
                two_level.append(it1 * pois_it / solve_2l)
                if multigrid:
                    mg.append(multigrid(p, alpha_h, alpha_r, beta, check, halo + allreduce))
            on = "on" if check else "off"
            lines.append(
                f"| heat | {on} | {latency} us | " + " | ".join(f"{e:.0%}" for e in heat) + " |"
            )
            if wave:
                lines.append(
                    f"| wave | {on} | {latency} us | " + " | ".join(f"{e:.0%}" for e in wave) + " |"
                )
            lines.append(
                f"| poisson | {on} | {latency} us | " + " | ".join(f"{e:.1%}" for e in pois) + " |"
            )
            lines.append(
                f"| poisson, two-level | {on} | {latency} us | "
                + " | ".join(f"{e:.1%}" for e in two_level)
                + " |"
            )
            if mg:
                lines.append(
                    f"| poisson, multigrid | {on} | {latency} us | "
                    + " | ".join(f"{e:.0%}" for e in mg)
                    + " |"
                )
    return lines


def multigrid_model(mg1, it_one, it_most, v_cycles):
    """Predicted weak-scaling efficiency of Poisson with the multigrid
    preconditioner, as a function (P, link) -> efficiency, or None without the
    1-rank no-comm run. Per CG iteration: CG's own halo exchange and two
    scalar allreduces (`cg_comm`), and per V-cycle, on each level that
    smooths, the halo exchanges the run recorded (2 on levels that smooth on
    rings: b 3 wide and the coarse correction 2 wide; 6 on the smaller ones),
    the gather of one coarse cell per rank (one allreduce of 8 P bytes), and
    the gathered grid's V-cycle on every rank: measured (`v_cycles`, seconds
    by P; benchmarks/scaling.py --mode vcycle), else estimated from its
    levels' op launches and the arithmetic of P more cells. Per solve
    (amortised over its iterations): the faces on rings, four exchanges per
    level that smooths on rings."""
    if mg1 is None or "multigrid_levels" not in mg1:
        return None
    t_it = mg1["forward_gradient_s"] / (2 * mg1["iterations"])  # forward + adjoint solve
    levels = mg1["multigrid_levels"]
    counts = mg1.get("multigrid_exchanges") or [6] * (len(levels) - 1) + [0]
    block_cells = levels[0][0] * levels[0][1]
    cells_last = levels[-1][0] * levels[-1][1]
    t_cell = t_it / block_cells

    def gathered_v_cycle(p):
        if p in v_cycles:
            return v_cycles[p]
        # halving both axes quarters the cells, down to at most 64 (dense)
        gathered_levels = math.ceil(math.log(max(p * cells_last / 64, 1), 4)) + 1
        return gathered_levels * TINY_LEVEL_S + p * cells_last * t_cell

    def efficiency(p, alpha_h, alpha_r, beta, check, cg_comm):
        exchanges = per_solve = 0.0
        for (rows, cols), count in zip(levels, counts):
            edge_bytes = 8 * 2 * (rows + cols)
            exchanges += count * alpha_h  # their checks deferred (see check_cost)
            # on rings: b 3 cells wide, the correction 2 wide on a half-size edge
            exchanges += (4 if count == 2 else count) * edge_bytes / beta
            if count == 2:
                per_solve += 4 * (alpha_h + 3 * edge_bytes / beta)
        gathered_bytes = 8 * p * cells_last
        gather = math.log2(p) * alpha_r + 2 * gathered_bytes / beta
        if gathered_bytes > CHECK_PACKET_BYTES - 64:
            gather += check_cost(p, alpha_r, beta, check)
        per_iteration = t_it + cg_comm + exchanges + gather + gathered_v_cycle(p)
        per_iteration += per_solve / it_most
        return it_one * t_it / (it_most * per_iteration)

    measured = ", ".join(f"{v * 1e3:.2f} ms at P = {p}" for p, v in sorted(v_cycles.items()))
    efficiency.description = (
        f"Multigrid (geometric V-cycle; levels per block {' > '.join(str(r) for r, _ in levels)}, "
        "each axis halved, rounded up; then one cell per rank gathered on every rank and "
        f"coarsened there): compute per CG iteration {t_it * 1e3:.2f} ms (1 rank, no comm, "
        f"fwd+grad). The model takes {it_one:g} iterations on 1 rank and the largest count "
        f"measured on k x k blocks ({it_most:g}) at every P. Per iteration it adds CG's halo "
        "exchange and two scalar allreduces; per V-cycle the halo exchanges of every level "
        f"(recorded by the run: {', '.join(str(c) for c in counts if c)}; their checks "
        "deferred), the gather (8 P bytes, checked when over 256), and the gathered grid's "
        f"V-cycle on every rank ({measured or 'estimated'}, measured on one rank: "
        "benchmarks/scaling.py --mode vcycle); per solve, spread over its iterations, "
        "four exchanges per level that smooths on rings (their faces)."
    )
    return efficiency


def reduction_steps(ranks):
    """Latencies on the critical path of one small reduction (allreduce,
    bcast, the checks' packet) over `ranks`: recursive doubling, as model()
    charges it (log2 P, rounded up: a non-power of two adds a step)."""
    return math.ceil(math.log2(ranks)) if ranks > 1 else 0


def latency_events(app, count, halo_check, exchanges=None, ranks=2):
    """Latency-bound events on the critical path of one forward and one
    forward+gradient on `ranks` ranks, by model()'s rules: a halo exchange is
    one event whatever P (all neighbours at once; its check is deferred,
    posted with the exchange), or two with the blocking halo check of builds
    before 51cec46 (`halo_check` "blocking": the check's reduction, then the
    exchange); a small collective (at most 256 bytes: it rides in the check
    packet) is one reduction, reduction_steps(P) events.
    Heat, per step: one halo exchange forward, its adjoint backward; per
    evaluation: the parameters' bcast and the loss's mpi_sum, and their
    adjoints. Poisson, per CG iteration: one halo exchange and two dot-product
    allreduces, plus the first preconditioned residual's allreduce per solve;
    the gradient solves once more and exchanges u's halo once. With multigrid
    (`exchanges`: the run's halo exchanges per V-cycle and level), each
    application of it adds those exchanges and the coarse gather (16 bytes:
    one reduction), once per iteration and once for the first residual; each
    solve prepares the levels first: the faces on rings (four exchanges per
    level on rings), each coarser level's kappa halo and the gather of kappa.
    With 2 ranks a reduction is one event (the counts of the 2-host checks)."""
    halo = 2 if halo_check == "blocking" else 1
    reduction = reduction_steps(ranks)
    if app in ("heat", "wave"):  # wave: c's broadcast and the misfit's sum, as heat's
        forward = count * halo + 2 * reduction
        return forward, 2 * forward
    solve = count * (halo + 2 * reduction) + reduction
    if exchanges:
        cycle = sum(exchanges) + reduction
        prepare = 4 * exchanges.count(2) + (len(exchanges) - 2) + reduction
        solve += (count + 1) * cycle + prepare
    forward = solve + 2 * reduction
    return forward, 2 * solve + halo + 4 * reduction


# MPI calls (tools/mpi_count.c) that are one small reduction each
REDUCTIONS = ("allreduce", "allreduce_c", "iallreduce", "reduce", "bcast", "allgather", "barrier")


def latency_events_from_calls(calls, ranks):
    """Latency events of a run whose messages PETSc decides (the sparse
    solve), from its counted MPI calls (the busiest rank's): each small
    reduction reduction_steps(P) events, each neighbour exchange one. PETSc
    exchanges through persistent requests, started in two sets (receives,
    then sends): an exchange is two MPI_Startall calls; each of the ops' own
    point-to-point messages is one."""
    reductions = sum(calls.get(name, 0) for name in REDUCTIONS)
    exchanges = calls.get("startall", 0) / 2 + calls.get("isend", 0)
    return reductions * reduction_steps(ranks) + exchanges, reductions, exchanges


def measured_vs_predicted(rows):
    """P hosts x 1 rank over shaped links, every latency in one job, round by
    round (benchmarks/scaling.py --link-delays-us): the extra time over the
    first delay (median of per-round differences, [min..max]) against the
    latency events times the link's extra half round trip, as MPI measured
    it in the same rounds. The sparse solve's events come from its counted
    MPI calls (PETSc decides them), the others' from latency_events."""
    lines = []
    for r in rows:  # runs from before 51cec46 recorded no halo_check
        r.setdefault("halo_check", "blocking")
    linked = [r for r in rows if "link" in r]
    key = lambda r: (r["app"], r.get("ranks", 2), r.get("preconditioner", ""), r["halo_check"])  # noqa: E731
    for r in sorted(linked, key=key):
        ranks = r.get("ranks", 2)
        halo_check = r["halo_check"]
        if r["app"] == "sparse":
            if "mpi_calls" not in r:
                continue  # run without tools/mpi_count.c: nothing to predict from
            counted = {
                name: latency_events_from_calls(r["mpi_calls"][name], ranks)
                for name in ("forward", "forward_gradient")
            }
            events = tuple(round(counted[name][0]) for name in ("forward", "forward_gradient"))
            what = (
                f"{r['block'][0]} rows per rank, {r['solver']} to rtol {r['rtol']:g}, "
                f"checks {'on' if r['check'] else 'off'}"
                f"{', ' + r['build'] if 'build' in r else ''}"
            )
            how = "; ".join(
                f"{name.replace('_', '+')}: {reductions:g} reductions x "
                f"{reduction_steps(ranks)} + {exchanges:g} neighbour exchanges"
                for name, (_, reductions, exchanges) in counted.items()
            )
            source = f" (from the MPI calls counted on the busiest rank: {how})"
        else:
            stepped = r["app"] in ("heat", "wave")
            count = r["steps"] if stepped else r["iterations"]
            events = latency_events(
                r["app"], count, halo_check, r.get("multigrid_exchanges"), ranks
            )
            unit = "steps" if stepped else "CG iterations (per solve)"
            what = (
                f"{r['block'][0]}x{r['block'][1]} blocks, {count} {unit}, checks "
                f"{'on' if r['check'] else 'off'} (halo check {halo_check}"
                f"{', ' + r['build'] if 'build' in r else ''})"
            )
            source = ""
        lines += [
            f"### Injected latency, measured vs predicted: {r['app']}"
            f"{', ' + r['preconditioner'] if r.get('preconditioner') == 'multigrid' else ''}, "
            f"{ranks} hosts x 1 rank, {what}, {r['rounds']} interleaved rounds",
            "",
            f"Latency events: {events[0]} per forward, {events[1]} per forward+gradient{source}.",
            "",
            "| link delay | MPI half round trip (extra) | fwd extra measured | fwd predicted | "
            "fwd+grad extra measured | fwd+grad predicted | measured / predicted (fwd+grad) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for link in r["link"][1:]:
            latency = link["extra_half_round_trip_us"] * 1e-6
            cells = [f"{link['delay_us']:g} us", f"{link['half_round_trip_us']:.0f} us "
                     f"(+{latency * 1e6:.0f} us)"]  # fmt: skip
            for name, n in zip(("forward", "forward_gradient"), events):
                lo, hi = link[f"extra_{name}_spread"]
                cells += [
                    f"{link['extra_' + name] * 1e3:.1f} ms [{lo * 1e3:.1f}..{hi * 1e3:.1f}]",
                    f"{n * latency * 1e3:.1f} ms",
                ]
            cells.append(f"{link['extra_forward_gradient'] / (events[1] * latency):.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, mode in zip(axes, ["weak", "strong"]):
        for app, style in (
            ("heat", "o"),
            ("wave", "v"),
            ("poisson", "s"),
            ("poisson, multigrid", "^"),
        ):
            for no_comm, dash in ((False, "-"), (True, "--")):
                pts = sorted(
                    (r["ranks"], r["forward_gradient_s"], r["forward_gradient_spread"])
                    for r in rows
                    if r["label"] == app and r["mode"] == mode and r["no_comm"] == no_comm
                )
                if not pts:
                    continue
                p, t, spread = zip(*pts)
                err = [
                    [ti - s[0] for ti, s in zip(t, spread)],
                    [s[1] - ti for ti, s in zip(t, spread)],
                ]
                label = f"{app}{' (no comm)' if no_comm else ''}"
                ax.errorbar(p, t, yerr=err, fmt=style + dash, capsize=3, label=label)
        ax.set_xlabel("ranks")
        ax.set_ylabel("forward + gradient time [s]")
        ax.set_title(f"{mode} scaling (median, min..max)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    folder, ops_json, out_md, out_png = sys.argv[1:5]
    rows = load(folder)
    counted = [r for r in rows if "iterations_to_tol" in r]
    blocks = sorted({r["block"][0] for r in counted}, reverse=True)

    def counts_for(preconditioner, block=300):
        return sorted(
            (r["blocks_per_side"], r["iterations_to_tol"])
            for r in counted
            if r.get("preconditioner", "block-jacobi") == preconditioner and r["block"][0] == block
        )

    counts, counts_two_level = counts_for("block-jacobi"), counts_for("two-level")
    counts_multigrid = dict(counts_for("multigrid"))
    linked = [r for r in rows if "link" in r]
    v_cycles = {r["block"] ** 2: r["v_cycle_s"] for r in rows if r.get("mode") == "vcycle"}
    rows = [
        r
        for r in rows
        if "iterations_to_tol" not in r and "link" not in r and r.get("mode") != "vcycle"
    ]
    for r in rows:  # block-Jacobi is Poisson's default; other preconditioners are named
        pc = r.get("preconditioner", "block-jacobi")
        r["label"] = r["app"] if pc == "block-jacobi" else f"{r['app']}, {pc}"
    with_xla = [r for r in rows if r.get("xla")]
    rows = [r for r in rows if not r.get("xla")]
    several = [(k, n) for k, n in counts if k >= 2]  # one block is solved exactly: its own case
    if len(several) >= 2:
        k, its = np.array(several, float).T
        c, a = np.polyfit(k, its, 1)
        iterations = (a, c, dict(counts).get(1, float("nan")))
    else:
        iterations = (float("nan"),) * 3
    plateau = [n for k, n in counts_two_level if k >= 2]
    iterations += (max(plateau) if plateau else float("nan"),)
    iterations += (
        counts_multigrid.get(1, float("nan")),
        max(counts_multigrid.values(), default=float("nan")),
    )
    lines = ["# Scaling", "", __doc__.split("\n\n", 2)[2].strip(), ""]
    for app in ("heat", "wave", "poisson", "poisson, multigrid"):
        for mode in ("weak", "strong"):
            lines += efficiency_table(rows, app, mode) + [""]
    for block in blocks:
        found = [dict(counts_for(pc, block)) for pc in ("block-jacobi", "two-level", "multigrid")]
        lines += (
            [
                "### Poisson: CG iterations to 1e-12 with k x k blocks of "
                f"{block} cells per side (weak scaling)",
                "",
                "| k | block-Jacobi | two-level | multigrid |",
                "|---:|---:|---:|---:|",
            ]
            + [
                "| " + " | ".join([str(k)] + [str(c.get(k, "-")) for c in found]) + " |"
                for k in sorted(set().union(*found))
            ]
            + [""]
        )
    lines += xla_table(rows, with_xla)
    lines += model(rows, ops_json, iterations, v_cycles) + [""] + measured_vs_predicted(linked)
    with open(out_md, "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(rows, out_png)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
