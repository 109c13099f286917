// The CPU path of the KMCL loss (spec/kmcl-loss.md): forward and gradients, multithreaded,
// deterministic for any thread count. Per-element formulas come from kmcl/math.h, which the
// CUDA path compiles too.
//
// Two implementations share the per-sample part (ASL, reconstruction): the float64 path is the
// scalar reference (its contrastive sweeps below, over symmetric pairs with online sums); the
// float32 path runs the vector sweeps of cpu_simd.inc, compiled per instruction set.
//
// Memory beyond inputs and outputs: double accumulators of the gradients (the size of the
// inputs), per-(sample, class) statistics (Q, the loss terms, active rows), per-sample label
// bitsets; the float32 path adds class-major copies of mu and variance and their double gradient
// accumulators, the float64 path up to 16 per-group copies of a shared variance's gradient:
// O(B·K·D + B·K); with a variance shared by all classes, a table of class-independent pair terms
// for a chunk of samples, at most 16 MiB. No B×B×K×M (nor B×B) buffer. The arrays live in a
// workspace kept across calls.

#include "cpu_includes.h"

// This file is compiled once as the baseline (SSE2 on x86-64, NEON on arm64) and, on x86-64,
// included again by cpu_avx2.cpp and cpu_avx512.cpp under `#pragma GCC target`: everything up to
// the ISA-independent part at the end lives in namespace kmcl::KMCL_ISA_NS.
#ifndef KMCL_ISA_NS
#define KMCL_ISA_NS isa_baseline
#define KMCL_ISA_BASELINE 1
#define KMCL_W 4
#endif

namespace kmcl {
namespace KMCL_ISA_NS {

namespace {

int popcount64(uint64_t x) { return __builtin_popcountll(x); }

// Rows [begin, end) in chunks, for per-sample work.
template <class Fn>
void forEachRow(int threads, int64_t B, const Fn& fn) {
  const int64_t chunk = std::max<int64_t>(1, (B + 63) / 64);
  const int64_t chunks = (B + chunk - 1) / chunk;
  ThreadPool::instance().run(threads, chunks, [&](int64_t c) {
    const int64_t end = std::min(B, (c + 1) * chunk);
    for (int64_t i = c * chunk; i < end; ++i) fn(i);
  });
}

// Online sum of exp((u - max)/τ): the running max keeps every exponent ≤ 0, so no temperature
// overflows and the sum is ≥ 1 (spec: log-space where values underflow).
struct OnlineSum {
  double max = 0;
  double sum = 0;  // 0 means empty
  void add(double u, double invTau) {
    if (sum == 0) {
      max = u;
      sum = 1;
    } else if (u > max) {
      sum = sum * std::exp((max - u) * invTau) + 1;
      max = u;
    } else {
      sum += std::exp((u - max) * invTau);
    }
  }
  // e_u / S
  double ratio(double u, double invTau) const { return std::exp((u - max) * invTau) / sum; }
};

template <class T>
struct Context {
  const Problem<T>& p;
  const Options& o;
  int64_t B, K, M, D, Kv, Dv, W;
  // Workspace arrays (kept across calls).
  std::vector<T>& invVariance;
  std::vector<uint64_t>& bits;      // labels, W words per sample
  std::vector<int>& labelCount;     // |y_i|
  std::vector<int64_t>& anchorSize; // |A(i)|
  std::vector<uint8_t>& active;     // B·K: row (i, k) is an anchor row

  Context(const Problem<T>& problem, const Options& options, std::vector<T>& invVariance_, std::vector<uint64_t>& bits_,
          std::vector<int>& labelCount_, std::vector<int64_t>& anchorSize_, std::vector<uint8_t>& active_)
      : p(problem),
        o(options),
        B(problem.shape.batch),
        K(problem.shape.classes),
        M(problem.shape.dim),
        D(problem.shape.muDim),
        Kv(problem.shape.varianceClasses),
        Dv(problem.shape.varianceDim),
        W((problem.shape.classes + 63) / 64),
        invVariance(invVariance_),
        bits(bits_),
        labelCount(labelCount_),
        anchorSize(anchorSize_),
        active(active_) {}

  const T* muRow(int64_t i, int64_t k) const { return p.mu + (i * K + k) * D; }
  int64_t varOffset(int64_t i, int64_t k) const { return (i * Kv + (Kv == 1 ? 0 : k)) * Dv; }
  bool label(int64_t i, int64_t k) const { return (bits[i * W + (k >> 6)] >> (k & 63)) & 1; }

  int overlap(int64_t i, int64_t l) const {
    int c = 0;
    for (int64_t w = 0; w < W; ++w) c += popcount64(bits[i * W + w] & bits[l * W + w]);
    return c;
  }

  // Σ over n dims of the log part, ¼ Σ log1p(x_m), evaluated as ¼ log Π(1 + x_m) in double over
  // chunks of 8 dims: one logarithm per 8 dims. A chunk whose product overflows (variance ratios
  // beyond ~1e38) is summed dim by dim instead.
  static double logPartSum(const T* vi, const T* vl, const T* ivi, const T* ivl, int64_t n) {
    double total = 0;
    for (int64_t m0 = 0; m0 < n; m0 += 8) {
      const int64_t e = std::min(n, m0 + 8);
      double prod = 1;
      for (int64_t m = m0; m < e; ++m) prod *= 1.0 + double(math::bhattacharyyaLogArg(vi[m], vl[m], ivi[m], ivl[m]));
      if (prod < std::numeric_limits<double>::infinity()) {
        total += std::log(prod);
      } else {
        for (int64_t m = m0; m < e; ++m) total += std::log1p(double(math::bhattacharyyaLogArg(vi[m], vl[m], ivi[m], ivl[m])));
      }
    }
    return 0.25 * total;
  }

  // Dist_ilk of spec section 3 (distanceScale applied).
  double distance(int64_t i, int64_t l, int64_t k) const {
    const T* mi = muRow(i, k);
    const T* ml = muRow(l, k);
    const int64_t oi = varOffset(i, k), ol = varOffset(l, k);
    const T* vi = p.variance + oi;
    const T* vl = p.variance + ol;
    const T* ivi = invVariance.data() + oi;
    const T* ivl = invVariance.data() + ol;
    const double s = o.distanceScale;
    if (Dv == 1) {
      const T inv = T(1) / (vi[0] + vl[0]);
      const T logTerm = math::bhattacharyyaLog(vi[0], vl[0], ivi[0], ivl[0]);
      T quad = 0;
      for (int64_t m = 0; m < D; ++m) quad += math::bhattacharyyaQuad(mi[m] - ml[m], inv);
      // Isotropic (D = 1): the M dims are equal, so M·t. The log part is the same on every dim.
      const double dims = D == 1 ? double(M) : 1.0;
      return s * (dims * double(quad) + double(M) * double(logTerm));
    }
    T quad = 0;
    for (int64_t m = 0; m < D; ++m) quad += math::bhattacharyyaQuad(mi[m] - ml[m], T(1) / (vi[m] + vl[m]));
    return s * (double(quad) + logPartSum(vi, vl, ivi, ivl, D));
  }

