"""Should am.Session turn on XLA auto-clustering by default? (issue 32, item 2)

Runs bench_apps.py with am.Session() and with am.Session(xla=True), job by
job in turn (`--alternations` times each; TensorFlow reads its XLA settings
once per process, so each setting is its own job), and prints, per
application row and setting, the median of the jobs' medians with their
[min..max], and the ratio xla / default. The rule the issue sets: the
default changes only if auto-clustering never loses.

    python benchmarks/session_default.py --ranks 2 --alternations 3

Writes benchmarks/results/session_default_<P>.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = {"default": [], "xla": ["--xla"]}
TIMES = ("forward_s", "forward_and_gradient_s")


def one_job(ranks, flags, out):
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    cmd = [mpiexec, "-n", str(ranks), sys.executable, os.path.join(HERE, "bench_apps.py")]
    subprocess.run([*cmd, *flags, "--out", out], check=True, timeout=900, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return {k: v for k, v in json.load(f).items() if "forward_s" in v}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--alternations", type=int, default=3)
    args = parser.parse_args()
    runs = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.alternations):
            for name, flags in SETTINGS.items():
                runs[name].append(one_job(args.ranks, flags, os.path.join(tmp, f"{name}{i}.json")))
    table = {}
    print("| row | time | am.Session() ms | am.Session(xla=True) ms | xla / default |")
    print("|---|---|---:|---:|---:|")
    for row in runs["default"][0]:
        for key in TIMES:
            cells = {}
            for name in SETTINGS:
                ms = np.array([run[row][key] for run in runs[name]]) * 1e3
                cells[name] = (float(np.median(ms)), float(ms.min()), float(ms.max()))
            ratio = cells["xla"][0] / cells["default"][0]
            table.setdefault(row, {})[key] = {**cells, "ratio": ratio}
            shown = [f"{m:.2f} [{lo:.2f}..{hi:.2f}]" for m, lo, hi in cells.values()]
            print(f"| {row} | {key[:-2]} | {shown[0]} | {shown[1]} | {ratio:.2f} |")
    out = os.path.join(HERE, "results", f"session_default_{args.ranks}.json")
    with open(out, "w") as f:
        json.dump({"alternations": args.alternations, "rows": table}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
