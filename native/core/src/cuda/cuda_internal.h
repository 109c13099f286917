// Internal hooks of the CUDA path for the benchmark (native/bench) and the native test: what the
// last computeCuda call did and how long its parts took. Not part of the public API (kmcl.h);
// defined only in builds with CUDA (KMCL_HAVE_CUDA), so callers guard their use.
#pragma once

#include <cstdint>
#include <string>

namespace kmcl {
namespace cuda_internal {

struct CallStats {
  bool valid = false;
  double uploadMs = 0;    // CUDA events: pinned staging + host-to-device copies
  double kernelMs = 0;    // CUDA events: every kernel of the call, forward and gradients
  double downloadMs = 0;  // CUDA events: device-to-host copies of the loss terms and gradients
  int64_t workspaceBytes = 0;      // device workspace held after the call (inputs, gradients, scratch)
  int64_t workspacePeakBytes = 0;  // high-water mark of the workspace since the last release
  int64_t requiredBytes = 0;       // what this call needed
  int64_t pinnedBytes = 0;         // pinned host staging buffers
  int64_t rows = 0;                // anchor rows (i, k): y_ik = 1 and class k has ≥ 2 positive samples
  int64_t tiles = 0;
  int64_t chunks = 0;              // partner chunks per tile in sweeps 1 and 3
  double triples = 0;              // (i, l, k) triples evaluated over the three sweeps
  double tripleDims = 0;           // (i, l, k, m) triple-dims evaluated (m over muDim)
  double mufuOps = 0;              // special-function ops of the pair sweeps, per layout, from the
                                   // kernels' PTX (backend.cuh): 2.5 per triple-dim at D = 128 with a
                                   // per-dim variance, 4 per triple for isotropic mu
  std::string config;              // kernel choice, e.g. "tiled L=32 NJ=4 RA=4 per-dim variance"
};

// Stats of the most recent successful computeCuda call in this process.
CallStats lastCallStats();

struct DeviceProps {
  std::string name;
  int smCount = 0;
  int clockKHz = 0;  // peak SM clock
  int major = 0, minor = 0;
  int64_t totalMemory = 0;
  int64_t freeMemory = 0;
};

// Properties of the device computeCuda uses (the current device). Throws without a usable device.
DeviceProps deviceProps();

}  // namespace cuda_internal
}  // namespace kmcl
