// The seeded benchmark problems of kmcl_bench (native/bench/bench.cpp) and kmcl_cpu_bench
// (bench/native/cpu_bench.cpp), one definition for both: features in (-1, 1), logits in (-3, 3),
// mu in (-0.5, 0.5), variance in (1, 3), 1 … 5 positive labels per sample (mean 3).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "kmcl/kmcl.h"

namespace kmcl_bench {

// xorshift64*: fast, seeded, good enough for benchmark data.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 2685821657736338717ull;
  }
  double uni() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }
};

// Fills the five inputs of a problem of shape s from the seed (sizes from the shape).
inline void fillProblem(const kmcl::Shape& s, uint64_t seed, std::vector<float>& features, std::vector<float>& logits,
                        std::vector<float>& labels, std::vector<float>& mu, std::vector<float>& variance) {
  Rng r(seed);
  features.resize(size_t(s.featuresSize()));
  for (auto& x : features) x = float(r.uni() * 2 - 1);
  logits.resize(size_t(s.logitsSize()));
  for (auto& x : logits) x = float(r.uni() * 6 - 3);
  mu.resize(size_t(s.muSize()));
  for (auto& x : mu) x = float(r.uni() - 0.5);
  variance.resize(size_t(s.varianceSize()));
  for (auto& x : variance) x = float(1 + 2 * r.uni());
  const int64_t B = s.batch, K = s.classes;
  labels.assign(size_t(s.logitsSize()), 0.0f);
  for (int64_t i = 0; i < B; ++i) {
    const int64_t n = std::min<int64_t>(K, 1 + int64_t(r.uni() * 5));  // 1 … 5, mean 3
    for (int64_t t = 0; t < n;) {
      const int64_t k = int64_t(r.uni() * double(K)) % K;
      float& y = labels[size_t(i * K + k)];
      if (y == 0) {
        y = 1;
        ++t;
      }
    }
  }
}

}  // namespace kmcl_bench