  // Adds G · ∂Dist_ilk/∂(mu, variance) into the double accumulators of samples i and l.
  void accumulateDistanceGrad(int64_t i, int64_t l, int64_t k, double G, double* gMu, double* gVar) const {
    const T* mi = muRow(i, k);
    const T* ml = muRow(l, k);
    const int64_t oi = varOffset(i, k), ol = varOffset(l, k);
    const T* vi = p.variance + oi;
    const T* vl = p.variance + ol;
    const T* ivi = invVariance.data() + oi;
    const T* ivl = invVariance.data() + ol;
    double* gmi = gMu + (i * K + k) * D;
    double* gml = gMu + (l * K + k) * D;
    const double g = G * o.distanceScale;
    if (Dv == 1) {
      const T a = vi[0], b = vl[0];
      const T inv = T(1) / (a + b);
      const double dims = D == 1 ? double(M) : 1.0;
      double dVar = 0;  // quadratic part, shared by a and b
      for (int64_t m = 0; m < D; ++m) {
        const T d = mi[m] - ml[m];
        const double dm = g * dims * double(math::bhattacharyyaQuadDMu(d, inv));
        gmi[m] += dm;
        gml[m] -= dm;
        dVar += double(math::bhattacharyyaQuadDVar(d, inv));
      }
      gVar[oi] += g * (dims * dVar + double(M) * double(math::bhattacharyyaLogDA(a, b, inv, ivi[0])));
      gVar[ol] += g * (dims * dVar + double(M) * double(math::bhattacharyyaLogDA(b, a, inv, ivl[0])));
      return;
    }
    // Rows of different samples never overlap: tell the compiler, so the loop vectorises.
    double* __restrict gmiR = gmi;
    double* __restrict gmlR = gml;
    double* __restrict gvi = gVar + oi;
    double* __restrict gvl = gVar + ol;
    for (int64_t m = 0; m < D; ++m) {
      const T a = vi[m], b = vl[m];
      const T im = T(1) / (a + b);
      const T d = mi[m] - ml[m];
      const double dm = g * double(math::bhattacharyyaQuadDMu(d, im));
      const T dq = math::bhattacharyyaQuadDVar(d, im);
      gmiR[m] += dm;
      gmlR[m] -= dm;
      gvi[m] += g * double(dq + math::bhattacharyyaLogDA(a, b, im, ivi[m]));
      gvl[m] += g * double(dq + math::bhattacharyyaLogDA(b, a, im, ivl[m]));
    }
  }
};

#include "cpu_simd.inc"

// The double accumulators and per-call arrays, kept across calls (item: no allocation in the
// steady state): a call takes the shared workspace when it is free (calls from several threads
// at once use a private one for the overlapping call). Vectors only grow.
struct Workspace {
  std::vector<double> gLogits, gFeatures, gMu, gVar, aslRow, recRow, conIK, coef;
  std::vector<float> invVarF;
  std::vector<double> invVarD;
  std::vector<uint64_t> bits;
  std::vector<int> labelCount;
  std::vector<int64_t> anchorSize, classStart;
  std::vector<uint8_t> active;
  std::vector<int32_t> classAnchors;
  SimdData sd;
  std::vector<float> hL, hR;  // shared variance: class-independent pair terms of a chunk of samples
};

// Adds the time of its scope to gSweepNanos (cpuSweepNanos).
struct SweepTimer {
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  ~SweepTimer() {
    gSweepNanos.fetch_add(
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count(),
        std::memory_order_relaxed);
  }
};

template <class V>
void sized(V& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

template <class V>
void zeroed(V& v, size_t n) {
  if (v.size() < n) v.resize(n);
  std::fill(v.begin(), v.begin() + n, typename V::value_type{});
}

// Per-thread scratch of the per-sample pass (ASL and reconstruction), reused across calls.
struct SampleScratch {
  std::vector<double> u, logp, ee, ep, gE, gLogP;
  std::vector<uint8_t> clamped;
  void ensure(int64_t K) {
    if (int64_t(u.size()) < K) {
      u.resize(K);
      ep.resize(K);
      logp.resize(K);
      ee.resize(K);
      gE.resize(K);
      gLogP.resize(K);
      clamped.resize(K);
    }
  }
};

// The contrastive term on the float32 path: the class-major copies of mu and variance, the
// sweeps of cpu_simd.inc class by class (one task per class, anchors in order, so every sum has
// a fixed order), then the gradients back into the [B, K, D] accumulators, sample by sample.
template <class Ctx>
double contrastiveSimd(const Ctx& c, Workspace& ws, int threads, bool wantGrad, double invB, double invTau) {
  const Problem<float>& p = c.p;
  const Options& o = c.o;
  const int64_t B = c.B, K = c.K, D = c.D, Dv = c.Dv;
  SimdData& sd = ws.sd;
  const bool iso = D == 1;
  const bool vdim = !iso && Dv > 1;
  sd.B = B;
  sd.K = K;
  sd.D = D;
  sd.Bp = (B + kW - 1) / kW * kW;
  sd.varRows = vdim ? D : 1;
  const int64_t Bp = sd.Bp, varRows = sd.varRows;
  const int64_t muN = K * D * Bp;
  const int64_t varN = K * varRows * Bp;
  const bool wantGradC = wantGrad && o.weightContrastive > 0;
  if (wantGradC) {
    sized(sd.gmu, muN);
    sized(sd.gvar, varN);
  }
  // Class-major (k·B + i): the tasks of different classes write different cache lines.
  sized(ws.conIK, B * K);
  // prepareClass: class k's copies in tiles of kW partners (cpu_simd.inc) and its accumulators
  // zeroed. Without a shared variance, by the task that then sweeps the class, into that thread's
  // own buffers (a class's sweeps read only that class), so the data stay in one core's cache from
  // call to call. With one, into sd for every class first (the pair terms read class 0's variance
  // before the sweeps).
  const bool shared = c.Kv == 1;
  if (shared && int64_t(sd.mu.size()) < muN) sd.mu.resize(muN);
  if (shared && int64_t(sd.var.size()) < varN) {
    sd.var.resize(varN);
    sd.ivar.resize(varN);
  }
  struct Tiles {
    float* mu;
    float* v;
    float* iv;
  };
  // Where class k's copies live: in sd (shared variance), or in the sweeping thread's cd.
  auto tilesOf = [&](int64_t k, ClassData& cd) -> Tiles {
    if (shared) return {sd.mu.data() + k * D * Bp, sd.var.data() + k * varRows * Bp, sd.ivar.data() + k * varRows * Bp};
    cd.ensure(D * Bp, varRows * Bp);
    return {cd.mu.data(), cd.var.data(), cd.ivar.data()};
  };
  auto prepareClass = [&](int64_t k, const Tiles& t) {
    float* mu = t.mu;
    float* v = t.v;
    float* iv = t.iv;
    for (int64_t l = 0; l < B; ++l) {
      const float* src = c.muRow(l, k);
      for (int64_t m = 0; m < D; ++m) mu[tileOffset(l, m, D)] = src[m];
      const int64_t ov = c.varOffset(l, k);
      for (int64_t m = 0; m < varRows; ++m) {
        v[tileOffset(l, m, varRows)] = p.variance[ov + m];
        iv[tileOffset(l, m, varRows)] = c.invVariance[ov + m];
      }
    }
    for (int64_t l = B; l < Bp; ++l) {
      for (int64_t m = 0; m < D; ++m) mu[tileOffset(l, m, D)] = 0.0f;
      for (int64_t m = 0; m < varRows; ++m) v[tileOffset(l, m, varRows)] = iv[tileOffset(l, m, varRows)] = 1.0f;
    }
    if (wantGradC) {
      std::fill(sd.gmu.begin() + k * D * Bp, sd.gmu.begin() + (k + 1) * D * Bp, 0.0);
      std::fill(sd.gvar.begin() + k * varRows * Bp, sd.gvar.begin() + (k + 1) * varRows * Bp, 0.0);
    }
    std::fill(ws.conIK.begin() + k * B, ws.conIK.begin() + (k + 1) * B, 0.0);
  };
  if (shared) {
    ThreadPool::instance().run(threads, K, [&](int64_t k) {
      SweepTimer timer;
      ClassData unused;
      prepareClass(k, tilesOf(k, unused));
    });
  }
  zeroed(ws.coef, B);
  for (int64_t i = 0; i < B; ++i)
    if (c.anchorSize[i] > 0) ws.coef[i] = -o.weightContrastive * invB * invTau / double(c.anchorSize[i]);
  ClassArgs args0;
  args0.s = float(o.distanceScale);
  args0.invTau = float(invTau);
  args0.logEps = o.logEps;
  args0.wantGrad = wantGradC;
  auto sweepClass = [&](int64_t k, ClassArgs& a) {
    const bool sh = a.hL != nullptr;
    double* con = ws.conIK.data();
    const double* coef = ws.coef.data();
    if (iso) {
      if (sh) classSweeps<true, false, true>(k, c, sd, a, con, coef);
      else classSweeps<true, false, false>(k, c, sd, a, con, coef);
    } else if (vdim) {
      if (sh) classSweeps<false, true, true>(k, c, sd, a, con, coef);
      else classSweeps<false, true, false>(k, c, sd, a, con, coef);
    } else {
      if (sh) classSweeps<false, false, true>(k, c, sd, a, con, coef);
      else classSweeps<false, false, false>(k, c, sd, a, con, coef);
    }
  };
  // The anchor samples in chunks; every class's anchor rows of a chunk, one task per class.
  // Shared variance (Kv = 1): first the class-independent pair terms of the chunk's samples, once
  // per sample pair (sharedPairTerms), in a table of at most 16 MiB (2 floats per pair, at least 64
  // samples a chunk). Otherwise one chunk holds every sample. The chunk size depends on B only, so
  // the order of every sum stays independent of the threads.
  const int64_t chunk = shared ? std::min<int64_t>(B, std::max<int64_t>(64, (int64_t(16) << 20) / (8 * Bp))) : B;
  if (shared && int64_t(ws.hL.size()) < chunk * Bp) {
    ws.hL.resize(chunk * Bp);
    ws.hR.resize(chunk * Bp);
  }
  for (int64_t c0 = 0; c0 < B; c0 += chunk) {
    const int64_t c1 = std::min(B, c0 + chunk);
    if (shared) {
      ThreadPool::instance().run(threads, c1 - c0, [&](int64_t r) {
        SweepTimer timer;
        const int64_t i = c0 + r;
        if (c.labelCount[i] == 0) return;
        float* L = ws.hL.data() + r * Bp;
        float* R = ws.hR.data() + r * Bp;
        if (iso) sharedPairTerms<true, false>(sd, i, L, R);
        else if (vdim) sharedPairTerms<false, true>(sd, i, L, R);
        else sharedPairTerms<false, false>(sd, i, L, R);
      });
    }
    ThreadPool::instance().run(threads, K, [&](int64_t k) {
      SweepTimer timer;
      thread_local ClassData cd;
      const Tiles t = tilesOf(k, cd);
      if (!shared) prepareClass(k, t);  // one chunk: once per class
      ClassArgs a = args0;
      a.muK = t.mu;
      a.vK = t.v;
      a.ivK = t.iv;
      a.anchors = ws.classAnchors.data() + ws.classStart[k];
      a.n = ws.classStart[k + 1] - ws.classStart[k];
      a.rowBegin = std::lower_bound(a.anchors, a.anchors + a.n, int32_t(c0)) - a.anchors;
      a.rowEnd = std::lower_bound(a.anchors, a.anchors + a.n, int32_t(c1)) - a.anchors;
      if (shared) {
        a.hL = ws.hL.data();
        a.hR = ws.hR.data();
        a.hRow0 = c0;
      }
      if (a.rowEnd > a.rowBegin) sweepClass(k, a);
    });
  }
  double contrastive = 0;
  for (int64_t i = 0; i < B; ++i) {
    if (c.anchorSize[i] == 0) continue;
    double row = 0;
    for (int64_t k = 0; k < K; ++k) row += ws.conIK[k * B + i];
    contrastive += -row / double(c.anchorSize[i]);
  }
  contrastive *= invB;
  if (wantGradC) {
    double* gMu = ws.gMu.data();
    double* gVar = ws.gVar.data();
    forEachRow(threads, B, [&](int64_t l) {
      for (int64_t k = 0; k < K; ++k) {
        const int64_t ov = c.varOffset(l, k);
        const double* gm = sd.gmu.data() + k * D * Bp;
        double* out = gMu + (l * K + k) * D;
        for (int64_t m = 0; m < D; ++m) out[m] += gm[tileOffset(l, m, D)];
        const double* gv = sd.gvar.data() + k * varRows * Bp;
        for (int64_t m = 0; m < varRows; ++m) gVar[ov + m] += gv[tileOffset(l, m, varRows)];
      }
    });
  }
  return contrastive;
}

}  // namespace

template <class T>
LossParts computeImpl(const Problem<T>& problem, const Options& o, const Gradients<T>* gradients, int numThreads,
                      Workspace& ws) {
  const Shape& sh = problem.shape;
  // Small problems run on the calling thread: waking the pool costs more than the work. The
  // result is the same either way (the order of every sum is fixed by the schedule).
  const double pairWork = double(sh.batch) * double(sh.batch) * double(std::max<int64_t>(sh.muDim, 4));
  const int configured = cpuThreadCount(numThreads);  // also rejects a bad KMCL_NUM_THREADS
  const int threads = pairWork < 65536.0 ? 1 : configured;
  const bool wantGrad = gradients != nullptr;
  constexpr bool kFloat = std::is_same<T, float>::value;
  std::vector<T>& invVar = *[&] {
    if constexpr (kFloat) return &ws.invVarF; else return &ws.invVarD;
  }();
  Context<T> c(problem, o, invVar, ws.bits, ws.labelCount, ws.anchorSize, ws.active);
  const int64_t B = c.B, K = c.K, M = c.M, D = c.D, W = c.W;

  std::vector<double>& gLogits = ws.gLogits;
  std::vector<double>& gFeatures = ws.gFeatures;
  std::vector<double>& gMu = ws.gMu;
  std::vector<double>& gVar = ws.gVar;
  // The double gradient accumulators: each sample's rows are zeroed by the task of the per-sample
  // pass that owns the sample (below), the first to write them, not by this thread ahead of the
  // work (on 2 threads the workers then fetched every line from this core's cache).
  if (wantGrad) {
    sized(gLogits, sh.logitsSize());
    sized(gFeatures, sh.featuresSize());
    sized(gMu, sh.muSize());
    sized(gVar, sh.varianceSize());
  }

  if (int64_t(c.invVariance.size()) < sh.varianceSize()) c.invVariance.resize(sh.varianceSize());
  for (int64_t j = 0; j < sh.varianceSize(); ++j) c.invVariance[j] = T(1) / problem.variance[j];
  // 1/v in double for the reconstruction term (the float path's own copy; the float64 path's is
  // c.invVariance itself).
  const double* ivD = nullptr;
  if constexpr (kFloat) {
    if (int64_t(ws.invVarD.size()) < sh.varianceSize()) ws.invVarD.resize(sh.varianceSize());
    for (int64_t j = 0; j < sh.varianceSize(); ++j) ws.invVarD[j] = 1.0 / double(problem.variance[j]);
    ivD = ws.invVarD.data();
  } else {
    ivD = c.invVariance.data();
  }
  zeroed(c.bits, B * W);
  zeroed(c.labelCount, B);
  for (int64_t i = 0; i < B; ++i)
    for (int64_t k = 0; k < K; ++k)
      if (problem.labels[i * K + k] != T(0)) {
        c.bits[i * W + (k >> 6)] |= uint64_t(1) << (k & 63);
        ++c.labelCount[i];
      }

  // ---- 1. ASL and 2. reconstruction: per sample, each row owned by one task. ----
  zeroed(ws.aslRow, B);
  zeroed(ws.recRow, B);
  double* aslRow = ws.aslRow.data();
  double* recRow = ws.recRow.data();
  const math::AslParams<T> asl{T(o.gammaNeg), T(o.gammaPos), T(o.clip), T(o.eps), o.detachFocalWeight};
  const double logEps = std::log(o.eps);
  const double invB = 1.0 / double(B);
  const int64_t varRow = c.Kv * c.Dv;  // variance values per sample
  forEachRow(threads, B, [&](int64_t i) {
    if (wantGrad) {
      std::fill(gLogits.begin() + i * K, gLogits.begin() + (i + 1) * K, 0.0);
      std::fill(gFeatures.begin() + i * M, gFeatures.begin() + (i + 1) * M, 0.0);
      std::fill(gMu.begin() + i * K * D, gMu.begin() + (i + 1) * K * D, 0.0);
      std::fill(gVar.begin() + i * varRow, gVar.begin() + (i + 1) * varRow, 0.0);
    }
    double aslSum = 0;
    thread_local SampleScratch scratch;
    scratch.ensure(K);
    double* u = scratch.u.data();
    double* logp = scratch.logp.data();
    double* ee = scratch.ee.data();
    double* ep = scratch.ep.data();
    double* gE = scratch.gE.data();
    double* gLogP = scratch.gLogP.data();
    uint8_t* clamped = scratch.clamped.data();
    std::fill(gE, gE + K, 0.0);
    std::fill(gLogP, gLogP + K, 0.0);
    std::fill(clamped, clamped + K, uint8_t(0));
    const T* a = problem.logits + i * K;
    const T* z = problem.features + i * M;
    thread_local AslScratch as;
    if constexpr (kFloat) {
      // The float path: ASL in vectors (cpu_simd.inc, aslRowSimd), summed in class order.
      const int64_t Kp = (K + kW - 1) / kW * kW;
      as.ensure(Kp);
      for (int64_t k = 0; k < Kp; ++k) {
        as.a[k] = k < K ? a[k] : 0.0f;
        as.y[k] = k < K && c.label(i, k) ? 1.0f : 0.0f;
      }
      aslRowSimd(as, Kp, asl);
      for (int64_t k = 0; k < K; ++k) {
        aslSum += double(as.loss[k]);
        if (wantGrad) gLogits[i * K + k] += o.weightAsl * double(as.dLogit[k]);
      }
    } else {
      for (int64_t k = 0; k < K; ++k) {
        const auto term = math::aslTerm<T>(a[k], c.label(i, k), asl);
        aslSum += double(term.loss);
        if (wantGrad) gLogits[i * K + k] += o.weightAsl * double(term.dLogit);
      }
    }
    aslRow[i] = aslSum;

    // E_ik = -½ Σ_m (z_im - μ_ik,m)² / v_ik,m
    // Isotropic on the float path: μ and v do not depend on m, so Σ_m (z_m − μ)² = V + M (z̄ − μ)²
    // with z̄ and V = Σ_m (z_m − z̄)² computed once per sample (two passes, double): O(M + K).
    double zbar = 0, zvar = 0;
    if constexpr (kFloat) {
      if (D == 1) meanAndSpread(z, M, zbar, zvar);
    }
    for (int64_t k = 0; k < K; ++k) {
      const T* mu = c.muRow(i, k);
      const int64_t ov = c.varOffset(i, k);
      const T* iv = c.invVariance.data() + ov;
      double e = 0;
      if constexpr (kFloat) {
        // double lanes, exact differences and a double 1/v: E can be large (underflowing
        // kernels) and the softmax over classes reads differences of E.
        if (D == 1) {
          const double dm = zbar - double(mu[0]);
          e = (zvar + double(M) * dm * dm) * ivD[ov];
        } else {
          e = sqDistScaled(z, mu, D != 1, ivD + ov, c.Dv != 1, M);
        }
      } else {
        for (int64_t m = 0; m < M; ++m) {
          const T d = z[m] - mu[D == 1 ? 0 : m];
          e += d * d * iv[c.Dv == 1 ? 0 : m];
        }
      }
      u[k] = -0.5 * e;
      if constexpr (kFloat) {
        logp[k] = double(as.logP[k]);  // log σ(a_k) from the vector ASL
      } else {
        logp[k] = double(math::logSigmoid(a[k]));
      }
    }
    // gE: ∂L/∂E_ik, gLogP: ∂L/∂log p_ik (both already divided by B and weighted).
    bool hasGrad = false;
    if (c.labelCount[i] == 0) {
      recRow[i] = -logEps;  // r_i = 0: the constant -log(eps), zero gradient
    } else if (o.stableReconstruction) {
      double maxAll = -std::numeric_limits<double>::infinity(), maxPos = maxAll;
      for (int64_t k = 0; k < K; ++k) {
        const double v = u[k] + logp[k];
        maxAll = std::max(maxAll, v);
        if (c.label(i, k)) maxPos = std::max(maxPos, v);
      }
      // ee: e^{v − maxAll}; ep: e^{v − maxPos} of the positives (the same values where maxPos = maxAll).
      double sumAll = 0, sumPos = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double v = u[k] + logp[k];
        ee[k] = std::exp(v - maxAll);
        sumAll += ee[k];
        if (c.label(i, k)) {
          ep[k] = maxPos == maxAll ? ee[k] : std::exp(v - maxPos);
          sumPos += ep[k];
        }
      }
      const double lsePos = maxPos + std::log(sumPos), lseAll = maxAll + std::log(sumAll);
      const double logR = lsePos - lseAll;
      if (!(logR >= logEps)) {
        recRow[i] = -logEps;
      } else {
        recRow[i] = -logR;
        hasGrad = true;
        // α = e^{v − maxPos} / sumPos, β = e^{v − maxAll} / sumAll, from the exponentials above
        // and divisions (no products to contract into an FMA): where every class is positive,
        // maxPos = maxAll and sumPos = sumAll (same terms, same order), so α − β is exactly 0.
        for (int64_t k = 0; k < K; ++k) {
          const double alpha = c.label(i, k) ? ep[k] / sumPos : 0.0;
          const double beta = ee[k] / sumAll;
          gE[k] = gLogP[k] = -(alpha - beta) * invB * o.weightReconstruction;
        }
      }
    } else {
      // Reference form: e^E replaced by max(e^E, FLT_MIN), the float32 clamp of the reference
      // code (every float32 e^E below FLT_MIN is denormal or 0, so the clamp takes the same values).
      double num = 0, den = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double e = std::exp(u[k]);
        const bool isClamped = !(e >= math::kFltMin);
        ee[k] = isClamped ? math::kFltMin : e;
        clamped[k] = isClamped;
        const double pk = double(math::sigmoid(a[k]));
        if (c.label(i, k)) num += pk * ee[k];
        den += pk * ee[k];
      }
      const double r = den > 0 ? num / den : 0.0;
      if (!(r >= o.eps)) {
        recRow[i] = -logEps;
      } else {
        recRow[i] = -std::log(r);
        hasGrad = true;
        for (int64_t k = 0; k < K; ++k) {
          const double pk = double(math::sigmoid(a[k]));
          const double alpha = c.label(i, k) ? pk * ee[k] / num : 0.0;
          const double beta = pk * ee[k] / den;
          gLogP[k] = -(alpha - beta) * invB * o.weightReconstruction;
          gE[k] = clamped[k] ? 0.0 : gLogP[k];
        }
      }
    }
    if (kFloat && wantGrad && hasGrad) {
      double* gz = gFeatures.data() + i * M;
      double A = 0, C = 0;  // isotropic: Σ_k gE_k/v_k and Σ_k gE_k μ_k/v_k
      for (int64_t k = 0; k < K; ++k) {
        gLogits[i * K + k] += gLogP[k] * double(as.sigNeg[k]);  // ∂log p/∂a = 1 − p = σ(−a), from the vector ASL
        if (gE[k] == 0) continue;
        const T* mu = c.muRow(i, k);
        const int64_t ov = c.varOffset(i, k);
        if (D == 1) {
          const double iv = ivD[ov], g = gE[k] * iv, dm = zbar - double(mu[0]);
          A += g;
          C += g * double(mu[0]);
          gMu[i * K + k] += g * double(M) * dm;                              // −Σ_m ∂E/∂z
          gVar[ov] += gE[k] * 0.5 * iv * iv * (zvar + double(M) * dm * dm);  // ½ Σ_m (z − μ)²/v²
        } else {
          if constexpr (kFloat)
            reconGradRow(z, mu, ivD + ov, c.Dv != 1, gE[k], gz, gMu.data() + (i * K + k) * D, gVar.data() + ov, M);
        }
      }
      if (D == 1)
        for (int64_t m = 0; m < M; ++m) gz[m] += C - A * double(z[m]);  // Σ_k −gE_k (z_m − μ_k)/v_k
    } else if (wantGrad && hasGrad) {
      double* gz = gFeatures.data() + i * M;
      for (int64_t k = 0; k < K; ++k) {
        gLogits[i * K + k] += gLogP[k] * double(math::sigmoid(-a[k]));  // ∂log p/∂a = 1 - p
        if (gE[k] == 0) continue;
        const T* mu = c.muRow(i, k);
        const int64_t ov = c.varOffset(i, k);
        const double* iv = ivD + ov;
        double* gmu = gMu.data() + (i * K + k) * D;
        double* gv = gVar.data() + ov;
        for (int64_t m = 0; m < M; ++m) {
          const int64_t mm = D == 1 ? 0 : m, vm = c.Dv == 1 ? 0 : m;
          const double d = double(z[m]) - double(mu[mm]);
          const double ivm = iv[vm];
          const double dz = -gE[k] * d * ivm;  // ∂E/∂z = -(z - μ)/v
          gz[m] += dz;
          gmu[mm] -= dz;
          gv[vm] += gE[k] * 0.5 * d * d * ivm * ivm;  // ∂E/∂v = ½ (z - μ)²/v²
        }
      }
    }
  });

