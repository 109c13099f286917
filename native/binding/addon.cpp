// node-addon-api binding of the kmcl core. Validation of values (NaN, labels, variance > 0, option
// ranges) happens in TypeScript before any call; this layer checks types and lengths again so that
// no call can read out of bounds, and turns every C++ exception into a JS Error.
//
// Gradient outputs: a sync call hands the core the data pointers of the JS arrays it returns,
// either the caller's (options.out) or fresh ones, so the core writes the gradients straight into
// them (no intermediate buffer, no copy). The caller's out arrays are checked before any work:
// type, length, not detached, not on a SharedArrayBuffer, no memory shared with an input or with
// another out array.
//
// Async calls run on kmcl's own job queue (one thread, never libuv's pool). A job owns copies of
// its inputs, taken when the call is made, and its outputs; it touches no JS memory while it runs.
// That memory comes from a bounded pool of buffer sets reused across calls (BufferPool, below).
// The caller's out arrays are written only when the promise settles, on the calling thread, after
// they are checked again (a transfer or a resize may have happened meanwhile): all or none.
// Its promise settles on the calling environment's thread through a thread-safe function. When an
// environment is torn down (worker terminated, process.exit, main-thread exit) its queued jobs are
// dropped, its running job stops at the next work chunk, and their promises never settle: no JS
// can run in that environment any more. Sync calls and jobs take turns on one FIFO lock, so a sync
// call waits for at most the job that is running.

// A terminating worker makes every N-API call fail; without this, node-addon-api turns the failed
// throw into std::terminate (the whole process aborts).
#define NODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS
#include <napi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <string>
#include <vector>

#include "kmcl/kmcl.h"

namespace {

using kmcl::Gradients;
using kmcl::LossParts;
using kmcl::Options;
using kmcl::Problem;
using kmcl::Shape;

int64_t intField(const Napi::Object& o, const char* name) {
  const Napi::Value v = o.Get(name);
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("problem.") + name + " must be a number");
  const double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 1 && d <= 9007199254740991.0) || d != static_cast<double>(static_cast<int64_t>(d))) {
    throw Napi::RangeError::New(o.Env(), std::string("problem.") + name + " must be a positive integer");
  }
  return static_cast<int64_t>(d);
}

