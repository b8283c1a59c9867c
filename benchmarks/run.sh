#!/usr/bin/env bash
# Runs every benchmark on 2 ranks (1 and 2 for the applications, with and
# without XLA auto-clustering; the check's inline threshold on 2 and 4) and
# writes benchmarks/results/*.json, benchmarks/RESULTS.md and benchmarks/ops.png.
# mpi4jax's columns need `bash benchmarks/install_mpi4jax.sh` first.
#   bash benchmarks/run.sh            (from the repo, with the venv's python first on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
MPIEXEC=${MPIEXEC:-$(dirname "$(command -v "$PY")")/mpiexec}
out=benchmarks/results
mkdir -p "$out"
timeout 1800 "$MPIEXEC" -n 2 "$PY" benchmarks/bench_ops.py --out "$out/ops_check.json"
ADCME_MPI_CHECK=0 timeout 1800 "$MPIEXEC" -n 2 "$PY" benchmarks/bench_ops.py --out "$out/ops_nocheck.json"
# the halo exchange per op and per session run, against raw-MPI exchanges
timeout 1800 "$MPIEXEC" -n 2 "$PY" benchmarks/halo_floor.py --sizes 8192,262144,1048576,8388608 \
  --out "$out/halo_floor.json"
# the collectives added since bench_ops.py (allgather, reduce_scatter, ...)
timeout 1800 "$MPIEXEC" -n 2 "$PY" benchmarks/bench_collectives.py --rounds 15 \
  --out "$out/ops_new_collectives.json"
for n in 1 2; do
  timeout 900 "$MPIEXEC" -n $n "$PY" benchmarks/bench_apps.py --out "$out/apps$n.json"
  TF_XLA_FLAGS="--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit" \
    timeout 900 "$MPIEXEC" -n $n "$PY" benchmarks/bench_apps.py --out "$out/apps${n}_xla.json"
done
# am.Session() against am.Session(xla=True), job by job in turn (benchmarks/results/session_default_N.json)
for n in 1 2; do
  timeout 1800 "$PY" benchmarks/session_default.py --ranks $n --alternations 5
done
timeout 1200 "$PY" benchmarks/bench_xla.py --ranks 2
timeout 1200 "$PY" benchmarks/bench_xla.py --ranks 2 --problem poisson
timeout 1800 "$PY" benchmarks/bench_xla.py --ranks 2 --problem fem --size 256
# the same heat and Poisson with no MPI op: TensorFlow's and JAX's own floor
timeout 900 "$MPIEXEC" -n 2 "$PY" benchmarks/tf_floor.py --rounds 15
# MPI alone: the cross-rank check with and without a collective's data inside
threshold=$(mktemp -d)/inline_threshold
"$(dirname "$MPIEXEC")/mpicc" -O2 -o "$threshold" benchmarks/inline_threshold.c
timeout 600 "$MPIEXEC" -n 2 "$threshold" 21 >"$out/inline_threshold_2.json"
# 4 ranks on a 2-core machine wait for time slices: fewer repetitions
timeout 900 "$MPIEXEC" -n 4 "$threshold" 7 100 >"$out/inline_threshold_4.json"
"$PY" benchmarks/report.py "$out" benchmarks/RESULTS.md benchmarks/ops.png
