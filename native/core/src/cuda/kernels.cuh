// CUDA kernels of the KMCL loss (spec/kmcl-loss.md): parameter structs, device helpers and kernel
// templates. Included by the .cu files of this folder (which instantiate the templates) and, with
// KMCL_CUDA_EMULATION, by the CPU emulation in native/tests/ that runs these very kernels on the
// host. Everything lives in namespace kmcl::KMCL_CUDA_NS so that the emulated and the real
// build can sit in one executable.
//
// Contrastive term: three sweeps over (anchor row, partner) pairs, FlashAttention-style tiles and
// no B×B×K (let alone B×B×K×M) buffer.
//
//   anchor rows   (i, k) with y_ik = 1 and at least two samples positive on k, sorted by class then
//                 sample (class-major CSR, built on the host). A row of a class with a single
//                 positive sample has no co-positive, so its Q_ik is 0 and it carries neither loss
//                 nor gradient: leaving it out computes the same function as cpu.cpp, which keeps
//                 it. The work therefore scales with positive labels: B · Σ_k n_k triples.
//   sweep 1       S_ik = Σ_{l≠i} e_ilk over every partner l, online (max BC, Σ e^{(BC−max)/τ}).
//   sweep 2       co-positive partners only (the other rows of class k): Σ_j log(J e/S + logEps),
//                 Q_ik = Σ_j q_ijk and Σ_j 1/|y_i ∧ y_j|, which summed over the classes of i is
//                 |A(i)| (each j ∈ A(i) is met once per shared label).
//   sweep 3       gradients: every ordered (anchor row, partner) triple once, adding its anchor
//                 side's ∂L/∂Dist to both samples (atomics, see below).
//
// Thread mapping of pairKernel (one block = one tile of up to 8·RA anchor rows of one class × one
// chunk of partners). Each warp keeps RA anchor rows in registers; its 32 lanes form 32/L groups of
// L lanes: a group takes one partner at a time and its L lanes split the mu dims (lane j owns
// dims j, j + L, …, NJ of them), so a triple's Dist is an L-lane shuffle reduction. L = 32 for
// muDim > 16 (mu rows coalesced), down to L = 1 for the isotropic muDim = 1, where every lane
// evaluates a different partner and no lane idles. Partners come through shared-memory tiles
// (mu, variance, 1/variance of class k), loaded coalesced once per block and read by all 8 warps.
//
// Symmetry (sweep 3): Dist_ilk = Dist_lik, so one evaluation of a triple feeds the gradients of
// both samples. Anchor side: summed in registers over the block's partner chunk, then one float
// atomicAdd per (block, anchor row, dim). Partner side: summed over the warp's RA anchors in
// registers, over the block's 8 warps with shared-memory atomics, then one global atomicAdd per
// (block, partner, dim): the partner side of a row is short (n_k / (8·RA) blocks), the anchor side
// long (B partners). A per-row owner computation without atomics would have to evaluate every
// triple twice (once from each owner), doubling the special-function work that bounds this kernel;
// the atomics cost one red.add per (block, partner, dim), about 1/(8·RA) of the evaluations.
// Pairs where both samples are positive on k (n_k/B of the triples) are evaluated once from each
// side, each adding its own side's term: deduplicating them would save those few percent at the
// price of a second pair schedule.
//
// Precision: per-element math in float (math.h, the CPU float path's formulas); sums over the
// batch of S, Q, the loss terms and |A(i)| in double; the anchor-side gradient sums run over at
// most ~1024 partners per block in float (blocked summation, the chunks meet in a float
// atomicAdd), as the 2 GiB target leaves no room for double copies of the mu-sized gradients.
#pragma once

#include <cmath>
#include <cstdint>

#include "kmcl/math.h"

#ifndef KMCL_CUDA_NS
#define KMCL_CUDA_NS cuda_impl
#endif