double numField(const Napi::Object& o, const char* name, double fallback) {
  const Napi::Value v = o.Get(name);
  if (v.IsUndefined()) return fallback;
  if (!v.IsNumber()) throw Napi::TypeError::New(o.Env(), std::string("options.") + name + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

bool boolField(const Napi::Object& o, const char* name, bool fallback) {
  const Napi::Value v = o.Get(name);
  if (v.IsUndefined()) return fallback;
  if (!v.IsBoolean()) throw Napi::TypeError::New(o.Env(), std::string("options.") + name + " must be a boolean");
  return v.As<Napi::Boolean>().Value();
}

Options readOptions(const Napi::Value& value) {
  Options o;
  if (value.IsUndefined() || value.IsNull()) return o;
  if (!value.IsObject()) throw Napi::TypeError::New(value.Env(), "options must be an object");
  const Napi::Object obj = value.As<Napi::Object>();
  o.temperature = numField(obj, "temperature", o.temperature);
  o.gammaNeg = numField(obj, "gammaNeg", o.gammaNeg);
  o.gammaPos = numField(obj, "gammaPos", o.gammaPos);
  o.clip = numField(obj, "clip", o.clip);
  o.eps = numField(obj, "eps", o.eps);
  o.logEps = numField(obj, "logEps", o.logEps);
  o.detachFocalWeight = boolField(obj, "detachFocalWeight", o.detachFocalWeight);
  o.distanceScale = numField(obj, "distanceScale", o.distanceScale);
  o.stableReconstruction = boolField(obj, "stableReconstruction", o.stableReconstruction);
  const Napi::Value w = obj.Get("weights");
  if (!w.IsUndefined()) {
    if (!w.IsObject()) throw Napi::TypeError::New(value.Env(), "options.weights must be an object");
    const Napi::Object wo = w.As<Napi::Object>();
    o.weightAsl = numField(wo, "asl", o.weightAsl);
    o.weightReconstruction = numField(wo, "reconstruction", o.weightReconstruction);
    o.weightContrastive = numField(wo, "contrastive", o.weightContrastive);
  }
  return o;
}

template <class T>
struct ArrayType;
template <>
struct ArrayType<float> {
  static constexpr napi_typedarray_type kind = napi_float32_array;
  static constexpr const char* name = "Float32Array";
};
template <>
struct ArrayType<double> {
  static constexpr napi_typedarray_type kind = napi_float64_array;
  static constexpr const char* name = "Float64Array";
};

template <class T>
const T* arrayField(const Napi::Object& o, const char* name, int64_t expected, std::vector<Napi::Reference<Napi::Value>>* keep) {
  const Napi::Value v = o.Get(name);
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != ArrayType<T>::kind) {
    throw Napi::TypeError::New(o.Env(), std::string("problem.") + name + " must be a " + ArrayType<T>::name);
  }
  auto arr = v.As<Napi::TypedArrayOf<T>>();
  if (static_cast<int64_t>(arr.ElementLength()) != expected) {
    throw Napi::RangeError::New(o.Env(), std::string("problem.") + name + " must have length " + std::to_string(expected) +
                                             ", got " + std::to_string(arr.ElementLength()));
  }
  if (keep) keep->push_back(Napi::Persistent(v));
  return arr.Data();
}

template <class T>
Problem<T> readProblem(const Napi::Value& value, std::vector<Napi::Reference<Napi::Value>>* keep) {
  if (!value.IsObject()) throw Napi::TypeError::New(value.Env(), "problem must be an object");
  const Napi::Object o = value.As<Napi::Object>();
  Problem<T> p;
  p.shape.batch = intField(o, "batch");
  p.shape.classes = intField(o, "classes");
  p.shape.dim = intField(o, "dim");
  p.shape.muDim = intField(o, "muDim");
  const Napi::Value vs = o.Get("varianceShape");
  if (!vs.IsArray() || vs.As<Napi::Array>().Length() != 2) {
    throw Napi::TypeError::New(o.Env(), "problem.varianceShape must be an array [Kv, Dv]");
  }
  const Napi::Array vsa = vs.As<Napi::Array>();
  Napi::Object shapeObj = Napi::Object::New(o.Env());
  shapeObj.Set("varianceShape[0]", vsa.Get(uint32_t(0)));
  shapeObj.Set("varianceShape[1]", vsa.Get(uint32_t(1)));
  p.shape.varianceClasses = intField(shapeObj, "varianceShape[0]");
  p.shape.varianceDim = intField(shapeObj, "varianceShape[1]");
  kmcl::checkShapeAndOptions(p.shape, Options{});
  p.features = arrayField<T>(o, "features", p.shape.featuresSize(), keep);
  p.logits = arrayField<T>(o, "logits", p.shape.logitsSize(), keep);
  p.labels = arrayField<T>(o, "labels", p.shape.logitsSize(), keep);
  p.mu = arrayField<T>(o, "mu", p.shape.muSize(), keep);
  p.variance = arrayField<T>(o, "variance", p.shape.varianceSize(), keep);
  return p;
}

enum class Device { Cpu, Cuda };

Device readDevice(const Napi::Value& v) {
  if (v.IsUndefined()) return Device::Cpu;
  const std::string s = v.ToString().Utf8Value();
  if (s == "cpu") return Device::Cpu;
  if (s == "cuda") return Device::Cuda;
  throw Napi::TypeError::New(v.Env(), "device must be 'cpu' or 'cuda' (the TypeScript layer resolves 'auto')");
}

constexpr int kGradCount = 4;
constexpr const char* kGradNames[kGradCount] = {"features", "logits", "mu", "variance"};

std::string gradShape(const Shape& s, int j) {
  const auto d = [](int64_t v) { return std::to_string(v); };
  switch (j) {
    case 0: return "[" + d(s.batch) + ", " + d(s.dim) + "]";
    case 1: return "[" + d(s.batch) + ", " + d(s.classes) + "]";
    case 2: return "[" + d(s.batch) + ", " + d(s.classes) + ", " + d(s.muDim) + "]";
    default: return "[" + d(s.batch) + ", " + d(s.varianceClasses) + ", " + d(s.varianceDim) + "]";
  }
}

int64_t gradSize(const Shape& s, int j) {
  switch (j) {
    case 0: return s.featuresSize();
    case 1: return s.logitsSize();
    case 2: return s.muSize();
    default: return s.varianceSize();
  }
}

// The gradient buffers of an async job, owned by C++ until they are copied into JS arrays. From the
// job buffer pool (below), sized when the job starts; the core overwrites every element (it writes
// the caller's out arrays the same way in sync calls), so reused ones are not zeroed.
template <class T>
struct GradientBuffers {
  std::vector<T> features, logits, mu, variance;
  Gradients<T> view() { return Gradients<T>{features.data(), logits.data(), mu.data(), variance.data()}; }
  const std::vector<T>& at(int j) const { return j == 0 ? features : j == 1 ? logits : j == 2 ? mu : variance; }
};

template <class T>
T*& gradPtr(Gradients<T>& g, int j) {
  return j == 0 ? g.features : j == 1 ? g.logits : j == 2 ? g.mu : g.variance;
}

template <class T>
LossParts run(Device device, const Problem<T>& p, const Options& o, Gradients<T>* g) {
  if constexpr (std::is_same_v<T, float>) {
    if (device == Device::Cuda) return kmcl::computeCuda(p, o, g);
  } else {
    if (device == Device::Cuda) throw std::invalid_argument("the float64 build runs on the CPU only");
  }
  return kmcl::computeCpu<T>(p, o, g);
}

template <class T>
Napi::TypedArrayOf<T> toArray(Napi::Env env, const std::vector<T>& v) {
  auto arr = Napi::TypedArrayOf<T>::New(env, v.size());
  if (!v.empty()) std::memcpy(arr.Data(), v.data(), v.size() * sizeof(T));
  return arr;
}

// grads: the four gradient arrays (features, logits, mu, variance), or nullptr without gradients.
Napi::Object resultObject(Napi::Env env, const LossParts& r, const Napi::Value* grads) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("loss", r.loss);
  out.Set("asl", r.asl);
  out.Set("reconstruction", r.reconstruction);
  out.Set("contrastive", r.contrastive);
  if (grads) {
    Napi::Object g = Napi::Object::New(env);
    for (int j = 0; j < kGradCount; ++j) g.Set(kGradNames[j], grads[j]);
    out.Set("gradients", g);
  }
  return out;
}

