// kmcl_native_test: checks the CUDA path against the CPU float64 path (kmcl::computeCpu<double> on
// the same float inputs converted to double) on every fixture of test/fixtures and on random
// problems covering every layout, option and awkward size; plus, everywhere, the CPU float32 path
// against float64, float64 against the fixtures, and the CUDA sources run under the CPU emulation
// (native/tests/emu, Linux) against float64.
//
//   kmcl_native_test [--quick] [--filter TEXT]... [--exclude TEXT]... [--no-emu] [--no-cpu] [--no-cuda]
//                    [--seeds LIST] [--fail-fast] [--require-cuda]
//
// --filter (repeatable) runs the cases whose names contain any of the texts, --exclude leaves out
// those containing any of its texts; --quick leaves out the large random problems (B ≥ 1000), for
// sanitizer runs. --seeds: the emulator's schedule seeds (comma-separated; default 0,1,2): every
// emulated fixture and random case runs once per seed (seed 0: threads in id order; s > 0: random
// warp and lane orders and random preemption, see emu/cuda_emu.h), named "…@sN" for N > 0; the
// emulator's race detector and guard zones fail a case whatever the seed. --fail-fast stops at the
// first failed case (mutation tests). --require-cuda fails (exit 1) when any cuda/ case was skipped.
// One line per case: "ok   name …", "FAIL name …" or "skip name (reason)", then exactly
// "N passed, N failed, N skipped". Exit code 1 when a case failed, else 0. Without a usable CUDA
// device every cuda/ case is skipped (the reason is printed).
//
// Criteria (test/fixtures/README.md): each loss term within 1e-5 relative (or 1e-6 absolute near
// 0), each gradient within 1e-4 of ‖g − g_ref‖ / ‖g_ref‖.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <mutex>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "emulated.h"
#include "json.h"
#include "kmcl/kmcl.h"

#ifndef KMCL_FIXTURES_DIR
#define KMCL_FIXTURES_DIR "test/fixtures"
#endif

