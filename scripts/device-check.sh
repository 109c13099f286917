#!/usr/bin/env bash
# The one prepared script for the lent GPU machine (H100/H200: nvcc, cmake, ninja, python,
# compute-sanitizer, ncu, cuobjdump; no Node unless carried). In one run, within a fixed time
# budget (every step has a timeout; they add up to at most 480 s, build included, so that a rerun
# still fits in a 15-minute lease), it:
#   builds the CUDA path (sm_90, Release, ptxas register report);
#   runs the native test: CUDA vs the CPU float64 path on the fixtures and random problems, and
#     FAILS when CUDA was not usable or any cuda/ case skipped (--require-cuda);
#   compute-sanitizer memcheck (workspace guard zones on: KMCL_CUDA_GUARDS=1; the deliberate
#     out-of-memory case left out), racecheck, initcheck, synccheck on small cases;
#   the benchmark grid: per-class variance [B,K,M] up to B = 4096 and the shared variance [B,1,M]
#     (and the isotropic layouts) up to B = 16384, kernel time, host copy time (upload, download)
#     and peak device memory per cell;
#   Nsight Compute metrics (issue slots, MUFU pipe, atomics, DRAM throughput) of the three pair
#     sweeps at one large cell, and `cuobjdump -sass` instruction counts per kernel;
#   the Node smoke test when node and a CUDA kmcl.node came along;
# and writes one summary.json among at most 8 files in $OUT.
#
#   bash scripts/device-check.sh            on the GPU machine (see below)
#   bash scripts/device-check.sh --dry-run  here, without a GPU (CI runs it): the same steps end to
#       end with stand-ins for the GPU tools (nvidia-smi, compute-sanitizer, ncu, cuobjdump) and
#       the CPU build in build/ (KMCL_DRY_BUILD), checks that the CUDA gate trips when CUDA is not
#       usable, that the budget holds, that $OUT has at most 8 files and summary.json its fields;
#       prints the time budget.
#
# Here, before the run (see ../shared/device/README.md):
#   sh ../shared/device/pack.sh            # once: .device/ with a compressed node and with-node.sh
#   # optional, for the Node smoke test: a CUDA addon (static cudart, runs there):
#   node node_modules/cmake-js/bin/cmake-js build --directory . --out build-addon-dev --config Release
# Then the device tool, with the commit written out (the tree travels without .git):
#   run(command="KMCL_COMMIT=<hash> sh .device/with-node.sh bash scripts/device-check.sh",
#       carry=[".device", "build-addon-dev/Release/kmcl.node"], timeout_s=540)
# KMCL_COMPARE=1 runs the quick eager-PyTorch comparison (bench/baselines/compare_gpu.py) in place
# of the Nsight Compute step and of racecheck, initcheck and synccheck, within the same budget;
# compare.tar.gz replaces ncu.csv.
#
# Files in $OUT: summary.json, env.txt, build.log, tests.log (native test, smoke test),
# sanitizer.log, bench.log, bench.json, ncu.csv (or compare.tar.gz). Exit code 0 only when the
# build, the native test (with CUDA usable and no cuda/ case skipped) and every sanitizer passed.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
COMPARE=${KMCL_COMPARE:-0}

# ---- the budget: seconds per step; the sum is the worst case ----
declare -A BUDGET=(
  [env]=5 [build]=150 [native-test]=50 [memcheck]=55 [racecheck]=25 [initcheck]=20 [synccheck]=20
  [bench]=60 [ncu]=45 [sass]=10 [smoke]=20 [summary]=10
)
ORDER=(env build native-test memcheck racecheck initcheck synccheck bench ncu sass smoke summary)
if [ "$COMPARE" = "1" ]; then
  # The comparison takes the time of the Nsight Compute step and of racecheck, initcheck and
  # synccheck (run those in a plain device check).
  BUDGET[compare]=$((BUDGET[ncu] + BUDGET[racecheck] + BUDGET[initcheck] + BUDGET[synccheck]))
  ORDER=(env build native-test memcheck bench compare sass smoke summary)
