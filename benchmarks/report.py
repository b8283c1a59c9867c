"""Turn benchmarks/results/*.json into RESULTS.md (tables, targets) and a plot."""

import json
import os
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


def us(t):
    return f"{t * 1e6:.1f}"


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
    "Per-op time, median of 5 trials of many back-to-back ops in one graph (slowest rank). "
    "*adcme* = our op in a `tf.compat.v1.Session` graph (default: metadata check on); "
    "*nocheck* = the same with `ADCME_MPI_CHECK=0`; *mpi4py* = the same MPI call on NumPy "
    "buffers; *np_fn* = `tf.numpy_function` wrapping mpi4py in the same graph; *fwd+bwd* = "
    "graph with the op and its gradient. sendrecv = rank 0 sends, rank 1 receives. halo = 1x2 "
    "rank grid, square float64 blocks of the given size, width 1.",
    "",
    "| op | bytes | mpi4py us | adcme us | nocheck us | adcme/mpi4py | nocheck/mpi4py | np_fn us | adcme/np_fn | fwd+bwd us |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
]
for r in check["rows"]:
    f = fast.get(key(r), r)
    npf = r.get("numpy_function")
    lines.append(
        f"| {r['op']} | {r['bytes']} | {us(r['mpi4py'])} | {us(r['adcme'])} | {us(f['adcme'])} | "
        f"{r['adcme'] / r['mpi4py']:.2f} | {f['adcme'] / f['mpi4py']:.2f} | "
        f"{us(npf) if npf else '-'} | {(r['adcme'] / npf) if npf else float('nan'):.2f} | "
        f"{us(r['adcme_fwd_bwd'])} |"
    )

lines += [
    "",
    "## Applications",
    "",
    "| run | ranks | grid | forward s | forward+gradient s | steps/s | (fwd+grad - fwd) / fwd |",
    "|---|---:|---|---:|---:|---:|---:|",
]
for n, rows in apps.items():
    for name, r in rows.items():
        lines.append(
            f"| {name} | {n} | {r['N']}x{r['N']} | {r['forward_s']:.4f} | "
            f"{r['forward_and_gradient_s']:.4f} | {r.get('steps_per_s', float('nan')):.0f} | "
            f"{r['gradient_over_forward']:.2f} |"
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
    ax.loglog(b, [r["mpi4py"] * 1e6 for r in rows], "o-", label="mpi4py (NumPy)")
    ax.loglog(b, [r["adcme"] * 1e6 for r in rows], "s-", label="adcme_mpi op")
    ax.loglog(
        b, [fast[key(r)]["adcme"] * 1e6 for r in rows], "^--", label="adcme_mpi, ADCME_MPI_CHECK=0"
    )
    if rows and "numpy_function" in rows[0]:
        ax.loglog(
            b, [r["numpy_function"] * 1e6 for r in rows], "x:", label="tf.numpy_function + mpi4py"
        )
    ax.loglog(b, [r["adcme_fwd_bwd"] * 1e6 for r in rows], "d-.", label="adcme_mpi fwd+bwd")
    ax.set_title(op)
    ax.set_xlabel("message bytes")
axes[0].set_ylabel("time per op (us)")
axes[0].legend(fontsize=7)
fig.savefig(png_path, dpi=80, bbox_inches="tight")
print(f"wrote {md_path} and {png_path}")