namespace {

using kmcl::Gradients;
using kmcl::LossParts;
using kmcl::Options;
using kmcl::Problem;
using kmcl::Shape;
using kmcl::testing::Json;

constexpr double kTermRel = 1e-5;
constexpr double kTermAbs = 1e-6;
constexpr double kGradRel = 1e-4;

// ---- problems ----

struct Data {
  std::string name;
  Shape shape;
  Options options;
  std::vector<double> features, logits, labels, mu, variance;
  // Fixture answer (empty for random problems).
  bool hasExpected = false;
  LossParts expected;
  std::vector<double> gFeatures, gLogits, gMu, gVariance;
};

struct Result {
  LossParts terms;
  bool hasGrad = false;
  std::vector<double> g[4];  // features, logits, mu, variance
};

const char* kGradNames[4] = {"features", "logits", "mu", "variance"};

std::vector<float> toFloat(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }

std::vector<double> roundTrip(const std::vector<double>& v) {
  std::vector<double> r(v.size());
  for (size_t j = 0; j < v.size(); ++j) r[j] = double(float(v[j]));
  return r;
}

// The CPU path in precision T on the data (converted to T).
template <class T>
Result runCpu(const Data& d, bool roundToFloat, int threads = 0) {
  auto conv = [&](const std::vector<double>& v) {
    const std::vector<double> src = roundToFloat ? roundTrip(v) : v;
    return std::vector<T>(src.begin(), src.end());
  };
  const std::vector<T> f = conv(d.features), a = conv(d.logits), y = conv(d.labels), m = conv(d.mu), v = conv(d.variance);
  Problem<T> p;
  p.shape = d.shape;
  p.features = f.data();
  p.logits = a.data();
  p.labels = y.data();
  p.mu = m.data();
  p.variance = v.data();
  std::vector<T> g0(f.size()), g1(a.size()), g2(m.size()), g3(v.size());
  Gradients<T> g{g0.data(), g1.data(), g2.data(), g3.data()};
  Result r;
  r.terms = kmcl::computeCpu<T>(p, d.options, &g, threads);
  r.hasGrad = true;
  r.g[0].assign(g0.begin(), g0.end());
  r.g[1].assign(g1.begin(), g1.end());
  r.g[2].assign(g2.begin(), g2.end());
  r.g[3].assign(g3.begin(), g3.end());
  return r;
}

using CudaFn = LossParts (*)(const Problem<float>&, const Options&, const Gradients<float>*);

// mask: which gradients to ask for (bit 0 features … bit 3 variance); -1 = pass no Gradients at all.
Result runDevice(CudaFn fn, const Data& d, int mask = 15) {
  const std::vector<float> f = toFloat(d.features), a = toFloat(d.logits), y = toFloat(d.labels), m = toFloat(d.mu),
                           v = toFloat(d.variance);
  Problem<float> p;
  p.shape = d.shape;
  p.features = f.data();
  p.logits = a.data();
  p.labels = y.data();
  p.mu = m.data();
  p.variance = v.data();
  // NaN-filled outputs: an element the path forgets to write shows.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> g0(f.size(), nan), g1(a.size(), nan), g2(m.size(), nan), g3(v.size(), nan);
  Gradients<float> g;
  if (mask & 1) g.features = g0.data();
  if (mask & 2) g.logits = g1.data();
  if (mask & 4) g.mu = g2.data();
  if (mask & 8) g.variance = g3.data();
  Result r;
  r.terms = fn(p, d.options, mask < 0 ? nullptr : &g);
  r.hasGrad = mask >= 0;
  if (mask >= 0) {
    if (mask & 1) r.g[0].assign(g0.begin(), g0.end());
    if (mask & 2) r.g[1].assign(g1.begin(), g1.end());
    if (mask & 4) r.g[2].assign(g2.begin(), g2.end());
    if (mask & 8) r.g[3].assign(g3.begin(), g3.end());
  }
  return r;
}

Result fixtureAnswer(const Data& d) {
  Result r;
  r.terms = d.expected;
  r.hasGrad = true;
  r.g[0] = d.gFeatures;
  r.g[1] = d.gLogits;
  r.g[2] = d.gMu;
  r.g[3] = d.gVariance;
  return r;
}

// ---- comparison ----

struct Verdict {
  bool ok = true;
  double worstTerm = 0;  // relative error of the worst term
  double worstGrad = 0;  // relative norm error of the worst gradient
  std::string detail;
};

Verdict compare(const Result& got, const Result& ref, double kTermRel = ::kTermRel, double kGradRel = ::kGradRel) {
  Verdict v;
  char buf[256];
  const double gt[4] = {got.terms.loss, got.terms.asl, got.terms.reconstruction, got.terms.contrastive};
  const double rt[4] = {ref.terms.loss, ref.terms.asl, ref.terms.reconstruction, ref.terms.contrastive};
  const char* tn[4] = {"loss", "asl", "reconstruction", "contrastive"};
  for (int t = 0; t < 4; ++t) {
    const double err = std::fabs(gt[t] - rt[t]);
    const double rel = err / std::max(std::fabs(rt[t]), kTermAbs / kTermRel);
    v.worstTerm = std::max(v.worstTerm, rel);
    if (!(err <= kTermRel * std::fabs(rt[t]) || err <= kTermAbs)) {
      v.ok = false;
      std::snprintf(buf, sizeof(buf), "%s %.9g vs %.9g (rel %.2e); ", tn[t], gt[t], rt[t], rel);
      v.detail += buf;
    }
  }
  if (got.hasGrad) {
    for (int k = 0; k < 4; ++k) {
      if (got.g[k].empty()) continue;
      if (got.g[k].size() != ref.g[k].size()) {
        v.ok = false;
        v.detail += std::string(kGradNames[k]) + " size mismatch; ";
        continue;
      }
      double num = 0, den = 0;
      bool finite = true;
      for (size_t j = 0; j < got.g[k].size(); ++j) {
        if (!std::isfinite(got.g[k][j])) finite = false;
        const double d = got.g[k][j] - ref.g[k][j];
        num += d * d;
        den += ref.g[k][j] * ref.g[k][j];
      }
      num = std::sqrt(num);
      den = std::sqrt(den);
      const double rel = den > 0 ? num / den : num;
      const bool ok = finite && (den > 0 ? rel <= kGradRel : num <= kTermAbs);
      v.worstGrad = std::max(v.worstGrad, finite ? rel : INFINITY);
      if (!ok) {
        v.ok = false;
        std::snprintf(buf, sizeof(buf), "d/d%s rel norm err %.2e%s (|ref| %.3g); ", kGradNames[k], rel,
                      finite ? "" : " with non-finite values", den);
        v.detail += buf;
      }
    }
  }
  return v;
}

// ---- reporting ----

struct Report {
  int passed = 0, failed = 0, skipped = 0;
  int cudaSkipped = 0;
  bool failFast = false;
  std::vector<std::string> filters;  // a case runs when its name contains any of them (or none given)
  std::vector<std::string> excludes;  // … and none of these

  bool selected(const std::string& name) const {
    for (const std::string& f : excludes)
      if (name.find(f) != std::string::npos) return false;
    if (filters.empty()) return true;
    for (const std::string& f : filters)
      if (name.find(f) != std::string::npos) return true;
    return false;
  }
  void ok(const std::string& name, const std::string& detail) {
    ++passed;
    std::printf("ok   %s  %s\n", name.c_str(), detail.c_str());
    std::fflush(stdout);
  }
  void fail(const std::string& name, const std::string& detail) {
    ++failed;
    std::printf("FAIL %s  %s\n", name.c_str(), detail.c_str());
    std::fflush(stdout);
    if (failFast) {
      std::printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
      std::fflush(stdout);
      std::exit(1);
    }
  }
  void skip(const std::string& name, const std::string& reason) {
    ++skipped;
    if (name.rfind("cuda/", 0) == 0) ++cudaSkipped;
    std::printf("skip %s (%s)\n", name.c_str(), reason.c_str());
    std::fflush(stdout);
  }
  // Runs fn (which returns a verdict) and reports it; exceptions fail the case.
  void run(const std::string& name, const std::function<Verdict()>& fn) {
    if (!selected(name)) return;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      const Verdict v = fn();
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      char buf[160];
      std::snprintf(buf, sizeof(buf), "terms %.1e grads %.1e (%.0f ms)", v.worstTerm, v.worstGrad, ms);
      if (v.ok) {
        ok(name, std::string(buf) + (v.detail.empty() ? "" : "  " + v.detail));
      } else {
        fail(name, std::string(buf) + "  " + v.detail);
      }
    } catch (const std::exception& e) {
      fail(name, std::string("exception: ") + e.what());
    }
  }
};

// ---- fixtures ----

