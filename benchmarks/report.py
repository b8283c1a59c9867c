"""Turn benchmarks/results/*.json into RESULTS.md (tables, targets) and a plot."""

import json
import os

import numpy as np
import platform
import sys

results, md_path, png_path = sys.argv[1], sys.argv[2], sys.argv[3]


def load(name):
    with open(os.path.join(results, name)) as f:
        return json.load(f)


check, nocheck = load("ops_check.json"), load("ops_nocheck.json")
apps = {1: load("apps1.json"), 2: load("apps2.json")}
# the same runs with XLA auto-clustering (run.sh sets TF_XLA_FLAGS for them)
apps_xla = {
    n: load(f"apps{n}_xla.json")
    for n in apps
    if os.path.exists(os.path.join(results, f"apps{n}_xla.json"))
}
key = lambda r: (r["op"], r["bytes"])  # noqa: E731
fast = {key(r): r for r in nocheck["rows"]}
# Optional: the same script run on an earlier build, for a before/after column
# (benchmarks/results/ops_before.json; meta "build" says which).
before_path = os.path.join(results, "ops_before.json")
before = load("ops_before.json") if os.path.exists(before_path) else None
old = {key(r): r for r in before["rows"]} if before else {}


def us(t):
    return f"{t * 1e6:.1f}"


def spread(r, key, digits=2):
    """r[key], a [median, min, max], as "median [min..max]"; "-" if absent."""
    if r.get(key) is None:
        return "-"
    med, lo, hi = r[key]
    return f"{med:.{digits}f} [{lo:.{digits}f}..{hi:.{digits}f}]"


def runs_named(prefix):
    """The result files whose names start with `prefix`, sorted."""
    return sorted(name for name in os.listdir(results) if name.startswith(prefix))


def section(title, paragraphs, columns):
    """A report section's lines: its title, its paragraphs, and a table's
    header for `columns` (the first left-aligned, the others right)."""
    lines = ["", f"## {title}", ""]
    for paragraph in paragraphs:
        lines += [paragraph, ""]
    return lines + ["| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]


lines = [
    "# Benchmarks",
    "",
    f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
    f"(the 2-core CI/developer machine); {check['meta']['mpi']}; TensorFlow {check['meta']['tf']}; "
    f"{check['meta']['ranks']} ranks, shared memory.",
    "",
    "Command: `bash benchmarks/run.sh` (runs `mpiexec -n 2 python benchmarks/bench_ops.py` with "
    "and without `ADCME_MPI_CHECK=0`, `benchmarks/bench_collectives.py`, "
    "`benchmarks/bench_apps.py` on 1 and 2 ranks with and "
    "without XLA auto-clustering, `benchmarks/bench_xla.py` for heat, Poisson and FEM, and "
    "`benchmarks/inline_threshold.c` on 2 and 4 ranks; mpi4jax's columns need "
    "`bash benchmarks/install_mpi4jax.sh` first).",
    "",
    f"Per-op time of many back-to-back ops in one graph (slowest rank). The implementations "
    f"of a row are interleaved: each of {check['meta'].get('rounds', '?')} rounds times every one "
    "of them once. Times are medians over rounds; a ratio is the median of the per-round "
    "ratios, with [min..max] over rounds. "
    "*adcme* = our op in a `tf.compat.v1.Session` graph (default: metadata check on); "
    "*nocheck* = the same with `ADCME_MPI_CHECK=0` (a separate run); *mpi4py* = the same MPI "
    "call on NumPy buffers; *np_fn* = `tf.numpy_function` wrapping mpi4py in the same graph; "
    "*fwd+bwd* = graph with the op and its gradient. sendrecv = rank 0 sends, rank 1 receives. "
    "halo = 1x2 rank grid, square float64 blocks of the given size, width 1; its mpi4py "
    "reference copies the block into a padded array and exchanges subarray types.",
    "",
    *(
        [
            f"*before* = adcme/mpi4py of the same script on {before['meta'].get('build', 'an earlier build')}, "
            "kept in `results/ops_before.json` (run.sh does not remake it).",
            "",
        ]
        if before
        else []
    ),
    "*mpi4jax* = the same op chained inside one `jax.jit` (mpi4jax, same libmpi; "
    "`bash benchmarks/install_mpi4jax.sh`); it has no halo op, so its halo column pads and "
    "exchanges the shared edge with `mpi4jax.sendrecv`, as its shallow-water example does.",
    "",
    "| op | bytes | mpi4py us | adcme us | adcme/mpi4py | mpi4jax/mpi4py | nocheck/mpi4py | adcme/np_fn | fwd+bwd/fwd |"
    + (" before: adcme/mpi4py |" if before else ""),
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if before else ""),
]
for r in check["rows"]:
    f = fast.get(key(r), {})
    lines.append(
        f"| {r['op']} | {r['bytes']} | {us(r['mpi4py'])} | {us(r['adcme'])} | "
        f"{spread(r, 'adcme/mpi4py')} | {spread(r, 'mpi4jax/mpi4py')} | {spread(f, 'adcme/mpi4py')} | "
        f"{spread(r, 'adcme/numpy_function')} | {spread(r, 'adcme_fwd_bwd/adcme')} |"
        + (f" {spread(old.get(key(r), {}), 'adcme/mpi4py')} |" if before else "")
    )

