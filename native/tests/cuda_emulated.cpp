// The CUDA path, kernels and host code, compiled for the CPU emulation (emu/cuda_emu.h): the same
// sources as the real build (native/core/src/cuda), in namespace kmcl::cuda_emu.
#include "emulated.h"

// KMCL_NO_EMULATION (CMake KMCL_EMULATOR=OFF, e.g. scripts/device-check.sh on the GPU machine,
// where only the real CUDA path is tested): the stubs below, and a much faster build.
#if defined(__linux__) && !defined(KMCL_NO_EMULATION)

#include <stdexcept>
#include <string>
#include <vector>

#include "emu/cuda_emu.h"
#define KMCL_CUDA_NS cuda_emu
#include "../core/src/cuda/backend.cuh"

namespace kmcl {
namespace emu {

bool available() { return true; }

namespace {
// Races, guard-zone hits and shuffle divergence found by the emulator during the call fail it.
std::string findingsText() {
  const std::vector<std::string> f = kmcl_emu_check::takeFindings();
  std::string text;
  for (const std::string& line : f) text += (text.empty() ? "" : "; ") + line;
  return text;
}
}  // namespace

LossParts computeCuda(const Problem<float>& problem, const Options& options, const Gradients<float>* gradients) {
  findingsText();  // drop anything left from an earlier failed call
  LossParts r;
  try {
    r = cuda_emu::backend().compute(problem, options, gradients);
  } catch (const std::exception& e) {
    const std::string f = findingsText();
    if (!f.empty()) throw std::runtime_error(std::string(e.what()) + "; CUDA emulator findings: " + f);
    throw;
  }
  const std::string f = findingsText();
  if (!f.empty()) throw std::runtime_error("CUDA emulator findings: " + f);
  return r;
}

void setSchedule(uint64_t seed) { kmcl_emu_rt::setSchedule(seed); }

// ---- self-test of the emulator's checks: small kernels with planted faults ----
namespace {

__global__ void stSharedRead(float* out, bool barrier) {
  KMCL_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem);
  if (threadIdx.x == 0) s[0] = 42.0f;
  if (barrier) __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[0];
}

__global__ void stGlobalWrite(float* out, bool atomic) {
  if (threadIdx.x != 0) return;
  if (atomic) {
    atomicAdd(&out[0], 1.0f);
  } else {
    out[0] = static_cast<float>(blockIdx.x);
  }
}

__global__ void stOverrun(float* out, int n) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t <= n) out[t] = 1.0f;  // one past the end
}

__global__ void stSharedOverrun(float* out) {
  KMCL_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem);
  s[threadIdx.x + 1] = 1.0f;  // the last thread writes one float past the 128 bytes
  out[threadIdx.x] = 0.0f;
}

__global__ void stDivergentShuffle(float* out) {
  const int lane = threadIdx.x & 31;
  float v = static_cast<float>(lane);
  if (lane < 16) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
  } else {
    v += __shfl_xor_sync(0xffffffffu, v, 2);
  }
  out[threadIdx.x] = v;
}

__global__ void stWarpOrder(float* out) {
  // Warp 1 reads what warp 0 writes, without a barrier: the value seen depends on the schedule.
  KMCL_DYNAMIC_SMEM(smem);
  float* s = reinterpret_cast<float*>(smem);
  if (threadIdx.x == 0) s[0] = 1.0f;
  if (threadIdx.x == 32) out[0] = s[0] == 1.0f ? 1.0f : 0.0f;
}

struct DeviceBuffer {
  float* p = nullptr;
  explicit DeviceBuffer(size_t n) { cudaMalloc(reinterpret_cast<void**>(&p), n * sizeof(float)); }
  ~DeviceBuffer() { cudaFree(p); }
};

bool contains(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

}  // namespace

