// A small CPU emulation of the part of CUDA that native/core/src/cuda uses, so that the very
// kernels and host code of the CUDA path run (slowly) on machines without a GPU: the native test
// compares them with the CPU path there, and ASan/UBSan builds of the test check their indexing.
//
// Model: one block at a time; its threads are fibers (ucontext) on the calling thread, switched
// only at __syncthreads and warp shuffles, which are real barriers (a lane blocks until its whole
// warp, or block, has arrived). Deadlocks (mismatched barriers, a shuffle with an exited lane) are
// detected and abort. Dynamic shared memory is filled with 0xFF bytes (NaN floats, −1 ints) before
// each block, so reads of unwritten shared memory show. Atomics are plain read-modify-writes (one
// thread runs at a time). Launch configurations are checked like the runtime does (block size,
// grid.y ≤ 65535, dynamic shared memory against cudaFuncSetAttribute). Not emulated: data races
// between threads (fibers never interleave between barriers; use compute-sanitizer racecheck on a
// GPU), the accuracy of the device's fast-math instructions (math.h's host fallbacks are exact).
//
// Include this header instead of <cuda_runtime.h>, in one translation unit, before the CUDA sources.
#pragma once

#define KMCL_CUDA_EMULATION 1

#include <ucontext.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <new>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) alignas(n)

namespace kmcl_emu_rt {

using std::max;
using std::min;

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};

inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
};

inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
  }
  return "cudaErrorUnknown";
}

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
  }
  return "unknown error";
}

struct EmuStream {};
struct EmuEvent {
  std::chrono::steady_clock::time_point t{};
};
using cudaStream_t = EmuStream*;
using cudaEvent_t = EmuEvent*;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr { cudaDevAttrClockRate = 13, cudaDevAttrMultiProcessorCount = 16 };
constexpr unsigned cudaStreamNonBlocking = 1;
constexpr unsigned cudaEventDisableTiming = 2;
constexpr unsigned cudaHostAllocDefault = 0;

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  int multiProcessorCount;
  int major;
  int minor;
};

// ---- state ----
struct State {
  cudaError_t lastError = cudaSuccess;
  uint64_t memoryLimit = uint64_t(16) << 30;  // emulated device memory
  uint64_t allocated = 0;
  std::map<void*, size_t> allocations;
  std::map<const void*, int> maxDynamicSmem;  // per kernel, from cudaFuncSetAttribute
  EmuStream stream;
  uint64_t blocksRun = 0;
};
inline State& state() {
  static State s;
  return s;
}
inline void setMemoryLimit(uint64_t bytes) { state().memoryLimit = bytes; }

constexpr size_t kDefaultSmem = 48 << 10;
constexpr size_t kOptinSmem = 227 << 10;  // as on an H100

[[noreturn]] inline void emuFail(const std::string& what) {
  std::fprintf(stderr, "CUDA emulator: %s\n", what.c_str());
  std::fflush(stderr);
  std::abort();
}

inline cudaError_t record(cudaError_t e) {
  if (e != cudaSuccess) state().lastError = e;
  return e;
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = state().lastError;
  state().lastError = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return state().lastError; }

inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : record(cudaErrorInvalidDevice); }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d != 0) return record(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof(*p));
  std::snprintf(p->name, sizeof(p->name), "kmcl CUDA emulator (CPU)");
  p->totalGlobalMem = static_cast<size_t>(state().memoryLimit);
  p->sharedMemPerBlock = kDefaultSmem;
  p->sharedMemPerBlockOptin = kOptinSmem;
  p->multiProcessorCount = 2;
  p->major = 9;
  p->minor = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  *v = a == cudaDevAttrClockRate ? 1000000 : 2;
  return cudaSuccess;
}
inline cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
inline cudaError_t cudaDriverGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}

inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  State& s = state();
  if (bytes > s.memoryLimit || s.allocated + bytes > s.memoryLimit) {
    *p = nullptr;
    return record(cudaErrorMemoryAllocation);
  }
  void* q = std::malloc(bytes == 0 ? 1 : bytes);
  if (!q) {
    *p = nullptr;
    return record(cudaErrorMemoryAllocation);
  }
  std::memset(q, 0xFF, bytes);  // NaN floats and doubles, −1 ints: reads of unwritten memory show
  s.allocations[q] = bytes;
  s.allocated += bytes;
  *p = q;
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  State& s = state();
  auto it = s.allocations.find(p);
  if (it == s.allocations.end()) return record(cudaErrorInvalidValue);
  s.allocated -= it->second;
  s.allocations.erase(it);
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaHostAlloc(void** p, size_t bytes, unsigned) {
  *p = std::malloc(bytes == 0 ? 1 : bytes);
  return *p ? cudaSuccess : record(cudaErrorMemoryAllocation);
}
inline cudaError_t cudaFreeHost(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemGetInfo(size_t* freeB, size_t* totalB) {
  *totalB = static_cast<size_t>(state().memoryLimit);
  *freeB = static_cast<size_t>(state().memoryLimit - state().allocated);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  if (n) std::memcpy(dst, src, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* dst, int v, size_t n, cudaStream_t) {
  if (n) std::memset(dst, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  *s = &state().stream;
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new EmuEvent();
  return cudaSuccess;
}
inline cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
inline cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
  e->t = std::chrono::steady_clock::now();
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}

template <class T>
cudaError_t cudaFuncSetAttribute(T* fn, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || static_cast<size_t>(value) > kOptinSmem) return record(cudaErrorInvalidValue);
    state().maxDynamicSmem[reinterpret_cast<const void*>(fn)] = value;
  }
  return cudaSuccess;
}

template <class T>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, T, int, size_t) {
  *n = 1;
  return cudaSuccess;
}

// ---- device side: fibers, barriers, shuffles ----
struct Fiber {
  ucontext_t ctx;
  bool done = false;
  int tid = 0;
  int shflParity = 0;
};
struct Warp {
  int arrived = 0;
  uint64_t gen = 0;
  alignas(8) unsigned char buf[2][32][8];
};
struct Block {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  ucontext_t sched;
  int current = 0;
  int alive = 0;
  int barArrived = 0;
  uint64_t barGen = 0;
  uint64_t events = 0;
  std::vector<unsigned char> smem;
  const std::function<void()>* body = nullptr;
};

inline Block*& currentBlock() {
  static Block* b = nullptr;
  return b;
}

constexpr size_t kStackBytes = 256 << 10;

inline std::vector<std::vector<char>>& stacks() {
  static std::vector<std::vector<char>> s;
  return s;
}

inline void yieldFiber() {
  Block& b = *currentBlock();
  Fiber& f = b.fibers[b.current];
  swapcontext(&f.ctx, &b.sched);
}

inline void fiberEntry() {
  Block& b = *currentBlock();
  (*b.body)();
  Fiber& f = b.fibers[b.current];
  f.done = true;
  --b.alive;
  ++b.events;
  // A __syncthreads that waits only for threads that have exited completes now.
  if (b.barArrived > 0 && b.barArrived == b.alive) {
    b.barArrived = 0;
    ++b.barGen;
  }
  // Returning switches to uc_link (the scheduler).
}

inline unsigned char* dynamicShared() { return currentBlock()->smem.data(); }

inline void __syncthreads() {
  Block& b = *currentBlock();
  const uint64_t gen = b.barGen;
  ++b.events;
  if (++b.barArrived == b.alive) {
    b.barArrived = 0;
    ++b.barGen;
    return;
  }
  while (b.barGen == gen) yieldFiber();
}

