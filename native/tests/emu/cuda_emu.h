// A small CPU emulation of the part of CUDA that native/core/src/cuda uses, so that the very
// kernels and host code of the CUDA path run (slowly) on machines without a GPU: the native test
// compares them with the CPU path there, and an ASan/UBSan build of the test (CMake option
// KMCL_SANITIZE, CTest label "sanitizer") checks their indexing and the host code.
//
// Model: one block at a time; its threads are fibers (ucontext) on the calling thread, switched at
// __syncthreads and warp shuffles, which are real barriers (a lane blocks until its whole warp, or
// block, has arrived), and, with a schedule seed, at random instrumented memory accesses. Deadlocks
// (mismatched barriers, a shuffle with an exited lane) are detected and abort; lanes that meet at
// different shuffles (a shuffle under a lane-dependent branch) or with different lane masks are
// reported. Dynamic and static shared memory are filled with 0xFF bytes (NaN floats, −1 ints)
// before each block, device memory at cudaMalloc, so reads of unwritten memory show. Launch
// configurations are checked like the runtime does (block size, grid.y ≤ 65535, dynamic shared
// memory against cudaFuncSetAttribute).
//
// Schedules (setSchedule): seed 0 runs the threads in thread-id order, each until it blocks; a
// seed s > 0 runs the warps, and the lanes within each warp, in an order drawn afresh from s at
// every round, and preempts a thread at about 1 in 40 tracked memory accesses, so that a missing
// barrier shows as wrong values in either direction, not only in the race report.
//
// Memory checker (checker.h, builds with KMCL_EMU_CHECKER): a race detector for shared and global
// memory (every load and store of the kernels, through compiler instrumentation), guard zones
// around each cudaMalloc block and the dynamic shared memory, and around every workspace
// sub-buffer the host code declares (emuDescribeBuffers). Atomics are checked as atomics.
// Device math: math.h's fast device functions (rcp.approx.ftz, lg2.approx) are evaluated with
// their documented worst-case error here (rcpApproxFtz, lg2Approx below), so the accuracy tests
// cover what the GPU computes.
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
#include <random>
#include <string>
#include <vector>

#include "checker.h"

#if defined(__SANITIZE_ADDRESS__)
#define KMCL_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define KMCL_EMU_ASAN 1
#endif
#endif
#if defined(KMCL_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// Emulator internals that must not be seen by the race detector's instrumentation (atomics).
#define KMCL_EMU_UNCHECKED __attribute__((no_sanitize_thread, noinline))

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#if defined(KMCL_EMU_CHECKER)
// Static __shared__ arrays: one section, reset before each block and tracked by the checker.
// volatile: GCC declares the instrumentation hooks "leaf" (they never run code of this file), so it
// may keep file-local data in registers across them; with preemption inside a hook other threads do
// run in between, so shared data must be re-read (the block state escapes through publishBlock).
#define __shared__ static volatile __attribute__((section("kmcl_emu_shared")))
#else
#define __shared__ static
#endif
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
// Guard bytes before and after each cudaMalloc block and the dynamic shared memory (checker builds;
// ASan builds use exact sizes, so that ASan's own redzones catch overruns).
#if defined(KMCL_EMU_CHECKER)
constexpr size_t kGuard = 256;
#else
constexpr size_t kGuard = 0;
#endif
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
  unsigned char* raw = static_cast<unsigned char*>(std::malloc((bytes == 0 ? 1 : bytes) + 2 * kGuard));
  if (!raw) {
    *p = nullptr;
    return record(cudaErrorMemoryAllocation);
  }
  unsigned char* q = raw + kGuard;
  std::memset(q, 0xFF, bytes);  // NaN floats and doubles, −1 ints: reads of unwritten memory show
  s.allocations[q] = bytes;
  s.allocated += bytes;
  kmcl_emu_check::addAllocation(q, bytes, kGuard);
  *p = q;
  return cudaSuccess;
}
inline cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  State& s = state();
  auto it = s.allocations.find(p);
  if (it == s.allocations.end()) return record(cudaErrorInvalidValue);
  const size_t bytes = it->second;
  s.allocated -= bytes;
  s.allocations.erase(it);
  kmcl_emu_check::removeAllocation(p);
#if defined(KMCL_EMU_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(p, bytes);
#else
  (void)bytes;
#endif
  std::free(static_cast<unsigned char*>(p) - kGuard);
  return cudaSuccess;
}

