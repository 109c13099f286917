// CUDA device discovery and the CUDA entry points of kmcl.h. The kernels are in kernels.cuh, the
// host side (workspace, staging, kernel sequence) in backend.cuh; pair_sweep{1,2,3}.cu instantiate
// the pair kernels of each contrastive sweep.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "backend.cuh"
#include "cuda_internal.h"
#include "kmcl/kmcl.h"

namespace kmcl {

CudaInfo cudaInfo() {
  CudaInfo info;
  info.compiled = true;
  cudaRuntimeGetVersion(&info.runtimeVersion);
  cudaDriverGetVersion(&info.driverVersion);
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    if (err == cudaErrorInsufficientDriver || err == cudaErrorNoDevice) {
      info.reason = err == cudaErrorNoDevice ? "no CUDA device found" : "no NVIDIA driver (or a driver older than the CUDA runtime) on this machine";
    } else {
      info.reason = std::string("CUDA is not usable: ") + cudaGetErrorString(err);
    }
    return info;
  }
  if (count == 0) {
    info.reason = "no CUDA device found";
    return info;
  }
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    cudaGetLastError();
    info.reason = "cudaGetDeviceProperties failed for device 0";
    return info;
  }
  info.usable = true;
  info.deviceName = prop.name;
  info.computeMajor = prop.major;
  info.computeMinor = prop.minor;
  info.totalMemory = static_cast<int64_t>(prop.totalGlobalMem);
  return info;
}

LossParts computeCuda(const Problem<float>& problem, const Options& options, const Gradients<float>* gradients) {
  return cuda_impl::backend().compute(problem, options, gradients);
}

void releaseDeviceMemory() { cuda_impl::backend().release(); }

namespace cuda_internal {

CallStats lastCallStats() { return cuda_impl::backend().lastStats(); }

DeviceProps deviceProps() { return cuda_impl::backend().props(); }

}  // namespace cuda_internal
}  // namespace kmcl