  // ---- 3. contrastive ----
  // |A(i)|: the samples sharing a label with i (label bitsets, O(B²·K/64)).
  zeroed(c.anchorSize, B);
  // Branch-free over l (so the compiler can vectorise it); l = i itself overlaps when y_i ≠ ∅ and
  // is taken off at the end.
  forEachRow(threads, B, [&](int64_t i) {
    if (c.labelCount[i] == 0) return;
    const uint64_t* bits = c.bits.data();
    const int64_t W = c.W;
    int64_t n = 0;
    if (W == 1) {
      const uint64_t bi = bits[i];
      for (int64_t l = 0; l < B; ++l) n += (bits[l] & bi) != 0 ? 1 : 0;
    } else {
      const uint64_t* bi = bits + i * W;
      for (int64_t l = 0; l < B; ++l) {
        uint64_t any = 0;
        for (int64_t w = 0; w < W; ++w) any |= bits[l * W + w] & bi[w];
        n += any != 0 ? 1 : 0;
      }
    }
    c.anchorSize[i] = n - 1;
  });
  // Active (anchor, class) rows, listed per class: P_k = { i : y_ik = 1 } when at least two
  // samples carry k (then A(i) ≠ ∅ for each), ascending. A row whose class has one positive has
  // no co-positive, so Q_ik = 0 and it carries neither loss nor gradient: it is skipped.
  zeroed(c.active, B * K);
  zeroed(ws.classStart, K + 1);
  std::vector<int64_t>& classStart = ws.classStart;
  std::vector<int32_t>& classAnchors = ws.classAnchors;
  classAnchors.clear();
  for (int64_t k = 0; k < K; ++k) {
    classStart[k] = int64_t(classAnchors.size());
    int64_t positives = 0;
    for (int64_t i = 0; i < B && positives < 2; ++i) positives += c.label(i, k) ? 1 : 0;
    if (positives < 2) continue;
    for (int64_t i = 0; i < B; ++i)
      if (c.label(i, k)) {
        classAnchors.push_back(int32_t(i));
        c.active[i * K + k] = 1;
      }
  }
  classStart[K] = int64_t(classAnchors.size());
  const double invTau = 1.0 / o.temperature;

