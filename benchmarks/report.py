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
key = lambda r: (r["op"], r["bytes"])  # noqa: E731
fast = {key(r): r for r in nocheck["rows"]}
# Optional: the same script run on an earlier build, for a before/after column
# (benchmarks/results/ops_before.json; meta "build" says which).
before_path = os.path.join(results, "ops_before.json")
before = load("ops_before.json") if os.path.exists(before_path) else None
old = {key(r): r for r in before["rows"]} if before else {}


def us(t):
    return f"{t * 1e6:.1f}"


def spread(r, key):
    if key not in r:
        return "-"
    med, lo, hi = r[key]
    return f"{med:.2f} [{lo:.2f}..{hi:.2f}]"


lines = [
    "# Benchmarks",
    "",
    f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
    f"(the 2-core CI/developer machine); {check['meta']['mpi']}; TensorFlow {check['meta']['tf']}; "
    f"{check['meta']['ranks']} ranks, shared memory.",
    "",
    "Command: `bash benchmarks/run.sh` (runs `mpiexec -n 2 python benchmarks/bench_ops.py` with "
    "and without `ADCME_MPI_CHECK=0`, and `benchmarks/bench_apps.py` on 1 and 2 ranks).",
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
lines += [
    "",
    "## Applications",
    "",
    "| run | ranks | grid | forward s | forward+gradient s | steps/s | (fwd+grad - fwd) / fwd, median of per-round ratios |",
    "|---|---:|---|---:|---:|---:|---:|",
]
graph_ops = None
for n, rows in apps.items():
    for name, r in rows.items():
        if "N" not in r:  # heat_graph_ops: graph size at 10 and 10,000 steps
            graph_ops = r
            continue
        lines.append(
            f"| {name} | {n} | {r['N']}x{r['N']} | {r['forward_s']:.4f} | "
            f"{r['forward_and_gradient_s']:.4f} | {r.get('steps_per_s', float('nan')):.0f} | "
            f"{r['gradient_over_forward']:.2f} |"
        )
if graph_ops:
    lines += [
        "",
        f"Heat's graph (time loop in `tf.while_loop`): {graph_ops['steps_10']} ops for 10 steps, "
        f"{graph_ops['steps_10000']} ops for 10,000 steps.",
    ]
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
