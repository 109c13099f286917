// The per-row and per-sample kernels of the KMCL loss (not templates: included by exactly one
// translation unit, backend.cuh's includer). ASL and reconstruction (spec sections 1, 2), the
// merge of the sweep-1 partials, |A(i)| and the contrastive row terms, the loss sums.
#pragma once

#include "kernels.cuh"

namespace kmcl {
namespace KMCL_CUDA_NS {

// ---------------------------------------------------------------------------------------------
// Per-row and per-sample kernels.

struct RowParams {
  int rows;
  int numChunks;
  float invTau;
  const OnlineStat* partial;
  float* rowMax;
  float* rowInvSum;
};

// S_ik of each row: the chunks' (max, sum) merged in chunk order (deterministic).
__global__ void mergeRowStats(const RowParams p) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= p.rows) return;
  float mx = -1.0f;
  double sum = 0.0;
  for (int c = 0; c < p.numChunks; ++c) {
    const OnlineStat st = p.partial[static_cast<int64_t>(r) * p.numChunks + c];
    onlineMerge(mx, sum, static_cast<float>(st.max), st.sum, p.invTau);
  }
  p.rowMax[r] = mx;
  p.rowInvSum[r] = sum > 0.0 ? static_cast<float>(1.0 / sum) : 0.0f;
}

struct AnchorParams {
  int B;
  double coefScale;  // −weight / (B τ)
  const int* sampleRowStart;  // B + 1
  const int* sampleRows;      // row ids of each sample
  const double* rowSumLog;
  const double* rowAnchorCount;
  double* conRow;  // −Σ log(…) / |A(i)|
  float* coef;     // c_i/τ · weight
};

// |A(i)| from the co-positive sweep, the contrastive row term and the gradient coefficient of i.
__global__ void anchorTerms(const AnchorParams p) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.B) return;
  double sl = 0.0, cnt = 0.0;
  for (int t = p.sampleRowStart[i]; t < p.sampleRowStart[i + 1]; ++t) {
    const int r = p.sampleRows[t];
    sl += p.rowSumLog[r];
    cnt += p.rowAnchorCount[r];
  }
  const double anchorSize = rint(cnt);  // a sum of 1/overlap that adds up to an integer
  p.conRow[i] = anchorSize > 0.0 ? -sl / anchorSize : 0.0;
  p.coef[i] = anchorSize > 0.0 ? static_cast<float>(p.coefScale / anchorSize) : 0.0f;
}

