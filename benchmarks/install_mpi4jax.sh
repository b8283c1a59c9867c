#!/usr/bin/env bash
# Installs the optional benchmark peer mpi4jax (and jax) into the active
# Python environment, built against the same libmpi as adcme_mpi: it uses
# this environment's mpicc and mpi4py, so install adcme_mpi first.
#   bash benchmarks/install_mpi4jax.sh
# mpi4jax builds only with mpi4py and nanobind already present
# (--no-build-isolation). It also builds a CUDA bridge whenever nvcc is on
# PATH, which fails on machines whose CUDA toolkit lacks the runtime headers;
# the benchmarks run on CPU, so the build sees a PATH without nvcc.
set -euo pipefail
PY=${PYTHON:-python}
"$PY" -m pip install jax nanobind
bin=$(dirname "$(command -v "$PY")")
PATH="$bin:/usr/bin:/bin" "$PY" -m pip install --no-build-isolation mpi4jax
"$PY" -c "import mpi4jax, jax; print('mpi4jax', mpi4jax.__version__, 'jax', jax.__version__)"
