// node-addon-api binding of the kmcl core. Validation of values (NaN, labels, variance > 0, option
// ranges) happens in TypeScript before any call; this layer checks types and lengths again so that
// no call can read out of bounds, and turns every C++ exception into a JS Error.
#include <napi.h>

#include <cstring>
#include <memory>
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

// The gradient buffers of one call, owned by C++ until they are copied into JS arrays.
template <class T>
struct GradientBuffers {
  std::vector<T> features, logits, mu, variance;
  explicit GradientBuffers(const Shape& s)
      : features(s.featuresSize()), logits(s.logitsSize()), mu(s.muSize()), variance(s.varianceSize()) {}
  Gradients<T> view() { return Gradients<T>{features.data(), logits.data(), mu.data(), variance.data()}; }
};

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

template <class T>
Napi::Object resultObject(Napi::Env env, const LossParts& r, GradientBuffers<T>* g) {
  Napi::Object out = Napi::Object::New(env);
  out.Set("loss", r.loss);
  out.Set("asl", r.asl);
  out.Set("reconstruction", r.reconstruction);
  out.Set("contrastive", r.contrastive);
  if (g) {
    Napi::Object grads = Napi::Object::New(env);
    grads.Set("features", toArray(env, g->features));
    grads.Set("logits", toArray(env, g->logits));
    grads.Set("mu", toArray(env, g->mu));
    grads.Set("variance", toArray(env, g->variance));
    out.Set("gradients", grads);
  }
  return out;
}

// compute(problem, options, wantGradients, device)
template <class T>
Napi::Value ComputeSync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Problem<T> p = readProblem<T>(info[0], nullptr);
  const Options o = readOptions(info[1]);
  const bool wantGrad = info[2].ToBoolean().Value();
  const Device device = readDevice(info[3]);
  std::unique_ptr<GradientBuffers<T>> g;
  if (wantGrad) g = std::make_unique<GradientBuffers<T>>(p.shape);
  LossParts r;
  try {
    Gradients<T> view;
    if (g) view = g->view();
    r = run<T>(device, p, o, g ? &view : nullptr);
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, std::string("kmcl: ") + e.what());
  }
  return resultObject<T>(env, r, g.get());
}

class ComputeWorker : public Napi::AsyncWorker {
 public:
  ComputeWorker(Napi::Env env, Problem<float> p, Options o, bool wantGrad, Device device,
                std::vector<Napi::Reference<Napi::Value>> keep)
      : Napi::AsyncWorker(env, "kmcl.computeAsync"),
        deferred_(Napi::Promise::Deferred::New(env)),
        problem_(p),
        options_(o),
        device_(device),
        keep_(std::move(keep)) {
    if (wantGrad) grads_ = std::make_unique<GradientBuffers<float>>(p.shape);
  }
  Napi::Promise Promise() const { return deferred_.Promise(); }

  void Execute() override {
    try {
      Gradients<float> view;
      if (grads_) view = grads_->view();
      result_ = run<float>(device_, problem_, options_, grads_ ? &view : nullptr);
    } catch (const std::exception& e) {
      SetError(std::string("kmcl: ") + e.what());
    } catch (...) {
      SetError("kmcl: unknown native error");
    }
  }
  void OnOK() override { deferred_.Resolve(resultObject<float>(Env(), result_, grads_.get())); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Problem<float> problem_;
  Options options_;
  Device device_;
  std::vector<Napi::Reference<Napi::Value>> keep_;  // inputs stay alive while the worker reads them
  std::unique_ptr<GradientBuffers<float>> grads_;
  LossParts result_;
};

Napi::Value ComputeAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<Napi::Reference<Napi::Value>> keep;
  const Problem<float> p = readProblem<float>(info[0], &keep);
  const Options o = readOptions(info[1]);
  const bool wantGrad = info[2].ToBoolean().Value();
  const Device device = readDevice(info[3]);
  auto* worker = new ComputeWorker(env, p, o, wantGrad, device, std::move(keep));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
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
  }
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("compute", Napi::Function::New(env, Guard<ComputeSync<float>>, "compute"));
  exports.Set("computeF64", Napi::Function::New(env, Guard<ComputeSync<double>>, "computeF64"));
  exports.Set("computeAsync", Napi::Function::New(env, Guard<ComputeAsync>, "computeAsync"));
  exports.Set("info", Napi::Function::New(env, Guard<Info>, "info"));
  exports.Set("releaseDeviceMemory", Napi::Function::New(env, Guard<ReleaseDeviceMemory>, "releaseDeviceMemory"));
  return exports;
}

}  // namespace

NODE_API_MODULE(kmcl, Init)