  // The pairs are walked class by class: class k needs the pairs with an anchor in P_k, and all
  // their data are the rows (·, k), which stay in cache while the class runs. Classes are dealt
  // into groups by index (a function of K only); each group runs its classes in order on one
  // thread. Everything a class writes is its own rows (·, k), except the variance gradient when
  // the variance is shared by all classes (Kv = 1): that goes to one buffer per group, summed in
  // group order at the end. So the result does not depend on the thread count.
  const bool sharedVariance = c.Kv == 1;
  const int64_t groups = sharedVariance ? std::min<int64_t>(K, 16) : K;
  auto forEachClass = [&](auto&& fn) {
    ThreadPool::instance().run(threads, groups, [&](int64_t g) {
      for (int64_t k = g; k < K; k += groups)
        if (classStart[k + 1] > classStart[k]) fn(k, g);
    });
  };
  // Visits each pair {i, l} with i ∈ P_k (and l any other sample) once: as (anchor i, l) with
  // l ∉ P_k or l > i. lActive says whether (l, k) is an anchor row too.
  auto forEachPairOfClass = [&](int64_t k, auto&& visit) {
    for (int64_t a = classStart[k]; a < classStart[k + 1]; ++a) {
      const int64_t i = classAnchors[a];
      for (int64_t l = 0; l < B; ++l) {
        if (l == i) continue;
        const bool lActive = c.active[l * K + k] != 0;
        if (lActive && l < i) continue;
        visit(i, l, lActive);
      }
    }
  };

