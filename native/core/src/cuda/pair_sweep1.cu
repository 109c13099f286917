// Instantiates the pair kernels of contrastive sweep 1 (kernels.cuh), one file per sweep so that
// the sweeps compile in parallel.
#include "pair_select.cuh"

namespace kmcl {
namespace cuda_impl {

template PairKernelFn selectPairKernel<1>(const PairConfig&);

}  // namespace cuda_impl
}  // namespace kmcl
