// Linked instead of the CUDA sources when the build has no CUDA (nvcc not found, or KMCL_CUDA=0).
#include <stdexcept>

#include "kmcl/kmcl.h"

namespace kmcl {

CudaInfo cudaInfo() {
  CudaInfo info;
  info.compiled = false;
  info.usable = false;
  info.reason = "this build of kmcl has no CUDA path (nvcc was not found at build time, or KMCL_CUDA=0 was set)";
  return info;
}

LossParts computeCuda(const Problem<float>&, const Options&, const Gradients<float>*) {
  throw std::runtime_error(cudaInfo().reason);
}

void releaseDeviceMemory() {}

}  // namespace kmcl