inline void warpBarrier(int warp) {
  Block& b = *currentBlock();
  Warp& w = b.warps[static_cast<size_t>(warp)];
  const uint64_t gen = w.gen;
  ++b.events;
  if (++w.arrived == 32) {
    w.arrived = 0;
    ++w.gen;
    return;
  }
  while (w.gen == gen) yieldFiber();
}

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int laneMask, int width = 32) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  if (mask != 0xffffffffu || width != 32) emuFail("only full-warp shuffles are emulated");
  Block& b = *currentBlock();
  Fiber& f = b.fibers[b.current];
  const int lane = f.tid & 31;
  const int warp = f.tid >> 5;
  const int par = f.shflParity;
  f.shflParity ^= 1;
  std::memcpy(b.warps[static_cast<size_t>(warp)].buf[par][lane], &v, sizeof(T));
  warpBarrier(warp);
  T out;
  std::memcpy(&out, b.warps[static_cast<size_t>(warp)].buf[par][lane ^ (laneMask & 31)], sizeof(T));
  return out;
}

inline float atomicAdd(float* a, float v) {
  const float old = *a;
  *a = old + v;
  return old;
}
inline double atomicAdd(double* a, double v) {
  const double old = *a;
  *a = old + v;
  return old;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }

// Separate from runGrid: getcontext "returns twice", which must not touch runGrid's loop variables.
__attribute__((noinline)) inline void initFiber(Block& b, int t) {
  Fiber& f = b.fibers[static_cast<size_t>(t)];
  f.done = false;
  f.tid = t;
  f.shflParity = 0;
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = stacks()[static_cast<size_t>(t)].data();
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = &b.sched;
  makecontext(&f.ctx, &fiberEntry, 0);
}

inline void runGrid(dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  const int n = static_cast<int>(block.x);
  if (block.y != 1 || block.z != 1 || n <= 0 || n > 1024 || n % 32 != 0) emuFail("block size must be 32..1024, a multiple of 32, one-dimensional");
  if (stacks().size() < static_cast<size_t>(n)) stacks().resize(static_cast<size_t>(n));
  for (auto& s : stacks())
    if (s.empty()) s.resize(kStackBytes);
  Block b;
  b.fibers.resize(static_cast<size_t>(n));
  b.warps.resize(static_cast<size_t>(n / 32));
  b.smem.resize(std::max<size_t>(smem, 16));
  b.body = &body;
  Block* saved = currentBlock();
  currentBlock() = &b;
  blockDim = block;
  gridDim = grid;
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      blockIdx.x = bx;
      blockIdx.y = by;
      blockIdx.z = 0;
      std::memset(b.smem.data(), 0xFF, b.smem.size());
      b.current = 0;
      b.alive = n;
      b.barArrived = 0;
      b.barGen = 0;
      b.events = 0;
      for (auto& w : b.warps) {
        w.arrived = 0;
        w.gen = 0;
      }
      for (int t = 0; t < n; ++t) initFiber(b, t);
      while (b.alive > 0) {
        const uint64_t before = b.events;
        for (int t = 0; t < n; ++t) {
          if (b.fibers[static_cast<size_t>(t)].done) continue;
          b.current = t;
          threadIdx.x = static_cast<unsigned>(t);
          threadIdx.y = threadIdx.z = 0;
          swapcontext(&b.sched, &b.fibers[static_cast<size_t>(t)].ctx);
        }
        if (b.events == before && b.alive > 0)
          emuFail("deadlock in block (" + std::to_string(bx) + ", " + std::to_string(by) +
                  "): threads wait at barriers that can never complete");
      }
      ++state().blocksRun;
    }
  }
  currentBlock() = saved;
}

// KMCL_LAUNCH(kernel, grid, block, smem, stream)(args...) in the emulation.
template <class... P>
auto launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t) {
  return [=](auto&&... args) {
    const auto it = state().maxDynamicSmem.find(reinterpret_cast<const void*>(kernel));
    const size_t allowed = it == state().maxDynamicSmem.end() ? kDefaultSmem : std::max<size_t>(kDefaultSmem, it->second);
    if (grid.x == 0 || grid.y == 0 || grid.y > 65535 || grid.z != 1 || smem > allowed) {
      record(cudaErrorInvalidConfiguration);
      return;
    }
    const std::function<void()> body = [&]() { kernel(args...); };
    runGrid(grid, block, smem, body);
  };
}

}  // namespace kmcl_emu_rt

using namespace kmcl_emu_rt;