__global__ void reciprocal(const float* __restrict__ v, float* __restrict__ out, int64_t n) {
  for (int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; t < n;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[t] = 1.0f / v[t];
}

struct ReconParams {
  int B, K, M, D, Kv, Dv, W;
  const float* features;
  const float* logits;
  const float* mu;
  const float* invVariance;
  const uint32_t* bits;
  const int* labelCount;
  math::AslParams<float> asl;
  double weightAsl;
  double weightRec;
  double invB;
  double eps;
  double logEps;  // log(eps)
  bool stable;
  bool wantGrad;
  float* U;       // scratch [B, K]: E_ik
  float* GE;      // scratch [B, K]: ∂L/∂E_ik
  double* aslRow;
  double* recRow;
  float* gFeatures;
  float* gLogits;
  float* gMu;
  float* gVar;
};

__device__ __forceinline__ bool hasLabel(const uint32_t* bits, int W, int i, int k) {
  return ((bits[static_cast<int64_t>(i) * W + (k >> 5)] >> (k & 31)) & 1u) != 0;
}

// ASL and reconstruction of one sample per block (spec sections 1, 2; cpu.cpp's per-row code).
// Also writes every gradient element of sample i (the contrastive sweep adds to them later).
__global__ void __launch_bounds__(kReconThreads) aslReconstruction(const ReconParams p) {
  constexpr int kW = kReconThreads / 32;
  const int i = blockIdx.x;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int K = p.K, M = p.M, D = p.D, Kv = p.Kv, Dv = p.Dv;
  const float* z = p.features + static_cast<int64_t>(i) * M;
  const float* a = p.logits + static_cast<int64_t>(i) * K;
  float* U = p.U + static_cast<int64_t>(i) * K;
  float* GE = p.GE + static_cast<int64_t>(i) * K;
  auto muAt = [&](int k, int m) { return p.mu[(static_cast<int64_t>(i) * K + k) * D + (D == 1 ? 0 : m)]; };
  auto varIndex = [&](int k, int m) {
    return (static_cast<int64_t>(i) * Kv + (Kv == 1 ? 0 : k)) * Dv + (Dv == 1 ? 0 : m);
  };

  // E_ik = −½ Σ_m (z_im − μ_ik,m)² / v_ik,m: a warp per class, lanes over m.
  for (int k = warp; k < K; k += kW) {
    float e = 0.0f;
    for (int m = lane; m < M; m += 32) {
      const float d = z[m] - muAt(k, m);
      e += d * d * p.invVariance[varIndex(k, m)];
    }
    e = warpSumF(e);
    if (lane == 0) U[k] = -0.5f * e;
  }
  __syncthreads();

  if (warp == 0) {
    const int cnt = p.labelCount[i];
    double aslSum = 0.0;
    for (int k = lane; k < K; k += 32) aslSum += static_cast<double>(math::aslTerm<float>(a[k], hasLabel(p.bits, p.W, i, k), p.asl).loss);
    aslSum = warpSumD(aslSum);
    double rec = -p.logEps;  // r_i = 0 or r_i < eps: the constant −log(eps), zero gradient
    bool hasGrad = false;
    double lsePos = 0.0, lseAll = 0.0, num = 0.0, den = 0.0;
    if (cnt > 0 && p.stable) {
      double maxAll = -INFINITY, maxPos = -INFINITY;
      for (int k = lane; k < K; k += 32) {
        const double v = static_cast<double>(U[k]) + static_cast<double>(math::logSigmoid(a[k]));
        maxAll = fmax(maxAll, v);
        if (hasLabel(p.bits, p.W, i, k)) maxPos = fmax(maxPos, v);
      }
      maxAll = warpMaxD(maxAll);
      maxPos = warpMaxD(maxPos);
      double sumAll = 0.0, sumPos = 0.0;
      for (int k = lane; k < K; k += 32) {
        const double v = static_cast<double>(U[k]) + static_cast<double>(math::logSigmoid(a[k]));
        sumAll += exp(v - maxAll);
        if (hasLabel(p.bits, p.W, i, k)) sumPos += exp(v - maxPos);
      }
      sumAll = warpSumD(sumAll);
      sumPos = warpSumD(sumPos);
      lsePos = maxPos + log(sumPos);
      lseAll = maxAll + log(sumAll);
      const double logR = lsePos - lseAll;
      if (logR >= p.logEps) {
        rec = -logR;
        hasGrad = true;
      }
    } else if (cnt > 0) {
      // Reference form: e^E replaced by max(e^E, FLT_MIN) (every float32 e^E below FLT_MIN is
      // denormal or 0, so the clamp takes the float32 values; cpu.cpp does the same).
      for (int k = lane; k < K; k += 32) {
        const double e = exp(static_cast<double>(U[k]));
        const double ee = e >= math::kFltMin ? e : math::kFltMin;
        const double pk = static_cast<double>(math::sigmoid(a[k]));
        if (hasLabel(p.bits, p.W, i, k)) num += pk * ee;
        den += pk * ee;
      }
      num = warpSumD(num);
      den = warpSumD(den);
      const double r = den > 0.0 ? num / den : 0.0;
      if (r >= p.eps) {
        rec = -log(r);
        hasGrad = true;
      }
    }
    if (lane == 0) {
      p.aslRow[i] = aslSum;
      p.recRow[i] = rec;
    }
    if (p.wantGrad) {
      for (int k = lane; k < K; k += 32) {
        const bool y = hasLabel(p.bits, p.W, i, k);
        double gLogP = 0.0, gE = 0.0;
        if (hasGrad) {
          if (p.stable) {
            const double v = static_cast<double>(U[k]) + static_cast<double>(math::logSigmoid(a[k]));
            const double alpha = y ? exp(v - lsePos) : 0.0;
            const double beta = exp(v - lseAll);
            gE = gLogP = -(alpha - beta) * p.invB * p.weightRec;
          } else {
            const double e = exp(static_cast<double>(U[k]));
            const bool clamped = !(e >= math::kFltMin);
            const double ee = clamped ? math::kFltMin : e;
            const double pk = static_cast<double>(math::sigmoid(a[k]));
            const double alpha = y ? pk * ee / num : 0.0;
            const double beta = pk * ee / den;
            gLogP = -(alpha - beta) * p.invB * p.weightRec;
            gE = clamped ? 0.0 : gLogP;
          }
        }
        const double gl = p.weightAsl * static_cast<double>(math::aslTerm<float>(a[k], y, p.asl).dLogit) +
                          gLogP * static_cast<double>(math::sigmoid(-a[k]));  // ∂log p/∂a = 1 − p
        p.gLogits[static_cast<int64_t>(i) * K + k] = static_cast<float>(gl);
        GE[k] = static_cast<float>(gE);
      }
    }
  }
  if (!p.wantGrad) return;  // block-uniform
  __syncthreads();

  // Threads over m: ∂/∂z (always), ∂/∂μ when D = M > 1, ∂/∂v when Dv = M > 1.
  for (int m = threadIdx.x; m < M; m += kReconThreads) {
    const double zm = static_cast<double>(z[m]);
    double gz = 0.0, gvShared = 0.0;
    for (int k = 0; k < K; ++k) {
      const double ge = static_cast<double>(GE[k]);
      const double d = zm - static_cast<double>(muAt(k, m));
      const int64_t vi = varIndex(k, m);
      const double iv = static_cast<double>(p.invVariance[vi]);
      const double dz = -ge * d * iv;  // ∂E/∂z = −(z − μ)/v
      const double dv = ge * 0.5 * d * d * iv * iv;  // ∂E/∂v = ½ (z − μ)²/v²
      gz += dz;
      if (D > 1) p.gMu[(static_cast<int64_t>(i) * K + k) * D + m] = static_cast<float>(-dz);
      if (Dv > 1) {
        if (Kv > 1) {
          p.gVar[vi] = static_cast<float>(dv);
        } else {
          gvShared += dv;
        }
      }
    }
    p.gFeatures[static_cast<int64_t>(i) * M + m] = static_cast<float>(gz);
    if (Dv > 1 && Kv == 1) p.gVar[static_cast<int64_t>(i) * Dv + m] = static_cast<float>(gvShared);
  }

  // A warp per class: the sums over m of ∂/∂μ when D = 1 and of ∂/∂v when Dv = 1.
  if (D == 1 || Dv == 1) {
    __shared__ double shared[kW];
    double gvAll = 0.0;  // Kv = Dv = 1: one variance per sample
    for (int k = warp; k < K; k += kW) {
      const double ge = static_cast<double>(GE[k]);
      double sm = 0.0, sv = 0.0;
      for (int m = lane; m < M; m += 32) {
        const double d = static_cast<double>(z[m]) - static_cast<double>(muAt(k, m));
        const double iv = static_cast<double>(p.invVariance[varIndex(k, m)]);
        sm += ge * d * iv;
        sv += ge * 0.5 * d * d * iv * iv;
      }
      sm = warpSumD(sm);
      sv = warpSumD(sv);
      if (lane == 0) {
        if (D == 1) p.gMu[static_cast<int64_t>(i) * K + k] = static_cast<float>(sm);
        if (Dv == 1) {
          if (Kv > 1) {
            p.gVar[static_cast<int64_t>(i) * K + k] = static_cast<float>(sv);
          } else {
            gvAll += sv;
          }
        }
      }
    }
    if (Dv == 1 && Kv == 1) {
      if (lane == 0) shared[warp] = gvAll;
      __syncthreads();
      if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < kW; ++w) t += shared[w];
        p.gVar[i] = static_cast<float>(t);
      }
    }
  }
}