lines += [
    "",
    "Which ops reuse their input's buffer, what TF's and glibc's allocator settings change "
    "at 1-8 MiB, and why the mpi4py column is hard to match there: `LARGE_BUFFERS.md`.",
]


def breakdown_rows():
    """Where an op's time goes (microseconds): MPI (the mpi4py column: the same
    call on NumPy buffers), the cross-rank check, the copy (the halo
    exchange's block into its padded output: the plain-copy floor timed in
    the same rounds; the other ops copy nothing, MPI writes their output as
    it writes mpi4py's), and the rest: TF's dispatch, the output's
    allocation and the kernel's own work (what is left). The check is the
    difference of the two runs' ratios to their own mpi4py rounds, times
    this run's mpi4py time: the runs are separate, and a difference of raw
    times would carry the drift between them."""
    out = []
    for r in check["rows"]:
        f = fast.get(key(r))
        if f is None:
            continue
        total, mpi = r["adcme"], r["mpi4py"]
        checking = (r["adcme/mpi4py"][0] - f["adcme/mpi4py"][0]) * mpi
        halo = r["op"] == "halo"
        # the halo's mpi4py reference copies too, and exchanges through subarray
        # types (a different MPI path): its exchange is not ours to subtract
        copying = r.get("copy", 0.0)
        rest = total - checking - copying - (0.0 if halo else mpi)
        jax_us = us(mpi * r["mpi4jax/mpi4py"][0]) if "mpi4jax/mpi4py" in r else "-"
        out.append(
            f"| {r['op']} | {r['bytes']} | {us(total)} | {'-' if halo else us(mpi)} | "
            f"{us(checking)} | {us(copying) if halo else '0'} | {us(rest)} | {jax_us} |"
        )
    return out


lines += [
    "",
    "## Where the time goes",
    "",
    "Per op, in microseconds: *MPI* = the mpi4py column (the same MPI call on NumPy "
    "buffers); *check* = (adcme/mpi4py of this run - adcme/mpi4py of the "
    "`ADCME_MPI_CHECK=0` run) x this run's mpi4py time: the runs are separate, so "
    "their noise (a few tenths of a microsecond at small sizes, more at 1-8 MiB, "
    "sometimes negative) is in this column; *copy* = the halo exchange's block copied "
    "into its padded output, timed as a plain copy of the same bytes in the same "
    "rounds (the other ops copy nothing: MPI writes their output); *the rest* = what "
    "is left: TF's dispatch of the op, its output's allocation and the kernel's own "
    "bookkeeping, and for the halo exchange its MPI exchange too (its mpi4py reference "
    "exchanges through subarray types, another MPI path, so it is no measure of "
    "ours). *mpi4jax* = its time per op in the same rounds.",
    "",
    "| op | bytes | adcme | MPI | check | copy | the rest | mpi4jax |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
    *breakdown_rows(),
    "",
    "The halo exchange against its floor, a plain copy of the block's bytes timed in "
    "the same rounds (`adcme/copy`, median of per-round ratios [min..max]):",
    "",
    "| bytes | copy us | adcme us | adcme/copy | mpi4py (subarray types)/copy |",
    "|---:|---:|---:|---:|---:|",
]
for r in check["rows"]:
    if r["op"] == "halo" and "copy" in r:
        lines.append(
            f"| {r['bytes']} | {us(r['copy'])} | {us(r['adcme'])} | {spread(r, 'adcme/copy')} | "
            f"{r['mpi4py'] / r['copy']:.2f} |"
        )

