// kmcl core: the KMCL loss of spec/kmcl-loss.md (copied as the reference in README), forward and
// gradients, on the CPU (always) and on CUDA (when built with it). No Node dependency.
#pragma once

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace kmcl {

// Spec "Options and defaults": the same names as the TypeScript options.
struct Options {
  double temperature = 0.17;
  double gammaNeg = 4.0;
  double gammaPos = 0.0;
  double clip = 0.05;
  double eps = 1e-7;
  double logEps = 1e-7;
  bool detachFocalWeight = true;
  double distanceScale = 1.0;
  bool stableReconstruction = true;
  double weightAsl = 1.0;
  double weightReconstruction = 1.0;
  double weightContrastive = 1.0;
};

// Spec "Shapes". mu is [batch, classes, muDim] with muDim in {1, dim};
// variance is [batch, varianceClasses, varianceDim] with varianceClasses in {1, classes}
// and varianceDim in {1, muDim}. A size-1 axis is broadcast.
struct Shape {
  int64_t batch = 0;
  int64_t classes = 0;
  int64_t dim = 0;
  int64_t muDim = 0;
  int64_t varianceClasses = 0;
  int64_t varianceDim = 0;

  int64_t featuresSize() const { return batch * dim; }
  int64_t logitsSize() const { return batch * classes; }
  int64_t muSize() const { return batch * classes * muDim; }
  int64_t varianceSize() const { return batch * varianceClasses * varianceDim; }
};

// Flat row-major inputs. labels are exactly 0 or 1 (never differentiated).
template <class T>
struct Problem {
  Shape shape;
  const T* features = nullptr;
  const T* logits = nullptr;
  const T* labels = nullptr;
  const T* mu = nullptr;
  const T* variance = nullptr;
};

// Gradients of the weighted total loss, same sizes as the inputs. Pass nullptr to skip.
template <class T>
struct Gradients {
  T* features = nullptr;
  T* logits = nullptr;
  T* mu = nullptr;
  T* variance = nullptr;
};

struct LossParts {
  double loss = 0;            // weighted total
  double asl = 0;             // spec section 1
  double reconstruction = 0;  // spec section 2
  double contrastive = 0;     // spec section 3
};

// Throws std::invalid_argument naming the field when the shape or options are outside the spec.
// Does not scan the data (the binding's callers validate values); cheap.
void checkShapeAndOptions(const Shape& shape, const Options& options);

// CPU path. numThreads <= 0 means: KMCL_NUM_THREADS if set, else the hardware concurrency.
// Deterministic: the result does not depend on the thread count (every sum has a fixed order).
template <class T>
LossParts computeCpu(const Problem<T>& problem, const Options& options, const Gradients<T>* gradients,
                     int numThreads = 0);

int cpuThreadCount(int requested = 0);

// The instruction set of the float32 CPU path: one kernel source compiled for baseline (SSE2 on
// x86-64, NEON on arm64), AVX2+FMA and AVX-512 (x86-64), picked at run time from the CPU's
// features, or forced with KMCL_CPU_ISA=baseline|avx2|avx512 (an ISA the CPU or the build lacks
// is an error). The float64 path is the scalar reference and ignores it.
enum class CpuIsa { Baseline, Avx2, Avx512 };
struct CpuIsaInfo {
  std::string best;                    // what "auto" picks on this CPU
  std::string selected;                // what the next call uses (KMCL_CPU_ISA or best)
  std::string error;                   // why KMCL_CPU_ISA is unusable (calls then throw it)
  std::vector<std::string> available;  // compiled and supported by this CPU
  std::vector<std::string> compiled;   // compiled into this build
};
CpuIsaInfo cpuIsaInfo();

// The roofline of the float32 CPU kernels (bench/native/cpu_bench.cpp): this machine's
// throughput, on one thread, for the op kinds of the contrastive inner loops, with the kernels'
// own vector code of the given instruction set, data in L1. Nanoseconds per float element.
struct CpuOpRates {
  std::string isa;
  int lanes = 0;       // floats per vector
  double fma = 0;      // a multiply-add (register operands)
  double div = 0;      // a division (1/(a+b) in the kernels)
  double log1p = 0;    // the kernels' vector log1p
  double exp = 0;      // the kernels' vector exp
  double accum = 0;    // adding a float into a double accumulator in memory (L1)
};
// Throws std::invalid_argument when the ISA is not compiled in or not supported by this CPU.
CpuOpRates measureCpuOpRates(const std::string& isa);
// For benchmarks: nanoseconds (steady clock, summed over threads) spent inside the tasks of the
// float32 CPU path's contrastive sweeps (a class's tiled copies, the shared-variance pair terms,
// the BC, S, co-positive and gradient passes) since the process started. The difference over a
// call is that call's sweep time, without the per-sample ASL and reconstruction, the setup and
// the thread pool's waits.
int64_t cpuSweepNanos();

// CUDA path (float32 only). Availability is reported, never thrown: a build without CUDA, a
// machine without a driver, or without a device gives usable = false and the reason.
struct CudaInfo {
  bool compiled = false;
  bool usable = false;
  std::string reason;      // why not usable (empty when usable)
  std::string deviceName;  // when usable
  int computeMajor = 0;
  int computeMinor = 0;
  int64_t totalMemory = 0;
  int runtimeVersion = 0;
  int driverVersion = 0;
};

CudaInfo cudaInfo();

// Throws std::runtime_error with the CUDA message on any CUDA failure (out of memory included);
// the workspace stays consistent so the next call works.
LossParts computeCuda(const Problem<float>& problem, const Options& options, const Gradients<float>* gradients);

// Cooperative cancellation (used by the Node binding's job queue). While a CancelScope is alive
// on a thread, the CPU path called from that thread checks *flag before each work chunk (every
// ThreadPool task, so also at every sweep boundary) and throws kmcl::Cancelled once it is set;
// no partial result is returned. The CUDA path is checked by the caller before it starts.
struct Cancelled : std::runtime_error {
  Cancelled() : std::runtime_error("the call was cancelled") {}
};
class CancelScope {
 public:
  explicit CancelScope(const std::atomic<bool>* flag);
  ~CancelScope();
  CancelScope(const CancelScope&) = delete;
  CancelScope& operator=(const CancelScope&) = delete;
  // The flag of the innermost scope on this thread (nullptr when none).
  static const std::atomic<bool>* current();

 private:
  const std::atomic<bool>* previous_;
};

// Frees the reusable device workspace and pinned staging buffers. No-op without CUDA.
void releaseDeviceMemory();

}  // namespace kmcl