// ---- options.out: the caller's gradient arrays ----

std::string outName(int j) { return std::string("options.out.") + kGradNames[j]; }

struct ByteRange {
  std::string name;
  const unsigned char* begin;
  const unsigned char* end;
};

// Where a typed array's elements are, or why they cannot be written: a detached buffer, a
// SharedArrayBuffer, a length other than gradient j's. Empty string when usable.
template <class T>
std::string writable(napi_env env, napi_value value, const Shape& shape, int j, T** data) {
  const int64_t expected = gradSize(shape, j);
  napi_typedarray_type type;
  size_t length = 0, offset = 0;
  void* ptr = nullptr;
  napi_value buffer;
  if (napi_get_typedarray_info(env, value, &type, &length, &ptr, &buffer, &offset) != napi_ok || type != ArrayType<T>::kind) {
    return std::string(" must be a ") + ArrayType<T>::name;
  }
  bool isArrayBuffer = false, detached = false;
  if (napi_is_arraybuffer(env, buffer, &isArrayBuffer) != napi_ok) return " has an unreadable buffer";
  if (!isArrayBuffer) return " is on a SharedArrayBuffer, which kmcl does not write to (see the README, \"out\")";
  if (napi_is_detached_arraybuffer(env, buffer, &detached) != napi_ok) return " has an unreadable buffer";
  if (detached) return " is detached (its ArrayBuffer was transferred)";
  if (static_cast<int64_t>(length) != expected) {
    return " must have length " + std::to_string(expected) + " (shape " + gradShape(shape, j) + "), got " + std::to_string(length);
  }
  *data = static_cast<T*>(ptr);
  return std::string();
}

// The caller's out arrays of one call, checked (before any work) against the problem: the given
// ones have `value` set and `data` pointing at their elements.
template <class T>
struct OutArrays {
  Napi::Value value[kGradCount];
  T* data[kGradCount] = {nullptr, nullptr, nullptr, nullptr};
  bool given(int j) const { return data[j] != nullptr; }
};

template <class T>
OutArrays<T> readOut(const Napi::Value& v, const Problem<T>& p, bool wantGrad) {
  OutArrays<T> out;
  if (v.IsUndefined()) return out;
  Napi::Env env = v.Env();
  if (!v.IsObject() || v.IsTypedArray() || v.IsArray()) {
    throw Napi::TypeError::New(env, "options.out must be an object { features?, logits?, mu?, variance? }");
  }
  if (!wantGrad) throw Napi::TypeError::New(env, "options.out is given but gradients are off (options.gradients: false)");
  const Napi::Object o = v.As<Napi::Object>();
  std::vector<ByteRange> ranges;
  const Shape& s = p.shape;
  const T* inputs[5] = {p.features, p.logits, p.labels, p.mu, p.variance};
  const char* inputNames[5] = {"features", "logits", "labels", "mu", "variance"};
  const int64_t inputSizes[5] = {s.featuresSize(), s.logitsSize(), s.logitsSize(), s.muSize(), s.varianceSize()};
  for (int j = 0; j < 5; ++j) {
    const auto* b = reinterpret_cast<const unsigned char*>(inputs[j]);
    ranges.push_back({std::string("problem.") + inputNames[j], b, b + inputSizes[j] * sizeof(T)});
  }
  for (int j = 0; j < kGradCount; ++j) {
    const Napi::Value a = o.Get(kGradNames[j]);
    if (a.IsUndefined()) continue;
    if (!a.IsTypedArray()) throw Napi::TypeError::New(env, outName(j) + " must be a " + ArrayType<T>::name);
    T* data = nullptr;
    const std::string why = writable<T>(env, a, s, j, &data);
    if (!why.empty()) {
      if (why.rfind(" must have length", 0) == 0) throw Napi::RangeError::New(env, outName(j) + why);
      throw Napi::TypeError::New(env, outName(j) + why);
    }
    const auto* b = reinterpret_cast<const unsigned char*>(data);
    const ByteRange r{outName(j), b, b + gradSize(s, j) * sizeof(T)};
    for (const ByteRange& q : ranges) {
      if (r.begin < q.end && q.begin < r.end) {
        throw Napi::RangeError::New(env, r.name + " shares memory with " + q.name +
                                             ": an out array must not overlap an input or another out array");
      }
    }
    ranges.push_back(r);
    out.value[j] = a;
    out.data[j] = data;
  }
  return out;
}