#if defined(KMCL_CUDA_EMULATION)
#define KMCL_DYNAMIC_SMEM(name) unsigned char* name = ::kmcl_emu_rt::dynamicShared()
#else
#define KMCL_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace kmcl {
namespace KMCL_CUDA_NS {

constexpr int kWarps = 8;                // warps per block of the pair kernels
constexpr int kThreads = kWarps * 32;
constexpr int kReconThreads = 128;       // per-sample kernel
constexpr unsigned kFullMask = 0xffffffffu;

// A tile of anchor rows of one class: rows [rowBegin, rowEnd) of the class-major row list.
struct Tile {
  int cls;
  int rowBegin;
  int rowEnd;
  int pad;
};

// Online sum of exp((BC − max)/τ) (cpu.cpp OnlineSum); sum = 0 with max = −1 is the empty state.
struct OnlineStat {
  double max;
  double sum;
};

struct PairParams {
  int B, K, D, Kv, Dv, W;       // W: 32-bit label words per sample
  float distanceScale;          // s
  float dims;                   // D == 1 ? M : 1 (isotropic: the M equal dims, spec section 3)
  float dimM;                   // M
  float invTau;
  float logEpsF;
  double logEps;
  const float* mu;
  const float* variance;
  const float* invVariance;
  const uint32_t* bits;         // labels, W words per sample
  const int* labelCount;        // |y_i|
  const int* rowSample;         // class-major anchor rows: the sample of each row
  const int* classRowStart;     // K + 1: rows of class k are [classRowStart[k], classRowStart[k+1])
  const Tile* tiles;
  int chunkSize;                // partners per block in sweeps 1 and 3 (blockIdx.y = chunk)
  int numChunks;
  int tileP;                    // partners per shared-memory tile (a multiple of 32/L)
  int strideD;                  // floats per partner row in shared memory (≥ L·NJ, bank-conflict free)
  OnlineStat* partial;          // sweep 1 output: [row · numChunks + chunk]
  const float* rowMax;          // S of each row: max BC and 1/Σ e^{(BC−max)/τ}
  const float* rowInvSum;
  double* rowSumLog;            // sweep 2 outputs
  double* rowAnchorCount;
  double* rowQ;
  const float* coef;            // per sample: c_i/τ · weight (sweep 3)
  float* gMu;
  float* gVar;
};

__device__ __forceinline__ int64_t varOffset(const PairParams& p, int i, int k) {
  return (static_cast<int64_t>(i) * p.Kv + (p.Kv == 1 ? 0 : k)) * p.Dv;
}

__device__ __forceinline__ int64_t muOffset(const PairParams& p, int i, int k) {
  return (static_cast<int64_t>(i) * p.K + k) * p.D;
}

__device__ __forceinline__ float warpSumF(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

__device__ __forceinline__ double warpSumD(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

__device__ __forceinline__ double warpMaxD(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = fmax(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

// Sum over the L lanes of a group (lanes that differ in their low log2(L) bits).
template <int L>
__device__ __forceinline__ float groupSum(float v) {
#pragma unroll
  for (int off = L / 2; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// Sum over the 32/L groups of a warp (lanes that differ in their high bits).
template <int L, class T>
__device__ __forceinline__ T acrossGroupsSum(T v) {
#pragma unroll
  for (int off = L; off < 32; off <<= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

// S_ik, one partner at a time; every exponent is ≤ 0, so no temperature overflows.
__device__ __forceinline__ void onlineAdd(float& mx, double& sum, float bc, float invTau) {
  const float hi = fmaxf(bc, mx), lo = fminf(bc, mx);
  const double e = static_cast<double>(expf((lo - hi) * invTau));
  if (bc > mx) {
    sum = sum * e + 1.0;
    mx = bc;
  } else {
    sum += e;
  }
}

// Merge of two partial (max, sum) with the standard rescaling; either may be empty (−1, 0).
__device__ __forceinline__ void onlineMerge(float& mx, double& sum, float omx, double osum, float invTau) {
  const float m = fmaxf(mx, omx);
  sum = sum * static_cast<double>(expf((mx - m) * invTau)) + osum * static_cast<double>(expf((omx - m) * invTau));
  mx = m;
}

__device__ __forceinline__ int labelOverlap(const PairParams& p, int i, int l) {
  const uint32_t* bi = p.bits + static_cast<int64_t>(i) * p.W;
  const uint32_t* bl = p.bits + static_cast<int64_t>(l) * p.W;
  int c = 0;
  for (int w = 0; w < p.W; ++w) c += __popc(bi[w] & bl[w]);
  return c;
}

// Sweep 3, one triple: ∂L/∂Dist_ilk from anchor row (i, k)'s side (spec, Gradients):
//   −BC · (c_i/τ) · ([l co-positive on k] · q_ilk − Q_ik · e_ilk / S_ik),   coef = c_i/τ · weight.
__device__ __forceinline__ float distanceGradient(const PairParams& p, float bc, float rMax, float rInvSum, float rQ,
                                                  float rCoef, int rCnt, int i, int l, bool coPositive) {
  const float rho = expf((bc - rMax) * p.invTau) * rInvSum;  // e_ilk / S_ik
  float t = -rQ * rho;
  if (coPositive) {
    const int ov = labelOverlap(p, i, l);
    const float J = static_cast<float>(ov) / static_cast<float>(rCnt + p.labelCount[l] - ov);
    const float x = J * rho;
    t += x / (x + p.logEpsF);
  }
  return -bc * rCoef * t;
}

// Sweep 2, one co-positive pair (i, j) on class k: log(J e/S + logEps), q and 1/|y_i ∧ y_j|.
__device__ __forceinline__ void coPositiveTerms(const PairParams& p, float bc, float rMax, float rInvSum, int rCnt, int i,
                                                int j, double& sumLog, double& q, double& anchorCount) {
  const float rho = expf((bc - rMax) * p.invTau) * rInvSum;
  const int ov = labelOverlap(p, i, j);
  const double x = static_cast<double>(ov) / static_cast<double>(rCnt + p.labelCount[j] - ov) * static_cast<double>(rho);
  sumLog += log(x + p.logEps);
  q += x / (x + p.logEps);
  anchorCount += 1.0 / static_cast<double>(ov);
}

// ---------------------------------------------------------------------------------------------
// The tiled pair kernel. SWEEP ∈ {1, 2, 3}; L lanes per partner, NJ mu dims per lane (D ≤ L·NJ),
// RA anchor rows per warp; VDIM: the variance has one value per mu dim (Dv = D > 1), else one per
// (sample[, class]) and its log term is hoisted out of the dim loop (Dv = 1, as in cpu.cpp).
// Blocks per SM the register allocation must allow: 2 (≤ 128 registers), except with a per-dim
// variance and many dims per lane: sweep 3 with NJ ≥ 3 (anchor rows, accumulators and the kept
// reciprocals need ~210 registers) and sweep 2 with NJ = 4 (its double sums). Those run one block
// of 8 warps per SM; each lane still has RA·NJ ≥ 12 independent dims per partner. Left unspecified,
// ptxas picks 64 registers for some sweep-1 instances and spills.
constexpr int pairMinBlocks(int sweep, int NJ, bool vdim) {
  return vdim && ((sweep == 3 && NJ >= 3) || (sweep == 2 && NJ >= 4)) ? 1 : 2;
}

// The partners a block visits for class k: sweep 2 walks the co-positive anchor rows of k (through
// partnerRows), sweeps 1 and 3 a chunk of all samples selected by blockIdx.y.
template <int SWEEP>
__device__ __forceinline__ void partnerRange(const PairParams& p, int k, int& pBegin, int& pEnd, const int*& partnerRows) {
  partnerRows = nullptr;
  if constexpr (SWEEP == 2) {
    const int c0 = p.classRowStart[k];
    partnerRows = p.rowSample + c0;
    pBegin = 0;
    pEnd = p.classRowStart[k + 1] - c0;
  } else {
    pBegin = static_cast<int>(blockIdx.y) * p.chunkSize;
    pEnd = min(p.B, pBegin + p.chunkSize);
  }
}

template <int SWEEP, int L, int NJ, int RA, bool VDIM>
__global__ void __launch_bounds__(kThreads, pairMinBlocks(SWEEP, NJ, VDIM)) pairKernel(const PairParams p) {
  constexpr int G = 32 / L;  // lane groups = partners per warp step
  constexpr int VN = VDIM ? NJ : 1;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int grp = lane / L;
  const int j = lane % L;
  const Tile tile = p.tiles[blockIdx.x];
  const int k = tile.cls;
  const int nRows = tile.rowEnd - tile.rowBegin;
  const bool warpActive = warp * RA < nRows;  // warp-uniform

  int pBegin, pEnd;
  const int* partnerRows;
  partnerRange<SWEEP>(p, k, pBegin, pEnd, partnerRows);

  KMCL_DYNAMIC_SMEM(smem);
  const int TP = p.tileP, SD = p.strideD, SV = VDIM ? p.strideD : 1;
  float* sMu = reinterpret_cast<float*>(smem);
  float* sV = sMu + TP * SD;
  float* sIv = sV + TP * SV;
  float* sGMu = sIv + TP * SV;
  float* sGV = sGMu + (SWEEP == 3 ? TP * SD : 0);
  int* sIdx = reinterpret_cast<int*>(sGV + (SWEEP == 3 ? TP * SV : 0));
  int* sPos = sIdx + TP;

  // ---- this warp's anchor rows, in registers (padded dims and empty slots get μ = 0, v = 1) ----
  float aMu[RA][NJ], aV[RA][VN], aIv[RA][VN];
  int aSample[RA];
#pragma unroll
  for (int a = 0; a < RA; ++a) {
    const int slot = warp * RA + a;
    const bool valid = slot < nRows;
    const int i = valid ? p.rowSample[tile.rowBegin + slot] : -1;
    aSample[a] = i;
    const int64_t mo = valid ? muOffset(p, i, k) : 0;
    const int64_t vo = valid ? varOffset(p, i, k) : 0;
#pragma unroll
    for (int jj = 0; jj < NJ; ++jj) {
      const int m = j + L * jj;
      const bool ok = valid && m < p.D;
      aMu[a][jj] = ok ? p.mu[mo + m] : 0.0f;
      if constexpr (VDIM) {
        aV[a][jj] = ok ? p.variance[vo + m] : 1.0f;
        aIv[a][jj] = ok ? p.invVariance[vo + m] : 1.0f;
      }
    }
    if constexpr (!VDIM) {
      aV[a][0] = valid ? p.variance[vo] : 1.0f;
      aIv[a][0] = valid ? p.invVariance[vo] : 1.0f;
    }
  }

  // ---- per-anchor state of each sweep ----
  float rMax[RA], rInvSum[RA], rQ[RA], rCoef[RA];
  int rCnt[RA];
  float mx[RA];
  double sum[RA], sLog[RA], sQ[RA], sCnt[RA];
  float accMu[RA][NJ], accV[RA][VN];
#pragma unroll
  for (int a = 0; a < RA; ++a) {
    const int slot = warp * RA + a;
    const bool valid = slot < nRows;
    const int r = tile.rowBegin + slot;
    rMax[a] = 0.0f;
    rInvSum[a] = 0.0f;
    rQ[a] = 0.0f;
    rCoef[a] = 0.0f;
    rCnt[a] = 0;
    if (SWEEP >= 2 && valid) {
      rMax[a] = p.rowMax[r];
      rInvSum[a] = p.rowInvSum[r];
      rCnt[a] = p.labelCount[aSample[a]];
      if constexpr (SWEEP == 3) {
        rQ[a] = static_cast<float>(p.rowQ[r]);
        rCoef[a] = p.coef[aSample[a]];
      }
    }
    mx[a] = -1.0f;
    sum[a] = 0.0;
    sLog[a] = 0.0;
    sQ[a] = 0.0;
    sCnt[a] = 0.0;
#pragma unroll
    for (int jj = 0; jj < NJ; ++jj) accMu[a][jj] = 0.0f;
#pragma unroll
    for (int jj = 0; jj < VN; ++jj) accV[a][jj] = 0.0f;
  }

  const float s = p.distanceScale;
  for (int t0 = pBegin; t0 < pEnd; t0 += TP) {
    const int count = min(TP, pEnd - t0);
    __syncthreads();  // the previous tile is no longer read (nor, in sweep 3, flushed)
    for (int pp = threadIdx.x; pp < TP; pp += kThreads) {
      int l = -1, pos = 0;
      if (pp < count) {
        l = SWEEP == 2 ? partnerRows[t0 + pp] : t0 + pp;
        if (SWEEP == 3) pos = static_cast<int>((p.bits[static_cast<int64_t>(l) * p.W + (k >> 5)] >> (k & 31)) & 1u);
      }
      sIdx[pp] = l;
      sPos[pp] = pos;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < TP * SD; e += kThreads) {
      const int pp = e / SD;
      const int m = e - pp * SD;
      const int l = sIdx[pp];
      const bool ok = l >= 0 && m < p.D;
      sMu[e] = ok ? p.mu[muOffset(p, l, k) + m] : 0.0f;
      if constexpr (VDIM) {
        const int64_t o = ok ? varOffset(p, l, k) + m : 0;
        sV[e] = ok ? p.variance[o] : 1.0f;
        sIv[e] = ok ? p.invVariance[o] : 1.0f;
        if (SWEEP == 3) sGV[e] = 0.0f;
      }
      if (SWEEP == 3) sGMu[e] = 0.0f;
    }
    if constexpr (!VDIM) {
      for (int pp = threadIdx.x; pp < TP; pp += kThreads) {
        const int l = sIdx[pp];
        const int64_t o = l >= 0 ? varOffset(p, l, k) : 0;
        sV[pp] = l >= 0 ? p.variance[o] : 1.0f;
        sIv[pp] = l >= 0 ? p.invVariance[o] : 1.0f;
        if (SWEEP == 3) sGV[pp] = 0.0f;
      }
    }
    __syncthreads();

    if (warpActive) {
      // count is block-uniform, so every lane of the warp runs the same steps (shuffles are safe).
      for (int base = 0; base < count; base += G) {
        const int pp = base + grp;  // < TP: TP is a multiple of G and base < count ≤ TP
        const int l = sIdx[pp];     // −1 past the end of the chunk
        float pMu[NJ], pV[VN], pIv[VN];
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) {
          pMu[jj] = sMu[pp * SD + j + L * jj];
          if constexpr (VDIM) {
            pV[jj] = sV[pp * SD + j + L * jj];
            pIv[jj] = sIv[pp * SD + j + L * jj];
          }
        }
        if constexpr (!VDIM) {
          pV[0] = sV[pp];
          pIv[0] = sIv[pp];
        }

        // Pass 1: Dist of the RA triples (this lane's dims, then the group's shuffle reduction).
        float inv[RA][VN], dist[RA];
#pragma unroll
        for (int a = 0; a < RA; ++a) {
          float q = 0.0f;
          if constexpr (VDIM) {
            float lg = 0.0f;
#pragma unroll
            for (int jj = 0; jj < NJ; ++jj) {
              const float r = math::fastRcp(aV[a][jj] + pV[jj]);
              inv[a][jj] = r;
              const float d = aMu[a][jj] - pMu[jj];
              q = fmaf(d * d, r, q);
              lg += math::bhattacharyyaLogScaledFast(aV[a][jj], pV[jj], aIv[a][jj], pIv[jj]);
            }
            dist[a] = fmaf(math::kLn2f, lg, q);
          } else {
            const float r = math::fastRcp(aV[a][0] + pV[0]);
            inv[a][0] = r;
#pragma unroll
            for (int jj = 0; jj < NJ; ++jj) {
              const float d = aMu[a][jj] - pMu[jj];
              q = fmaf(d * d, r, q);
            }
            dist[a] = q;
          }
        }
#pragma unroll
        for (int a = 0; a < RA; ++a) dist[a] = groupSum<L>(dist[a]);
        // Dist = s Σ_m (¼Δ²/(a+b) + ¼ log1p(…)); Dv = 1: s (dims · ¼ΣΔ²/(a+b) + M · ¼ log1p(…)).
#pragma unroll
        for (int a = 0; a < RA; ++a) {
          if constexpr (VDIM) {
            dist[a] = 0.25f * s * dist[a];
          } else {
            const float lg = math::bhattacharyyaLogScaledFast(aV[a][0], pV[0], aIv[a][0], pIv[0]);
            dist[a] = 0.25f * s * fmaf(p.dims, dist[a], p.dimM * math::kLn2f * lg);
          }
        }

        if constexpr (SWEEP == 1) {
#pragma unroll
          for (int a = 0; a < RA; ++a)
            if (l >= 0 && aSample[a] >= 0 && l != aSample[a]) onlineAdd(mx[a], sum[a], expf(-dist[a]), p.invTau);
        } else if constexpr (SWEEP == 2) {
#pragma unroll
          for (int a = 0; a < RA; ++a)
            if (l >= 0 && aSample[a] >= 0 && l != aSample[a])
              coPositiveTerms(p, expf(-dist[a]), rMax[a], rInvSum[a], rCnt[a], aSample[a], l, sLog[a], sQ[a], sCnt[a]);
        } else {
          // ∂L/∂Dist · s for each anchor (0 for masked triples), then pass 2: ∂Dist/∂(μ, v).
          float gs[RA];
#pragma unroll
          for (int a = 0; a < RA; ++a) {
            float G0 = 0.0f;
            if (l >= 0 && aSample[a] >= 0 && l != aSample[a])
              G0 = distanceGradient(p, expf(-dist[a]), rMax[a], rInvSum[a], rQ[a], rCoef[a], rCnt[a], aSample[a], l,
                                    sPos[pp] != 0);
            gs[a] = G0 * s;
          }
          float pgMu[NJ], pgV[VN];
#pragma unroll
          for (int jj = 0; jj < NJ; ++jj) pgMu[jj] = 0.0f;
#pragma unroll
          for (int jj = 0; jj < VN; ++jj) pgV[jj] = 0.0f;
#pragma unroll
          for (int a = 0; a < RA; ++a) {
            if constexpr (VDIM) {
#pragma unroll
              for (int jj = 0; jj < NJ; ++jj) {
                const float d = aMu[a][jj] - pMu[jj];
                const float dm = gs[a] * math::bhattacharyyaQuadDMu(d, inv[a][jj]);
                const float dq = gs[a] * math::bhattacharyyaQuadDVar(d, inv[a][jj]);
                float la, lb;
                math::bhattacharyyaLogDAPair(aV[a][jj], pV[jj], inv[a][jj], aIv[a][jj], pIv[jj], la, lb);
                accMu[a][jj] += dm;
                pgMu[jj] -= dm;
                accV[a][jj] += fmaf(gs[a], la, dq);
                pgV[jj] += fmaf(gs[a], lb, dq);
              }
            } else {
              const float gd = gs[a] * p.dims;
              float dvar = 0.0f;
#pragma unroll
              for (int jj = 0; jj < NJ; ++jj) {
                const float d = aMu[a][jj] - pMu[jj];
                const float dm = gd * math::bhattacharyyaQuadDMu(d, inv[a][0]);
                accMu[a][jj] += dm;
                pgMu[jj] -= dm;
                dvar += math::bhattacharyyaQuadDVar(d, inv[a][0]);
              }
              // Lane partials of gd · Σ_m ∂quad/∂v; lane 0 of the group adds the hoisted log part.
              float la, lb;
              math::bhattacharyyaLogDAPair(aV[a][0], pV[0], inv[a][0], aIv[a][0], pIv[0], la, lb);
              const float gm = j == 0 ? gs[a] * p.dimM : 0.0f;
              accV[a][0] += fmaf(gd, dvar, gm * la);
              pgV[0] += fmaf(gd, dvar, gm * lb);
            }
          }
          if constexpr (!VDIM) pgV[0] = groupSum<L>(pgV[0]);
          if (l >= 0) {
#pragma unroll
            for (int jj = 0; jj < NJ; ++jj) {
              const int m = j + L * jj;
              if (m < p.D) {
                atomicAdd(&sGMu[pp * SD + m], pgMu[jj]);
                if constexpr (VDIM) atomicAdd(&sGV[pp * SD + m], pgV[jj]);
              }
            }
            if constexpr (!VDIM) {
              if (j == 0) atomicAdd(&sGV[pp], pgV[0]);
            }
          }
        }
      }
    }

    if constexpr (SWEEP == 3) {
      __syncthreads();  // the tile's partner gradients are complete
      for (int e = threadIdx.x; e < TP * SD; e += kThreads) {
        const int pp = e / SD;
        const int m = e - pp * SD;
        const int l = sIdx[pp];
        if (l >= 0 && m < p.D) {
          const float gm = sGMu[e];
          if (gm != 0.0f) atomicAdd(&p.gMu[muOffset(p, l, k) + m], gm);
          if constexpr (VDIM) {
            const float gv = sGV[e];
            if (gv != 0.0f) atomicAdd(&p.gVar[varOffset(p, l, k) + m], gv);
          }
        }
      }
      if constexpr (!VDIM) {
        for (int pp = threadIdx.x; pp < TP; pp += kThreads) {
          const int l = sIdx[pp];
          if (l >= 0) {
            const float gv = sGV[pp];
            if (gv != 0.0f) atomicAdd(&p.gVar[varOffset(p, l, k)], gv);
          }
        }
      }
    }
  }

  // ---- epilogue: combine the groups of each warp, write this block's part of each row ----
  if (!warpActive) return;  // no __syncthreads below
  if constexpr (SWEEP == 1) {
#pragma unroll
    for (int a = 0; a < RA; ++a) {
#pragma unroll
      for (int off = L; off < 32; off <<= 1) {
        const float omx = __shfl_xor_sync(kFullMask, mx[a], off);
        const double osum = __shfl_xor_sync(kFullMask, sum[a], off);
        onlineMerge(mx[a], sum[a], omx, osum, p.invTau);
      }
    }
    if (lane == 0) {
#pragma unroll
      for (int a = 0; a < RA; ++a) {
        const int slot = warp * RA + a;
        if (slot < nRows) {
          OnlineStat st;
          st.max = mx[a];
          st.sum = sum[a];
          p.partial[static_cast<int64_t>(tile.rowBegin + slot) * p.numChunks + blockIdx.y] = st;
        }
      }
    }
  } else if constexpr (SWEEP == 2) {
#pragma unroll
    for (int a = 0; a < RA; ++a) {
      sLog[a] = acrossGroupsSum<L>(sLog[a]);
      sQ[a] = acrossGroupsSum<L>(sQ[a]);
      sCnt[a] = acrossGroupsSum<L>(sCnt[a]);
    }
    if (lane == 0) {
#pragma unroll
      for (int a = 0; a < RA; ++a) {
        const int slot = warp * RA + a;
        if (slot < nRows) {
          const int r = tile.rowBegin + slot;
          p.rowSumLog[r] = sLog[a];
          p.rowQ[r] = sQ[a];
          p.rowAnchorCount[r] = sCnt[a];
        }
      }
    }
  } else {
#pragma unroll
    for (int a = 0; a < RA; ++a) {
#pragma unroll
      for (int jj = 0; jj < NJ; ++jj) accMu[a][jj] = acrossGroupsSum<L>(accMu[a][jj]);
      if constexpr (VDIM) {
#pragma unroll
        for (int jj = 0; jj < VN; ++jj) accV[a][jj] = acrossGroupsSum<L>(accV[a][jj]);
      } else {
        accV[a][0] = warpSumF(accV[a][0]);  // over the dims of the group and over the groups
      }
    }
    if (lane < L) {
#pragma unroll
      for (int a = 0; a < RA; ++a) {
        const int i = aSample[a];
        if (i < 0) continue;
        const int64_t mo = muOffset(p, i, k), vo = varOffset(p, i, k);
#pragma unroll
        for (int jj = 0; jj < NJ; ++jj) {
          const int m = j + L * jj;
          if (m < p.D) {
            atomicAdd(&p.gMu[mo + m], accMu[a][jj]);
            if constexpr (VDIM) atomicAdd(&p.gVar[vo + m], accV[a][jj]);
          }
        }
        if constexpr (!VDIM) {
          if (lane == 0) atomicAdd(&p.gVar[vo], accV[a][0]);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Fallback for muDim > 128 (and, with KMCL_CUDA_FORCE_GENERIC=1, a second implementation to check
// the tiled one against): one warp per anchor row (tiles of 8 rows), lanes over the dims, operands
// read from global memory, and in sweep 3 one atomicAdd per (triple, dim, side). Simple and slow.
template <int SWEEP, bool VDIM>
__global__ void __launch_bounds__(kThreads) pairKernelGeneric(const PairParams p) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const Tile tile = p.tiles[blockIdx.x];
  const int k = tile.cls;
  if (warp >= tile.rowEnd - tile.rowBegin) return;  // warp-uniform; this kernel has no __syncthreads
  const int r = tile.rowBegin + warp;
  const int i = p.rowSample[r];
  const int D = p.D;
  const int64_t ao = muOffset(p, i, k), av = varOffset(p, i, k);

  int pBegin, pEnd;
  const int* partnerRows;
  partnerRange<SWEEP>(p, k, pBegin, pEnd, partnerRows);
  float rMax = 0.0f, rInvSum = 0.0f, rQ = 0.0f, rCoef = 0.0f;
  int rCnt = 0;
  if constexpr (SWEEP >= 2) {
    rMax = p.rowMax[r];
    rInvSum = p.rowInvSum[r];
    rCnt = p.labelCount[i];
    if constexpr (SWEEP == 3) {
      rQ = static_cast<float>(p.rowQ[r]);
      rCoef = p.coef[i];
    }
  }
  float mx = -1.0f;
  double sum = 0.0, sLog = 0.0, sQ = 0.0, sCnt = 0.0;
  const float s = p.distanceScale;

  for (int t = pBegin; t < pEnd; ++t) {
    const int l = SWEEP == 2 ? partnerRows[t] : t;
    if (l == i) continue;  // warp-uniform
    const int64_t lo = muOffset(p, l, k), lv = varOffset(p, l, k);
    float part = 0.0f;
    if constexpr (VDIM) {
      float q = 0.0f, lg = 0.0f;
      for (int m = lane; m < D; m += 32) {
        const float a = p.variance[av + m], b = p.variance[lv + m];
        const float d = p.mu[ao + m] - p.mu[lo + m];
        q = fmaf(d * d, math::fastRcp(a + b), q);
        lg += math::bhattacharyyaLogScaledFast(a, b, p.invVariance[av + m], p.invVariance[lv + m]);
      }
      part = fmaf(math::kLn2f, lg, q);
    } else {
      const float rr = math::fastRcp(p.variance[av] + p.variance[lv]);
      for (int m = lane; m < D; m += 32) {
        const float d = p.mu[ao + m] - p.mu[lo + m];
        part = fmaf(d * d, rr, part);
      }
    }
    part = warpSumF(part);
    float dist;
    if constexpr (VDIM) {
      dist = 0.25f * s * part;
    } else {
      const float lg = math::bhattacharyyaLogScaledFast(p.variance[av], p.variance[lv], p.invVariance[av], p.invVariance[lv]);
      dist = 0.25f * s * fmaf(p.dims, part, p.dimM * math::kLn2f * lg);
    }
    const float bc = expf(-dist);
    if constexpr (SWEEP == 1) {
      onlineAdd(mx, sum, bc, p.invTau);
    } else if constexpr (SWEEP == 2) {
      coPositiveTerms(p, bc, rMax, rInvSum, rCnt, i, l, sLog, sQ, sCnt);
    } else {
      const bool coPositive = ((p.bits[static_cast<int64_t>(l) * p.W + (k >> 5)] >> (k & 31)) & 1u) != 0;
      const float gs = distanceGradient(p, bc, rMax, rInvSum, rQ, rCoef, rCnt, i, l, coPositive) * s;
      if (gs == 0.0f) continue;  // warp-uniform
      if constexpr (VDIM) {
        for (int m = lane; m < D; m += 32) {
          const float a = p.variance[av + m], b = p.variance[lv + m];
          const float rr = math::fastRcp(a + b);
          const float d = p.mu[ao + m] - p.mu[lo + m];
          const float dm = gs * math::bhattacharyyaQuadDMu(d, rr);
          const float dq = gs * math::bhattacharyyaQuadDVar(d, rr);
          float la, lb;
          math::bhattacharyyaLogDAPair(a, b, rr, p.invVariance[av + m], p.invVariance[lv + m], la, lb);
          atomicAdd(&p.gMu[ao + m], dm);
          atomicAdd(&p.gMu[lo + m], -dm);
          atomicAdd(&p.gVar[av + m], fmaf(gs, la, dq));
          atomicAdd(&p.gVar[lv + m], fmaf(gs, lb, dq));
        }
      } else {
        const float a = p.variance[av], b = p.variance[lv];
        const float rr = math::fastRcp(a + b);
        const float gd = gs * p.dims;
        float dvar = 0.0f;
        for (int m = lane; m < D; m += 32) {
          const float d = p.mu[ao + m] - p.mu[lo + m];
          const float dm = gd * math::bhattacharyyaQuadDMu(d, rr);
          atomicAdd(&p.gMu[ao + m], dm);
          atomicAdd(&p.gMu[lo + m], -dm);
          dvar += math::bhattacharyyaQuadDVar(d, rr);
        }
        dvar = warpSumF(dvar);
        if (lane == 0) {
          float la, lb;
          math::bhattacharyyaLogDAPair(a, b, rr, p.invVariance[av], p.invVariance[lv], la, lb);
          atomicAdd(&p.gVar[av], fmaf(gd, dvar, gs * p.dimM * la));
          atomicAdd(&p.gVar[lv], fmaf(gd, dvar, gs * p.dimM * lb));
        }
      }
    }
  }
  if (lane != 0) return;
  if constexpr (SWEEP == 1) {
    OnlineStat st;
    st.max = mx;
    st.sum = sum;
    p.partial[static_cast<int64_t>(r) * p.numChunks + blockIdx.y] = st;
  } else if constexpr (SWEEP == 2) {
    p.rowSumLog[r] = sLog;
    p.rowQ[r] = sQ;
    p.rowAnchorCount[r] = sCnt;
  }
}

}  // namespace KMCL_CUDA_NS
}  // namespace kmcl
