// The float32 CPU path compiled for AVX2 + FMA (8 float lanes); picked at run time when the CPU
// has both (cpu.cpp, selectIsa). Headers first, then the target: see cpu_includes.h.
#include "cpu_includes.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

#define KMCL_ISA_NS isa_avx2
#define KMCL_W 8
#include "cpu.cpp"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