// A FIFO lock: sync calls and queued jobs are served in the order they asked, so a sync call waits
// for at most the job that holds the lock (the core runs one CPU job at a time anyway).
class FairLock {
 public:
  void lock() {
    std::unique_lock<std::mutex> l(m_);
    const uint64_t ticket = next_++;
    cv_.wait(l, [&] { return serving_ == ticket; });
  }
  void unlock() {
    {
      std::lock_guard<std::mutex> l(m_);
      ++serving_;
    }
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  uint64_t next_ = 0, serving_ = 0;
};

FairLock& computeLock() {
  static FairLock* lock = new FairLock();  // leaked: never destroyed under a running thread
  return *lock;
}

// compute(problem, options, wantGradients, device, out?)
template <class T>
Napi::Value ComputeSync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Problem<T> p = readProblem<T>(info[0], nullptr);
  const Options o = readOptions(info[1]);
  const bool wantGrad = info[2].ToBoolean().Value();
  const Device device = readDevice(info[3]);
  const OutArrays<T> out = readOut<T>(info[4], p, wantGrad);
  // The core writes into the returned arrays themselves: the caller's out arrays, or new ones.
  // No JS runs during the call, so none of them can be detached or resized meanwhile.
  Napi::Value arrays[kGradCount];
  Gradients<T> view;
  if (wantGrad) {
    for (int j = 0; j < kGradCount; ++j) {
      if (out.given(j)) {
        arrays[j] = out.value[j];
        gradPtr(view, j) = out.data[j];
      } else {
        auto a = Napi::TypedArrayOf<T>::New(env, static_cast<size_t>(gradSize(p.shape, j)));
        arrays[j] = a;
        gradPtr(view, j) = a.Data();
      }
    }
  }
  LossParts r;
  try {
    std::lock_guard<FairLock> lock(computeLock());
    r = run<T>(device, p, o, wantGrad ? &view : nullptr);
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, std::string("kmcl: ") + e.what());
  }
  return resultObject(env, r, wantGrad ? arrays : nullptr);
}

// ---- kmcl's job queue ----

// Process-wide counters (tests read them through jobStats()).
struct Stats {
  std::atomic<int64_t> submitted{0}, started{0}, completed{0}, cancelledQueued{0}, cancelledRunning{0}, undelivered{0};
  // Async calls whose buffer set came from the pool with room enough (reused) or had to be
  // allocated or grown (allocated); every async call counts in exactly one.
  std::atomic<int64_t> buffersAllocated{0}, buffersReused{0};
};
Stats& stats() {
  static Stats* s = new Stats();
  return *s;
}

// ---- the buffer pool of async jobs ----

// The memory of one async job: copies of its five inputs and its four gradient buffers.
struct JobBuffers {
  std::vector<float> features, logits, labels, mu, variance;
  GradientBuffers<float> grads;

  static constexpr int kCount = 5 + kGradCount;
  std::vector<float>* at(int j) {
    std::vector<float>* v[kCount] = {&features, &logits, &labels, &mu, &variance, &grads.features, &grads.logits, &grads.mu, &grads.variance};
    return v[j];
  }
  size_t bytes() {
    size_t n = 0;
    for (int j = 0; j < kCount; ++j) n += at(j)->capacity();
    return n * sizeof(float);
  }
  bool fits(const size_t need[kCount]) {
    for (int j = 0; j < kCount; ++j)
      if (at(j)->capacity() < need[j]) return false;
    return true;
  }
};

// A bounded, process-wide pool of job buffer sets, so that async calls of the same or a smaller
// size allocate nothing for their inputs and gradients in the steady state. A job takes a set when
// the call is made (the smallest that fits; if none fits, the largest, which then grows) and gives
// it back when the job is destroyed, on whichever thread and by whichever path (settled, dropped,
// cancelled, undelivered, environment teardown). Bounds: at most kMaxSets idle sets and kMaxBytes
// (256 MiB) of idle capacity; beyond either, the largest idle sets are freed, so one huge call
// does not pin its memory. Sets that are in use by jobs are not counted against the bounds.
class BufferPool {
 public:
  static constexpr size_t kMaxSets = 4;
  static constexpr size_t kMaxBytes = size_t(256) << 20;

  static BufferPool& instance() {
    static BufferPool* p = new BufferPool();  // leaked: jobs may be destroyed during process exit
    return *p;
  }

  // A set whose capacities fit need (element counts, in JobBuffers::at order), or one that will
  // have to grow (*fits false).
  std::unique_ptr<JobBuffers> take(const size_t need[JobBuffers::kCount], bool* fits) {
    std::unique_ptr<JobBuffers> set;
    {
      std::lock_guard<std::mutex> l(mutex_);
      int best = -1, largest = -1;
      size_t bestBytes = 0, largestBytes = 0;
      for (int j = 0; j < static_cast<int>(idle_.size()); ++j) {
        const size_t b = idle_[j]->bytes();
        if (idle_[j]->fits(need) && (best < 0 || b < bestBytes)) best = j, bestBytes = b;
        if (largest < 0 || b > largestBytes) largest = j, largestBytes = b;
      }
      const int pick = best >= 0 ? best : largest;
      if (pick >= 0) {
        set = std::move(idle_[pick]);
        idle_.erase(idle_.begin() + pick);
        idleBytes_ -= pick == best ? bestBytes : largestBytes;
      }
    }
    if (!set) set = std::make_unique<JobBuffers>();
    *fits = set->fits(need);
    ++inUse_;
    return set;
  }

