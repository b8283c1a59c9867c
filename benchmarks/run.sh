#!/usr/bin/env bash
# Runs every benchmark on 2 ranks (1 and 2 for the applications) and writes
# benchmarks/results/*.json, benchmarks/RESULTS.md and benchmarks/ops.png.
#   bash benchmarks/run.sh            (from the repo, with the venv's python first on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
MPIEXEC=${MPIEXEC:-$(dirname "$(command -v "$PY")")/mpiexec}
out=benchmarks/results
mkdir -p "$out"
timeout 1800 "$MPIEXEC" -n 2 "$PY" benchmarks/bench_ops.py --out "$out/ops_check.json"
ADCME_MPI_CHECK=0 timeout 1800 "$MPIEXEC" -n 2 "$PY" benchmarks/bench_ops.py --out "$out/ops_nocheck.json"
timeout 900 "$MPIEXEC" -n 1 "$PY" benchmarks/bench_apps.py --out "$out/apps1.json"
timeout 900 "$MPIEXEC" -n 2 "$PY" benchmarks/bench_apps.py --out "$out/apps2.json"
"$PY" benchmarks/report.py "$out" benchmarks/RESULTS.md benchmarks/ops.png