# The collectives added since bench_ops.py: benchmarks/bench_collectives.py's run, if present.
if os.path.exists(os.path.join(results, "ops_new_collectives.json")):
    new = load("ops_new_collectives.json")
    meta = new["meta"]
    loads = " and ".join(
        f"{', '.join(f'{x:.1f}' for x in meta[k])} {when}"
        for k, when in (("load_before", "before"), ("load_after", "after"))
    )
    lines += section(
        "The new collectives against mpi4py and mpi4jax",
        [
            "`mpiexec -n 2 python benchmarks/bench_collectives.py --rounds 15 --out "
            "benchmarks/results/ops_new_collectives.json` (bench_ops.py's method and runners: "
            f"{meta['rounds']} interleaved rounds, medians of per-round ratios [min..max]; "
            f"{meta['ranks']} ranks, metadata check on). Versions: "
            + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
            + ".",
            "Every column of a row makes the same MPI call on equal pieces: allgather = MPI_Allgather "
            "(ours exchanges the lengths first, then MPI_Iallgatherv: they may differ), "
            "reduce_scatter = MPI_Reduce_scatter (sum; mpi4jax has none: n/a), alltoall = "
            "MPI_Alltoall, scan = MPI_Scan (sum), exchange = MPI_Sendrecv on a ring (rank + 1, "
            "rank - 1: on 2 ranks the other rank), allreduce_*/sum_* = MPI_Allreduce / "
            "MPI_Reduce to rank 0 with MAX, MIN, PROD, or SUM then times 1/size (mean). A "
            "row's bytes are each rank's input (float64; reduce_scatter and alltoall need an "
            "element per rank: 16 B at the smallest). *fwd+bwd/fwd* = ours with its gradient "
            "over ours alone.",
            # a 1-minute load average under 1 before the run: nothing else was running
            # (the load after counts the run's own 2 polling ranks)
            f"Nothing else ran on the 2 cores (load averages over 1, 5 and 15 minutes: "
            f"{loads} the run; the run's own 2 ranks poll, so they count in the load after "
            "it)."
            if meta["load_before"][0] < 1.0
            else f"**Indicative only**: the 2 cores were shared with other jobs (load averages "
            f"over 1, 5 and 15 minutes: {loads} the run), so the 2 ranks, which poll while "
            "they wait, waited for time slices: the per-round ratios cancel part of that, the "
            "spreads show the rest. At 8 B and 8 KiB an op took milliseconds instead of "
            "microseconds and the ratios there say little; at 1 and 8 MiB they are steadier.",
        ],
        [
            "op",
            "bytes",
            "mpi4py us",
            "adcme us",
            "adcme/mpi4py",
            "adcme/mpi4jax",
            "mpi4jax/mpi4py",
            "fwd+bwd/fwd",
        ],
    )
    for r in new["rows"]:
        peer = "n/a" if r["op"] == "reduce_scatter" else None  # (mpi4jax has no such op)
        lines.append(
            f"| {r['op']} | {r['bytes']} | {us(r['mpi4py'])} | {us(r['adcme'])} | "
            f"{spread(r, 'adcme/mpi4py')} | {peer or spread(r, 'adcme/mpi4jax')} | "
            f"{peer or spread(r, 'mpi4jax/mpi4py')} | {spread(r, 'adcme_fwd_bwd/adcme')} |"
        )
    lines += [
        "",
        "allgather against mpi4py doing its MPI work (MPI_Allgather of the lengths, then "
        "MPI_Allgatherv): "
        + "; ".join(
            f"{r['bytes']} B {spread(r, 'adcme/mpi4py_lengths')}"
            for r in new["rows"]
            if "adcme/mpi4py_lengths" in r
        )
        + ".",
    ]