  // Never throws (called from destructors); a set that cannot be kept is freed.
  void give(std::unique_ptr<JobBuffers> set) noexcept {
    --inUse_;
    std::unique_ptr<JobBuffers> drop[kMaxSets + 1];
    try {
      std::lock_guard<std::mutex> l(mutex_);
      idleBytes_ += set->bytes();
      idle_.push_back(std::move(set));  // within the capacity reserved below: no allocation
      for (int d = 0; idle_.size() > kMaxSets || idleBytes_ > kMaxBytes; ++d) {
        size_t j = 0;
        for (size_t k = 1; k < idle_.size(); ++k)
          if (idle_[k]->bytes() > idle_[j]->bytes()) j = k;
        idleBytes_ -= idle_[j]->bytes();
        drop[d] = std::move(idle_[j]);
        idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(j));
      }
    } catch (...) {
    }
  }  // the dropped sets (and set, if it was not kept) are freed here, outside the lock

  void counts(int64_t* sets, int64_t* bytes, int64_t* inUse) {
    std::lock_guard<std::mutex> l(mutex_);
    *sets = static_cast<int64_t>(idle_.size());
    *bytes = static_cast<int64_t>(idleBytes_);
    *inUse = inUse_.load();
  }

 private:
  BufferPool() { idle_.reserve(kMaxSets + 1); }
  std::mutex mutex_;
  std::vector<std::unique_ptr<JobBuffers>> idle_;
  size_t idleBytes_ = 0;
  std::atomic<int64_t> inUse_{0};  // sets taken and not given back yet (held by live jobs)
};

struct ReturnToPool {
  void operator()(JobBuffers* set) const noexcept { BufferPool::instance().give(std::unique_ptr<JobBuffers>(set)); }
};
using PooledBuffers = std::unique_ptr<JobBuffers, ReturnToPool>;

// Capacity for n elements in v: none allocated when it has room; otherwise the old memory is
// freed first and exactly n elements are reserved.
void makeRoom(std::vector<float>& v, size_t n) {
  if (v.capacity() < n) {
    std::vector<float>().swap(v);
    v.reserve(n);
  }
}

// v sized n (makeRoom, then resize).
void sizeTo(std::vector<float>& v, size_t n) {
  makeRoom(v, n);
  v.resize(n);
}

// v holds a copy of data[0, n) (makeRoom, then assign).
void copyInto(std::vector<float>& v, const float* data, size_t n) {
  makeRoom(v, n);
  v.assign(data, data + n);
}

struct Job;

// One per environment (main thread, each worker). Shared with its jobs; never calls N-API from
// another thread except through tsfn, and only while alive (checked under mutex).
struct EnvState {
  std::mutex mutex;
  bool alive = true;
  std::atomic<bool> cancel{false};
  napi_threadsafe_function tsfn = nullptr;
  int64_t pending = 0;  // jobs whose promise has not settled; env thread only
};

struct Job {
  std::shared_ptr<EnvState> env;
  napi_deferred deferred = nullptr;
  Shape shape;
  // Copies of the inputs, taken at the call, and the gradient buffers (sized when the job starts,
  // if gradients are asked for); from the pool, and given back when the job is destroyed.
  PooledBuffers buffers;
  Options options;
  Device device = Device::Cpu;
  bool wantGrad = false;
  // The caller's out arrays (options.out), referenced so that they stay alive until the promise
  // settles. Raw handles: only settle() (on the environment's thread) reads and deletes them. A job
  // destroyed anywhere else belongs to an environment being torn down, which frees its references.
  napi_ref out[kGradCount] = {nullptr, nullptr, nullptr, nullptr};
  LossParts result;
  std::string error;

  Problem<float> problem() const {
    Problem<float> p;
    p.shape = shape;
    p.features = buffers->features.data();
    p.logits = buffers->logits.data();
    p.labels = buffers->labels.data();
    p.mu = buffers->mu.data();
    p.variance = buffers->variance.data();
    return p;
  }
};

void deliver(std::unique_ptr<Job> job);

// Environment thread only.
void deleteOutRefs(napi_env env, Job& job) {
  for (napi_ref& r : job.out) {
    if (r) napi_delete_reference(env, r);
    r = nullptr;
  }
}

class JobQueue {
 public:
  static JobQueue& instance() {
    static JobQueue* q = new JobQueue();  // leaked on purpose, like the core's ThreadPool
    return *q;
  }

  void push(std::unique_ptr<Job> job) {
    {
      std::lock_guard<std::mutex> l(mutex_);
      if (!started_) {
        // Detached: never joined. At process exit the handler below drops the queue and waits
        // (bounded) for the running job to reach its next chunk, so that no job is inside the
        // core (or the CUDA runtime) while static destructors run.
        std::thread([this] { loop(); }).detach();
        std::atexit([] { JobQueue::instance().shutdown(); });
        started_ = true;
      }
      queue_.push_back(std::move(job));
    }
    cv_.notify_one();
  }

  // Drops the queued jobs of env (its environment is going away). Returns how many.
  int64_t dropQueued(const EnvState* env) {
    std::vector<std::unique_ptr<Job>> dropped;
    {
      std::lock_guard<std::mutex> l(mutex_);
      for (auto it = queue_.begin(); it != queue_.end();) {
        if ((*it)->env.get() == env) {
          dropped.push_back(std::move(*it));
          it = queue_.erase(it);
        } else {
          ++it;
        }
      }
    }
    stats().cancelledQueued += static_cast<int64_t>(dropped.size());
    return static_cast<int64_t>(dropped.size());  // destroyed here: owned memory only, no N-API
  }