std::vector<SelfTestResult> selfTest() {
  std::vector<SelfTestResult> r;
  auto add = [&](const char* name, bool ok, const std::string& detail) { r.push_back(SelfTestResult{name, ok, detail}); };
  const bool checker = kmcl_emu_check::enabled();
  findingsText();
  if (checker) {
    {
      DeviceBuffer out(64);
      KMCL_LAUNCH(stSharedRead, dim3(1), dim3(64), 16, nullptr)(out.p, false);
      const std::string f = findingsText();
      add("race/shared-missing-barrier", contains(f, "race (read after write, same block"), f.empty() ? "no finding" : f);
      KMCL_LAUNCH(stSharedRead, dim3(1), dim3(64), 16, nullptr)(out.p, true);
      const std::string g = findingsText();
      add("race/shared-with-barrier-clean", g.empty(), g.empty() ? "no finding" : g);
    }
    {
      DeviceBuffer out(1);
      KMCL_LAUNCH(stGlobalWrite, dim3(3), dim3(32), 0, nullptr)(out.p, false);
      const std::string f = findingsText();
      add("race/global-across-blocks", contains(f, "different blocks"), f.empty() ? "no finding" : f);
      KMCL_LAUNCH(stGlobalWrite, dim3(3), dim3(32), 0, nullptr)(out.p, true);
      const std::string g = findingsText();
      add("race/global-atomics-clean", g.empty(), g.empty() ? "no finding" : g);
    }
    {
      DeviceBuffer out(64);
      KMCL_LAUNCH(stOverrun, dim3(2), dim3(64), 0, nullptr)(out.p, 64);
      const std::string f = findingsText();
      add("guard/allocation-end", contains(f, "out of bounds") && contains(f, "byte 256 of a 256-byte"), f.empty() ? "no finding" : f);
      // Two named buffers of 16 floats with a gap: one past the first one is a guard-zone hit.
      std::vector<kmcl_emu_check::Region> regions = {{0, 64, "first"}, {256, 64, "second"}};
      emuDescribeBuffers(out.p, regions);
      KMCL_LAUNCH(stOverrun, dim3(1), dim3(32), 0, nullptr)(out.p, 16);
      const std::string g = findingsText();
      add("guard/workspace-sub-buffer", contains(g, "guard zone hit") && contains(g, "'first'"), g.empty() ? "no finding" : g);
    }
    {
      DeviceBuffer out(32);
      KMCL_LAUNCH(stSharedOverrun, dim3(1), dim3(32), 128, nullptr)(out.p);
      const std::string f = findingsText();
      add("guard/dynamic-shared-end", contains(f, "dynamic shared memory byte 128"), f.empty() ? "no finding" : f);
    }
  }
  {
    DeviceBuffer out(32);
    KMCL_LAUNCH(stDivergentShuffle, dim3(1), dim3(32), 0, nullptr)(out.p);
    const std::string f = findingsText();
    add("shuffle/divergent-sites", contains(f, "warp shuffle divergence"), f.empty() ? "no finding" : f);
  }
  {
    // The schedule decides which warp runs first: thread-id order sees the write, some seed does not.
    DeviceBuffer out(1);
    float seen[9];
    for (uint64_t seed = 0; seed <= 8; ++seed) {
      kmcl_emu_rt::setSchedule(seed);
      KMCL_LAUNCH(stWarpOrder, dim3(1), dim3(64), 16, nullptr)(out.p);
      seen[seed] = out.p[0];
    }
    kmcl_emu_rt::setSchedule(0);
    findingsText();
    bool other = false;
    for (int s = 1; s <= 8; ++s) other = other || seen[s] != seen[0];
    add("schedule/seeds-reorder-warps", seen[0] == 1.0f && other,
        std::string("seed 0 saw the write: ") + (seen[0] == 1.0f ? "yes" : "no") + "; a seed in 1..8 did not: " + (other ? "yes" : "no"));
  }
  {
    // Device math at its documented worst case: rcp.approx 1 ulp off, lg2.approx 2^-22 off on [0.5, 2].
    const float x = 3.0f;
    const float r = kmcl_emu_rt::rcpApproxFtz(x), exact = 1.0f / x;
    const bool rcpOk = r != exact && (r == std::nextafter(exact, 1.0f) || r == std::nextafter(exact, 0.0f));
    const float l = kmcl_emu_rt::lg2Approx(1.5f);
    const double le = std::log2(1.5);
    const bool lgOk = std::fabs(static_cast<double>(l) - le) > 0.5 * 0x1p-22 && std::fabs(static_cast<double>(l) - le) < 2 * 0x1p-22;
    const bool ftz = kmcl_emu_rt::rcpApproxFtz(1e-40f) == INFINITY && std::isfinite(kmcl_emu_rt::lg2Approx(1e-40f));
    char buf[160];
    std::snprintf(buf, sizeof(buf), "rcp(3) = %.9g vs %.9g; lg2(1.5) off by %.3g; ftz %s", r, exact, static_cast<double>(l) - le, ftz ? "yes" : "no");
    add("math/worst-case-model", rcpOk && lgOk && ftz, buf);
  }
  return r;
}

bool checkerEnabled() { return kmcl_emu_check::enabled(); }

void releaseDeviceMemory() { cuda_emu::backend().release(); }

void setMemoryLimit(uint64_t bytes) { kmcl_emu_rt::setMemoryLimit(bytes); }

const char* lastConfig() {
  static std::string s;
  s = cuda_emu::backend().lastStats().config;
  return s.c_str();
}

}  // namespace emu
}  // namespace kmcl

#else

#include <stdexcept>

namespace kmcl {
namespace emu {

bool available() { return false; }
LossParts computeCuda(const Problem<float>&, const Options&, const Gradients<float>*) {
  throw std::runtime_error("the CUDA emulation is built on Linux only (and not with KMCL_EMULATOR=OFF)");
}
void releaseDeviceMemory() {}
void setMemoryLimit(uint64_t) {}
void setSchedule(uint64_t) {}
bool checkerEnabled() { return false; }
std::vector<SelfTestResult> selfTest() { return {}; }
const char* lastConfig() { return ""; }

}  // namespace emu
}  // namespace kmcl

#endif