  double contrastive = 0;
  std::vector<double> Q;
  std::vector<OnlineSum> S;
  if constexpr (kFloat) {
    if (!classAnchors.empty()) contrastive = contrastiveSimd(c, ws, threads, wantGrad, invB, invTau);
  } else if (!classAnchors.empty()) {
    // Sweep 1: S_ik = Σ_{l≠i} e_ilk for every active anchor row, kept as (max BC, Σ e^{(BC-max)/τ}).
    S.assign(B * K, OnlineSum{});
    forEachClass([&](int64_t k, int64_t) {
      forEachPairOfClass(k, [&](int64_t i, int64_t l, bool lActive) {
        const double bc = std::exp(-c.distance(i, l, k));
        S[i * K + k].add(bc, invTau);
        if (lActive) S[l * K + k].add(bc, invTau);
      });
    });
    // Sweep 2 (co-positive pairs only, both in P_k): the loss terms and Q_ik = Σ_j q_ijk.
    Q.assign(B * K, 0.0);
    std::vector<double> conIK(B * K, 0.0);  // Σ_j log(J e/S + logEps) per anchor row
    forEachClass([&](int64_t k, int64_t) {
      for (int64_t a = classStart[k]; a < classStart[k + 1]; ++a) {
        const int64_t i = classAnchors[a];
        for (int64_t b2 = a + 1; b2 < classStart[k + 1]; ++b2) {
          const int64_t l = classAnchors[b2];
          const int ov = c.overlap(i, l);
          const double J = double(ov) / double(c.labelCount[i] + c.labelCount[l] - ov);
          const double bc = std::exp(-c.distance(i, l, k));
          const double xi = J * S[i * K + k].ratio(bc, invTau);
          const double xl = J * S[l * K + k].ratio(bc, invTau);
          conIK[i * K + k] += std::log(xi + o.logEps);
          conIK[l * K + k] += std::log(xl + o.logEps);
          Q[i * K + k] += xi / (xi + o.logEps);
          Q[l * K + k] += xl / (xl + o.logEps);
        }
      }
    });
    for (int64_t i = 0; i < B; ++i) {
      if (c.anchorSize[i] == 0) continue;
      double row = 0;
      for (int64_t k = 0; k < K; ++k) row += conIK[i * K + k];
      contrastive += -row / double(c.anchorSize[i]);
    }
    contrastive *= invB;

    // Sweep 3: gradients. ∂L/∂BC_ilk = (c_i/τ)([l co-positive on k]·q_ilk − Q_ik e_ilk/S_ik), from
    // each side whose row is active; ∂L/∂Dist = −BC · ∂L/∂BC.
    if (wantGrad && o.weightContrastive > 0) {
      std::vector<double> coef(B, 0.0);  // c_i/τ · weight
      for (int64_t i = 0; i < B; ++i)
        if (c.anchorSize[i] > 0) coef[i] = -o.weightContrastive * invB * invTau / double(c.anchorSize[i]);
      std::vector<double> groupVar;
      if (sharedVariance) groupVar.assign(size_t(groups) * size_t(B * c.Dv), 0.0);
      forEachClass([&](int64_t k, int64_t g) {
        double* gv = sharedVariance ? groupVar.data() + g * B * c.Dv : gVar.data();
        forEachPairOfClass(k, [&](int64_t i, int64_t l, bool lActive) {
          const double bc = std::exp(-c.distance(i, l, k));
          const bool coPositive = lActive || c.label(l, k);  // y_ik = 1 always; co-positive iff y_lk = 1
          const double J = coPositive ? [&] {
            const int ov = c.overlap(i, l);
            return double(ov) / double(c.labelCount[i] + c.labelCount[l] - ov);
          }() : 0.0;
          double rho = S[i * K + k].ratio(bc, invTau);
          double t = -Q[i * K + k] * rho;
          if (coPositive) t += J * rho / (J * rho + o.logEps);
          double dBC = coef[i] * t;
          if (lActive) {
            rho = S[l * K + k].ratio(bc, invTau);
            t = -Q[l * K + k] * rho + J * rho / (J * rho + o.logEps);
            dBC += coef[l] * t;
          }
          const double G = -bc * dBC;
          if (G != 0) c.accumulateDistanceGrad(i, l, k, G, gMu.data(), gv);
        });
      });
      if (sharedVariance)
        for (int64_t g = 0; g < groups; ++g)
          for (int64_t j = 0; j < B * c.Dv; ++j) gVar[j] += groupVar[g * B * c.Dv + j];
    }
  }