# The inline threshold: benchmarks/inline_threshold.c's runs, if present.
inline_runs = runs_named("inline_threshold_")
if inline_runs:
    lines += section(
        "The check's inline threshold",
        [
            "`benchmarks/inline_threshold.c` (MPI alone, no TF): a collective of s bytes "
            "inside the check's reduction (one packet of 64 + s bytes, a user-defined op) "
            "against the check alone (64 bytes) followed by the data's own `MPI_Allreduce` "
            "or `MPI_Bcast`; and what a packet sized for s bytes costs a check that carries "
            "no data (every larger collective's and every halo exchange's check pays it). "
            "Medians of per-round ratios [min..max].",
            "The 4-rank run is oversubscribed (4 ranks, 2 cores): every message step waits "
            "for a time slice, so its times are the scheduler's, not latencies.",
        ],
        [
            "ranks",
            "bytes",
            "check alone us",
            "inline sum / separate",
            "inline bcast / separate",
            "padded check / check alone",
        ],
    )
    for name in inline_runs:
        run = load(name)
        for r in run["rows"]:
            lines.append(
                f"| {run['ranks']} | {r['bytes']} | {r['check_alone_us']:.2f} | "
                f"{spread(r, 'inline/separate_sum')} | {spread(r, 'inline/separate_bcast')} | "
                f"{spread(r, 'check_padded/check_alone')} |"
            )

# XLA around the ops, and JAX + mpi4jax on the same code: bench_xla.py.
xla_runs = runs_named("xla_")
if xla_runs:
    lines += section(
        "Heat, Poisson and FEM: TF, XLA and JAX + mpi4jax, in one sitting",
        [
            "`python benchmarks/bench_xla.py --ranks 2 [--problem poisson|fem]`: issue 24's heat "
            "stencil (20 steps) and 20 CG iterations of Poisson's equation on the same grid "
            "(512 x 512 per rank on a 1 x P grid), and 20 CG iterations of a P1 finite-element "
            "problem on a Delaunay mesh split into stripes (`--size 256`: about 32,700 unknowns "
            "a rank); public ops only, differentiated through the steps, one thread. Four "
            "settings: TF as a user writes it (no flags), TF with XLA auto-clustering, the "
            "same TF code in `tf.function(jit_compile=True)` (its first calls, tracing and "
            "compiling both functions, timed apart: *compile s*), and JAX + mpi4jax under "
            "`jax.jit`. The settings alternate job by job; medians of the jobs' medians "
            "[min..max]. Every setting computes the same loss; *gradient error* is relative "
            "to TF's (heat, FEM) or to the exact 2 loss / kappa (Poisson: x is linear in "
            "kappa; mpi4jax's allreduce transposes to the identity, so JAX's Poisson "
            "gradient is off)."
        ],
        [
            "problem",
            "setting",
            "ranks",
            "forward ms",
            "forward + gradient ms",
            "compile s",
            "gradient error",
        ],
    )
    labels = {
        "plain": "TF + adcme_mpi (no flags)",
        "xla": "TF + adcme_mpi, XLA auto-clustering",
        "jit": "TF + adcme_mpi, tf.function(jit_compile=True)",
        "jax_mpi4jax": "JAX + mpi4jax (jax.jit)",
    }
    for name in xla_runs:
        run = load(name)
        errors = run.get("gradient_relative_to_exact", run.get("gradient_relative_to_plain", {}))
        for setting, label in labels.items():
            if f"{setting}_forward_ms" not in run:
                continue
            error = f"{errors[setting]:.1e}" if setting in errors else "-"
            times = [
                spread(run, f"{setting}_{k}", 1) for k in ("forward_ms", "both_ms", "compile_s")
            ]
            lines.append(
                f"| {run.get('problem', 'heat')} | {label} | {run['ranks']} | "
                + " | ".join(times)
                + f" | {error} |"
            )

