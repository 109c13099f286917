// The CUDA path, kernels and host code, compiled for the CPU emulation (emu/cuda_emu.h): the same
// sources as the real build (native/core/src/cuda), in namespace kmcl::cuda_emu.
#include "emulated.h"

#if defined(__linux__)

#include "emu/cuda_emu.h"
#define KMCL_CUDA_NS cuda_emu
#include "../core/src/cuda/backend.cuh"

namespace kmcl {
namespace emu {

bool available() { return true; }

LossParts computeCuda(const Problem<float>& problem, const Options& options, const Gradients<float>* gradients) {
  return cuda_emu::backend().compute(problem, options, gradients);
}

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
  throw std::runtime_error("the CUDA emulation is built on Linux only");
}
void releaseDeviceMemory() {}
void setMemoryLimit(uint64_t) {}
const char* lastConfig() { return ""; }

}  // namespace emu
}  // namespace kmcl

#endif
