// Host side of the CUDA path: label preprocessing (anchor rows, tiles), the reusable device
// workspace, pinned staging of inputs and outputs, the kernel sequence, errors. Included by
// device.cu and, with KMCL_CUDA_EMULATION, by the CPU emulation in native/tests/.
//
// One call: checkShapeAndOptions; size the shape-dependent buffers and grow the workspace (an
// impossible shape fails here, before any input is read); build the label tables on the host
// (bitsets, the class-major anchor rows, each sample's rows, tiles); grow the workspace for them;
// upload the tables and the inputs through two pinned 16 MiB staging buffers (the memcpy into one
// overlaps the DMA from the other); run, on one stream:
//   reciprocal          1/v once per variance element (math.h's log and derivative terms take it)
//   aslReconstruction   one block per sample: ASL, E_ik, the row's log-sum-exp, and every gradient
//                       element of the sample (initialises the gradient buffers: no memset)
//   pairKernel<1>       grid (anchor tiles, partner chunks): S partials → mergeRowStats
//   pairKernel<2>       grid (anchor tiles): co-positive terms → anchorTerms (|A(i)|, c_i)
//   pairKernel<3>       grid (anchor tiles, partner chunks): atomics into the mu/variance gradients
//   lossTerms           the three sums over the batch, in double, fixed order
// then download the terms and the requested gradients through the staging buffers.
//
// Device memory (bytes; R = anchor rows ≤ B·K, NC = partner chunks, R·NC ≤ 4 Mi):
//   inputs      4·(B·M + B·K + B·K·D + 2·B·Kv·Dv)            features, logits, mu, variance, 1/v
//   gradients   4·(B·M + B·K + B·K·D + B·Kv·Dv)              only when gradients are asked for
//   scratch     4·B·K·2 + B·(3·8 + 4 + 4·⌈K/32⌉ + 12) + R·(48 + 16·NC) + 16·⌈R/32⌉ + 4·(K+1)
// i.e. O(B·K) beyond inputs and outputs, no B² term, plus 1/8 headroom when the workspace grows.
// B = 16384, K = 80, M = D = 128, variance [B, 1, M], 3 labels per sample: 1.42 GB (1.49 GiB
// allocated with the headroom), within the 2 GiB target.
#pragma once

#if !defined(KMCL_CUDA_EMULATION)
#include <cuda_runtime.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_internal.h"
#include "pair_select.cuh"
#include "sample_kernels.cuh"
#include "kmcl/kmcl.h"

#if defined(KMCL_CUDA_EMULATION)
#define KMCL_LAUNCH_NAMED(kernel, name, grid, block, smem, stream) ::kmcl_emu_rt::launch(kernel, name, grid, block, smem, stream)
#else
#define KMCL_LAUNCH_NAMED(kernel, name, grid, block, smem, stream) kernel<<<grid, block, smem, stream>>>
#endif
#define KMCL_LAUNCH(kernel, grid, block, smem, stream) KMCL_LAUNCH_NAMED(kernel, #kernel, grid, block, smem, stream)

// Guard zones between the workspace sub-buffers: always in the CPU emulation (whose checker reports
// any kernel access to them), in device builds with KMCL_CUDA_GUARDS (CMake option of the same
// name, on in Debug builds) or at run time with the environment variable KMCL_CUDA_GUARDS=1. The
// gaps are filled with kGuardByte before the kernels and checked after them; a changed byte fails
// the call with an error naming the buffer it follows.
#if defined(KMCL_CUDA_EMULATION) || defined(KMCL_CUDA_GUARDS)
#define KMCL_GUARDS_COMPILED 1
#else
#define KMCL_GUARDS_COMPILED 0
#endif

// Every CUDA call goes through this: a failure becomes std::runtime_error naming the call and site.
#define KMCL_CUDA_CHECK(call) ::kmcl::KMCL_CUDA_NS::check((call), #call, __FILE__, __LINE__)

