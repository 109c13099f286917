// The CUDA path of kmcl (native/core/src/cuda: kernels and host code) compiled for the CPU
// emulation in emu/cuda_emu.h (cuda_emulated.cpp). Lets the native test check the kernels'
// logic on machines without a GPU. Slow: small problems only. Races, guard-zone hits and shuffle
// divergence found during a call make computeCuda throw std::runtime_error describing them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kmcl/kmcl.h"

namespace kmcl {
namespace emu {

// False where the emulation is not built (it needs POSIX ucontext: Linux).
bool available();
LossParts computeCuda(const Problem<float>& problem, const Options& options, const Gradients<float>* gradients);
void releaseDeviceMemory();
// Emulated device memory (default 16 GiB): allocations beyond it fail like cudaMalloc does.
void setMemoryLimit(uint64_t bytes);
// The schedule of the emulated blocks: 0 = threads in thread-id order; s > 0 = warps and lanes in
// orders drawn from s, and random preemption at memory accesses (emu/cuda_emu.h).
void setSchedule(uint64_t seed);
// Whether this build has the memory checker (races, guard zones: emu/checker.h). Without it
// (an ASan build, or a compiler without -fsanitize=thread) ASan or the guard pattern check stand in.
bool checkerEnabled();
// Small kernels with planted faults (a missing barrier, a race across blocks, an overrun of an
// allocation, of a workspace sub-buffer and of dynamic shared memory, divergent shuffles, warp
// order) and the device-math model: each result says whether the emulator's check caught it.
struct SelfTestResult {
  std::string name;
  bool ok;
  std::string detail;
};
std::vector<SelfTestResult> selfTest();
// Kernel choice of the last call ("tiled L=… NJ=…" or "generic …").
const char* lastConfig();

}  // namespace emu
}  // namespace kmcl