# The same heat and Poisson with no MPI op: each framework's own floor (tf_floor.py).
floor_runs = runs_named("tf_floor_")
if floor_runs:
    lines += section(
        "Heat and Poisson with no MPI op: TF's and JAX's own floor",
        [
            "`mpiexec -n P python benchmarks/tf_floor.py`: bench_xla's heat and Poisson "
            "problems with `tf.pad` / `jnp.pad` for the halo and no global sums, every rank "
            "alone at once (the race's memory traffic, no message); TF as a user writes it "
            "(v1 graph, tf.gradients, no flags) and JAX under `jax.jit`, one thread each, "
            "timed in turn within each round; medians over rounds [min..max], and the median "
            "of per-round TF/JAX ratios. It is the floor under bench_xla's *no flags* row: "
            "what TensorFlow's executor costs with no adcme_mpi op in the program.",
        ],
        [
            "problem",
            "ranks",
            "TF forward ms",
            "JAX forward ms",
            "TF / JAX forward",
            "TF fwd+grad ms",
            "JAX fwd+grad ms",
            "TF / JAX fwd+grad",
        ],
    )
    for name in floor_runs:
        run = load(name)
        for problem in ("heat", "poisson"):
            cells = [
                spread(run[problem], key, 1 if key.endswith("_ms") else 2)
                for key in (
                    "tf_forward_ms",
                    "jax_forward_ms",
                    "tf_over_jax_forward",
                    "tf_both_ms",
                    "jax_both_ms",
                    "tf_over_jax_both",
                )
            ]
            lines.append(f"| {problem} | {run['ranks']} | " + " | ".join(cells) + " |")

# am.Session() against am.Session(xla=True) on the applications: session_default.py.
session_runs = runs_named("session_default_")
if session_runs:
    lines += section(
        "am.Session's default: auto-clustering or not",
        [
            "`python benchmarks/session_default.py --ranks P --alternations 5`: bench_apps.py's "
            "heat and Poisson inverse problems with `am.Session()` and with "
            "`am.Session(xla=True)`, job by job in turn; medians of the jobs' medians "
            "[min..max]. The rule (issue 32): auto-clustering becomes the default only if it "
            "never loses. It loses in some rows, so `am.Session()` keeps it off and "
            "`am.Session(xla=True)` asks for it.",
        ],
        ["ranks", "row", "time", "am.Session() ms", "am.Session(xla=True) ms", "xla / default"],
    )
    for name in session_runs:
        ranks = name.rsplit("_", 1)[1].split(".")[0]
        for row, times in load(name)["rows"].items():
            for timing, cells in times.items():
                shown = [spread(cells, "default"), spread(cells, "xla")]
                lines.append(
                    f"| {ranks} | {row} | {timing[:-2]} | {shown[0]} | {shown[1]} | {cells['ratio']:.2f} |"
                )

with open(md_path, "w") as f:
    f.write("\n".join(lines) + "\n")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, axes = plt.subplots(1, 5, figsize=(22, 4), sharey=True)
for ax, op in zip(axes, ["bcast", "sum", "allreduce", "sendrecv", "halo"]):
    rows = [r for r in check["rows"] if r["op"] == op]
    b = [r["bytes"] for r in rows]

    def bars(rs, k, style, label, color, ax=ax):
        rs = [r for r in rs if k in r]
        if not rs:
            return
        med = np.array([r[k][0] for r in rs])
        err = np.array([[r[k][0] - r[k][1] for r in rs], [r[k][2] - r[k][0] for r in rs]])
        ax.errorbar(
            [r["bytes"] for r in rs], med, yerr=err, fmt=style, color=color, capsize=3, label=label
        )

    bars(rows, "adcme/mpi4py", "s-", "adcme_mpi op", "C0")
    bars(
        [fast[key(r)] for r in rows if key(r) in fast],
        "adcme/mpi4py",
        "^--",
        "ADCME_MPI_CHECK=0",
        "C1",
    )
    bars(rows, "numpy_function/mpi4py", "x:", "tf.numpy_function + mpi4py", "C2")
    bars(rows, "mpi4jax/mpi4py", "o-.", "mpi4jax in jax.jit", "C3")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(op)
    ax.set_xlabel("message bytes")
axes[0].set_ylabel("time / mpi4py (median, [min..max] over rounds)")
axes[0].legend(fontsize=7)
fig.savefig(png_path, dpi=80, bbox_inches="tight")
print(f"wrote {md_path} and {png_path}")
