// Per-element math of the KMCL loss (spec/kmcl-loss.md), compiled for the CPU and, under nvcc,
// for the GPU, so that both paths evaluate the very same formulas. Templates on the scalar type:
// float for the shipped paths, double for the test build.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define KMCL_HD __host__ __device__ __forceinline__
#else
#define KMCL_HD inline
#endif

namespace kmcl {
namespace math {

KMCL_HD float kexp(float x) { return expf(x); }
KMCL_HD double kexp(double x) { return exp(x); }
KMCL_HD float klog(float x) { return logf(x); }
KMCL_HD double klog(double x) { return log(x); }
KMCL_HD float klog1p(float x) { return log1pf(x); }
KMCL_HD double klog1p(double x) { return log1p(x); }
KMCL_HD float kpow(float x, float y) { return powf(x, y); }
KMCL_HD double kpow(double x, double y) { return pow(x, y); }
KMCL_HD float kabs(float x) { return fabsf(x); }
KMCL_HD double kabs(double x) { return fabs(x); }

// The reference implementation's clamp of e^E (spec section 2, reference form): the literal
// 1.17549e-38 of the reference code and the spec, not FLT_MIN (1.17549435e-38); the difference
// moves gradients by up to 3.4e-6 where kernels underflow.
constexpr double kFltMin = 1.17549e-38;

template <class T>
KMCL_HD T sigmoid(T a) {
  // Evaluated on the side where exp cannot overflow.
  if (a >= T(0)) return T(1) / (T(1) + kexp(-a));
  const T e = kexp(a);
  return e / (T(1) + e);
}

// log(sigmoid(a)) = -softplus(-a), exact for large |a|.
template <class T>
KMCL_HD T logSigmoid(T a) {
  return (a >= T(0) ? T(0) : a) - klog1p(kexp(-kabs(a)));
}

// x^g with 0^0 = 1 (spec section 1).
template <class T>
KMCL_HD T powZeroOne(T x, T g) {
  if (g == T(0)) return T(1);
  if (x <= T(0)) return T(0);
  return kpow(x, g);
}

template <class T>
struct AslParams {
  T gammaNeg, gammaPos, clip, eps;
  bool detachFocalWeight;
};

// One (sample, class) term of the asymmetric loss, spec section 1: loss = -w·ℓ and d loss/d logit.
template <class T>
struct AslTerm {
  T loss;
  T dLogit;
};

template <class T>
KMCL_HD AslTerm<T> aslTerm(T a, bool positive, const AslParams<T>& o) {
  const T p = sigmoid(a);
  const T q = sigmoid(-a);  // 1 - p without cancellation
  T ell, dEll, w, dW;
  if (positive) {
    // ℓ = log(max(p, eps)); pt = p; w = (1 - p)^γ+.
    if (p > o.eps) {
      ell = logSigmoid(a);
      dEll = q;
    } else {
      ell = klog(o.eps);
      dEll = T(0);
    }
    w = powZeroOne(q, o.gammaPos);
    // dw/da = -γ (1-p)^(γ-1) · p(1-p) = -γ p (1-p)^γ: no singularity at p = 1.
    dW = -o.gammaPos * p * w;
  } else {
    // p⁻ = min(1, 1 - p + clip); ℓ = log(max(p⁻, eps)); pt = p⁻; w = (1 - p⁻)^γ-.
    T pm, oneMinusPm, dPm;  // dPm = dp⁻/da
    if (o.clip == T(0)) {
      pm = q;
      oneMinusPm = p;
      dPm = -p * q;
    } else if (p > o.clip) {
      pm = q + o.clip;
      oneMinusPm = p - o.clip;
      dPm = -p * q;
    } else {
      pm = T(1);
      oneMinusPm = T(0);
      dPm = T(0);
    }
    if (pm > o.eps) {
      ell = (o.clip == T(0)) ? logSigmoid(-a) : klog(pm);
      dEll = (o.clip == T(0)) ? -p : dPm / pm;
    } else {
      ell = klog(o.eps);
      dEll = T(0);
    }
    w = powZeroOne(oneMinusPm, o.gammaNeg);
    // dw/da = γ (1-p⁻)^(γ-1) · (-dp⁻/da); zero where 1 - p⁻ = 0 (subgradient at the kink).
    if (o.gammaNeg == T(0) || oneMinusPm <= T(0)) {
      dW = T(0);
    } else {
      dW = -o.gammaNeg * powZeroOne(oneMinusPm, o.gammaNeg - T(1)) * dPm;
    }
  }
  AslTerm<T> r;
  r.loss = -w * ell;
  r.dLogit = -(w * dEll + (o.detachFocalWeight ? T(0) : ell * dW));
  return r;
}

// One feature dim of the Bhattacharyya distance between N(μ_i, a) and N(μ_l, b), spec section 3:
//   t = ¼ Δ²/(a+b) + ½ log((a+b) / (2√(ab)))  =  quadratic part + log part.
// The log part is evaluated as ¼ log1p((a-b)² / (4ab)), since (a+b)² - 4ab = (a-b)²: no
// cancellation when a ≈ b, one logarithm, and no per-sample log table. inv = 1/(a+b),
// invA = 1/a and invB = 1/b come precomputed.
template <class T>
KMCL_HD T bhattacharyyaQuad(T delta, T inv) {
  return T(0.25) * delta * delta * inv;
}

// x = (a-b)² / (4ab) ≥ 0, so that the log part is ¼ log1p(x). Paths that sum the log part over
// several dims may take ¼ log Π(1 + x) instead: one logarithm for several dims.
template <class T>
KMCL_HD T bhattacharyyaLogArg(T a, T b, T invA, T invB) {
  const T d = a - b;
  return T(0.25) * d * d * invA * invB;
}

template <class T>
KMCL_HD T bhattacharyyaLog(T a, T b, T invA, T invB) {
  return T(0.25) * klog1p(bhattacharyyaLogArg(a, b, invA, invB));
}

// ∂quad/∂μ_i = Δ/(2(a+b)) = -∂quad/∂μ_l
template <class T>
KMCL_HD T bhattacharyyaQuadDMu(T delta, T inv) {
  return T(0.5) * delta * inv;
}

// ∂quad/∂a = ∂quad/∂b = -Δ²/(4(a+b)²)
template <class T>
KMCL_HD T bhattacharyyaQuadDVar(T delta, T inv) {
  const T x = delta * inv;
  return T(-0.25) * x * x;
}

// ∂log/∂a = 1/(2(a+b)) - 1/(4a) = (a-b)/(4a(a+b)); ∂log/∂b = (b-a)/(4b(a+b)).
// Together with the quadratic part this is the spec's ∂t/∂a, without its cancellation at a = b.
template <class T>
KMCL_HD T bhattacharyyaLogDA(T a, T b, T inv, T invA) {
  return T(0.25) * (a - b) * inv * invA;
}

// ---- Fast variants for the CUDA hot loop (spec section 3, one reciprocal and one logarithm per dim
// per triple). They compute the same quantities as the functions above; on the device they use the
// special-function unit (MUFU), on the host (the CPU emulation of the kernels) the precise libm calls.

constexpr float kLn2f = 0.693147180559945309f;
constexpr float kInvLn2f = 1.44269504088896341f;

// In the CPU emulation of the kernels (native/tests/emu, KMCL_CUDA_EMULATION) the device
// instructions are modelled at their documented worst-case error (kmcl_emu_rt::rcpApproxFtz,
// lg2Approx); those variants get their own (inline) namespace, so they never clash with the
// host definitions other translation units of the same program use.
#if defined(KMCL_CUDA_EMULATION) && !defined(__CUDA_ARCH__)
inline namespace emulated_device {
#endif

// 1/x to within 1 ulp (MUFU.RCP). x is a sum of two variances: positive and normal.
KMCL_HD float fastRcp(float x) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#elif defined(KMCL_CUDA_EMULATION)
  return ::kmcl_emu_rt::rcpApproxFtz(x);
#else
  return 1.0f / x;
#endif
}

// log1p(x) / ln 2 for x >= 0: one MUFU.LG2 of 1 + x for x >= 1/16 (absolute error below 2.4e-7,
// so relative below 4e-6 there), the series x - x²/2 + x³/3 - x⁴/4 + x⁵/5 below 1/16, where
// lg2(1 + x) would lose digits to the rounding of 1 + x (relative error about 2e-7 in float).
KMCL_HD float log2OnePlusFast(float x) {
  const float series =
      x * (kInvLn2f + x * (-0.5f * kInvLn2f + x * ((1.0f / 3.0f) * kInvLn2f + x * (-0.25f * kInvLn2f + x * (0.2f * kInvLn2f)))));
#if defined(__CUDA_ARCH__)
  const float direct = __log2f(1.0f + x);
#elif defined(KMCL_CUDA_EMULATION)
  const float direct = ::kmcl_emu_rt::lg2Approx(1.0f + x);
#else
  const float direct = static_cast<float>(std::log1p(static_cast<double>(x)) * 1.44269504088896341);
#endif
  return x < 0.0625f ? series : direct;
}

// bhattacharyyaLog(a, b, invA, invB) · 4 / ln 2, i.e. log2(1 + (a-b)²/(4ab)). The kernels sum these
// over dims and scale once by ln 2 / 4.
KMCL_HD float bhattacharyyaLogScaledFast(float a, float b, float invA, float invB) {
  return log2OnePlusFast(bhattacharyyaLogArg(a, b, invA, invB));
}

#if defined(KMCL_CUDA_EMULATION) && !defined(__CUDA_ARCH__)
}  // inline namespace emulated_device
#endif

// bhattacharyyaLogDA for both sides of one pair at once: ∂log/∂a and ∂log/∂b, sharing (a-b)/(a+b).
template <class T>
KMCL_HD void bhattacharyyaLogDAPair(T a, T b, T inv, T invA, T invB, T& dA, T& dB) {
  const T x = T(0.25) * (a - b) * inv;
  dA = x * invA;
  dB = -x * invB;
}

}  // namespace math
}  // namespace kmcl
