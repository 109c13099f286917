// Which pair kernel runs for a problem: the template instance of kernels.cuh for its muDim and
// variance layout. pair_sweep{1,2,3}.cu instantiate selectPairKernel<S>; the host side
// (backend.cuh) calls it.
#pragma once

#include "kernels.cuh"

namespace kmcl {
namespace KMCL_CUDA_NS {

using PairKernelFn = void (*)(PairParams);

// Which pair kernel runs: the tiled one with L lanes per partner and NJ dims per lane, or the
// generic one (muDim > 128, or KMCL_CUDA_FORCE_GENERIC=1).
struct PairConfig {
  bool generic = false;
  bool vdim = false;  // variance per dim (Dv = D > 1)
  int L = 32;
  int NJ = 1;
  int RA = 1;  // anchor rows per warp; a tile holds kWarps · RA rows
};

// Anchor rows per warp of the tiled kernel. Four rows give each lane 4·NJ independent
// reciprocal/logarithm chains per partner (latency hiding at low occupancy) and divide the
// partner-side atomics by 32 per block; the register report (bench/RESULTS.md) shows no spills.
constexpr int anchorsPerWarp(int /*L*/, int /*NJ*/, bool /*vdim*/) { return 4; }

template <int S>
PairKernelFn selectPairKernel(const PairConfig& c) {
  if (c.generic) return c.vdim ? &pairKernelGeneric<S, true> : &pairKernelGeneric<S, false>;
#define KMCL_PAIR_CASE(Lv, NJv)                                                                     \
  if (c.L == Lv && c.NJ == NJv)                                                                     \
    return c.vdim ? &pairKernel<S, Lv, NJv, anchorsPerWarp(Lv, NJv, true), true>                   \
                  : &pairKernel<S, Lv, NJv, anchorsPerWarp(Lv, NJv, false), false>;
  if (c.L == 1 && c.NJ == 1 && !c.vdim) return &pairKernel<S, 1, 1, anchorsPerWarp(1, 1, false), false>;
  KMCL_PAIR_CASE(2, 1)
  KMCL_PAIR_CASE(4, 1)
  KMCL_PAIR_CASE(8, 1)
  KMCL_PAIR_CASE(16, 1)
  KMCL_PAIR_CASE(32, 1)
  KMCL_PAIR_CASE(32, 2)
  KMCL_PAIR_CASE(32, 3)
  KMCL_PAIR_CASE(32, 4)
#undef KMCL_PAIR_CASE
  return nullptr;
}

#if !defined(KMCL_CUDA_EMULATION)
// Instantiated in pair_sweep{1,2,3}.cu, so that the three sweeps compile in parallel. (The CPU
// emulation compiles everything in one translation unit.)
extern template PairKernelFn selectPairKernel<1>(const PairConfig&);
extern template PairKernelFn selectPairKernel<2>(const PairConfig&);
extern template PairKernelFn selectPairKernel<3>(const PairConfig&);
#endif

inline PairConfig choosePairConfig(int64_t D, int64_t Dv, bool forceGeneric) {
  PairConfig c;
  c.vdim = Dv > 1;
  if (forceGeneric || D > 128) {
    c.generic = true;
    c.L = 32;
    c.NJ = 0;
    c.RA = 1;
    return c;
  }
  if (D <= 32) {
    c.L = 1;
    while (c.L < D) c.L *= 2;
    c.NJ = 1;
  } else {
    c.L = 32;
    c.NJ = static_cast<int>((D + 31) / 32);
  }
  c.RA = anchorsPerWarp(c.L, c.NJ, c.vdim);
  return c;
}

}  // namespace KMCL_CUDA_NS
}  // namespace kmcl
