// Every header cpu.cpp needs, included before any `#pragma GCC target` of the ISA variants
// (cpu_avx2.cpp, cpu_avx512.cpp), so that the standard library's and math.h's inline functions
// are compiled for the baseline in every translation unit: the linker may keep any one copy of
// them, and that copy must run on every CPU.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "kmcl/kmcl.h"
#include "kmcl/math.h"
#include "thread_pool.h"

namespace kmcl {
// Time inside the contrastive sweep tasks (cpuSweepNanos), shared by the instruction sets.
extern std::atomic<int64_t> gSweepNanos;
// The float32 entry point of each compiled instruction set (cpu.cpp, cpu_avx2.cpp,
// cpu_avx512.cpp), and the float64 reference (baseline only).
namespace isa_baseline {
LossParts computeFloat(const Problem<float>&, const Options&, const Gradients<float>*, int);
LossParts computeDouble(const Problem<double>&, const Options&, const Gradients<double>*, int);
CpuOpRates measureOpRates();
}  // namespace isa_baseline
namespace isa_avx2 {
LossParts computeFloat(const Problem<float>&, const Options&, const Gradients<float>*, int);
CpuOpRates measureOpRates();
}
namespace isa_avx512 {
LossParts computeFloat(const Problem<float>&, const Options&, const Gradients<float>*, int);
CpuOpRates measureOpRates();
}
}  // namespace kmcl