Data loadFixture(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  const Json j = kmcl::testing::JsonParser(ss.str()).parse();
  Data d;
  d.name = j.at("name").string;
  const Json& sh = j.at("shapes");
  const std::vector<double> muShape = sh.at("mu").numbers(), varShape = sh.at("variance").numbers();
  d.shape.batch = int64_t(sh.at("B").num());
  d.shape.classes = int64_t(sh.at("K").num());
  d.shape.dim = int64_t(sh.at("M").num());
  d.shape.muDim = int64_t(muShape.at(2));
  d.shape.varianceClasses = int64_t(varShape.at(1));
  d.shape.varianceDim = int64_t(varShape.at(2));
  const Json& o = j.at("options");
  auto num = [&](const char* k, double& dst) {
    if (const Json* v = o.find(k)) dst = v->num();
  };
  auto flag = [&](const char* k, bool& dst) {
    if (const Json* v = o.find(k)) dst = v->boolean;
  };
  num("temperature", d.options.temperature);
  num("gammaNeg", d.options.gammaNeg);
  num("gammaPos", d.options.gammaPos);
  num("clip", d.options.clip);
  num("eps", d.options.eps);
  num("logEps", d.options.logEps);
  num("distanceScale", d.options.distanceScale);
  flag("detachFocalWeight", d.options.detachFocalWeight);
  flag("stableReconstruction", d.options.stableReconstruction);
  if (const Json* w = o.find("weights")) {
    if (const Json* v = w->find("asl")) d.options.weightAsl = v->num();
    if (const Json* v = w->find("reconstruction")) d.options.weightReconstruction = v->num();
    if (const Json* v = w->find("contrastive")) d.options.weightContrastive = v->num();
  }
  const Json& in2 = j.at("inputs");
  d.features = in2.at("features").numbers();
  d.logits = in2.at("logits").numbers();
  d.labels = in2.at("labels").numbers();
  d.mu = in2.at("mu").numbers();
  d.variance = in2.at("variance").numbers();
  const Json& e = j.at("expected");
  d.hasExpected = true;
  d.expected.loss = e.at("loss").num();
  d.expected.asl = e.at("asl").num();
  d.expected.reconstruction = e.at("reconstruction").num();
  d.expected.contrastive = e.at("contrastive").num();
  const Json& g = j.at("gradients");
  d.gFeatures = g.at("features").numbers();
  d.gLogits = g.at("logits").numbers();
  d.gMu = g.at("mu").numbers();
  d.gVariance = g.at("variance").numbers();
  const Shape& s = d.shape;
  if (int64_t(d.features.size()) != s.featuresSize() || int64_t(d.logits.size()) != s.logitsSize() ||
      int64_t(d.labels.size()) != s.logitsSize() || int64_t(d.mu.size()) != s.muSize() ||
      int64_t(d.variance.size()) != s.varianceSize()) {
    throw std::runtime_error(path + ": array lengths do not match the shapes");
  }
  return d;
}