  // Process exit: no new job starts; the running one is cancelled and awaited for at most 5 s.
  void shutdown() {
    std::unique_lock<std::mutex> l(mutex_);
    exiting_ = true;
    stats().cancelledQueued += static_cast<int64_t>(queue_.size());
    queue_.clear();
    if (running_) running_->cancel.store(true);
    idle_.wait_for(l, std::chrono::seconds(5), [&] { return running_ == nullptr; });
  }

  int64_t queued() {
    std::lock_guard<std::mutex> l(mutex_);
    return static_cast<int64_t>(queue_.size());
  }

 private:
  void loop() {
    for (;;) {
      std::unique_ptr<Job> job;
      {
        std::unique_lock<std::mutex> l(mutex_);
        cv_.wait(l, [&] { return !queue_.empty() || exiting_; });
        if (exiting_) return;
        job = std::move(queue_.front());
        queue_.pop_front();
        running_ = job->env.get();
      }
      const bool done = runOne(job.get());
      bool exiting;
      {
        std::lock_guard<std::mutex> l(mutex_);
        running_ = nullptr;
        exiting = exiting_;
      }
      idle_.notify_all();
      if (done && !exiting) deliver(std::move(job));
    }
  }

  // Runs a job; false when it was cancelled (it is then dropped).
  bool runOne(Job* job) {
    if (job->env->cancel.load()) {
      ++stats().cancelledQueued;
      return false;
    }
    try {
      kmcl::CancelScope scope(&job->env->cancel);
      std::lock_guard<FairLock> lock(computeLock());
      if (job->env->cancel.load()) throw kmcl::Cancelled();
      ++stats().started;  // holds the lock: counts jobs that got to compute
      Gradients<float> view;
      if (job->wantGrad) {
        GradientBuffers<float>& g = job->buffers->grads;
        sizeTo(g.features, size_t(job->shape.featuresSize()));
        sizeTo(g.logits, size_t(job->shape.logitsSize()));
        sizeTo(g.mu, size_t(job->shape.muSize()));
        sizeTo(g.variance, size_t(job->shape.varianceSize()));
        view = g.view();
      }
      job->result = run<float>(job->device, job->problem(), job->options, job->wantGrad ? &view : nullptr);
    } catch (const kmcl::Cancelled&) {
      ++stats().cancelledRunning;
      return false;
    } catch (const std::exception& e) {
      job->error = std::string("kmcl: ") + e.what();
    } catch (...) {
      job->error = "kmcl: unknown native error";
    }
    ++stats().completed;
    return true;
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::condition_variable idle_;
  std::deque<std::unique_ptr<Job>> queue_;
  bool started_ = false;
  bool exiting_ = false;
  EnvState* running_ = nullptr;  // the environment of the running job
};

// Queue thread: hands a finished job to its environment's thread, or drops it if that is gone.
void deliver(std::unique_ptr<Job> job) {
  std::shared_ptr<EnvState> env = job->env;
  std::lock_guard<std::mutex> l(env->mutex);
  if (env->alive && env->tsfn) {
    Job* raw = job.release();
    if (napi_call_threadsafe_function(env->tsfn, raw, napi_tsfn_nonblocking) == napi_ok) return;
    job.reset(raw);
  }
  ++stats().undelivered;
}

// Environment thread: settles the promise of a finished job.
void settle(napi_env env, napi_value, void* context, void* data) {
  std::unique_ptr<Job> job(static_cast<Job*>(data));
  if (env == nullptr || job == nullptr) return;  // the thread-safe function is being torn down
  auto* state = static_cast<EnvState*>(context);
  if (--state->pending == 0) napi_unref_threadsafe_function(env, state->tsfn);
  struct DeleteRefs {
    napi_env env;
    Job& job;
    ~DeleteRefs() { deleteOutRefs(env, job); }
  } deleteRefs{env, *job};
  // Nothing may escape into N-API's C frames: a failure here (e.g. out of memory for the
  // gradients, or a terminating environment) rejects the promise, or is dropped when even that fails.
  try {
    Napi::Env e(env);
    Napi::HandleScope scope(e);
    if (!job->error.empty()) {
      napi_reject_deferred(env, job->deferred, Napi::Error::New(e, job->error).Value());
    } else if (!job->wantGrad) {
      napi_resolve_deferred(env, job->deferred, resultObject(e, job->result, nullptr));
    } else {
      // The caller's out arrays are checked again: they may have been transferred or resized
      // while the job ran. Every given one is written, or none is and the promise rejects.
      Napi::Value arrays[kGradCount];
      float* data[kGradCount] = {nullptr, nullptr, nullptr, nullptr};
      for (int j = 0; j < kGradCount; ++j) {
        if (!job->out[j]) continue;
        napi_value v = nullptr;
        if (napi_get_reference_value(env, job->out[j], &v) != napi_ok || v == nullptr) {
          throw Napi::Error::New(e, "kmcl: " + outName(j) + " could not be read back; no out array was written");
        }
        const std::string why = writable<float>(env, v, job->shape, j, &data[j]);
        if (!why.empty()) {
          throw Napi::Error::New(e, "kmcl: " + outName(j) + why +
                                        " when the call settled (it was changed while the call was running); no out array was written");
        }
        arrays[j] = Napi::Value(env, v);
      }
      // New arrays first (they can fail: out of memory), then the copies into out (they cannot).
      const GradientBuffers<float>& grads = job->buffers->grads;
      for (int j = 0; j < kGradCount; ++j)
        if (!data[j]) arrays[j] = toArray(e, grads.at(j));
      for (int j = 0; j < kGradCount; ++j)
        if (data[j]) std::memcpy(data[j], grads.at(j).data(), grads.at(j).size() * sizeof(float));
      napi_resolve_deferred(env, job->deferred, resultObject(e, job->result, arrays));
    }
  } catch (const Napi::Error& err) {
    try {
      napi_reject_deferred(env, job->deferred, err.Value());
    } catch (...) {
    }
  } catch (const std::exception& err) {
    try {
      napi_reject_deferred(env, job->deferred, Napi::Error::New(Napi::Env(env), std::string("kmcl: ") + err.what()).Value());
    } catch (...) {
    }
  } catch (...) {
  }
}

// Environment teardown (worker terminated, process.exit, exit of the main thread).
void cleanupEnv(void* arg) {
  auto* holder = static_cast<std::shared_ptr<EnvState>*>(arg);
  std::shared_ptr<EnvState> state = *holder;
  delete holder;
  state->cancel.store(true);
  {
    std::lock_guard<std::mutex> l(state->mutex);
    state->alive = false;  // from now on the queue thread never touches tsfn
  }
  JobQueue::instance().dropQueued(state.get());
}

// finalize_data is the thread-safe function's own reference to the state.
void finalizeTsfn(napi_env, void* finalizeData, void*) {
  auto* holder = static_cast<std::shared_ptr<EnvState>*>(finalizeData);
  {
    std::lock_guard<std::mutex> l((*holder)->mutex);
    (*holder)->tsfn = nullptr;
    (*holder)->alive = false;
  }
  delete holder;
}

std::shared_ptr<EnvState> envState(Napi::Env env) {
  auto* holder = env.GetInstanceData<std::shared_ptr<EnvState>>();
  if (holder) return *holder;
  throw Napi::Error::New(env, "kmcl: the addon was not initialised in this environment");
}

// The buffers of an async call from the pool, with copies of its validated inputs (the job reads
// only these). Counted as reused when every buffer, the gradient buffers included, has room enough.
PooledBuffers jobBuffers(const Problem<float>& p, bool wantGrad) {
  const Shape& s = p.shape;
  const size_t g = wantGrad ? 1 : 0;
  const size_t need[JobBuffers::kCount] = {
      size_t(s.featuresSize()),     size_t(s.logitsSize()),     size_t(s.logitsSize()),
      size_t(s.muSize()),           size_t(s.varianceSize()),   g * size_t(s.featuresSize()),
      g * size_t(s.logitsSize()),   g * size_t(s.muSize()),     g * size_t(s.varianceSize())};
  bool fits = false;
  PooledBuffers set(BufferPool::instance().take(need, &fits).release());
  ++(fits ? stats().buffersReused : stats().buffersAllocated);
  const float* inputs[5] = {p.features, p.logits, p.labels, p.mu, p.variance};
  for (int j = 0; j < 5; ++j) copyInto(*set->at(j), inputs[j], need[j]);
  // The gradient buffers are sized by the queue thread when the job starts (JobQueue::runOne):
  // growing them costs the calling thread nothing.
  return set;
}

// computeAsync(problem, options, wantGradients, device, out?)
Napi::Value ComputeAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Problem<float> p = readProblem<float>(info[0], nullptr);
  const Options o = readOptions(info[1]);
  const bool wantGrad = info[2].ToBoolean().Value();
  const Device device = readDevice(info[3]);
  const OutArrays<float> out = readOut<float>(info[4], p, wantGrad);
  std::shared_ptr<EnvState> state = envState(env);
  if (!state->tsfn) {
    napi_value name = Napi::String::New(env, "kmcl.computeAsync");
    napi_threadsafe_function tsfn = nullptr;
    auto* holder = new std::shared_ptr<EnvState>(state);
    napi_status s = napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, holder, finalizeTsfn, state.get(),
                                                    settle, &tsfn);
    if (s != napi_ok) delete holder;
    if (s != napi_ok) throw Napi::Error::New(env, "kmcl: could not create the completion channel of async calls");
    napi_unref_threadsafe_function(env, tsfn);
    std::lock_guard<std::mutex> l(state->mutex);
    state->tsfn = tsfn;
  }
  auto job = std::make_unique<Job>();
  job->env = state;
  job->shape = p.shape;
  job->buffers = jobBuffers(p, wantGrad);
  job->options = o;
  job->device = device;
  job->wantGrad = wantGrad;
  for (int j = 0; j < kGradCount; ++j) {
    if (out.given(j) && napi_create_reference(env, out.value[j], 1, &job->out[j]) != napi_ok) {
      deleteOutRefs(env, *job);
      throw Napi::Error::New(env, "kmcl: could not reference " + outName(j));
    }
  }
  napi_value promise;
  if (napi_create_promise(env, &job->deferred, &promise) != napi_ok) {
    deleteOutRefs(env, *job);
    throw Napi::Error::New(env, "kmcl: could not create a promise");
  }
  // The thread-safe function is referenced while a promise is pending: the event loop stays
  // alive until every job of this environment has settled (as with libuv work).
  if (state->pending++ == 0) napi_ref_threadsafe_function(env, state->tsfn);
  ++stats().submitted;
  JobQueue::instance().push(std::move(job));
  return Napi::Value(env, promise);
}