fi
LIMIT=480
total=0
for s in "${ORDER[@]}"; do total=$((total + BUDGET[$s])); done
echo "== device-check time budget (worst case, every step at its timeout):"
for s in "${ORDER[@]}"; do printf '   %-12s %4d s\n' "$s" "${BUDGET[$s]}"; done
printf '   %-12s %4d s (limit %d s; with the machine start and the transfers, call the tool with timeout_s=540)\n' total "$total" "$LIMIT"
if [ "$total" -gt "$LIMIT" ]; then
  echo "device-check: the step budget adds up to $total s, over the $LIMIT s limit"
  exit 1
fi

if [ "$DRY" = "1" ]; then
  OUT=${OUT:-$root/build-device/dry-out}
  BUILD=${KMCL_DRY_BUILD:-$root/build}
  # cmake-js puts the native tools in build/ or build/Release/.
  [ ! -x "$BUILD/kmcl_native_test" ] && [ -x "$BUILD/Release/kmcl_native_test" ] && BUILD=$BUILD/Release
  fakes=$(mktemp -d)
  trap 'rm -rf "$fakes"' EXIT
  # Stand-ins for the GPU machine's tools: they print what the real ones print, in the same format.
  cat > "$fakes/nvidia-smi" <<'EOF'
#!/bin/sh
echo "NVIDIA-SMI (dry run: no GPU on this machine)"
EOF
  cat > "$fakes/compute-sanitizer" <<'EOF'
#!/bin/sh
# Dry run: run the program without the sanitizer, then the summary line of the real tool.
while [ $# -gt 0 ]; do
  case "$1" in
    --tool|--error-exitcode|--show-backtrace|--leak-check|--report-api-errors|--racecheck-report|--check-api-memory-access) shift 2 ;;
    --*) shift ;;
    *) break ;;
  esac
done
"$@"
echo "========= ERROR SUMMARY: 0 errors (dry run)"
EOF
  cat > "$fakes/ncu" <<'EOF'
#!/bin/sh
echo '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"'
for k in 1 2 3; do
  for m in sm__inst_issued.avg.pct_of_peak_sustained_active sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active dram__throughput.avg.pct_of_peak_sustained_elapsed gpu__time_duration.sum; do
    echo "\"$k\",\"1\",\"kmcl_bench\",\"dry\",\"void kmcl::cuda_impl::pairKernel<$k, 32, 4, 4, true>(kmcl::cuda_impl::PairParams)\",\"1\",\"7\",\"(256, 1, 1)\",\"(1, 1, 1)\",\"0\",\"9.0\",\"Command line profiler metrics\",\"$m\",\"\",\"0\""
  done
done
EOF
  cat > "$fakes/cuobjdump" <<'EOF'