std::vector<std::string> fixtureFiles() {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(KMCL_FIXTURES_DIR, ec)) {
    if (e.path().extension() == ".json") files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

void setEnv(const char* name, const std::string& value) {
#if defined(_WIN32)
  _putenv_s(name, value.c_str());
#else
  setenv(name, value.c_str(), 1);
#endif
}

void unsetEnv(const char* name) {
#if defined(_WIN32)
  _putenv_s(name, "");
#else
  unsetenv(name);
#endif
}

// ---- random problems ----

enum class Labels { Random, Zero, Dense, Unique };

struct Spec {
  std::string tag;
  int64_t B = 8, K = 5, M = 8;
  bool iso = false;       // muDim = 1
  bool kvShared = false;  // variance [B, 1, ·]
  bool dvShared = false;  // variance [B, ·, 1]
  double labelsPerSample = 3;
  Labels labels = Labels::Random;
  uint64_t seed = 1;
  std::function<void(Options&)> tweak;
  bool cpu = true;   // also check the CPU float32 path (small enough for any machine)
  bool emu = false;  // also run under the CUDA emulation (small problems only)
  bool generic = false;  // force the generic pair kernel (KMCL_CUDA_FORCE_GENERIC=1)
  int chunk = 0;         // force partners per chunk (KMCL_CUDA_TEST_CHUNK): chunk merges with small B
  int tile = 0;          // force partners per shared-memory tile (KMCL_CUDA_TEST_TILE): ragged tiles
  bool big = false;      // skipped by --quick
};

std::string layoutName(const Spec& s) {
  const std::string mu = s.iso ? "iso" : "aniso";
  const std::string kv = s.kvShared ? "1" : "K";
  const std::string dv = s.dvShared || s.iso ? "1" : "D";
  return mu + "-var[B," + kv + "," + dv + "]";
}

std::string specName(const Spec& s) {
  std::string n = "B" + std::to_string(s.B) + "-K" + std::to_string(s.K) + "-M" + std::to_string(s.M) + "-" + layoutName(s);
  if (!s.tag.empty()) n += "-" + s.tag;
  return n;
}

Data makeRandom(const Spec& s) {
  Data d;
  d.name = specName(s);
  d.shape.batch = s.B;
  d.shape.classes = s.K;
  d.shape.dim = s.M;
  d.shape.muDim = s.iso ? 1 : s.M;
  d.shape.varianceClasses = s.kvShared ? 1 : s.K;
  d.shape.varianceDim = (s.dvShared || s.iso) ? 1 : d.shape.muDim;
  if (s.tweak) s.tweak(d.options);
  std::mt19937_64 rng(s.seed * 0x9E3779B97F4A7C15ull + uint64_t(s.B) * 131 + uint64_t(s.M));
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  const Shape& sh = d.shape;
  d.features.resize(size_t(sh.featuresSize()));
  for (auto& x : d.features) x = 0.5 * normal(rng);
  d.logits.resize(size_t(sh.logitsSize()));
  for (auto& x : d.logits) x = 1.5 * normal(rng);
  d.mu.resize(size_t(sh.muSize()));
  for (auto& x : d.mu) x = 0.3 * normal(rng);
  d.variance.resize(size_t(sh.varianceSize()));
  for (auto& x : d.variance) x = 1.0 + 2.0 * uni(rng);
  d.labels.assign(size_t(sh.logitsSize()), 0.0);
  for (int64_t i = 0; i < s.B; ++i) {
    double* y = d.labels.data() + i * s.K;
    switch (s.labels) {
      case Labels::Zero: break;
      case Labels::Dense:
        for (int64_t k = 0; k < s.K; ++k) y[k] = 1;
        break;
      case Labels::Unique:
        if (i < s.K) y[i] = 1;  // every class at most once: no co-positives
        break;
      case Labels::Random: {
        // 0 … 2·avg labels (mean avg), distinct classes.
        const int64_t n = std::min<int64_t>(s.K, int64_t(uni(rng) * (2 * s.labelsPerSample + 1)));
        for (int64_t t = 0; t < n;) {
          const int64_t k = int64_t(uni(rng) * double(s.K)) % s.K;
          if (y[k] == 0) {
            y[k] = 1;
            ++t;
          }
        }
        break;
      }
    }
  }
  return d;
}

std::vector<Spec> randomSpecs() {
  std::vector<Spec> v;
  auto add = [&](Spec s) { v.push_back(std::move(s)); };
  auto S = [](int64_t B, int64_t K, int64_t M, bool iso, bool kv1, bool dv1) {
    Spec s;
    s.B = B;
    s.K = K;
    s.M = M;
    s.iso = iso;
    s.kvShared = kv1;
    s.dvShared = dv1;
    return s;
  };
  // Sizes that are no multiple of any tile, K = 1, M = 1.
  { Spec s = S(1, 5, 8, false, false, false); s.emu = true; add(s); }
  { Spec s = S(2, 3, 4, true, false, true); s.labels = Labels::Dense; s.emu = true; add(s); }
  { Spec s = S(3, 1, 1, true, false, true); s.labels = Labels::Dense; s.tag = "K1-M1"; s.emu = true; add(s); }
  { Spec s = S(17, 7, 33, false, true, false); s.emu = true; add(s); }
  { Spec s = S(63, 20, 128, false, false, false); s.labelsPerSample = 4; add(s); }
  { Spec s = S(127, 80, 1, true, false, true); s.labelsPerSample = 6; add(s); }
  { Spec s = S(257, 12, 96, false, false, true); add(s); }
  { Spec s = S(1000, 80, 64, false, true, true); s.big = true; add(s); }
  { Spec s = S(1000, 10, 128, false, false, false); s.big = true; s.cpu = false; add(s); }
  { Spec s = S(4096, 80, 32, false, true, false); s.big = true; s.cpu = false; add(s); }
  { Spec s = S(4096, 20, 1, true, true, true); s.big = true; s.cpu = false; add(s); }
  // Every variance layout × both mu layouts.
  for (int iso = 0; iso < 2; ++iso)
    for (int kv = 0; kv < 2; ++kv)
      for (int dv = 0; dv < 2; ++dv) {
        if (iso && !dv) continue;  // isotropic: the variance has one value per (sample[, class])
        Spec s = S(70, 9, 40, iso != 0, kv != 0, dv != 0);
        s.tag = "layout";
        add(s);
        Spec e = S(20, 5, 12, iso != 0, kv != 0, dv != 0);
        e.tag = "layout";
        e.emu = true;
        e.labelsPerSample = 2;
        add(e);
      }
  // Lanes per partner L = 2, 4, 8, 16, 32 (muDim 2, 3, 5, 9, 17, 24) and the isotropic M = 128.
  for (int64_t M : {2, 3, 5, 9, 17, 24}) {
    Spec s = S(33, 6, M, false, M % 2 == 1, M % 3 == 0);
    s.tag = "lanes";
    s.emu = M <= 9;
    add(s);
  }
  { Spec s = S(100, 10, 128, true, false, true); s.tag = "iso-M128"; add(s); }
  // Labels without contrastive pairs, and dense labels (every pair co-positive).
  { Spec s = S(40, 6, 8, false, false, false); s.labels = Labels::Zero; s.tag = "no-labels"; s.emu = true; add(s); }
  { Spec s = S(20, 30, 8, false, false, false); s.labels = Labels::Unique; s.tag = "no-copositive"; s.emu = true; add(s); }
  { Spec s = S(64, 6, 16, false, true, false); s.labels = Labels::Dense; s.tag = "dense"; add(s); }
  { Spec s = S(24, 3, 6, false, false, false); s.labels = Labels::Dense; s.tag = "dense"; s.emu = true; add(s); }
  // Options.
  auto opt = [&](const char* tag, std::function<void(Options&)> f, int64_t B, int64_t M, bool iso, bool emu) {
    Spec s = S(B, 8, M, iso, false, iso);
    s.tag = tag;
    s.tweak = std::move(f);
    s.emu = emu;
    add(s);
  };
  opt("reference-recon", [](Options& o) { o.stableReconstruction = false; }, 50, 12, false, false);
  opt("reference-recon", [](Options& o) { o.stableReconstruction = false; }, 16, 6, false, true);
  opt("focal-grad-clip0", [](Options& o) { o.detachFocalWeight = false; o.gammaPos = 1; o.clip = 0; }, 50, 12, false, false);
  opt("focal-grad-clip0", [](Options& o) { o.detachFocalWeight = false; o.gammaPos = 1; o.clip = 0; }, 16, 6, true, true);
  opt("scale3.5", [](Options& o) { o.distanceScale = 3.5; }, 60, 24, false, false);
  opt("tau0.01", [](Options& o) { o.temperature = 0.01; }, 60, 6, false, false);
  opt("tau0.01", [](Options& o) { o.temperature = 0.01; }, 60, 1, true, false);
  opt("tau0.01", [](Options& o) { o.temperature = 0.01; }, 20, 4, false, true);
  opt("weights", [](Options& o) { o.weightAsl = 0.5; o.weightReconstruction = 2; o.weightContrastive = 0; }, 40, 10, false, true);
  opt("weights", [](Options& o) { o.weightAsl = 0; o.weightReconstruction = 0.25; o.weightContrastive = 3; }, 40, 10, false, false);
  // muDim > 128: the generic pair kernel.
  { Spec s = S(30, 6, 200, false, false, false); s.tag = "wide"; s.emu = true; add(s); }
  { Spec s = S(30, 6, 160, false, true, true); s.tag = "wide"; add(s); }
  // The generic kernel forced on tiled shapes: two implementations that must agree.
  for (const Spec& base : {S(63, 20, 40, false, false, false), S(70, 9, 1, true, false, true), S(50, 8, 96, false, false, true)}) {
    Spec s = base;
    s.generic = true;
    s.tag = "generic";
    add(s);
  }
  { Spec s = S(20, 5, 12, false, true, false); s.generic = true; s.tag = "generic"; s.emu = true; add(s); }
  { Spec s = S(20, 5, 1, true, false, true); s.generic = true; s.tag = "generic"; s.emu = true; add(s); }
  // Small partner chunks and tiles: chunk merges, ragged chunk and tile edges, several tiles of
  // anchor rows per class (dense labels: n_k = B > 32).
  auto edges = [&](Spec s, int chunk, int tile, bool emuToo) {
    s.chunk = chunk;
    s.tile = tile;
    s.tag = (s.tag.empty() ? "" : s.tag + "-") + "chunk" + std::to_string(chunk) + "-tile" + std::to_string(tile);
    s.emu = emuToo;
    s.cpu = false;
    add(s);
  };
  { Spec s = S(70, 2, 3, false, false, false); s.labels = Labels::Dense; s.tag = "dense"; edges(s, 7, 5, true); }
  { Spec s = S(45, 4, 1, true, true, true); s.labelsPerSample = 2; edges(s, 10, 40, true); }
  { Spec s = S(40, 3, 40, false, true, false); s.labels = Labels::Dense; s.tag = "dense"; edges(s, 9, 3, true); }
  { Spec s = S(40, 3, 96, false, false, true); s.labels = Labels::Dense; s.tag = "dense"; edges(s, 13, 2, false); }
  { Spec s = S(33, 3, 12, false, false, false); s.labels = Labels::Dense; s.tag = "dense-generic"; s.generic = true; edges(s, 6, 0, true); }
  { Spec s = S(1000, 10, 128, false, false, false); s.big = true; edges(s, 100, 7, false); }
  { Spec s = S(777, 6, 1, true, false, true); edges(s, 50, 33, false); }
  return v;
}

// The backend's test hooks (environment variables read at each call), set for one case.
struct EnvGuard {
  explicit EnvGuard(const Spec& s) {
    if (s.generic) setEnv("KMCL_CUDA_FORCE_GENERIC", "1");
    if (s.chunk > 0) setEnv("KMCL_CUDA_TEST_CHUNK", std::to_string(s.chunk));
    if (s.tile > 0) setEnv("KMCL_CUDA_TEST_TILE", std::to_string(s.tile));
  }
  ~EnvGuard() {
    unsetEnv("KMCL_CUDA_FORCE_GENERIC");
    unsetEnv("KMCL_CUDA_TEST_CHUNK");
    unsetEnv("KMCL_CUDA_TEST_TILE");
  }
};

}  // namespace

