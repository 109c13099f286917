#!/usr/bin/env bash
# The one prepared script for the lent GPU machine (H100/H200: nvcc, cmake, ninja, python,
# compute-sanitizer; no Node unless carried). Builds the CUDA path, runs the native test, the
# sanitizers on small cases, the benchmark grid and, when Node and a CUDA addon came along, the
# Node smoke test. Well under 8 minutes on an H200.
#
# Here, before the run (see ../shared/device/README.md):
#   sh ../shared/device/pack.sh            # once: .device/ with a compressed node and with-node.sh
#   # optional, for the Node smoke test: a CUDA addon (static cudart, runs there), without touching
#   # the npm build in build/:
#   node node_modules/cmake-js/bin/cmake-js build --directory . --out build-addon-dev --config Release
# Then the device tool:
#   run(command="sh .device/with-node.sh bash scripts/device-check.sh",
#       carry=[".device", "build-addon-dev/Release/kmcl.node"], timeout_s=560)
# (build/Release/kmcl.node from `npm run build:native` works too: carry that instead.) The working
# tree travels without .git: to record the commit, start the command with KMCL_COMMIT=<hash>, e.g.
#   command="KMCL_COMMIT=$(git rev-parse HEAD) sh .device/with-node.sh bash scripts/device-check.sh"
# with the hash written out literally.
# (Without .device the command is just "bash scripts/device-check.sh"; the smoke test is skipped.)
#
# Results under $OUT (at most 8 files come back): env.txt (date, commit, nvidia-smi, versions),
# build.log (with the ptxas register/spill report), native-test.log, sanitizer.log, bench.log,
# bench.json, bench.csv, smoke.log; with KMCL_COMPARE=1 also compare.tar.gz (the eager-PyTorch
# comparison, quick grid) in place of bench.csv. Exit code: 0 when the native test passed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/build-device/out}  # $OUT is set by the device tool
mkdir -p "$OUT"
t0=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - t0 ))s] $*"; }
jobs=$(nproc 2>/dev/null || echo 8)

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: ${KMCL_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo 'unknown (no .git here: pass KMCL_COMMIT=<hash>)')}"
  git status --short 2>/dev/null | head -20
  nvidia-smi 2>&1
  nvcc --version 2>&1 | tail -2
  cmake --version 2>&1 | head -1
  echo "cores: $jobs"
  command -v node >/dev/null 2>&1 && echo "node: $(node --version)" || echo "node: not on PATH"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step "configure and build (build-device/, Release, CUDA on, sm_90)"
if ! { cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DKMCL_CUDA=ON -DKMCL_CUDA_VERBOSE=ON -DCMAKE_CUDA_ARCHITECTURES=90 &&
       cmake --build build-device -j"$jobs"; } > "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  echo "build failed"
  exit 1
fi
grep -E "kmcl: CUDA path" "$OUT/build.log"
# The register report of the kernels (ptxas -v): any spill shows here.
grep -A2 "Compiling entry function" "$OUT/build.log" | grep -E "spill" | sort | uniq -c

step "native test: CUDA vs CPU float64 on fixtures and random problems"
timeout 300 build-device/kmcl_native_test --no-emu 2>&1 | tee "$OUT/native-test.log"
test_rc=${PIPESTATUS[0]}
echo "native test exit code: $test_rc"

step "compute-sanitizer: memcheck on the small CUDA cases, racecheck and synccheck on a few"
if command -v compute-sanitizer >/dev/null 2>&1; then
  {
    echo "--- memcheck (fixtures, layouts, chunk and tile edges, API cases)"
    timeout 120 compute-sanitizer --tool memcheck --error-exitcode 3 \
      build-device/kmcl_native_test --quick --no-emu --no-cpu --filter cuda/fixture --filter cuda/api \
      --filter -layout --filter -chunk --filter -lanes --filter -wide 2>&1 | tail -60
    echo "memcheck exit code: ${PIPESTATUS[0]}"
    for tool in racecheck synccheck; do
      echo "--- $tool (a few small cases)"
      timeout 45 compute-sanitizer --tool "$tool" --error-exitcode 3 \
        build-device/kmcl_native_test --no-emu --no-cpu --filter cuda/random/B20-K5 --filter chunk7 \
        --filter chunk10 --filter fixture/mks 2>&1 | tail -30
      echo "$tool exit code: ${PIPESTATUS[0]}"
    done
  } > "$OUT/sanitizer.log" 2>&1
  grep -E "exit code|ERROR SUMMARY" "$OUT/sanitizer.log"
else
  echo "compute-sanitizer not found" | tee "$OUT/sanitizer.log"
fi

step "benchmark grid (fwd+bwd, median of 20 runs)"
timeout 240 build-device/kmcl_bench --cpu --json "$OUT/bench.json" --csv "$OUT/bench.csv" 2>&1 | tee "$OUT/bench.log"

step "Node smoke test"
if command -v node >/dev/null 2>&1 && { [ -f build/Release/kmcl.node ] || [ -f build-addon-dev/Release/kmcl.node ]; }; then
  timeout 60 node scripts/gpu-smoke.mjs 2>&1 | tee "$OUT/smoke.log"
else
  echo "skipped: needs node on PATH (sh .device/with-node.sh …) and a CUDA build of kmcl.node (carry" \
    "build-addon-dev/Release/kmcl.node or build/Release/kmcl.node)" | tee "$OUT/smoke.log"
fi

# Optional (KMCL_COMPARE=1): the eager-PyTorch comparison of bench/baselines/compare_gpu.py in its
# quick form, against this build's kmcl_bench, in the same lease. Its three files are packed into
# one archive and bench.csv is dropped (bench.json holds the same rows), so that $OUT stays within
# the device tool's 8 files.
if [ "${KMCL_COMPARE:-0}" = "1" ]; then
  step "eager PyTorch vs kmcl CUDA (compare_gpu.py --quick, at most ${KMCL_COMPARE_SECONDS:-240} s)"
  if python3 -c "import torch" >/dev/null 2>&1; then
    mkdir -p build-device/compare
    timeout "${KMCL_COMPARE_SECONDS:-240}" python3 bench/baselines/compare_gpu.py --quick \
      --kmcl-bench build-device/kmcl_bench --out build-device/compare 2>&1 | tail -40
    echo "compare_gpu exit code: ${PIPESTATUS[0]}"
    tar -czf "$OUT/compare.tar.gz" -C build-device compare
    rm -f "$OUT/bench.csv"
  else
    echo "skipped: python3 cannot import torch"
  fi
fi

step "done (native test exit code $test_rc)"
exit "$test_rc"