  LossParts r;
  for (int64_t i = 0; i < B; ++i) {
    r.asl += aslRow[i];
    r.reconstruction += recRow[i];
  }
  r.reconstruction *= invB;
  r.contrastive = contrastive;
  r.loss = o.weightAsl * r.asl + o.weightReconstruction * r.reconstruction + o.weightContrastive * r.contrastive;

  if (wantGrad) {
    // Sample by sample, in parallel: each row's slice of every gradient.
    auto store = [](T* out, const std::vector<double>& g, int64_t j0, int64_t n) {
      if (out)
        for (int64_t j = j0; j < j0 + n; ++j) out[j] = T(g[j]);
    };
    forEachRow(threads, B, [&](int64_t i) {
      store(gradients->features, gFeatures, i * M, M);
      store(gradients->logits, gLogits, i * K, K);
      store(gradients->mu, gMu, i * K * D, K * D);
      store(gradients->variance, gVar, i * varRow, varRow);
    });
  }
  return r;
}

namespace {
std::mutex gWorkspaceMutex;
Workspace gWorkspace;

template <class T>
LossParts computeWithWorkspace(const Problem<T>& problem, const Options& o, const Gradients<T>* gradients, int numThreads) {
  std::unique_lock<std::mutex> lock(gWorkspaceMutex, std::try_to_lock);
  if (lock.owns_lock()) return computeImpl<T>(problem, o, gradients, numThreads, gWorkspace);
  Workspace own;
  return computeImpl<T>(problem, o, gradients, numThreads, own);
}
}  // namespace

LossParts computeFloat(const Problem<float>& p, const Options& o, const Gradients<float>* g, int numThreads) {
  return computeWithWorkspace<float>(p, o, g, numThreads);
}

namespace {
// Keeps a value alive without letting the compiler see through it.
template <class V>
inline void keep(V& v) {
  asm volatile("" : "+m"(v));
}

template <class Fn>
double nsPerElement(int64_t elements, const Fn& fn) {
  double best = 1e300;
  for (int rep = 0; rep < 30; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    const auto t1 = std::chrono::steady_clock::now();
    best = std::min(best, std::chrono::duration<double, std::nano>(t1 - t0).count() / double(elements));
  }
  return best;
}
}  // namespace

// Each op kind on data in L1 (2048 floats, or 8 independent register chains for the FMA), the
// best of 5 repetitions: what the ALUs allow for that op, not what the kernels reach.
CpuOpRates measureOpRates() {
  CpuOpRates r;
  r.lanes = kW;
  constexpr int64_t N = 2048, R = 100;
  std::vector<float> in(N), out(N);
  std::vector<double> acc(N, 0.0);
  for (int64_t j = 0; j < N; ++j) in[j] = 0.5f + float(j % 97) * 0.03125f;
  {
    vf a[8];
    for (int j = 0; j < 8; ++j) a[j] = vbroadcast(1.0f + 0.001f * float(j));
    const vf m = vbroadcast(0.999999f), c = vbroadcast(1e-7f);
    r.fma = nsPerElement(R * 64 * 8 * kW, [&] {
      for (int64_t t = 0; t < R * 64; ++t)
        for (int j = 0; j < 8; ++j) a[j] = a[j] * m + c;
      keep(a);
    });
  }
  r.div = nsPerElement(R * N, [&] {
    for (int64_t t = 0; t < R; ++t) {
      for (int64_t j = 0; j < N; j += kW) vstore(out.data() + j, 1.0f / (vload(in.data() + j) + 1.0f));
      keep(out[0]);
    }
  });
  r.log1p = nsPerElement(R * N, [&] {
    for (int64_t t = 0; t < R; ++t) {
      for (int64_t j = 0; j < N; j += kW) vstore(out.data() + j, vlog1p(vload(in.data() + j)));
      keep(out[0]);
    }
  });
  r.exp = nsPerElement(R * N, [&] {
    for (int64_t t = 0; t < R; ++t) {
      for (int64_t j = 0; j < N; j += kW) vstore(out.data() + j, vexp(-vload(in.data() + j)));
      keep(out[0]);
    }
  });
  r.accum = nsPerElement(R * N, [&] {
    for (int64_t t = 0; t < R; ++t) {
      for (int64_t j = 0; j < N; j += kW) addTo(acc.data() + j, vload(in.data() + j));
      keep(acc[0]);
    }
  });
  return r;
}

#if defined(KMCL_ISA_BASELINE)
LossParts computeDouble(const Problem<double>& p, const Options& o, const Gradients<double>* g, int numThreads) {
  return computeWithWorkspace<double>(p, o, g, numThreads);
}
#endif

}  // namespace KMCL_ISA_NS
}  // namespace kmcl