namespace kmcl {
namespace KMCL_CUDA_NS {

inline void check(cudaError_t err, const char* call, const char* file, int line) {
  if (err == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error, so that the next call starts clean
  throw std::runtime_error(std::string("CUDA error ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) +
                           ") in " + call + " at " + file + ":" + std::to_string(line));
}

// Shared memory of one sweep's launch: partner tiles of tileP rows of strideD floats.
struct SweepShape {
  int tileP = 0;
  int strideD = 0;
  size_t smemBytes = 0;
};

// forcedTile > 0 (a test hook) asks for that many partners per tile, rounded up to a multiple of 32/L.
inline SweepShape sweepShape(const PairConfig& c, int sweep, size_t budget, int forcedTile) {
  SweepShape s;
  if (c.generic) {
    s.tileP = 1;
    s.strideD = 1;
    s.smemBytes = 0;
    return s;
  }
  const int G = 32 / c.L;
  int SD = c.L * c.NJ;
  // Lanes j of group g read word pp·SD + j: conflict-free when SD/L is odd (or one group).
  if (G > 1 && (SD / c.L) % 2 == 0) SD += c.L;
  const int SV = c.vdim ? SD : 1;
  const size_t floats = static_cast<size_t>(SD) + 2 * static_cast<size_t>(SV) + (sweep == 3 ? static_cast<size_t>(SD + SV) : 0);
  const size_t perPartner = floats * sizeof(float) + 2 * sizeof(int);
  int tp = 256;
  while (tp > G && static_cast<size_t>(tp) * perPartner > budget) tp /= 2;
  if (forcedTile > 0) tp = std::min(tp, (forcedTile + G - 1) / G * G);
  s.tileP = tp;
  s.strideD = SD;
  s.smemBytes = static_cast<size_t>(tp) * perPartner;
  return s;
}

constexpr unsigned char kGuardByte = 0xA5;
constexpr uint64_t kGuardBytes = 256;

// A named buffer of a layout (for guard-zone messages).
struct Region {
  uint64_t offset;
  uint64_t bytes;
  const char* name;
};

// Byte offsets of buffers in one allocation, 256-byte aligned, with overflow checks. With guard > 0
// every buffer is followed (and the first preceded) by at least that many unused bytes.
class Layout {
 public:
  explicit Layout(uint64_t guard = 0) : bytes_(guard), guard_(guard) {}
  template <class T>
  size_t add(uint64_t count, const char* name) {
    const uint64_t off = (bytes_ + 255) / 256 * 256;
    const uint64_t size = count * sizeof(T);
    if (count != 0 && size / sizeof(T) != count) overflow_ = true;
    if (off + size < off) overflow_ = true;
    bytes_ = off + size + guard_;
    regions_.push_back(Region{off, size, name});
    return static_cast<size_t>(off);
  }
  uint64_t bytes() const { return bytes_; }
  bool overflow() const { return overflow_ || bytes_ > (uint64_t(1) << 60); }
  const std::vector<Region>& regions() const { return regions_; }

 private:
  uint64_t bytes_ = 0;
  uint64_t guard_ = 0;
  bool overflow_ = false;
  std::vector<Region> regions_;
};

class Backend {
 public:
  LossParts compute(const Problem<float>& problem, const Options& options, const Gradients<float>* gradients) {
    checkShapeAndOptions(problem.shape, options);
    if (!problem.features || !problem.logits || !problem.labels || !problem.mu || !problem.variance) {
      throw std::invalid_argument("computeCuda: an input pointer is null");
    }
    // One call at a time: the Node addon may call from several AsyncWorkers.
    std::lock_guard<std::mutex> lock(mutex_);
    try {
      return run(problem, options, gradients);
    } catch (...) {
      recover();
      throw;
    }
  }

  void release() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!initialized_) return;
    if (stream_) cudaStreamSynchronize(stream_);
    cudaGetLastError();
    freeWorkspace();
    for (int b = 0; b < 2; ++b) {
      if (pinned_[b]) cudaFreeHost(pinned_[b]);
      pinned_[b] = nullptr;
    }
    pinnedBytes_ = 0;
    workspacePeak_ = 0;
    cudaGetLastError();
  }

  cuda_internal::CallStats lastStats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  cuda_internal::DeviceProps props() {
    std::lock_guard<std::mutex> lock(mutex_);
    try {
      init();
      cuda_internal::DeviceProps d;
      d.name = deviceName_;
      d.smCount = smCount_;
      d.clockKHz = clockKHz_;
      d.major = major_;
      d.minor = minor_;
      size_t freeB = 0, totalB = 0;
      KMCL_CUDA_CHECK(cudaMemGetInfo(&freeB, &totalB));
      d.totalMemory = static_cast<int64_t>(totalB);
      d.freeMemory = static_cast<int64_t>(freeB);
      return d;
    } catch (...) {
      cudaGetLastError();
      throw;
    }
  }

 private:
  static constexpr size_t kStageBytes = size_t(16) << 20;  // per pinned staging buffer (two of them)
  static constexpr int64_t kMaxPartials = int64_t(4) << 20;  // sweep-1 (row, chunk) partials: 64 MiB

  std::mutex mutex_;
  bool initialized_ = false;
  int device_ = 0;
  int smCount_ = 1;
  int clockKHz_ = 0;
  int major_ = 0, minor_ = 0;
  size_t smemOptin_ = 48 << 10;
  std::string deviceName_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t stageDone_[2] = {nullptr, nullptr};
  cudaEvent_t timing_[4] = {nullptr, nullptr, nullptr, nullptr};
  unsigned char* ws_ = nullptr;
  size_t wsBytes_ = 0;
  size_t workspacePeak_ = 0;
  void* pinned_[2] = {nullptr, nullptr};
  size_t pinnedBytes_ = 0;
  int stageNext_ = 0;
  cuda_internal::CallStats stats_;

  void init() {
    if (initialized_) return;
    KMCL_CUDA_CHECK(cudaGetDevice(&device_));
    KMCL_CUDA_CHECK(cudaSetDevice(device_));
    cudaDeviceProp prop{};
    KMCL_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
    deviceName_ = prop.name;
    smCount_ = std::max(1, prop.multiProcessorCount);
    major_ = prop.major;
    minor_ = prop.minor;
    smemOptin_ = std::max<size_t>(prop.sharedMemPerBlockOptin, prop.sharedMemPerBlock);
    KMCL_CUDA_CHECK(cudaDeviceGetAttribute(&clockKHz_, cudaDevAttrClockRate, device_));
    if (!stream_) KMCL_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    for (int b = 0; b < 2; ++b)
      if (!stageDone_[b]) KMCL_CUDA_CHECK(cudaEventCreateWithFlags(&stageDone_[b], cudaEventDisableTiming));
    for (int t = 0; t < 4; ++t)
      if (!timing_[t]) KMCL_CUDA_CHECK(cudaEventCreate(&timing_[t]));
    initialized_ = true;
  }

  void freeWorkspace() {
    if (ws_) cudaFree(ws_);
    ws_ = nullptr;
    wsBytes_ = 0;
  }

  // After a failure: wait for what was queued, clear non-sticky errors, drop the workspace (it is
  // reallocated by the next call). A sticky error (a kernel fault) leaves the CUDA context unusable
  // for this process; the next call then reports it again.
  void recover() {
    if (stream_) cudaStreamSynchronize(stream_);
    cudaGetLastError();
    freeWorkspace();
    cudaGetLastError();
  }

  void ensureWorkspace(uint64_t bytes) {
    if (bytes <= wsBytes_) return;
    freeWorkspace();
    // 1/8 headroom: the label-dependent part changes from batch to batch.
    const uint64_t want = bytes + bytes / 8;
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, static_cast<size_t>(want));
    uint64_t got = want;
    if (err != cudaSuccess) {
      cudaGetLastError();
      err = cudaMalloc(&p, static_cast<size_t>(bytes));
      got = bytes;
    }
    if (err != cudaSuccess) {
      cudaGetLastError();
      size_t freeB = 0, totalB = 0;
      cudaMemGetInfo(&freeB, &totalB);
      cudaGetLastError();
      throw std::runtime_error(std::string("CUDA out of memory: this problem needs ") + std::to_string(bytes >> 20) +
                               " MiB of device memory, the device has " + std::to_string(freeB >> 20) + " MiB free of " +
                               std::to_string(totalB >> 20) + " MiB (" + cudaGetErrorString(err) + ")");
    }
    ws_ = static_cast<unsigned char*>(p);
    wsBytes_ = static_cast<size_t>(got);
    workspacePeak_ = std::max(workspacePeak_, wsBytes_);
  }

