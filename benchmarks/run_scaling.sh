#!/usr/bin/env bash
# Scaling measurements this machine allows (2 cores: 1 and 2 ranks on cores),
# Poisson iteration counts (1-16 blocks of 300 cells and of 32 cells;
# block-Jacobi and two-level), 2 hosts with injected link latency (root
# only), then tables, plot, model and the model against the injected latency:
#   bash benchmarks/run_scaling.sh     (from the repo, with the venv's python first on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
MPIEXEC=${MPIEXEC:-$(dirname "$(command -v "$PY")")/mpiexec}
out=benchmarks/results/scaling
mkdir -p "$out"
run() { timeout 900 "$MPIEXEC" "$@"; }
for app in heat wave poisson; do
  for p in 1 2; do
    for mode in weak strong; do
      run -n $p "$PY" benchmarks/scaling.py --app $app --mode $mode --out "$out/${app}_${mode}_$p.json"
      run -n $p "$PY" benchmarks/scaling.py --app $app --mode $mode --no-comm \
        --out "$out/${app}_${mode}_${p}_nocomm.json"
    done
  done
done
# heat and Poisson (weak) with XLA auto-clustering, beside the runs above
for app in heat poisson; do
  for p in 1 2; do
    TF_XLA_FLAGS="--tf_xla_auto_jit=2 --tf_xla_cpu_global_jit" run -n $p "$PY" \
      benchmarks/scaling.py --app $app --mode weak --out "$out/${app}_weak_${p}_xla.json"
  done
done
# Poisson with multigrid: the same at 1 and 2 ranks (without communication on 1
# rank only: its coarse grid is gathered by an allreduce)
for p in 1 2; do
  for mode in weak strong; do
    run -n $p "$PY" benchmarks/scaling.py --app poisson --preconditioner multigrid --mode $mode \
      --out "$out/poisson_multigrid_${mode}_$p.json"
  done
done
for mode in weak strong; do
  run -n 1 "$PY" benchmarks/scaling.py --app poisson --preconditioner multigrid --mode $mode \
    --no-comm --out "$out/poisson_multigrid_${mode}_1_nocomm.json"
done
# the gathered coarse grid's V-cycle that every rank runs at 64, 1,024 and 4,096 ranks
for k in 8 32 64; do
  run -n 1 "$PY" benchmarks/scaling.py --app poisson --mode vcycle --block $k --rounds 21 \
    --out "$out/poisson_multigrid_vcycle_k$k.json"
done
for k in 1 2 3 4; do
  run -n $((k * k)) "$PY" benchmarks/scaling.py --app poisson --mode iterations --block 300 \
    --out "$out/poisson_iterations_k$k.json"
  run -n $((k * k)) "$PY" benchmarks/scaling.py --app poisson --mode iterations --block 300 \
    --preconditioner two-level --out "$out/poisson_iterations_two_level_k$k.json"
  run -n $((k * k)) "$PY" benchmarks/scaling.py --app poisson --mode iterations --block 300 \
    --preconditioner multigrid --out "$out/poisson_iterations_multigrid_k$k.json"
done
# Smaller blocks reach more of them: where the two-level count levels off
for k in 1 2 3 4; do
  for pc in block-jacobi two-level multigrid; do
    run -n $((k * k)) "$PY" benchmarks/scaling.py --app poisson --mode iterations --block 32 \
      --preconditioner $pc --out "$out/poisson_iterations_${pc}_block32_k$k.json"
  done
done
# 2 hosts x 1 rank over TCP through a shaped link (needs root: tools/netns_hosts.py
# makes the hosts and removes them again; skipped otherwise), every latency in
# one job, interleaved round by round
delays=0,1000,3000
for app in heat wave poisson; do
  "$PY" tools/netns_hosts.py run --hosts 2 --per-host 1 --delay-us $delays --rate-gbit 10 -- \
    "$PY" benchmarks/scaling.py --app $app --mode weak --rounds 21 --link-delays-us $delays \
    --out "$out/${app}_weak_2hosts_link.json" || echo "netns run of $app skipped"
done
"$PY" tools/netns_hosts.py run --hosts 2 --per-host 1 --delay-us $delays --rate-gbit 10 -- \
  "$PY" benchmarks/scaling.py --app poisson --preconditioner multigrid --mode weak --rounds 21 \
  --iterations 12 --link-delays-us $delays --out "$out/poisson_multigrid_weak_2hosts_link.json" ||
  echo "netns run of multigrid skipped"
# 4 hosts x 1 rank (2x2 grid): the any-P rule for heat over both MPICH network
# modules, and the sparse solve (over OFI only: UCX's any-source receives hang
# across hosts) with its MPI calls counted by tools/mpi_count.c (preloaded)
counter=$(mktemp -d)/libmpi_count.so
"$(dirname "$(command -v "$PY")")/mpicc" -shared -fPIC -O2 -o "$counter" tools/mpi_count.c
export ADCME_MPI_OVERSUBSCRIBED=1  # 4 ranks on fewer cores: yield, do not spin
for netmod in ofi ucx; do
  MPIR_CVAR_CH4_NETMOD=$netmod "$PY" tools/netns_hosts.py run --hosts 4 --per-host 1 \
    --delay-us $delays --rate-gbit 10 -- env LD_PRELOAD="$counter" "$PY" benchmarks/scaling.py \
    --app heat --mode weak --block 100 --rounds 7 --link-delays-us $delays \
    --out "$out/heat_weak_4hosts_link_$netmod.json" || echo "netns run of heat ($netmod) skipped"
done
MPIR_CVAR_CH4_NETMOD=ofi "$PY" tools/netns_hosts.py run --hosts 4 --per-host 1 \
  --delay-us $delays --rate-gbit 10 -- env LD_PRELOAD="$counter" "$PY" benchmarks/scaling.py \
  --app sparse --mode weak --block 100 --rounds 7 --link-delays-us $delays \
  --out "$out/sparse_weak_4hosts_link_ofi.json" || echo "netns run of sparse skipped"
"$PY" benchmarks/scaling_report.py "$out" benchmarks/results/ops_check.json \
  benchmarks/SCALING.md benchmarks/scaling.png