// The host code's sub-buffers of a device allocation (backend.cuh, emulation builds): the bytes
// between them are guard zones. The checker reports kernel accesses there; under ASan they are
// poisoned (unpoisoned again by the next description or cudaFree).
inline void emuDescribeBuffers(const void* allocation, const std::vector<kmcl_emu_check::Region>& regions) {
  kmcl_emu_check::describeBuffers(allocation, regions);
#if defined(KMCL_EMU_ASAN)
  const auto it = state().allocations.find(const_cast<void*>(allocation));
  if (it == state().allocations.end()) return;
  unsigned char* base = static_cast<unsigned char*>(const_cast<void*>(allocation));
  ASAN_UNPOISON_MEMORY_REGION(base, it->second);
  size_t pos = 0;
  for (const auto& r : regions) {
    if (r.offset > pos) ASAN_POISON_MEMORY_REGION(base + pos, r.offset - pos);
    pos = std::max(pos, r.offset + r.bytes);
  }
  if (it->second > pos) ASAN_POISON_MEMORY_REGION(base + pos, it->second - pos);
#endif
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
// Copies and fills are the runtime's (DMA), not kernel accesses: under ASan they may touch the
// poisoned guard zones (the guard pattern is written and checked through them), so they bypass it.
#if defined(KMCL_EMU_ASAN)
__attribute__((no_sanitize("address"), noinline)) inline void emuCopy(void* dst, const void* src, size_t n) {
  volatile unsigned char* d = static_cast<unsigned char*>(dst);
  const volatile unsigned char* s = static_cast<const unsigned char*>(src);
  for (size_t i = 0; i < n; ++i) d[i] = s[i];
}
__attribute__((no_sanitize("address"), noinline)) inline void emuFill(void* dst, int v, size_t n) {
  volatile unsigned char* d = static_cast<unsigned char*>(dst);
  for (size_t i = 0; i < n; ++i) d[i] = static_cast<unsigned char>(v);
}
#else
inline void emuCopy(void* dst, const void* src, size_t n) { std::memcpy(dst, src, n); }
inline void emuFill(void* dst, int v, size_t n) { std::memset(dst, v, n); }
#endif
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind, cudaStream_t) {
  if (n) emuCopy(dst, src, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* dst, int v, size_t n, cudaStream_t) {
  if (n) emuFill(dst, v, n);
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

// ---- device math: the approximate instructions math.h uses on the device, at their documented
// worst-case error (PTX ISA: rcp.approx.f32 "maximum ulp error is 1 across the full range";
// CUDA's __log2f / lg2.approx.f32: "for x in [0.5, 2] the maximum absolute error is 2^-22,
// otherwise the maximum ulp error is 2"). The sign of the error is drawn from the input's bits, so
// results are deterministic; its size is always the maximum. rcp.approx.ftz flushes subnormal
// inputs and results to zero, as the device does.
inline uint32_t emuBits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
inline float emuFtz(float x) { return std::fabs(x) < 1.17549435e-38f ? std::copysign(0.0f, x) : x; }
inline bool emuErrorUp(float x) { return ((emuBits(x) * 0x9E3779B1u) >> 31) != 0; }
inline float rcpApproxFtz(float x) {
  x = emuFtz(x);
  if (x == 0.0f) return std::copysign(INFINITY, x);
  if (!std::isfinite(x)) return std::isnan(x) ? x : std::copysign(0.0f, x);
  const float r = 1.0f / x;  // correctly rounded, then 1 ulp off
  return emuFtz(std::nextafter(r, emuErrorUp(x) ? INFINITY : -INFINITY));
}
// __log2f compiles to lg2.approx.f32 (no .ftz without -ftz=true): subnormal inputs are kept.
inline float lg2Approx(float x) {
  if (x == 0.0f) return -INFINITY;
  if (x < 0.0f || std::isnan(x)) return NAN;
  if (std::isinf(x)) return INFINITY;
  const double exact = std::log2(static_cast<double>(x));
  if (x >= 0.5f && x <= 2.0f) return static_cast<float>(exact + (emuErrorUp(x) ? 0x1p-22 : -0x1p-22));
  const float r = static_cast<float>(exact);
  const float dir = emuErrorUp(x) ? INFINITY : -INFINITY;
  return std::nextafter(std::nextafter(r, dir), dir);
}

// ---- device side: fibers, barriers, shuffles ----
// The barrier bookkeeping is fenced off from the kernel's own accesses: the instrumentation hooks
// (where a thread may be preempted) are inserted after optimisation, so without these compiler
// barriers a hook could land between the read and the write of barArrived.
#define KMCL_EMU_COMPILER_BARRIER() asm volatile("" ::: "memory")

struct Fiber {
  ucontext_t ctx;
  bool done = false;
  int tid = 0;
  int shflParity = 0;
  int waiting = 0;  // 0: runnable, 1: at __syncthreads, 2: at a shuffle, 3: preempted
  uint64_t waitGen = 0;
};
struct Warp {
  int arrived = 0;
  uint64_t gen = 0;
  alignas(8) unsigned char buf[2][32][8];
  const void* site[32];  // where each lane called the shuffle, and its lane mask
  int laneMask[32];
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
  std::vector<unsigned char> smem;  // kGuard bytes, the dynamic shared memory, kGuard bytes
  size_t smemBytes = 0;
  const std::function<void()>* body = nullptr;
  const void* schedStackBottom = nullptr;  // ASan fiber switches
  size_t schedStackSize = 0;
};

// The schedule of every block (see the top of this file).
struct Schedule {
  uint64_t seed = 0;
  unsigned preemptPermille = 25;
};
inline Schedule& schedule() {
  static Schedule s = [] {
    Schedule d;
    // KMCL_EMU_PREEMPT=N: preempt at N per mille of the tracked accesses (default 25; 0: never).
    if (const char* v = std::getenv("KMCL_EMU_PREEMPT")) d.preemptPermille = static_cast<unsigned>(std::strtoul(v, nullptr, 10));
    return d;
  }();
  return s;
}

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
  Fiber& f = b.fibers[static_cast<size_t>(b.current)];
#if defined(KMCL_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, b.schedStackBottom, b.schedStackSize);
  swapcontext(&f.ctx, &b.sched);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  swapcontext(&f.ctx, &b.sched);
#endif
}

// Preemption at a memory access (the checker calls it): another thread runs before this one goes on.
inline void preemptFiber() {
  Block& b = *currentBlock();
  ++b.events;
  b.fibers[static_cast<size_t>(b.current)].waiting = 3;
  yieldFiber();
  b.fibers[static_cast<size_t>(b.current)].waiting = 0;
}

inline void fiberEntry() {
  KMCL_EMU_COMPILER_BARRIER();
  Block& b = *currentBlock();
#if defined(KMCL_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &b.schedStackBottom, &b.schedStackSize);
#endif
  (*b.body)();
  KMCL_EMU_COMPILER_BARRIER();
  Fiber& f = b.fibers[static_cast<size_t>(b.current)];
  f.done = true;
  --b.alive;
  ++b.events;
  // A __syncthreads that waits only for threads that have exited completes now.
  if (b.barArrived > 0 && b.barArrived == b.alive) {
    b.barArrived = 0;
    ++b.barGen;
  }
#if defined(KMCL_EMU_ASAN)
  __sanitizer_start_switch_fiber(nullptr, b.schedStackBottom, b.schedStackSize);
#endif
  // Returning switches to uc_link (the scheduler).
}

inline unsigned char* dynamicShared() {
  Block& b = *currentBlock();
  return b.smem.data() + kGuard;
}

inline void __syncthreads() {
  KMCL_EMU_COMPILER_BARRIER();
  Block& b = *currentBlock();
  const uint64_t gen = b.barGen;
  ++b.events;
  if (++b.barArrived == b.alive) {
    b.barArrived = 0;
    ++b.barGen;
    KMCL_EMU_COMPILER_BARRIER();
    return;
  }
  b.fibers[static_cast<size_t>(b.current)].waiting = 1;
  b.fibers[static_cast<size_t>(b.current)].waitGen = gen;
  while (b.barGen == gen) yieldFiber();
  b.fibers[static_cast<size_t>(b.current)].waiting = 0;
  KMCL_EMU_COMPILER_BARRIER();
}

inline void warpBarrier(int warp) {
  KMCL_EMU_COMPILER_BARRIER();
  Block& b = *currentBlock();
  Warp& w = b.warps[static_cast<size_t>(warp)];
  const uint64_t gen = w.gen;
  ++b.events;
  if (++w.arrived == 32) {
    w.arrived = 0;
    ++w.gen;
    // Every lane must have come from the same shuffle with the same lane mask.
    for (int l = 1; l < 32; ++l) {
      if (w.site[l] != w.site[0] || w.laneMask[l] != w.laneMask[0]) {
        char buf[200];
        std::snprintf(buf, sizeof(buf),
                      "warp shuffle divergence: lanes 0 and %d of warp %d, block (%u,%u), met at %s (a shuffle under a "
                      "lane-dependent branch?)",
                      l, warp, blockIdx.x, blockIdx.y, w.site[l] != w.site[0] ? "different shuffles" : "different lane masks");
        kmcl_emu_check::reportFinding(buf);
        break;
      }
    }
    KMCL_EMU_COMPILER_BARRIER();
    return;
  }
  b.fibers[static_cast<size_t>(b.current)].waiting = 2;
  while (w.gen == gen) yieldFiber();
  b.fibers[static_cast<size_t>(b.current)].waiting = 0;
  KMCL_EMU_COMPILER_BARRIER();
}

template <class T>
__attribute__((noinline)) T __shfl_xor_sync(unsigned mask, T v, int laneMask, int width = 32) {
  static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
  if (mask != 0xffffffffu || width != 32) emuFail("only full-warp shuffles are emulated");
  Block& b = *currentBlock();
  Fiber& f = b.fibers[static_cast<size_t>(b.current)];
  const int lane = f.tid & 31;
  const int warp = f.tid >> 5;
  const int par = f.shflParity;
  f.shflParity ^= 1;
  Warp& w = b.warps[static_cast<size_t>(warp)];
  std::memcpy(w.buf[par][lane], &v, sizeof(T));
  w.site[lane] = __builtin_return_address(0);
  w.laneMask[lane] = laneMask;
  warpBarrier(warp);
  T out;
  std::memcpy(&out, w.buf[par][lane ^ (laneMask & 31)], sizeof(T));
  return out;
}

// Atomics: one thread runs at a time and nothing preempts inside these, so a plain read-modify-write
// is atomic; the checker records them as atomics (not instrumented: KMCL_EMU_UNCHECKED).
KMCL_EMU_UNCHECKED inline float atomicAdd(float* a, float v) {
  kmcl_emu_check::atomicAccess(a, sizeof(float));
  const float old = *a;
  *a = old + v;
  return old;
}
KMCL_EMU_UNCHECKED inline double atomicAdd(double* a, double v) {
  kmcl_emu_check::atomicAccess(a, sizeof(double));
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

inline void resumeFiber(Block& b, int t) {
  b.current = t;
  threadIdx.x = static_cast<unsigned>(t);
  threadIdx.y = threadIdx.z = 0;
  kmcl_emu_check::setThread(t);
#if defined(KMCL_EMU_ASAN)
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, stacks()[static_cast<size_t>(t)].data(), kStackBytes);
  swapcontext(&b.sched, &b.fibers[static_cast<size_t>(t)].ctx);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  swapcontext(&b.sched, &b.fibers[static_cast<size_t>(t)].ctx);
#endif
}

#if defined(KMCL_EMU_CHECKER)
extern "C" unsigned char __start_kmcl_emu_shared[] __attribute__((weak));
extern "C" unsigned char __stop_kmcl_emu_shared[] __attribute__((weak));
#endif

inline void runGrid(const char* name, dim3 grid, dim3 block, size_t smem, const std::function<void()>& body) {
  const int n = static_cast<int>(block.x);
  if (block.y != 1 || block.z != 1 || n <= 0 || n > 1024 || n % 32 != 0) emuFail("block size must be 32..1024, a multiple of 32, one-dimensional");
  if (stacks().size() < static_cast<size_t>(n)) stacks().resize(static_cast<size_t>(n));
  for (auto& s : stacks())
    if (s.empty()) s.resize(kStackBytes);
  Block b;
  b.fibers.resize(static_cast<size_t>(n));
  b.warps.resize(static_cast<size_t>(n / 32));
  b.smemBytes = smem;
  b.smem.resize(std::max<size_t>(smem + 2 * kGuard, 16));  // never empty: memset of data() below
  b.body = &body;
  Block* saved = currentBlock();
  currentBlock() = &b;
  kmcl_emu_check::publishBlock(&b);  // see __shared__ above: b escapes, so no hook call is assumed to keep it unchanged
  blockDim = block;
  gridDim = grid;
  const Schedule sch = schedule();
  std::mt19937_64 rng(sch.seed * 0x9E3779B97F4A7C15ull + state().blocksRun);
  std::vector<int> order(static_cast<size_t>(n)), warpOrder(static_cast<size_t>(n / 32));
  for (int t = 0; t < n; ++t) order[static_cast<size_t>(t)] = t;
  kmcl_emu_check::beginLaunch(name, grid.x, grid.y, block.x);
  kmcl_emu_check::setPreemption(sch.seed ? sch.seed + state().blocksRun : 0, sch.preemptPermille, &preemptFiber);
  for (unsigned by = 0; by < grid.y; ++by) {
    for (unsigned bx = 0; bx < grid.x; ++bx) {
      blockIdx.x = bx;
      blockIdx.y = by;
      blockIdx.z = 0;
      std::memset(b.smem.data(), 0xFF, b.smem.size());
#if defined(KMCL_EMU_CHECKER)
      if (__start_kmcl_emu_shared) std::memset(__start_kmcl_emu_shared, 0xFF, size_t(__stop_kmcl_emu_shared - __start_kmcl_emu_shared));
#endif
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
      kmcl_emu_check::beginBlock(bx, by, b.smem.data() + kGuard, smem, kGuard, &b.barGen);
      while (b.alive > 0) {
        const uint64_t before = b.events;
        if (sch.seed) {
          // Warps in a random order, and the lanes of each warp in a random order.
          for (size_t w = 0; w < warpOrder.size(); ++w) warpOrder[w] = static_cast<int>(w);
          std::shuffle(warpOrder.begin(), warpOrder.end(), rng);
          for (size_t w = 0; w < warpOrder.size(); ++w) {
            int* lanes = order.data() + 32 * w;
            for (int l = 0; l < 32; ++l) lanes[l] = 32 * warpOrder[w] + l;
            std::shuffle(lanes, lanes + 32, rng);
          }
        }
        for (int t : order) {
          if (b.fibers[static_cast<size_t>(t)].done) continue;
          resumeFiber(b, t);
        }
        if (b.events == before && b.alive > 0) {
          int st[4] = {0, 0, 0, 0};
          for (const Fiber& f : b.fibers)
            if (!f.done) ++st[f.waiting & 3];
          uint64_t g0 = ~uint64_t(0), g1 = 0;
          for (const Fiber& f : b.fibers) {
            g0 = std::min(g0, f.waitGen);
            g1 = std::max(g1, f.waitGen);
          }
          std::string warps = " barGen " + std::to_string(b.barGen) + " waitGen " + std::to_string(g0) + ".." + std::to_string(g1) + " states " + std::to_string(st[0]) + "/" + std::to_string(st[1]) + "/" + std::to_string(st[2]) + "/" + std::to_string(st[3]) + ";";
          for (size_t w = 0; w < b.warps.size(); ++w)
            if (b.warps[w].arrived) warps += " warp " + std::to_string(w) + ": " + std::to_string(b.warps[w].arrived) + "/32 lanes at a shuffle;";
          emuFail(std::string("deadlock in kernel ") + name + ", block (" + std::to_string(bx) + ", " + std::to_string(by) +
                  "): threads wait at barriers that can never complete (" + std::to_string(b.alive) + " threads alive, " +
                  std::to_string(b.barArrived) + " at __syncthreads;" + warps + ")");
        }
      }
      kmcl_emu_check::endBlock();
      ++state().blocksRun;
    }
  }
  kmcl_emu_check::endLaunch();
  currentBlock() = saved;
  kmcl_emu_check::publishBlock(saved);
}

// KMCL_LAUNCH(kernel, grid, block, smem, stream)(args...) in the emulation.
template <class... P>
auto launch(void (*kernel)(P...), const char* name, dim3 grid, dim3 block, size_t smem, cudaStream_t) {
  return [=](auto&&... args) {
    const auto it = state().maxDynamicSmem.find(reinterpret_cast<const void*>(kernel));
    const size_t allowed = it == state().maxDynamicSmem.end() ? kDefaultSmem : std::max<size_t>(kDefaultSmem, it->second);
    if (grid.x == 0 || grid.y == 0 || grid.y > 65535 || grid.z != 1 || smem > allowed) {
      record(cudaErrorInvalidConfiguration);
      return;
    }
    const std::function<void()> body = [&]() { kernel(args...); };
    runGrid(name, grid, block, smem, body);
  };
}

inline void setSchedule(uint64_t seed) { schedule().seed = seed; }

}  // namespace kmcl_emu_rt

using namespace kmcl_emu_rt;