// ---- the ISA-independent part: compiled once (baseline) ----
#if defined(KMCL_ISA_BASELINE)
namespace kmcl {

std::atomic<int64_t> gSweepNanos{0};
int64_t cpuSweepNanos() { return gSweepNanos.load(std::memory_order_relaxed); }

namespace {

std::string str(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.9g", v);
  return buf;
}

int envThreads() {
  const char* s = std::getenv("KMCL_NUM_THREADS");
  if (!s || !*s) return 0;
  char* end = nullptr;
  const long v = std::strtol(s, &end, 10);
  if (*end != '\0' || v <= 0 || v > 1024) {
    throw std::invalid_argument(std::string("KMCL_NUM_THREADS must be an integer from 1 to 1024, got \"") + s + "\"");
  }
  return static_cast<int>(v);
}

}  // namespace

int cpuThreadCount(int requested) {
  if (requested > 0) return requested;
  const int env = envThreads();
  if (env > 0) return env;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

void checkShapeAndOptions(const Shape& s, const Options& o) {
  auto positive = [](const char* name, int64_t v) {
    if (v <= 0) throw std::invalid_argument(std::string(name) + " must be a positive integer, got " + std::to_string(v));
  };
  positive("batch", s.batch);
  positive("classes", s.classes);
  positive("dim", s.dim);
  if (s.muDim != 1 && s.muDim != s.dim) {
    throw std::invalid_argument("muDim must be 1 or dim (" + std::to_string(s.dim) + "), got " + std::to_string(s.muDim));
  }
  if (s.varianceClasses != 1 && s.varianceClasses != s.classes) {
    throw std::invalid_argument("varianceShape[0] must be 1 or classes (" + std::to_string(s.classes) + "), got " +
                                std::to_string(s.varianceClasses));
  }
  if (s.varianceDim != 1 && s.varianceDim != s.muDim) {
    throw std::invalid_argument("varianceShape[1] must be 1 or muDim (" + std::to_string(s.muDim) + "), got " +
                                std::to_string(s.varianceDim));
  }
  auto finite = [](const char* name, double v) {
    if (!std::isfinite(v)) throw std::invalid_argument(std::string("options.") + name + " must be finite, got " + str(v));
  };
  finite("temperature", o.temperature);
  finite("gammaNeg", o.gammaNeg);
  finite("gammaPos", o.gammaPos);
  finite("clip", o.clip);
  finite("eps", o.eps);
  finite("logEps", o.logEps);
  finite("distanceScale", o.distanceScale);
  if (!(o.temperature > 0)) throw std::invalid_argument("options.temperature must be > 0, got " + str(o.temperature));
  if (!(o.gammaNeg >= 0)) throw std::invalid_argument("options.gammaNeg must be >= 0, got " + str(o.gammaNeg));
  if (!(o.gammaPos >= 0)) throw std::invalid_argument("options.gammaPos must be >= 0, got " + str(o.gammaPos));
  if (!(o.clip >= 0 && o.clip < 1)) throw std::invalid_argument("options.clip must be in [0, 1), got " + str(o.clip));
  if (!(o.eps > 0)) throw std::invalid_argument("options.eps must be > 0, got " + str(o.eps));
  if (!(o.logEps > 0)) throw std::invalid_argument("options.logEps must be > 0, got " + str(o.logEps));
  if (!(o.distanceScale > 0)) throw std::invalid_argument("options.distanceScale must be > 0, got " + str(o.distanceScale));
  // Numeric domain (docs/kmcl-loss.md): where every path's loss and gradients are finite.
  auto within = [](const char* name, double v, double lo, double hi) {
    if (!(v >= lo && v <= hi)) throw std::invalid_argument(std::string("options.") + name + " must be in [" + str(lo) + ", " + str(hi) + "], got " + str(v));
  };
  within("temperature", o.temperature, 1e-4, 1e4);
  within("gammaNeg", o.gammaNeg, 0, 100);
  within("gammaPos", o.gammaPos, 0, 100);
  within("eps", o.eps, 1e-30, 1);
  if (!(o.eps < 1)) throw std::invalid_argument("options.eps must be < 1, got " + str(o.eps));
  within("logEps", o.logEps, 1e-30, 1);
  within("distanceScale", o.distanceScale, 1e-6, 1e6);
  if (!o.detachFocalWeight && o.gammaNeg > 0 && o.gammaNeg < 0.25) {
    throw std::invalid_argument("options.gammaNeg must be 0 or >= 0.25 when detachFocalWeight is false, got " + str(o.gammaNeg));
  }
  const double w[3] = {o.weightAsl, o.weightReconstruction, o.weightContrastive};
  const char* wn[3] = {"options.weights.asl", "options.weights.reconstruction", "options.weights.contrastive"};
  for (int j = 0; j < 3; ++j) {
    if (!(std::isfinite(w[j]) && w[j] >= 0)) throw std::invalid_argument(std::string(wn[j]) + " must be a finite number >= 0, got " + str(w[j]));
    if (!(w[j] <= 1e6)) throw std::invalid_argument(std::string(wn[j]) + " must be in [0, 1e+06], got " + str(w[j]));
  }
}


namespace {

using FloatFn = LossParts (*)(const Problem<float>&, const Options&, const Gradients<float>*, int);

struct IsaEntry {
  CpuIsa isa;
  const char* name;
  FloatFn fn;
  bool compiled;
};

bool cpuHas(CpuIsa isa) {
#if defined(__x86_64__) || defined(__i386__)
  switch (isa) {
    case CpuIsa::Baseline:
      return true;
    case CpuIsa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case CpuIsa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }
  return false;
#else
  return isa == CpuIsa::Baseline;
#endif
}

const IsaEntry kIsas[] = {
    {CpuIsa::Baseline, "baseline", &isa_baseline::computeFloat, true},
#if defined(KMCL_HAVE_AVX2)
    {CpuIsa::Avx2, "avx2", &isa_avx2::computeFloat, true},
#else
    {CpuIsa::Avx2, "avx2", nullptr, false},
#endif
#if defined(KMCL_HAVE_AVX512)
    {CpuIsa::Avx512, "avx512", &isa_avx512::computeFloat, true},
#else
    {CpuIsa::Avx512, "avx512", nullptr, false},
#endif
};

const IsaEntry& bestIsa() {
  static const IsaEntry* best = [] {
    const IsaEntry* b = &kIsas[0];
    for (const IsaEntry& e : kIsas)
      if (e.compiled && cpuHas(e.isa)) b = &e;
    return b;
  }();
  return *best;
}

std::string availableIsas() {
  std::string s;
  for (const IsaEntry& e : kIsas)
    if (e.compiled && cpuHas(e.isa)) s += (s.empty() ? "" : ", ") + std::string(e.name);
  return s;
}

// KMCL_CPU_ISA (read at each call): baseline | avx2 | avx512 forces one; empty or "auto" picks the
// best the CPU supports. One the CPU or the build lacks is an error naming what is available.
const IsaEntry& selectIsa() {
  const char* s = std::getenv("KMCL_CPU_ISA");
  if (!s || !*s || std::string(s) == "auto") return bestIsa();
  for (const IsaEntry& e : kIsas) {
    if (std::string(s) != e.name) continue;
    if (!e.compiled) {
      throw std::invalid_argument(std::string("KMCL_CPU_ISA=") + s + ": this build has no " + e.name +
                                  " path (compiler or architecture); available here: " + availableIsas());
    }
    if (!cpuHas(e.isa)) {
      throw std::invalid_argument(std::string("KMCL_CPU_ISA=") + s + ": this CPU does not support " + e.name +
                                  "; available here: " + availableIsas());
    }
    return e;
  }
  throw std::invalid_argument(std::string("KMCL_CPU_ISA must be one of auto, baseline, avx2, avx512, got \"") + s + "\"");
}

}  // namespace

CpuIsaInfo cpuIsaInfo() {
  CpuIsaInfo info;
  info.best = bestIsa().name;
  try {
    info.selected = selectIsa().name;
  } catch (const std::exception& e) {
    info.selected = info.best;
    info.error = e.what();
  }
  for (const IsaEntry& e : kIsas)
    if (e.compiled && cpuHas(e.isa)) info.available.push_back(e.name);
  for (const IsaEntry& e : kIsas)
    if (e.compiled) info.compiled.push_back(e.name);
  return info;
}

CpuOpRates measureCpuOpRates(const std::string& isa) {
  for (const IsaEntry& e : kIsas) {
    if (isa != e.name) continue;
    if (!e.compiled || !cpuHas(e.isa)) {
      throw std::invalid_argument("measureCpuOpRates: " + isa + " is not usable here; available: " + availableIsas());
    }
    CpuOpRates r;
    switch (e.isa) {
      case CpuIsa::Baseline:
        r = isa_baseline::measureOpRates();
        break;
#if defined(KMCL_HAVE_AVX2)
      case CpuIsa::Avx2:
        r = isa_avx2::measureOpRates();
        break;
#endif
#if defined(KMCL_HAVE_AVX512)
      case CpuIsa::Avx512:
        r = isa_avx512::measureOpRates();
        break;
#endif
      default:
        break;
    }
    r.isa = e.name;
    return r;
  }
  throw std::invalid_argument("measureCpuOpRates: unknown instruction set \"" + isa + "\"");
}

template <class T>
LossParts computeCpu(const Problem<T>& problem, const Options& o, const Gradients<T>* gradients, int numThreads) {
  checkShapeAndOptions(problem.shape, o);
  if (!problem.features || !problem.logits || !problem.labels || !problem.mu || !problem.variance) {
    throw std::invalid_argument("computeCpu: an input pointer is null");
  }
  if constexpr (std::is_same<T, float>::value) {
    return selectIsa().fn(problem, o, gradients, numThreads);
  } else {
    return isa_baseline::computeDouble(problem, o, gradients, numThreads);
  }
}

template LossParts computeCpu<float>(const Problem<float>&, const Options&, const Gradients<float>*, int);
template LossParts computeCpu<double>(const Problem<double>&, const Options&, const Gradients<double>*, int);

}  // namespace kmcl
#endif  // KMCL_ISA_BASELINE