#!/bin/sh
printf '\tcode for sm_90\n\t\tFunction : _ZN4kmcl9cuda_impl10pairKernelILi1ELi32ELi4ELi4ELb1EEEvNS0_10PairParamsE\n'
printf '        /*0010*/                   MUFU.RCP R3, R2 ;\n        /*0020*/                   MUFU.LG2 R4, R5 ;\n        /*0030*/                   MUFU.EX2 R6, R7 ;\n        /*0040*/                   RED.E.ADD.F32.FTZ.RN.STRONG.GPU [R2.64], R9 ;\n        /*0050*/                   EXIT ;\n'
EOF
  chmod +x "$fakes"/*
  export PATH="$fakes:$PATH"
  echo "== dry run: GPU tools are stand-ins ($fakes), binaries from $BUILD, files to $OUT"
else
  OUT=${OUT:-$root/build-device/out}  # $OUT is set by the device tool
  BUILD=$root/build-device
fi
rm -rf "$OUT"
mkdir -p "$OUT"
WORK=$root/build-device/work  # intermediate files (not brought back)
rm -rf "$WORK"
mkdir -p "$WORK"
STEPS="$WORK/steps.tsv"
: > "$STEPS"
t0=$(date +%s)
export DRY COMPARE OUT BUILD WORK root

# run_step NAME LOGFILE CMD...: the command under the step's timeout, its output appended to LOGFILE
# (and shown), its exit code and seconds recorded for the summary.
run_step() {
  local name=$1 log=$2
  shift 2
  local limit=${BUDGET[$name]} s e rc
  echo
  echo "== [$(( $(date +%s) - t0 ))s] $name (at most ${limit}s): $*"
  s=$(date +%s)
  if declare -F "$1" > /dev/null; then
    # A function of this script: run in a child bash (timeout runs programs), which gets it via export -f.
    export -f "$1"
    timeout --kill-after=5 "$limit" bash -c '"$@"' _ "$@" 2>&1 | tee -a "$log"
  else
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee -a "$log"
  fi
  rc=${PIPESTATUS[0]}
  e=$(date +%s)
  [ "$rc" = 124 ] && echo "!! $name hit its ${limit}s timeout" | tee -a "$log"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((e - s))" "$limit" >> "$STEPS"
  return "$rc"
}

# ---- env ----
env_info() {
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: ${KMCL_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo 'unknown (no .git here: pass KMCL_COMMIT=<hash>)')}"
  echo "mode: $([ "$DRY" = 1 ] && echo dry-run || echo device)"
  nvidia-smi 2>&1 | head -20
  nvcc --version 2>&1 | tail -2
  cmake --version 2>&1 | head -1
  command -v compute-sanitizer ncu cuobjdump 2>&1
  echo "cores: $(nproc 2>/dev/null)"
  command -v node >/dev/null 2>&1 && echo "node: $(node --version)" || echo "node: not on PATH"
}
run_step env "$OUT/env.txt" env_info

# ---- build ----
build() {
  if [ "$DRY" = 1 ]; then
    # The CUDA build is the device's job; here the configure line is checked and the CPU build used.
    echo "dry run: would run: cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DKMCL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_FLAGS=-Xptxas=-v -DKMCL_EMULATOR=OFF && cmake --build build-device"
    for exe in kmcl_native_test kmcl_bench; do
      [ -x "$BUILD/$exe" ] || { echo "dry run: $BUILD/$exe is missing (npm install or cmake --build builds it)"; return 1; }
    done
    echo "ptxas info    : Used 128 registers, 0 bytes spill stores, 0 bytes spill loads (dry run)"
    return 0
  fi
  cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DKMCL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DCMAKE_CUDA_FLAGS=-Xptxas=-v -DKMCL_EMULATOR=OFF &&
    cmake --build build-device -j"$(nproc)" --target kmcl_native_test kmcl_bench
}
if ! run_step build "$OUT/build.log" build > /dev/null; then
  tail -40 "$OUT/build.log"
  echo "device-check: build failed"
  build_ok=0
else
  build_ok=1
  grep -E "kmcl: CUDA path" "$OUT/build.log"
  { echo "ptxas spill report (lines with non-zero spills):"
    grep -E "spill" "$OUT/build.log" | grep -vE " 0 bytes spill stores, 0 bytes spill loads" | sort | uniq -c | head -20
  } >> "$OUT/env.txt"
fi

# ---- native test ----
test_rc=1
if [ "$build_ok" = 1 ]; then
  if [ "$DRY" = 1 ]; then
    # Without a GPU the CUDA gate must trip: every cuda/ case skips, so --require-cuda fails.
    run_step native-test "$OUT/tests.log" "$BUILD/kmcl_native_test" --no-emu --no-cpu --filter cuda/fixture --require-cuda
    gate_rc=$?
    if [ "$gate_rc" != 0 ] && grep -q "^FAIL require-cuda" "$OUT/tests.log"; then
      echo "dry run: the CUDA gate tripped as it must without a GPU (exit $gate_rc)" | tee -a "$OUT/tests.log"
      test_rc=0
    else
      echo "dry run: the CUDA gate did NOT trip without a GPU (exit $gate_rc)" | tee -a "$OUT/tests.log"
      test_rc=1
    fi
  else
    run_step native-test "$OUT/tests.log" "$BUILD/kmcl_native_test" --no-emu --require-cuda
    test_rc=$?
  fi
fi

# ---- compute-sanitizer ----
san_rc=0
small=(--quick --no-emu --no-cpu --filter cuda/fixture --filter cuda/api --filter -layout --filter -chunk --filter -lanes)
if [ "$build_ok" = 1 ]; then
  if command -v compute-sanitizer > /dev/null 2>&1; then
    # memcheck: guard zones on (a kernel writing past a workspace buffer fails the call); the
    # deliberate out-of-memory case is left out (its failed cudaMalloc is an API error by design).
    KMCL_CUDA_GUARDS=1 run_step memcheck "$OUT/sanitizer.log" compute-sanitizer --tool memcheck --error-exitcode 3 \
      "$BUILD/kmcl_native_test" "${small[@]}" --exclude out-of-memory
    [ $? = 0 ] || san_rc=1
    tools=(racecheck initcheck synccheck)
    [ "$COMPARE" = 1 ] && tools=()
    for tool in "${tools[@]}"; do
      extra=()
      [ "$tool" = racecheck ] && extra=(--racecheck-report all)
      run_step "$tool" "$OUT/sanitizer.log" compute-sanitizer --tool "$tool" "${extra[@]}" --error-exitcode 3 \
        "$BUILD/kmcl_native_test" --no-emu --no-cpu --filter cuda/random/B20-K5 --filter chunk7 --filter chunk10 \
        --filter fixture/mks --filter fixture/isotropic
      [ $? = 0 ] || san_rc=1
    done
  else
    echo "compute-sanitizer not found" | tee -a "$OUT/sanitizer.log"
    san_rc=1
  fi
fi

# ---- benchmark grid ----
bench() {
  local common=(--runs 7 --warmup 2)
  [ "$DRY" = 1 ] && common=(--runs 1 --warmup 0 --max-batch 64)
  echo "--- per-class variance [B,K,M] (and [B,K,1] isotropic), B <= 4096"
  "$BUILD/kmcl_bench" "${common[@]}" --variance bc --max-batch "$([ "$DRY" = 1 ] && echo 64 || echo 4096)" \
    --json "$WORK/bench-bc.json" || return $?
  echo "--- shared variance [B,1,M] (and [B,K,1] isotropic), B <= 16384"
  "$BUILD/kmcl_bench" "${common[@]}" --variance mks --json "$WORK/bench-mks.json"
}
bench_rc=1
if [ "$build_ok" = 1 ]; then
  run_step bench "$OUT/bench.log" bench
  bench_rc=$?
  if [ "$DRY" = 0 ] && grep -q "CUDA skipped" "$OUT/bench.log"; then
    echo "device-check: the benchmark ran without CUDA" | tee -a "$OUT/bench.log"
    bench_rc=1
  fi
fi

# ---- Nsight Compute: the three pair sweeps at one large cell ----
NCU_METRICS=sm__inst_issued.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_xu_cycles_active.avg.pct_of_peak_sustained_active,l1tex__t_requests_pipe_lsu_mem_global_op_red.sum,l1tex__t_requests_pipe_lsu_mem_global_op_atom.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_atom.sum,lts__t_requests_op_red.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum
if [ "$build_ok" = 1 ] && [ "$COMPARE" != 1 ]; then
  if command -v ncu > /dev/null 2>&1; then
    run_step ncu "$OUT/ncu.csv" ncu --csv --kernel-name regex:pairKernel --launch-count 3 --metrics "$NCU_METRICS" \
      "$BUILD/kmcl_bench" --runs 1 --warmup 0 --variance bc --only 4096,80,128 > /dev/null
  else
    echo "ncu not found" > "$OUT/ncu.csv"
  fi
fi

# ---- optional: the eager-PyTorch comparison (quick) ----
if [ "$build_ok" = 1 ] && [ "$COMPARE" = 1 ]; then
  compare() {
    if [ "$DRY" = 1 ]; then
      python3 bench/baselines/compare_gpu.py --self-test
    elif python3 -c "import torch" > /dev/null 2>&1; then
      mkdir -p build-device/compare
      python3 bench/baselines/compare_gpu.py --quick --kmcl-bench "$BUILD/kmcl_bench" --out build-device/compare
    else
      echo "skipped: python3 cannot import torch"
    fi
  }
  run_step compare "$OUT/bench.log" compare
  mkdir -p build-device/compare
  tar -czf "$OUT/compare.tar.gz" -C build-device compare
fi

# ---- SASS instruction counts per kernel ----
sass() {
  local lib=$BUILD/libkmcl_cuda.a
  [ "$DRY" = 1 ] && lib=/dev/null
  cuobjdump -sass "$lib" > "$WORK/sass.txt" && echo "cuobjdump: $(grep -c 'Function :' "$WORK/sass.txt") functions"
}
[ "$build_ok" = 1 ] && run_step sass "$OUT/bench.log" sass

# ---- Node smoke test ----
smoke_rc=skip
if command -v node > /dev/null 2>&1 && { [ -f build/Release/kmcl.node ] || [ -f build-addon-dev/Release/kmcl.node ]; } && [ "$DRY" = 0 ]; then
  run_step smoke "$OUT/tests.log" node scripts/gpu-smoke.mjs
  smoke_rc=$?
else
  echo "smoke test skipped: needs node on PATH (sh .device/with-node.sh …) and a CUDA build of kmcl.node" \
    "(carry build-addon-dev/Release/kmcl.node or build/Release/kmcl.node)$([ "$DRY" = 1 ] && echo '; dry run')" | tee -a "$OUT/tests.log"
fi

# ---- summary.json ----
summarize() {
  python3 - "$OUT" "$STEPS" "$DRY" "$test_rc" "$san_rc" "$bench_rc" "$smoke_rc" "$total" "$WORK" <<'PY'
import csv, json, os, re, sys
out, steps_path, dry, test_rc, san_rc, bench_rc, smoke_rc, budget, parent = sys.argv[1:10]
def read(p):
    try:
        with open(p, errors='replace') as f:
            return f.read()
    except OSError:
        return ''
steps = []
for line in read(steps_path).splitlines():
    n, rc, sec, lim = line.split('\t')
    steps.append({'step': n, 'exit': int(rc), 'seconds': int(sec), 'limit': int(lim)})
env = read(os.path.join(out, 'env.txt'))
tests = read(os.path.join(out, 'tests.log'))
m = re.findall(r'^(\d+) passed, (\d+) failed, (\d+) skipped$', tests, re.M)
native = {'passed': int(m[-1][0]), 'failed': int(m[-1][1]), 'skipped': int(m[-1][2])} if m else None
cuda_skips = len(re.findall(r'^skip cuda/', tests, re.M))
san = read(os.path.join(out, 'sanitizer.log'))
san_summary = re.findall(r'ERROR SUMMARY: (\d+) error', san)
bench = []
for name in ('bench-bc.json', 'bench-mks.json'):
    try:
        with open(os.path.join(parent, name)) as f:
            data = json.load(f)
        rows = data.get('results', []) if isinstance(data, dict) else data
        for r in rows if isinstance(rows, list) else []:
            r['grid'] = name[6:-5]
            bench.append(r)
    except (OSError, ValueError):
        pass
with open(os.path.join(out, 'bench.json'), 'w') as f:
    json.dump(bench, f, indent=1)
ncu = {}
ncu_text = read(os.path.join(out, 'ncu.csv'))
lines = [l for l in ncu_text.splitlines() if l.startswith('"')]
for row in csv.DictReader(lines):
    k = row.get('Kernel Name', '')
    mm = re.search(r'pairKernel(Generic)?<(\d)', k)
    key = ('sweep %s' % mm.group(2)) if mm else k[:60]
    ncu.setdefault(key, {'kernel': k})[row.get('Metric Name', '?')] = row.get('Metric Value')
sass = {}
cur = None
for line in read(os.path.join(parent, 'sass.txt')).splitlines():
    fm = re.search(r'Function : (\S+)', line)
    if fm:
        cur = fm.group(1)
        sass[cur] = {}
        continue
    im = re.search(r'/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)?)', line)
    if cur and im:
        op = im.group(1)
        if op.split('.')[0] in ('MUFU', 'RED', 'ATOM', 'ATOMS', 'ATOMG', 'BAR', 'SHFL', 'LDS', 'STS', 'LDG', 'STG', 'FFMA', 'DFMA', 'DADD', 'DMUL'):
            sass[cur][op] = sass[cur].get(op, 0) + 1
        sass[cur]['total'] = sass[cur].get('total', 0) + 1
ok = test_rc == '0' and san_rc == '0' and bench_rc == '0'
summary = {
    'mode': 'dry-run' if dry == '1' else 'device',
    'date': (re.search(r'^date: (.*)$', env, re.M) or [None, None])[1],
    'commit': (re.search(r'^commit: (.*)$', env, re.M) or [None, None])[1],
    'gpu': [l.strip() for l in env.splitlines() if 'NVIDIA' in l][:3],
    'ok': ok,
    'budget_seconds': int(budget),
    'elapsed_seconds': sum(s['seconds'] for s in steps),
    'steps': steps,
    'native_test': native,
    'cuda_cases_skipped': cuda_skips,
    'sanitizer_error_summaries': [int(x) for x in san_summary],
    'smoke': smoke_rc,
    'bench_rows': len(bench),
    'bench_headline': [{k: r.get(k) for k in ('grid', 'B', 'K', 'M', 'layout', 'kernelMs', 'totalMs', 'uploadMs', 'downloadMs', 'peakMiB', 'pctFloor', 'mufuPerTripleDim')} for r in bench],
    'ncu': ncu,
    'sass_counts': sass,
}
with open(os.path.join(out, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)
print('summary.json: ok=%s, native test %s, cuda/ skipped %d, sanitizer summaries %s, bench rows %d, ncu kernels %d, sass functions %d, %d s of %s s'
      % (ok, native, cuda_skips, san_summary, len(bench), len(ncu), len(sass), summary['elapsed_seconds'], budget))
PY
}
export test_rc san_rc bench_rc smoke_rc total STEPS
run_step summary /dev/null summarize

files=$(find "$OUT" -type f | wc -l)
echo
echo "== files in $OUT ($files, at most 8):"
ls -la "$OUT"
final=0
[ "$build_ok" = 1 ] || final=1
[ "$test_rc" = 0 ] || final=1
[ "$san_rc" = 0 ] || final=1
[ "$bench_rc" = 0 ] || final=1
[ "$files" -le 8 ] || { echo "device-check: $files files in \$OUT, more than the 8 that come back"; final=1; }
if [ "$DRY" = 1 ]; then
  python3 -c "
import json, sys
s = json.load(open('$OUT/summary.json'))
need = ['mode', 'ok', 'budget_seconds', 'steps', 'native_test', 'cuda_cases_skipped', 'sanitizer_error_summaries', 'bench_rows', 'ncu', 'sass_counts']
miss = [k for k in need if k not in s]
assert not miss, 'summary.json lacks %s' % miss
assert s['native_test'] and s['native_test']['failed'] >= 1, 'the dry run must see the CUDA gate fail'
assert s['bench_rows'] > 0 and s['sass_counts'], 'bench or sass parsing gave nothing'
assert s['ncu'] or '$COMPARE' == '1', 'ncu parsing gave nothing'
print('dry run: summary.json has its fields; the CUDA gate, bench, ncu and sass parsing work')
" || final=1
fi
echo "== device-check $([ "$DRY" = 1 ] && echo 'dry run ')done in $(( $(date +%s) - t0 ))s (budget $total s): exit $final"
exit "$final"
