#!/usr/bin/env bash
# The CPU path on linux-arm64 without an arm64 machine: the core and its native tests cross-built
# with Debian's aarch64 cross compiler (the baseline kernels are 4-lane NEON vectors there), then
# the CPU cases of kmcl_native_test (fixtures and random problems against the float64 path,
# bitwise equality across thread counts) run under qemu-aarch64 user-mode emulation.
#
#   bash scripts/arm64-check.sh            # installs g++-aarch64-linux-gnu and qemu-user with apt if missing
#
# A missing toolchain that cannot be installed (no apt, not root, no network) is reported as
# SKIPPED with the reason and exits 0; a build or test failure exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${KMCL_ARM64_BUILD:-build-arm64}
have() { command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 && command -v qemu-aarch64 >/dev/null 2>&1; }
if ! have; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "arm64 check: installing g++-aarch64-linux-gnu and qemu-user with apt-get"
    apt-get install -y g++-aarch64-linux-gnu qemu-user >/dev/null 2>&1 \
      || { apt-get update >/dev/null 2>&1 && apt-get install -y g++-aarch64-linux-gnu qemu-user >/dev/null 2>&1; } || true
  fi
fi
if ! have; then
  echo "arm64 check SKIPPED: aarch64-linux-gnu-g++ or qemu-aarch64 is not available and could not be installed"
  exit 0
fi
gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
cmake -S . -B "$BUILD" "${gen[@]}" -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
  -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc \
  -DKMCL_CUDA=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" --target kmcl_native_test -j "$(nproc)" >/dev/null
# e_machine of the ELF header: 0xb7 is EM_AARCH64.
[ "$(od -An -tx1 -j18 -N2 "$BUILD/kmcl_native_test" | tr -d ' ')" = "b700" ] || { echo "arm64 check: the test binary is not an aarch64 executable"; exit 1; }
qemu-aarch64 -L /usr/aarch64-linux-gnu "$BUILD/kmcl_native_test" --no-emu --no-cuda > "$BUILD/native-test.log" 2>&1 || {
  grep -vE '^(ok|skip) ' "$BUILD/native-test.log" | tail -40
  echo "arm64 check: FAILED (log: $BUILD/native-test.log)"
  exit 1
}
grep 'CPU instruction sets' "$BUILD/native-test.log" || true
echo "arm64 check: $(tail -1 "$BUILD/native-test.log") (kmcl_native_test --no-emu --no-cuda under qemu-aarch64)"
