#!/usr/bin/env bash
# CI's sanitizer stage: the op libraries (sparse and XLA included) built with
# AddressSanitizer and UndefinedBehaviorSanitizer (-DADCME_MPI_SANITIZE=ON,
# CMakeLists.txt) into build-sanitize/, then, with that build first on
# PYTHONPATH:
#   - tests/mpi at 2 ranks: the op families, sparse and XLA (not the
#     composite files: applications, solvers, optimizers, checkpointed loops,
#     second order, data-parallel training, modes; nor ADCME's page's
#     examples, the op table, devices and ordering: see `skip` below);
#   - the launch tests of bad input, abandoned exchanges, the watchdog and
#     mpi_finalize with an op in flight: tests/launch/test_core.py, and of
#     test_errors.py the batched bad-input job (19 cases every rank raises,
#     one mpiexec), the requests never waited on, the ops after
#     mpi_finalize and the watchdog's message (`launch_cases` below; its
#     other cases, each an mpiexec of its own ending in an abort, run in
#     stages 1 and 2 unsanitized: they reach the same argument checks).
# Each part prints its time.
# Every report goes to one log folder; the stage fails on any report, or on a
# failed test. A canary (tools/sanitizer/canary.c) first proves that reports
# reach that folder from this Python with these options.
#
#   bash tools/sanitize.sh [python]     (default: .venv/bin/python)
#
# Python itself is not instrumented, so the ASan runtime is preloaded. Options
# and why:
#   detect_leaks=0  CPython and TensorFlow keep their allocations to the end
#                   on purpose (interned objects, op registries); LeakSanitizer
#                   would report thousands of those, none ours.
#   other checks    all on, no suppressions: tools/sanitizer/*.supp are empty
#                   and the stage fails if a report appears. The one flag
#                   TensorFlow needs is at build time (CMakeLists.txt: the
#                   "null" checks, for its inline Tensor::flat of empty tensors).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py=${1:-.venv/bin/python}
py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"  # absolute; not resolved (a venv's python is a symlink)
bin=$(dirname "$py")
build=$root/build-sanitize
logs=$(mktemp -d /tmp/adcme_mpi_sanitizer.XXXXXX)

part_start=$(date +%s)
part_done() { echo "sanitizer: $1 took $(( $(date +%s) - part_start )) s"; part_start=$(date +%s); }
echo "sanitizer: building the op libraries into $build"
cmake -S . -B "$build" -DADCME_MPI_SANITIZE=ON -DPython_EXECUTABLE="$py" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo > "$logs/cmake.log" 2>&1 || { tail -n 30 "$logs/cmake.log"; exit 1; }
cmake --build "$build" -j 2 >> "$logs/cmake.log" 2>&1 || { tail -n 30 "$logs/cmake.log"; exit 1; }
libs=("$build"/adcme_mpi/libadcme_mpi_*.so)
for lib in "${libs[@]}"; do
  # instrumented, or the stage would prove nothing
  symbols=$(nm -D "$lib")
  grep -q __asan_report_load <<< "$symbols" || { echo "$lib: not built with ASan"; exit 1; }
  grep -q __ubsan_handle_ <<< "$symbols" || { echo "$lib: not built with UBSan"; exit 1; }
