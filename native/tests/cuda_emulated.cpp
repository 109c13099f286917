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
const char* lastConfig() { return ""; }

}  // namespace emu
}  // namespace kmcl

#endif