  void ensurePinned() {
    for (int b = 0; b < 2; ++b) {
      if (!pinned_[b]) KMCL_CUDA_CHECK(cudaHostAlloc(&pinned_[b], kStageBytes, cudaHostAllocDefault));
    }
    pinnedBytes_ = 2 * kStageBytes;
  }

  // Host to device through the two pinned buffers: the copy into one overlaps the DMA from the other.
  void upload(void* dst, const void* src, size_t bytes) {
    const unsigned char* s = static_cast<const unsigned char*>(src);
    unsigned char* d = static_cast<unsigned char*>(dst);
    for (size_t off = 0; off < bytes; off += kStageBytes) {
      const size_t n = std::min(kStageBytes, bytes - off);
      const int b = stageNext_;
      stageNext_ ^= 1;
      KMCL_CUDA_CHECK(cudaEventSynchronize(stageDone_[b]));  // its previous DMA has finished
      std::memcpy(pinned_[b], s + off, n);
      KMCL_CUDA_CHECK(cudaMemcpyAsync(d + off, pinned_[b], n, cudaMemcpyHostToDevice, stream_));
      KMCL_CUDA_CHECK(cudaEventRecord(stageDone_[b], stream_));
    }
  }

  // Device to host through the pinned buffers: chunk c is copied out while chunk c + 1 transfers.
  void download(void* dst, const void* src, size_t bytes) {
    const unsigned char* s = static_cast<const unsigned char*>(src);
    unsigned char* d = static_cast<unsigned char*>(dst);
    int pendingBuf = -1;
    size_t pendingOff = 0, pendingN = 0;
    auto flush = [&]() {
      if (pendingBuf < 0) return;
      KMCL_CUDA_CHECK(cudaEventSynchronize(stageDone_[pendingBuf]));
      std::memcpy(d + pendingOff, pinned_[pendingBuf], pendingN);
      pendingBuf = -1;
    };
    for (size_t off = 0; off < bytes; off += kStageBytes) {
      const size_t n = std::min(kStageBytes, bytes - off);
      const int b = stageNext_;
      stageNext_ ^= 1;
      KMCL_CUDA_CHECK(cudaEventSynchronize(stageDone_[b]));
      KMCL_CUDA_CHECK(cudaMemcpyAsync(pinned_[b], s + off, n, cudaMemcpyDeviceToHost, stream_));
      KMCL_CUDA_CHECK(cudaEventRecord(stageDone_[b], stream_));
      flush();
      pendingBuf = b;
      pendingOff = off;
      pendingN = n;
    }
    flush();
  }

  // The gaps between the regions (sorted by offset) within [0, total).
  static std::vector<Region> gaps(const std::vector<Region>& regions, uint64_t total) {
    std::vector<Region> g;
    uint64_t pos = 0;
    const char* before = "(start of the workspace)";
    for (const Region& r : regions) {
      if (r.offset > pos) g.push_back(Region{pos, r.offset - pos, before});
      pos = std::max(pos, r.offset + r.bytes);
      before = r.name;
    }
    if (total > pos) g.push_back(Region{pos, total - pos, before});
    return g;
  }