struct ResultParams {
  int B;
  double invB;
  const double* aslRow;
  const double* recRow;
  const double* conRow;
  double* out;  // asl, reconstruction, contrastive
};

// The three loss terms: fixed-order sums over the batch in double (one block).
__global__ void __launch_bounds__(256) lossTerms(const ResultParams p) {
  __shared__ double sh[3][256];
  double s0 = 0.0, s1 = 0.0, s2 = 0.0;
  for (int i = threadIdx.x; i < p.B; i += 256) {
    s0 += p.aslRow[i];
    s1 += p.recRow[i];
    s2 += p.conRow[i];
  }
  sh[0][threadIdx.x] = s0;
  sh[1][threadIdx.x] = s1;
  sh[2][threadIdx.x] = s2;
  __syncthreads();
  for (int w = 128; w > 0; w >>= 1) {
    if (static_cast<int>(threadIdx.x) < w) {
      sh[0][threadIdx.x] += sh[0][threadIdx.x + w];
      sh[1][threadIdx.x] += sh[1][threadIdx.x + w];
      sh[2][threadIdx.x] += sh[2][threadIdx.x + w];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    p.out[0] = sh[0][0];
    p.out[1] = sh[1][0] * p.invB;
    p.out[2] = sh[2][0] * p.invB;
  }
}

}  // namespace KMCL_CUDA_NS
}  // namespace kmcl