Napi::Value JobStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  Stats& s = stats();
  out.Set("submitted", static_cast<double>(s.submitted.load()));
  out.Set("started", static_cast<double>(s.started.load()));
  out.Set("completed", static_cast<double>(s.completed.load()));
  out.Set("cancelledQueued", static_cast<double>(s.cancelledQueued.load()));
  out.Set("cancelledRunning", static_cast<double>(s.cancelledRunning.load()));
  out.Set("undelivered", static_cast<double>(s.undelivered.load()));
  out.Set("queued", static_cast<double>(JobQueue::instance().queued()));
  out.Set("buffersAllocated", static_cast<double>(s.buffersAllocated.load()));
  out.Set("buffersReused", static_cast<double>(s.buffersReused.load()));
  int64_t sets = 0, bytes = 0, inUse = 0;
  BufferPool::instance().counts(&sets, &bytes, &inUse);
  out.Set("pooledSets", static_cast<double>(sets));
  out.Set("pooledBytes", static_cast<double>(bytes));
  out.Set("buffersInUse", static_cast<double>(inUse));
  return out;
}

Napi::Value Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  Napi::Object cpu = Napi::Object::New(env);
  int threads = 1;
  std::string threadsError;
  try {
    threads = kmcl::cpuThreadCount(0);
  } catch (const std::exception& e) {
    threadsError = e.what();
  }
  cpu.Set("threads", threads);
  if (!threadsError.empty()) cpu.Set("threadsError", threadsError);
  const kmcl::CpuIsaInfo isa = kmcl::cpuIsaInfo();  // the float32 path's instruction set
  cpu.Set("isa", isa.selected);
  Napi::Array isas = Napi::Array::New(env, isa.available.size());
  for (size_t j = 0; j < isa.available.size(); ++j) isas.Set(uint32_t(j), isa.available[j]);
  cpu.Set("isaAvailable", isas);
  Napi::Array compiled = Napi::Array::New(env, isa.compiled.size());
  for (size_t j = 0; j < isa.compiled.size(); ++j) compiled.Set(uint32_t(j), isa.compiled[j]);
  cpu.Set("isaCompiled", compiled);
  if (!isa.error.empty()) cpu.Set("isaError", isa.error);
  out.Set("cpu", cpu);
  const kmcl::CudaInfo c = kmcl::cudaInfo();
  Napi::Object cuda = Napi::Object::New(env);
  cuda.Set("compiled", c.compiled);
  cuda.Set("usable", c.usable);
  if (!c.reason.empty()) cuda.Set("reason", c.reason);
  if (c.usable) {
    cuda.Set("deviceName", c.deviceName);
    cuda.Set("computeCapability", std::to_string(c.computeMajor) + "." + std::to_string(c.computeMinor));
    cuda.Set("totalMemory", static_cast<double>(c.totalMemory));
  }
  if (c.runtimeVersion) cuda.Set("runtimeVersion", c.runtimeVersion);
  if (c.driverVersion) cuda.Set("driverVersion", c.driverVersion);
  out.Set("cuda", cuda);
  out.Set("napiVersion", NAPI_VERSION);
  return out;
}