  void fillGuards(const std::vector<Region>& regions, uint64_t total) {
    for (const Region& g : gaps(regions, total))
      KMCL_CUDA_CHECK(cudaMemsetAsync(ws_ + g.offset, kGuardByte, static_cast<size_t>(g.bytes), stream_));
  }

  // After the kernels: every guard byte must still hold the pattern.
  void checkGuards(const std::vector<Region>& regions, uint64_t total) {
    const std::vector<Region> gs = gaps(regions, total);
    std::vector<std::vector<unsigned char>> copies(gs.size());
    for (size_t i = 0; i < gs.size(); ++i) {
      copies[i].resize(static_cast<size_t>(gs[i].bytes));
      KMCL_CUDA_CHECK(cudaMemcpyAsync(copies[i].data(), ws_ + gs[i].offset, copies[i].size(), cudaMemcpyDeviceToHost, stream_));
    }
    KMCL_CUDA_CHECK(cudaStreamSynchronize(stream_));
    for (size_t i = 0; i < gs.size(); ++i) {
      size_t bad = 0, first = 0;
      for (size_t b = 0; b < copies[i].size(); ++b) {
        if (copies[i][b] != kGuardByte) {
          if (bad++ == 0) first = b;
        }
      }
      if (bad) {
        throw std::runtime_error("CUDA guard zone check: " + std::to_string(bad) + " byte(s) of the guard zone after buffer '" +
                                 gs[i].name + "' were overwritten by a kernel (the first " + std::to_string(first) +
                                 " bytes past its end)");
      }
    }
  }

  template <class T>
  T* at(size_t offset) const {
    return reinterpret_cast<T*>(ws_ + offset);
  }

  static bool envFlag(const char* name) {
    const char* v = std::getenv(name);
    return v && *v && std::strcmp(v, "0") != 0;
  }

  static int64_t envInt(const char* name) {
    const char* v = std::getenv(name);
    return v && *v ? std::max<int64_t>(0, std::strtoll(v, nullptr, 10)) : 0;
  }

  void launchCheck(const char* what) {
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) check(err, what, __FILE__, __LINE__);
  }