int main(int argc, char** argv) {
  Report rep;
  bool quick = false, noEmu = false, noCpu = false, noCuda = false, requireCuda = false;
  std::vector<uint64_t> seeds = {0, 1, 2};
  for (int a = 1; a < argc; ++a) {
    const std::string s = argv[a];
    if (s == "--quick") {
      quick = true;
    } else if (s == "--no-emu") {
      noEmu = true;
    } else if (s == "--no-cpu") {
      noCpu = true;
    } else if (s == "--no-cuda") {
      noCuda = true;
    } else if (s == "--filter" && a + 1 < argc) {
      rep.filters.push_back(argv[++a]);
    } else if (s == "--exclude" && a + 1 < argc) {
      rep.excludes.push_back(argv[++a]);
    } else if (s == "--seeds" && a + 1 < argc) {
      seeds.clear();
      std::stringstream list(argv[++a]);
      std::string item;
      while (std::getline(list, item, ',')) seeds.push_back(std::strtoull(item.c_str(), nullptr, 10));
      if (seeds.empty()) seeds.push_back(0);
    } else if (s == "--fail-fast") {
      rep.failFast = true;
    } else if (s == "--require-cuda") {
      requireCuda = true;
    } else {
      std::fprintf(stderr,
                   "usage: kmcl_native_test [--quick] [--filter TEXT]... [--exclude TEXT]... [--no-emu] [--no-cpu] [--no-cuda] "
                   "[--seeds 0,1,2] [--fail-fast] [--require-cuda]\n");
      return 2;
    }
  }

  const kmcl::CudaInfo info = kmcl::cudaInfo();
  const bool cuda = info.usable && !noCuda;
  std::string cudaSkip;
  if (noCuda) {
    cudaSkip = "--no-cuda";
  } else if (!info.compiled) {
    cudaSkip = "this build has no CUDA path";
  } else if (!info.usable) {
    cudaSkip = "no usable CUDA device: " + info.reason;
  }
  std::printf("kmcl native test: CPU threads %d; CUDA %s\n", kmcl::cpuThreadCount(0),
              cuda ? (info.deviceName + " (compute " + std::to_string(info.computeMajor) + "." +
                      std::to_string(info.computeMinor) + ", runtime " + std::to_string(info.runtimeVersion) + ", driver " +
                      std::to_string(info.driverVersion) + ")")
                         .c_str()
                   : ("skipped: " + cudaSkip).c_str());
  const bool emu = kmcl::emu::available() && !noEmu;
  std::printf("CUDA emulation (the CUDA sources on the CPU): %s%s\n",
              emu ? "on" : (noEmu ? "off (--no-emu)" : "not built on this platform"),
              emu ? (kmcl::emu::checkerEnabled() ? "; memory checker (races, guard zones) on" : "; memory checker off in this build") : "");
  // Each emulated fixture and random case runs once per schedule seed.
  auto seedSuffix = [](uint64_t seed) { return seed == 0 ? std::string() : "@s" + std::to_string(seed); };
  auto runEmu = [&](const std::string& name, const std::function<Verdict()>& fn) {
    for (uint64_t seed : seeds) {
      const std::string n = name + seedSuffix(seed);
      if (!rep.selected(n)) continue;
      kmcl::emu::setSchedule(seed);
      rep.run(n, fn);
      kmcl::emu::setSchedule(0);
    }
  };
  std::fflush(stdout);

  // ---- the emulator's own checks, on kernels with planted faults ----
  if (emu) {
    for (const kmcl::emu::SelfTestResult& t : kmcl::emu::selfTest()) {
      const std::string name = "emu/selftest/" + t.name;
      if (!rep.selected(name)) continue;
      if (t.ok) {
        rep.ok(name, t.detail.substr(0, 200));
      } else {
        rep.fail(name, t.detail);
      }
    }
  }

  // ---- fixtures ----
  std::vector<Data> fixtures;
  for (const std::string& f : fixtureFiles()) {
    try {
      fixtures.push_back(loadFixture(f));
    } catch (const std::exception& e) {
      rep.fail("fixture-load/" + f, e.what());
    }
  }
  if (fixtures.empty()) rep.fail("fixtures", std::string("no fixtures found in ") + KMCL_FIXTURES_DIR);

  for (const Data& d : fixtures) {
    if (!noCpu) {
      rep.run("cpu64/fixture/" + d.name, [&] { return compare(runCpu<double>(d, false), fixtureAnswer(d)); });
      rep.run("cpu32/fixture/" + d.name, [&] { return compare(runCpu<float>(d, false), fixtureAnswer(d)); });
    }
    std::unique_ptr<Result> ref;
    auto reference = [&]() -> const Result& {
      if (!ref) ref = std::make_unique<Result>(runCpu<double>(d, true));
      return *ref;
    };
    if (emu) runEmu("emu/fixture/" + d.name, [&] { return compare(runDevice(&kmcl::emu::computeCuda, d), reference()); });
    const std::string name = "cuda/fixture/" + d.name;
    if (!rep.selected(name)) continue;
    if (!cuda) {
      rep.skip(name, cudaSkip);
      continue;
    }
    rep.run(name, [&] {
      Verdict v = compare(runDevice(&kmcl::computeCuda, d), reference());
      // Also against the fixture's own float64 answer.
      const Verdict w = compare(runDevice(&kmcl::computeCuda, d), fixtureAnswer(d));
      if (!w.ok) {
        v.ok = false;
        v.detail += "vs fixture: " + w.detail;
      }
      return v;
    });
  }

  // ---- random problems ----
  for (const Spec& s : randomSpecs()) {
    const std::string base = specName(s);
    const std::string cpuName = "cpu32/random/" + base, emuName = "emu/random/" + base, cudaName = "cuda/random/" + base;
    const bool wantCpu = !noCpu && s.cpu && !s.generic && !(quick && s.big) && rep.selected(cpuName);
    bool wantEmu = false;
    for (uint64_t seed : seeds) wantEmu = wantEmu || (emu && s.emu && rep.selected(emuName + seedSuffix(seed)));
    const bool wantCuda = rep.selected(cudaName) && !(quick && s.big);
    if (!wantCpu && !wantEmu && !wantCuda) continue;
    const Data d = makeRandom(s);
    std::unique_ptr<Result> ref;
    auto reference = [&]() -> const Result& {
      if (!ref) ref = std::make_unique<Result>(runCpu<double>(d, true));
      return *ref;
    };
    if (wantCpu) rep.run(cpuName, [&] { return compare(runCpu<float>(d, true), reference()); });
    if (wantEmu) {
      runEmu(emuName, [&] {
        EnvGuard env(s);
        Verdict v = compare(runDevice(&kmcl::emu::computeCuda, d), reference());
        v.detail += std::string("[") + kmcl::emu::lastConfig() + "]";
        return v;
      });
    }
    if (wantCuda) {
      if (!cuda) {
        rep.skip(cudaName, cudaSkip);
      } else {
        rep.run(cudaName, [&] {
          EnvGuard env(s);
          return compare(runDevice(&kmcl::computeCuda, d), reference());
        });
      }
    }
  }

  // ---- the float32 CPU path on every instruction set this CPU supports (KMCL_CPU_ISA) ----
  // Against the float64 path on the same (float-rounded) inputs: terms within 1e-6 relative,
  // gradients within 1e-5 in relative norm; and bitwise equal for 1, 2, 3 and 8 threads.
  if (!noCpu) {
    const kmcl::CpuIsaInfo isa = kmcl::cpuIsaInfo();
    std::string avail;
    for (const std::string& a : isa.available) avail += " " + a;
    std::printf("CPU instruction sets: auto picks %s; available:%s\n", isa.best.c_str(), avail.c_str());
    const std::vector<Spec> specs = randomSpecs();
    for (const std::string& name : isa.compiled) {
      const std::string prefix = "isa/" + name + "/";
      if (std::find(isa.available.begin(), isa.available.end(), name) == isa.available.end()) {
        rep.skip(prefix + "*", "this CPU does not support " + name);
        continue;
      }
      setEnv("KMCL_CPU_ISA", name);
      for (const Data& d : fixtures)
        rep.run(prefix + "fixture/" + d.name, [&] { return compare(runCpu<float>(d, true), runCpu<double>(d, true), 1e-6, 1e-5); });
      for (const Spec& sp : specs) {
        // The large problems (B = 1000) are left to the cpu32/random cases of the default ISA:
        // their float64 reference takes seconds, once per ISA here would cost npm test time.
        if (!sp.cpu || sp.generic || sp.big) continue;
        const std::string nm = prefix + "random/" + specName(sp);
        if (!rep.selected(nm)) continue;
        const Data d = makeRandom(sp);
        rep.run(nm, [&] { return compare(runCpu<float>(d, true), runCpu<double>(d, true), 1e-6, 1e-5); });
      }
      for (const Spec& sp : specs) {
        if (!sp.cpu || sp.generic || sp.big || sp.B < 60) continue;
        const std::string nm = prefix + "threads-bitwise/" + specName(sp);
        if (!rep.selected(nm)) continue;
        const Data d = makeRandom(sp);
        rep.run(nm, [&] {
          const Result r1 = runCpu<float>(d, true, 1);
          Verdict v;
          for (int t : {2, 3, 8}) {
            const Result rt = runCpu<float>(d, true, t);
            const double a[4] = {r1.terms.loss, r1.terms.asl, r1.terms.reconstruction, r1.terms.contrastive};
            const double b[4] = {rt.terms.loss, rt.terms.asl, rt.terms.reconstruction, rt.terms.contrastive};
            bool same = std::memcmp(a, b, sizeof a) == 0;
            for (int g = 0; g < 4; ++g) same = same && r1.g[g] == rt.g[g];
            if (!same) {
              v.ok = false;
              v.detail += std::to_string(t) + " threads differ from 1; ";
            }
          }
          return v;
        });
      }
      unsetEnv("KMCL_CPU_ISA");
    }
    // cpuSweepNanos (for benchmarks) counts the sweep tasks of float32 calls with contrastive
    // work, and only those: the float64 path does not move it.
    rep.run("isa/sweep-time-counter", [&] {
      Verdict v;
      const int64_t a = kmcl::cpuSweepNanos();
      runCpu<double>(fixtures.at(0), true);
      const int64_t b = kmcl::cpuSweepNanos();
      runCpu<float>(fixtures.at(0), true);
      const int64_t c2 = kmcl::cpuSweepNanos();
      if (b != a || c2 <= b) {
        v.ok = false;
        v.detail = "float64 call moved it by " + std::to_string(b - a) + " ns, float32 call by " + std::to_string(c2 - b) + " ns";
      }
      return v;
    });
    rep.run("isa/bad-name-is-an-error", [&] {
      Verdict v;
      setEnv("KMCL_CPU_ISA", "sse9");
      try {
        runCpu<float>(fixtures.at(0), true);
        v.ok = false;
        v.detail = "KMCL_CPU_ISA=sse9 did not throw";
      } catch (const std::invalid_argument& e) {
        if (std::string(e.what()).find("KMCL_CPU_ISA must be one of") == std::string::npos) {
          v.ok = false;
          v.detail = e.what();
        }
      }
      unsetEnv("KMCL_CPU_ISA");
      return v;
    });
  }

  // ---- the device paths' API behaviour: no/partial gradients, errors, release, threads ----
  struct Path {
    const char* prefix;
    bool enabled;
    std::string why;
    CudaFn fn;
    void (*release)();
  };
  const Path paths[2] = {{"emu", emu, "", &kmcl::emu::computeCuda, &kmcl::emu::releaseDeviceMemory},
                         {"cuda", cuda, cudaSkip, &kmcl::computeCuda, &kmcl::releaseDeviceMemory}};
  Spec apiSpec;
  apiSpec.B = 24;
  apiSpec.K = 5;
  apiSpec.M = 12;
  const Data apiData = makeRandom(apiSpec);
  const Result apiRef = runCpu<double>(apiData, true);
  for (const Path& path : paths) {
    const std::string pre = std::string(path.prefix) + "/api/";
    auto runCase = [&](const std::string& name, const std::function<Verdict()>& fn) {
      if (!rep.selected(pre + name)) return;
      if (!path.enabled) {
        if (std::string(path.prefix) == "cuda") rep.skip(pre + name, path.why);
        return;
      }
      rep.run(pre + name, fn);
    };
    runCase("no-gradients", [&] { return compare(runDevice(path.fn, apiData, -1), apiRef); });
    runCase("some-gradients", [&] { return compare(runDevice(path.fn, apiData, 4 | 2), apiRef); });
    runCase("invalid-options-rejected", [&] {
      Data bad = apiData;
      bad.options.temperature = 0;
      Verdict v;
      try {
        runDevice(path.fn, bad);
        v.ok = false;
        v.detail = "temperature 0 was accepted";
      } catch (const std::invalid_argument&) {
      }
      const Verdict after = compare(runDevice(path.fn, apiData), apiRef);
      if (!after.ok) {
        v.ok = false;
        v.detail += "the next call failed: " + after.detail;
      }
      return v;
    });
    runCase("out-of-memory-then-normal-call", [&] {
      // 2^16 × 2^10 × 2^12 floats of mu (1 TiB): the workspace allocation must fail with an
      // exception before any input is read, and the next call must work.
      Problem<float> p;
      p.shape.batch = int64_t(1) << 16;
      p.shape.classes = int64_t(1) << 10;
      p.shape.dim = int64_t(1) << 12;
      p.shape.muDim = p.shape.dim;
      p.shape.varianceClasses = p.shape.classes;
      p.shape.varianceDim = p.shape.dim;
      float dummy[1] = {0};
      p.features = p.logits = p.labels = p.mu = p.variance = dummy;
      Verdict v;
      try {
        path.fn(p, Options{}, nullptr);
        v.ok = false;
        v.detail = "an absurd shape was accepted; ";
      } catch (const std::runtime_error& e) {
        v.detail = std::string("threw: ") + e.what();
        if (v.detail.size() > 160) v.detail = v.detail.substr(0, 160) + "…";
      }
      const Verdict after = compare(runDevice(path.fn, apiData), apiRef);
      if (!after.ok) {
        v.ok = false;
        v.detail += " the next call failed: " + after.detail;
      }
      return v;
    });
    runCase("release-then-compute", [&] {
      runDevice(path.fn, apiData);
      path.release();
      path.release();  // twice is fine
      return compare(runDevice(path.fn, apiData), apiRef);
    });
    runCase("grow-shrink-workspace", [&] {
      Spec big = apiSpec;
      big.B = std::string(path.prefix) == "emu" ? 60 : 300;
      big.M = 40;
      const Data bigData = makeRandom(big);
      Verdict v = compare(runDevice(path.fn, bigData), runCpu<double>(bigData, true));
      const Verdict w = compare(runDevice(path.fn, apiData), apiRef);
      if (!w.ok) {
        v.ok = false;
        v.detail += "after the larger problem: " + w.detail;
      }
      return v;
    });
    if (std::string(path.prefix) == "cuda") {
      runCase("concurrent-callers", [&] {
        // The addon may call from several AsyncWorkers at once: the mutex serialises them.
        Spec other = apiSpec;
        other.B = 77;
        other.iso = true;
        other.dvShared = true;
        other.seed = 7;
        const Data d2 = makeRandom(other);
        const Result ref2 = runCpu<double>(d2, true);
        std::atomic<int> bad{0};
        std::string why;
        std::mutex whyMutex;
        auto worker = [&](const Data& d, const Result& r) {
          for (int it = 0; it < 5; ++it) {
            try {
              const Verdict v = compare(runDevice(path.fn, d), r);
              if (!v.ok) {
                ++bad;
                std::lock_guard<std::mutex> lock(whyMutex);
                why = v.detail;
              }
            } catch (const std::exception& e) {
              ++bad;
              std::lock_guard<std::mutex> lock(whyMutex);
              why = e.what();
            }
          }
        };
        std::thread t1(worker, std::cref(apiData), std::cref(apiRef));
        std::thread t2(worker, std::cref(d2), std::cref(ref2));
        t1.join();
        t2.join();
        Verdict v;
        v.ok = bad == 0;
        if (!v.ok) v.detail = std::to_string(bad.load()) + " of 10 calls wrong: " + why;
        return v;
      });
    }
  }

  if (requireCuda && rep.cudaSkipped > 0) {
    // The device check must not pass on a machine where CUDA was not usable.
    rep.fail("require-cuda", std::to_string(rep.cudaSkipped) + " cuda/ case(s) skipped: " + cudaSkip);
  }
  std::printf("%d passed, %d failed, %d skipped\n", rep.passed, rep.failed, rep.skipped);
  return rep.failed == 0 ? 0 : 1;
}