Napi::Value ReleaseDeviceMemory(const Napi::CallbackInfo& info) {
  try {
    kmcl::releaseDeviceMemory();
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), std::string("kmcl: ") + e.what());
  }
  return info.Env().Undefined();
}

// Wraps a callback so that std::exceptions from argument parsing become JS errors too.
template <Napi::Value (*F)(const Napi::CallbackInfo&)>
Napi::Value Guard(const Napi::CallbackInfo& info) {
  try {
    return F(info);
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), std::string("kmcl: ") + e.what());
  } catch (...) {
    throw Napi::Error::New(info.Env(), "kmcl: unknown native error");
  }
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // Per-environment state for async calls; the cleanup hook cancels this environment's jobs.
  auto state = std::make_shared<EnvState>();
  env.SetInstanceData<std::shared_ptr<EnvState>>(new std::shared_ptr<EnvState>(state));
  napi_add_env_cleanup_hook(env, cleanupEnv, new std::shared_ptr<EnvState>(state));
  exports.Set("compute", Napi::Function::New(env, Guard<ComputeSync<float>>, "compute"));
  exports.Set("computeF64", Napi::Function::New(env, Guard<ComputeSync<double>>, "computeF64"));
  exports.Set("computeAsync", Napi::Function::New(env, Guard<ComputeAsync>, "computeAsync"));
  exports.Set("jobStats", Napi::Function::New(env, Guard<JobStats>, "jobStats"));
  exports.Set("info", Napi::Function::New(env, Guard<Info>, "info"));
  exports.Set("releaseDeviceMemory", Napi::Function::New(env, Guard<ReleaseDeviceMemory>, "releaseDeviceMemory"));
  return exports;
}

}  // namespace

NODE_API_MODULE(kmcl, Init)