  LossParts run(const Problem<float>& pr, const Options& o, const Gradients<float>* gradients) {
    init();
    KMCL_CUDA_CHECK(cudaSetDevice(device_));
    cudaGetLastError();

    const Shape& sh = pr.shape;
    const int64_t B = sh.batch, K = sh.classes, M = sh.dim, D = sh.muDim, Kv = sh.varianceClasses, Dv = sh.varianceDim;
    const int64_t kInt = std::numeric_limits<int32_t>::max();
    if (B > kInt / std::max<int64_t>(K, 1) || M > kInt || D > kInt) {
      throw std::runtime_error("computeCuda: batch × classes and dim must stay below 2^31 (got batch " + std::to_string(B) +
                               ", classes " + std::to_string(K) + ", dim " + std::to_string(M) + ")");
    }
    const bool wantGrad = gradients != nullptr;
    const int64_t W = (K + 31) / 32;

    // ---- phase 1: buffers whose size follows from the shape (an absurd shape fails here, before
    // any input is read) ----
    const bool guards = KMCL_GUARDS_COMPILED || envFlag("KMCL_CUDA_GUARDS");
    Layout lay(guards ? kGuardBytes : 0);
    const size_t oFeatures = lay.add<float>(sh.featuresSize(), "features");
    const size_t oLogits = lay.add<float>(sh.logitsSize(), "logits");
    const size_t oMu = lay.add<float>(sh.muSize(), "mu");
    const size_t oVar = lay.add<float>(sh.varianceSize(), "variance");
    const size_t oInvVar = lay.add<float>(sh.varianceSize(), "1/variance");
    const size_t oGFeatures = lay.add<float>(wantGrad ? sh.featuresSize() : 0, "d/dfeatures");
    const size_t oGLogits = lay.add<float>(wantGrad ? sh.logitsSize() : 0, "d/dlogits");
    const size_t oGMu = lay.add<float>(wantGrad ? sh.muSize() : 0, "d/dmu");
    const size_t oGVar = lay.add<float>(wantGrad ? sh.varianceSize() : 0, "d/dvariance");
    const size_t oU = lay.add<float>(B * K, "U (E_ik)");
    const size_t oGE = lay.add<float>(wantGrad ? B * K : 0, "GE (dL/dE_ik)");
    const size_t oAslRow = lay.add<double>(B, "aslRow");
    const size_t oRecRow = lay.add<double>(B, "recRow");
    const size_t oConRow = lay.add<double>(B, "conRow");
    const size_t oCoef = lay.add<float>(B, "coef");
    const size_t oResult = lay.add<double>(4, "result");
    if (lay.overflow()) throw std::runtime_error("computeCuda: the problem is too large to address");
    ensureWorkspace(lay.bytes());

    // ---- labels: bitsets, anchor rows (class-major), their per-sample lists, tiles ----
    std::vector<uint32_t> bits(static_cast<size_t>(B * W), 0u);
    std::vector<int> labelCount(static_cast<size_t>(B), 0), classCount(static_cast<size_t>(K), 0);
    for (int64_t i = 0; i < B; ++i) {
      const float* y = pr.labels + i * K;
      for (int64_t k = 0; k < K; ++k) {
        if (y[k] != 0.0f) {
          bits[static_cast<size_t>(i * W + (k >> 5))] |= 1u << (k & 31);
          ++labelCount[static_cast<size_t>(i)];
          ++classCount[static_cast<size_t>(k)];
        }
      }
    }
    std::vector<int> classRowStart(static_cast<size_t>(K + 1), 0);
    for (int64_t k = 0; k < K; ++k)
      classRowStart[k + 1] = classRowStart[k] + (classCount[k] >= 2 ? classCount[k] : 0);
    const int64_t R = classRowStart[static_cast<size_t>(K)];
    std::vector<int> rowSample(static_cast<size_t>(std::max<int64_t>(R, 1)));
    std::vector<int> sampleRowStart(static_cast<size_t>(B + 1), 0), sampleRows(static_cast<size_t>(std::max<int64_t>(R, 1)));
    {
      std::vector<int> cursor(classRowStart.begin(), classRowStart.end() - 1);
      std::vector<int> rowsOfSample(static_cast<size_t>(B), 0);
      for (int64_t i = 0; i < B; ++i) {
        for (int64_t w = 0; w < W; ++w) {
          uint32_t word = bits[static_cast<size_t>(i * W + w)];
          while (word) {
            const int64_t k = w * 32 + __builtin_ctz(word);
            word &= word - 1;
            if (classCount[static_cast<size_t>(k)] >= 2) {
              rowSample[static_cast<size_t>(cursor[k]++)] = static_cast<int>(i);
              ++rowsOfSample[static_cast<size_t>(i)];
            }
          }
        }
      }
      for (int64_t i = 0; i < B; ++i) sampleRowStart[i + 1] = sampleRowStart[i] + rowsOfSample[i];
      std::vector<int> fill(sampleRowStart.begin(), sampleRowStart.end() - 1);
      for (int64_t r = 0; r < R; ++r) sampleRows[static_cast<size_t>(fill[rowSample[r]]++)] = static_cast<int>(r);
    }

    const PairConfig cfg = choosePairConfig(D, Dv, envFlag("KMCL_CUDA_FORCE_GENERIC"));
    const int rowsPerTile = cfg.generic ? kWarps : kWarps * cfg.RA;
    std::vector<Tile> tiles;
    for (int64_t k = 0; k < K; ++k) {
      for (int r0 = classRowStart[k]; r0 < classRowStart[k + 1]; r0 += rowsPerTile) {
        Tile t;
        t.cls = static_cast<int>(k);
        t.rowBegin = r0;
        t.rowEnd = std::min(classRowStart[k + 1], r0 + rowsPerTile);
        t.pad = 0;
        tiles.push_back(t);
      }
    }
    const int64_t T = static_cast<int64_t>(tiles.size());
    const bool runSweep3 = wantGrad && R > 0 && o.weightContrastive > 0;

    // Kernels and their shared memory; partner chunks for sweeps 1 and 3.
    const size_t budget = std::min<size_t>(smemOptin_, size_t(96) << 10);
    PairKernelFn fn[4] = {nullptr, selectPairKernel<1>(cfg), selectPairKernel<2>(cfg), selectPairKernel<3>(cfg)};
    SweepShape shape[4];
    // Test hooks of the native test: small partner chunks and tiles reach the chunk merges and the
    // ragged tile edges with small problems.
    const int64_t forcedChunk = envInt("KMCL_CUDA_TEST_CHUNK");
    const int forcedTile = static_cast<int>(std::min<int64_t>(envInt("KMCL_CUDA_TEST_TILE"), 256));
    for (int sw = 1; sw <= 3; ++sw) {
      if (!fn[sw]) throw std::logic_error("computeCuda: no pair kernel for this configuration");
      shape[sw] = sweepShape(cfg, sw, budget, forcedTile);
    }
    int64_t NC = 1, chunk = std::max<int64_t>(B, 1);
    if (R > 0) {
      int perSM = 1;
      KMCL_CUDA_CHECK(cudaFuncSetAttribute(fn[1], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shape[1].smemBytes)));
      KMCL_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSM, fn[1], kThreads, shape[1].smemBytes));
      const int64_t target = 2 * static_cast<int64_t>(std::max(perSM, 1)) * smCount_;
      NC = std::max<int64_t>(1, (target + T - 1) / T);
      NC = std::max<int64_t>(NC, (B + 1023) / 1024);          // blocked sums: ≤ 1024 partners per block
      NC = std::min<int64_t>(NC, std::max<int64_t>(1, kMaxPartials / R));
      NC = std::min<int64_t>(NC, std::max<int64_t>(1, (B + 31) / 32));
      NC = std::min<int64_t>(NC, 65535);
      chunk = ((B + NC - 1) / NC + 31) / 32 * 32;
      if (forcedChunk > 0) chunk = std::max<int64_t>(forcedChunk, (B + 65534) / 65535);
      NC = (B + chunk - 1) / chunk;
    }

    // ---- phase 2: label-dependent buffers; the tables travel as one blob ----
    Layout blob(guards ? kGuardBytes : 0);
    const size_t bBits = blob.add<uint32_t>(B * W, "label bits");
    const size_t bLabelCount = blob.add<int>(B, "labelCount");
    const size_t bSampleRowStart = blob.add<int>(B + 1, "sampleRowStart");
    const size_t bRowSample = blob.add<int>(R, "rowSample");
    const size_t bSampleRows = blob.add<int>(R, "sampleRows");
    const size_t bClassRowStart = blob.add<int>(K + 1, "classRowStart");
    const size_t bTiles = blob.add<Tile>(T, "tiles");
    const size_t oBlob = lay.add<unsigned char>(blob.bytes(), "label tables");
    const size_t oPartial = lay.add<OnlineStat>(R * NC, "partial (sweep 1)");
    const size_t oRowMax = lay.add<float>(R, "rowMax");
    const size_t oRowInvSum = lay.add<float>(R, "rowInvSum");
    const size_t oRowSumLog = lay.add<double>(R, "rowSumLog");
    const size_t oRowAnchorCount = lay.add<double>(R, "rowAnchorCount");
    const size_t oRowQ = lay.add<double>(R, "rowQ");
    if (lay.overflow() || blob.overflow()) throw std::runtime_error("computeCuda: the problem is too large to address");
    ensureWorkspace(lay.bytes());
    ensurePinned();

    std::vector<unsigned char> host(static_cast<size_t>(blob.bytes()), guards ? kGuardByte : 0);
    auto put = [&](size_t off, const void* src, size_t n) {
      if (n) std::memcpy(host.data() + off, src, n);
    };
    put(bBits, bits.data(), bits.size() * sizeof(uint32_t));
    put(bLabelCount, labelCount.data(), labelCount.size() * sizeof(int));
    put(bSampleRowStart, sampleRowStart.data(), sampleRowStart.size() * sizeof(int));
    put(bRowSample, rowSample.data(), static_cast<size_t>(R) * sizeof(int));
    put(bSampleRows, sampleRows.data(), static_cast<size_t>(R) * sizeof(int));
    put(bClassRowStart, classRowStart.data(), classRowStart.size() * sizeof(int));
    put(bTiles, tiles.data(), tiles.size() * sizeof(Tile));

    // ---- uploads ----
    KMCL_CUDA_CHECK(cudaEventRecord(timing_[0], stream_));
    upload(at<unsigned char>(oBlob), host.data(), host.size());
    upload(at<float>(oFeatures), pr.features, static_cast<size_t>(sh.featuresSize()) * sizeof(float));
    upload(at<float>(oLogits), pr.logits, static_cast<size_t>(sh.logitsSize()) * sizeof(float));
    upload(at<float>(oMu), pr.mu, static_cast<size_t>(sh.muSize()) * sizeof(float));
    upload(at<float>(oVar), pr.variance, static_cast<size_t>(sh.varianceSize()) * sizeof(float));
    KMCL_CUDA_CHECK(cudaEventRecord(timing_[1], stream_));

    // Guard zones: every byte of the workspace outside the buffers (the blob's gaps came with it).
    std::vector<Region> regions;
    if (guards) {
      for (const Region& r : lay.regions()) {
        if (r.offset != oBlob) {
          regions.push_back(r);
          continue;
        }
        for (const Region& q : blob.regions()) regions.push_back(Region{oBlob + q.offset, q.bytes, q.name});
      }
      fillGuards(regions, lay.bytes());
#if defined(KMCL_CUDA_EMULATION)
      std::vector<kmcl_emu_check::Region> described;
      for (const Region& r : regions) described.push_back(kmcl_emu_check::Region{static_cast<size_t>(r.offset), static_cast<size_t>(r.bytes), r.name});
      emuDescribeBuffers(ws_, described);
#endif
    }

    const uint32_t* dBits = reinterpret_cast<const uint32_t*>(at<unsigned char>(oBlob) + bBits);
    const int* dLabelCount = reinterpret_cast<const int*>(at<unsigned char>(oBlob) + bLabelCount);

    // ---- kernels ----
    {
      const int64_t n = sh.varianceSize();
      const int blocks = static_cast<int>(std::min<int64_t>((n + 255) / 256, 65535));
      KMCL_LAUNCH(reciprocal, dim3(blocks), dim3(256), 0, stream_)(at<float>(oVar), at<float>(oInvVar), n);
      launchCheck("reciprocal<<<>>>");
    }
    {
      ReconParams rp;
      rp.B = static_cast<int>(B);
      rp.K = static_cast<int>(K);
      rp.M = static_cast<int>(M);
      rp.D = static_cast<int>(D);
      rp.Kv = static_cast<int>(Kv);
      rp.Dv = static_cast<int>(Dv);
      rp.W = static_cast<int>(W);
      rp.features = at<float>(oFeatures);
      rp.logits = at<float>(oLogits);
      rp.mu = at<float>(oMu);
      rp.invVariance = at<float>(oInvVar);
      rp.bits = dBits;
      rp.labelCount = dLabelCount;
      rp.asl = math::AslParams<float>{static_cast<float>(o.gammaNeg), static_cast<float>(o.gammaPos),
                                      static_cast<float>(o.clip), static_cast<float>(o.eps), o.detachFocalWeight};
      rp.weightAsl = o.weightAsl;
      rp.weightRec = o.weightReconstruction;
      rp.invB = 1.0 / static_cast<double>(B);
      rp.eps = o.eps;
      rp.logEps = std::log(o.eps);
      rp.stable = o.stableReconstruction;
      rp.wantGrad = wantGrad;
      rp.U = at<float>(oU);
      rp.GE = wantGrad ? at<float>(oGE) : nullptr;
      rp.aslRow = at<double>(oAslRow);
      rp.recRow = at<double>(oRecRow);
      rp.gFeatures = wantGrad ? at<float>(oGFeatures) : nullptr;
      rp.gLogits = wantGrad ? at<float>(oGLogits) : nullptr;
      rp.gMu = wantGrad ? at<float>(oGMu) : nullptr;
      rp.gVar = wantGrad ? at<float>(oGVar) : nullptr;
      KMCL_LAUNCH(aslReconstruction, dim3(static_cast<unsigned>(B)), dim3(kReconThreads), 0, stream_)(rp);
      launchCheck("aslReconstruction<<<>>>");
    }

    PairParams pp{};
    pp.B = static_cast<int>(B);
    pp.K = static_cast<int>(K);
    pp.D = static_cast<int>(D);
    pp.Kv = static_cast<int>(Kv);
    pp.Dv = static_cast<int>(Dv);
    pp.W = static_cast<int>(W);
    pp.distanceScale = static_cast<float>(o.distanceScale);
    pp.dims = D == 1 ? static_cast<float>(M) : 1.0f;
    pp.dimM = static_cast<float>(M);
    pp.invTau = static_cast<float>(1.0 / o.temperature);
    pp.logEpsF = static_cast<float>(o.logEps);
    pp.logEps = o.logEps;
    pp.mu = at<float>(oMu);
    pp.variance = at<float>(oVar);
    pp.invVariance = at<float>(oInvVar);
    pp.bits = dBits;
    pp.labelCount = dLabelCount;
    pp.rowSample = reinterpret_cast<const int*>(at<unsigned char>(oBlob) + bRowSample);
    pp.classRowStart = reinterpret_cast<const int*>(at<unsigned char>(oBlob) + bClassRowStart);
    pp.tiles = reinterpret_cast<const Tile*>(at<unsigned char>(oBlob) + bTiles);
    pp.chunkSize = static_cast<int>(chunk);
    pp.numChunks = static_cast<int>(NC);
    pp.partial = at<OnlineStat>(oPartial);
    pp.rowMax = at<float>(oRowMax);
    pp.rowInvSum = at<float>(oRowInvSum);
    pp.rowSumLog = at<double>(oRowSumLog);
    pp.rowAnchorCount = at<double>(oRowAnchorCount);
    pp.rowQ = at<double>(oRowQ);
    pp.coef = at<float>(oCoef);
    pp.gMu = wantGrad ? at<float>(oGMu) : nullptr;
    pp.gVar = wantGrad ? at<float>(oGVar) : nullptr;

    auto launchSweep = [&](int sw, dim3 grid) {
      pp.tileP = shape[sw].tileP;
      pp.strideD = shape[sw].strideD;
      KMCL_CUDA_CHECK(cudaFuncSetAttribute(fn[sw], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shape[sw].smemBytes)));
      [[maybe_unused]] static const char* const kSweepName[4] = {"", "pairKernel<1> (S)", "pairKernel<2> (co-positive terms)", "pairKernel<3> (gradients)"};
      KMCL_LAUNCH_NAMED(fn[sw], kSweepName[sw], grid, dim3(kThreads), shape[sw].smemBytes, stream_)(pp);
      launchCheck("pairKernel<<<>>>");
    };

    if (R > 0) {
      launchSweep(1, dim3(static_cast<unsigned>(T), static_cast<unsigned>(NC)));
      RowParams rp;
      rp.rows = static_cast<int>(R);
      rp.numChunks = static_cast<int>(NC);
      rp.invTau = pp.invTau;
      rp.partial = pp.partial;
      rp.rowMax = at<float>(oRowMax);
      rp.rowInvSum = at<float>(oRowInvSum);
      KMCL_LAUNCH(mergeRowStats, dim3(static_cast<unsigned>((R + 255) / 256)), dim3(256), 0, stream_)(rp);
      launchCheck("mergeRowStats<<<>>>");
      launchSweep(2, dim3(static_cast<unsigned>(T), 1));
    }
    {
      AnchorParams ap;
      ap.B = static_cast<int>(B);
      ap.coefScale = -o.weightContrastive / (static_cast<double>(B) * o.temperature);
      ap.sampleRowStart = reinterpret_cast<const int*>(at<unsigned char>(oBlob) + bSampleRowStart);
      ap.sampleRows = reinterpret_cast<const int*>(at<unsigned char>(oBlob) + bSampleRows);
      ap.rowSumLog = pp.rowSumLog;
      ap.rowAnchorCount = pp.rowAnchorCount;
      ap.conRow = at<double>(oConRow);
      ap.coef = at<float>(oCoef);
      KMCL_LAUNCH(anchorTerms, dim3(static_cast<unsigned>((B + 255) / 256)), dim3(256), 0, stream_)(ap);
      launchCheck("anchorTerms<<<>>>");
    }
    if (runSweep3) launchSweep(3, dim3(static_cast<unsigned>(T), static_cast<unsigned>(NC)));
    {
      ResultParams rp;
      rp.B = static_cast<int>(B);
      rp.invB = 1.0 / static_cast<double>(B);
      rp.aslRow = at<double>(oAslRow);
      rp.recRow = at<double>(oRecRow);
      rp.conRow = at<double>(oConRow);
      rp.out = at<double>(oResult);
      KMCL_LAUNCH(lossTerms, dim3(1), dim3(256), 0, stream_)(rp);
      launchCheck("lossTerms<<<>>>");
    }
    KMCL_CUDA_CHECK(cudaEventRecord(timing_[2], stream_));
    if (guards) checkGuards(regions, lay.bytes());

    // ---- downloads ----
    double terms[4] = {0, 0, 0, 0};
    download(terms, at<double>(oResult), 3 * sizeof(double));
    if (wantGrad) {
      if (gradients->features)
        download(gradients->features, at<float>(oGFeatures), static_cast<size_t>(sh.featuresSize()) * sizeof(float));
      if (gradients->logits)
        download(gradients->logits, at<float>(oGLogits), static_cast<size_t>(sh.logitsSize()) * sizeof(float));
      if (gradients->mu) download(gradients->mu, at<float>(oGMu), static_cast<size_t>(sh.muSize()) * sizeof(float));
      if (gradients->variance)
        download(gradients->variance, at<float>(oGVar), static_cast<size_t>(sh.varianceSize()) * sizeof(float));
    }
    KMCL_CUDA_CHECK(cudaEventRecord(timing_[3], stream_));
    KMCL_CUDA_CHECK(cudaStreamSynchronize(stream_));

    LossParts r;
    r.asl = terms[0];
    r.reconstruction = terms[1];
    r.contrastive = terms[2];
    r.loss = o.weightAsl * r.asl + o.weightReconstruction * r.reconstruction + o.weightContrastive * r.contrastive;

    cuda_internal::CallStats st;
    st.valid = true;
    float ms = 0;
    KMCL_CUDA_CHECK(cudaEventElapsedTime(&ms, timing_[0], timing_[1]));
    st.uploadMs = ms;
    KMCL_CUDA_CHECK(cudaEventElapsedTime(&ms, timing_[1], timing_[2]));
    st.kernelMs = ms;
    KMCL_CUDA_CHECK(cudaEventElapsedTime(&ms, timing_[2], timing_[3]));
    st.downloadMs = ms;
    st.workspaceBytes = static_cast<int64_t>(wsBytes_);
    st.workspacePeakBytes = static_cast<int64_t>(workspacePeak_);
    st.requiredBytes = static_cast<int64_t>(lay.bytes());
    st.pinnedBytes = static_cast<int64_t>(pinnedBytes_);
    st.rows = R;
    st.tiles = T;
    st.chunks = NC;
    double pairs2 = 0;
    for (int64_t k = 0; k < K; ++k) {
      const double n = classRowStart[k + 1] - classRowStart[k];
      pairs2 += n * (n - 1);
    }
    const double t13 = static_cast<double>(R) * static_cast<double>(B - 1);
    st.triples = t13 + pairs2 + (runSweep3 ? t13 : 0.0);
    st.tripleDims = st.triples * static_cast<double>(D);
    // Special-function (MUFU) operations of the pair sweeps, counted from the PTX of the kernels
    // (nvcc 13.0, sm_90; bench/RESULTS.md): Dist costs rcp.approx + lg2.approx per lane-dim slot
    // (L·NJ lanes-dims with a per-dim variance, padding included; otherwise once in each of the
    // group's L lanes), and every lane of the group repeats the per-triple scalar ops: sweep 1 two
    // ex2 (BC, online sum), sweep 2 two ex2 (BC, e/S) and four double reciprocals (MUFU.RCP64H:
    // two divisions, 1/overlap, one more), sweep 3 two ex2 (BC, e/S) and, for co-positive partners,
    // two float divisions (one rcp each). The generic kernel works like L = 32 and recomputes
    // 1/(a+b) in sweep 3.
    const double lanes = cfg.generic ? 32.0 : static_cast<double>(cfg.L);
    const double dimSlots = cfg.generic ? 32.0 * std::ceil(static_cast<double>(D) / 32.0) : static_cast<double>(cfg.L * cfg.NJ);
    const double distOps = cfg.vdim ? 2.0 * dimSlots : 2.0 * lanes;
    const double sweep1 = distOps + 2.0 * lanes, sweep2 = distOps + 6.0 * lanes;
    const double sweep3 = distOps + 2.0 * lanes + (cfg.generic ? (cfg.vdim ? dimSlots : lanes) : 0.0);
    st.mufuOps = t13 * sweep1 + pairs2 * sweep2 + (runSweep3 ? t13 * sweep3 + pairs2 * 2.0 * lanes : 0.0);
    st.config = cfg.generic ? std::string("generic (warp per anchor row)")
                            : "tiled L=" + std::to_string(cfg.L) + " NJ=" + std::to_string(cfg.NJ) +
                                  " RA=" + std::to_string(cfg.RA) + " TP=" + std::to_string(shape[1].tileP) + "/" +
                                  std::to_string(shape[2].tileP) + "/" + std::to_string(shape[3].tileP);
    st.config += cfg.vdim ? ", per-dim variance" : ", scalar variance";
    stats_ = st;
    return r;
  }
};

// One backend per process; never destroyed (the CUDA runtime may be torn down before static
// destructors run).
inline Backend& backend() {
  static Backend* b = new Backend();
  return *b;
}

}  // namespace KMCL_CUDA_NS
}  // namespace kmcl