done
[ ${#libs[@]} -ge 2 ] || { echo "sanitizer: no sparse library in the build (PETSc not found)"; exit 1; }
echo "sanitizer: instrumented: ${libs[*]##*/}"
part_done "build"

# Where reports go. ASan: files in the log folder (log_path). GCC's UBSan
# runtime is a library of its own beside ASan's and ignores log_path when
# both are loaded (tried: UBSAN_OPTIONS, and setting libubsan's own report
# path from a preloaded shim, which sent ASan's reports to stderr instead).
# So UBSan errors are fatal (-fno-sanitize-recover=undefined, CMakeLists.txt):
# one ends its process, which fails its test, and its "runtime error:" line
# is counted from the output (tests/mpi runs with -s, uncaptured).
# (libstdc++ too: Python is not linked with it, and ASan must find the real
# __cxa_throw at start-up to intercept the exceptions of libraries loaded later)
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so.6)"
export ASAN_OPTIONS="detect_leaks=0:log_path=$logs/asan:suppressions=$root/tools/sanitizer/asan.supp"
export UBSAN_OPTIONS="print_stacktrace=1:suppressions=$root/tools/sanitizer/ubsan.supp"
export PYTHONPATH="$build${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=2

# one line per report: ASan's "ERROR: AddressSanitizer: ...", UBSan's "...: runtime error: ..."
pattern="ERROR: AddressSanitizer|runtime error:"
reports() { cat "$logs"/asan.* "$logs"/*.out 2>/dev/null | grep -c -E "$pattern" || true; }

# The canary: two reports expected, one of each kind. The heap overflow
# runs after `import adcme_mpi` (which loads the instrumented libraries and
# with them the UBSan runtime), as in every test process: its report must
# land in the log folder. The UBSan error (not fatal in the canary) must
# reach the output.
gcc -fsanitize=address,undefined -fno-omit-frame-pointer -g -O1 -shared -fPIC \
  -o "$logs/canary.so" tools/sanitizer/canary.c
(cd /tmp && "$py" -c "import ctypes, sys, adcme_mpi; ctypes.CDLL(sys.argv[1]).canary_heap_overflow(4)" \
  "$logs/canary.so") > "$logs/canary_asan.txt" 2>&1 || true
(cd /tmp && "$py" -c "import ctypes, sys; ctypes.CDLL(sys.argv[1]).canary_signed_overflow(2**31 - 1)" \
  "$logs/canary.so") > "$logs/canary_ubsan.out" 2>&1 || true
in_log=$(cat "$logs"/asan.* 2>/dev/null | grep -c "ERROR: AddressSanitizer" || true)
in_output=$(grep -c "runtime error:" "$logs/canary_ubsan.out" || true)
if [ "$in_log" != 1 ] || [ "$in_output" != 1 ]; then
  echo "sanitizer: the canary's reports: $in_log in the log folder $logs (expected 1, ASan), $in_output in the output (expected 1, UBSan): reports are not being collected"
  cat "$logs/canary_asan.txt" "$logs/canary_ubsan.out" | head -n 40
  exit 1
fi
echo "sanitizer: canary reported (ASan into $logs, UBSan into the output)"
mkdir -p "$logs/canary" && mv "$logs"/asan.* "$logs"/canary_* "$logs/canary/"

junit=$logs/report.xml
status=0
cd /tmp  # the source tree's adcme_mpi/ must not shadow the build's
# every op family, the sparse ops, the XLA lowerings; not the composite
# files (applications, solvers, optimizers, checkpointed loops, second
# order, data-parallel training, modes), which run the same kernels at
# several times the cost (stage 1 runs them), nor the files of ADCME's
# page's examples, the op table, device placement and the ordering token,
# whose kernels and inputs the op families cover
skip=(test_applications.py test_linalg.py test_checkpoint.py test_wave.py test_second_order.py test_optimize.py test_optimize_newton.py test_data_parallel.py test_modes.py
      test_seed_examples.py test_op_table.py test_devices.py test_ordering.py)
timeout 1500 "$bin/mpiexec" -n 2 "$py" "$root/tests/mpi_pytest.py" -q -s -p no:cacheprovider \
  --junitxml="$junit.mpi" "${skip[@]/#/--ignore=$root/tests/mpi/}" "$root/tests/mpi" > "$logs/mpi.out" 2>&1 || status=1
tail -n 3 "$logs/mpi.out"
part_done "tests/mpi at 2 ranks"
# (-k matches test_core.py's module name, so all of that file runs)
launch_cases="test_core or every_rank or batched_jobs or never or finalize or watchdog"
timeout 1500 "$py" -m pytest -q -p no:cacheprovider --junitxml="$junit.launch" -k "$launch_cases" \
  "$root/tests/launch/test_core.py" "$root/tests/launch/test_errors.py" > "$logs/launch.out" 2>&1 || status=1
tail -n 3 "$logs/launch.out"
part_done "launch tests"
cd "$root"

found=$(reports)
summary=$("$py" - "$junit.mpi" "$junit.launch" <<'PY'
import sys, xml.etree.ElementTree as ET
n = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
for path in sys.argv[1:]:
    try:
        for suite in ET.parse(path).getroot().iter("testsuite"):
            for k in n:
                n[k] += int(suite.get(k, 0))
    except (OSError, ET.ParseError):
        n["errors"] += 1
ran = n["tests"] - n["skipped"]
print(f"{ran} tests ran under the sanitizers ({n['failures'] + n['errors']} failed, {n['skipped']} skipped)")
PY
)
echo "sanitizer: $summary; $found report(s)"
if [ "$found" != 0 ]; then
  for f in $(grep -l -E "$pattern" "$logs"/asan.* "$logs"/*.out || true); do
    echo "--- $f"; grep -E -A 30 "$pattern" "$f" | head -n 40
  done
  status=1
fi
[ "$status" = 0 ] || { echo "sanitizer: FAILED (logs in $logs)"; tail -n 30 "$logs/mpi.out" "$logs/launch.out"; }
exit $status
