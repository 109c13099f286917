// kmcl_bench: forward + backward time of the KMCL loss on the CUDA path (and optionally the CPU
// float32 path) over a grid of problem sizes.
//
//   kmcl_bench [--quick] [--cpu] [--runs N] [--warmup N] [--max-batch N] [--variance mks|bc|rbf]
//              [--only B,K,M] [--csv FILE] [--json FILE]
//
// --only B,K,M runs that one cell (M = 1: isotropic, else anisotropic), e.g. under Nsight Compute.
//
// Grid: B ∈ {64, 256, 1024, 4096, 16384} × K ∈ {20, 80} × M ∈ {1 (isotropic, variance [B, K, 1]),
// 128 (anisotropic, variance [B, 1, M] by default: the "MKS" layout)}, 3 positive labels per
// sample on average (1 … 5, seeded), default options, all four gradients requested.
//
// Columns:
//   kernel ms     median over the runs of the CUDA-event time of all kernels of one call
//   total ms      median wall-clock time of one computeCuda call: pinned staging, copies both
//                 ways, kernels (what a caller waits for)
//   Gtd/s         triple-dims per second: (i, l, k, m) evaluations of the Bhattacharyya distance,
//                 m over muDim, summed over the three contrastive sweeps, per kernel second
//   floor ms      the special-function floor: the MUFU ops the pair sweeps issue, counted per
//                 layout from the kernels' PTX (cuda_internal.h CallStats::mufuOps, bench/RESULTS.md):
//                 rcp + lg2 per lane-dim slot of Dist, plus the per-lane exponentials (and, in
//                 sweep 2, double reciprocals) that every lane of a partner group repeats: 2.5 per
//                 triple-dim for a per-dim variance at D = 128, 4 per triple for isotropic mu;
//                 floor = mufuOps / (16 MUFU ops/clk/SM · SMs · SM clock), SMs and clock read
//                 from the device at run time (H100/H200: 132 SMs, 1.98 GHz)
//   MUFU/td       mufuOps / triple-dims (in the JSON and CSV)
//   % floor       floor ms / kernel ms
//   peak MiB      the device workspace high-water mark of the configuration (inputs, gradients,
//                 scratch; the workspace is released before each configuration)
//   cpu ms        median time of kmcl::computeCpu<float> (with --cpu, for B ≤ 1024)
//
// Without a usable CUDA device (or in a CPU-only build) it times the CPU path only, for B ≤ 1024,
// and says why CUDA was skipped.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kmcl/kmcl.h"
#include "bench_data.h"

#if defined(KMCL_BENCH_HAS_CUDA)
#include "../core/src/cuda/cuda_internal.h"
#endif

namespace {

struct Config {
  int64_t B, K, M;
  bool iso;
};

struct Row {
  Config c;
  std::string layout;
  int64_t rows = 0;
  double triples = 0, tripleDims = 0, mufuOps = 0;
  bool cuda = false;
  double kernelMs = NAN, totalMs = NAN, uploadMs = NAN, downloadMs = NAN;
  double gtdPerS = NAN, floorMs = NAN, pctFloor = NAN;
  double peakMiB = NAN, deviceUsedMiB = NAN;
  double cpuMs = NAN;
  double loss = NAN;
  std::string kernelConfig;
  std::string note;
};


struct ProblemData {
  kmcl::Shape shape;
  std::vector<float> features, logits, labels, mu, variance;
  std::vector<float> gFeatures, gLogits, gMu, gVariance;
  kmcl::Problem<float> problem() const {
    kmcl::Problem<float> p;
    p.shape = shape;
    p.features = features.data();
    p.logits = logits.data();
    p.labels = labels.data();
    p.mu = mu.data();
    p.variance = variance.data();
    return p;
  }
  kmcl::Gradients<float> gradients() {
    return kmcl::Gradients<float>{gFeatures.data(), gLogits.data(), gMu.data(), gVariance.data()};
  }
};

ProblemData makeProblem(const Config& c, const std::string& variance, uint64_t seed) {
  ProblemData d;
  kmcl::Shape& s = d.shape;
  s.batch = c.B;
  s.classes = c.K;
  s.dim = c.M;
  s.muDim = c.iso ? 1 : c.M;
  if (c.iso || variance == "rbf") {
    s.varianceClasses = c.iso && variance != "rbf" ? c.K : 1;
    s.varianceDim = 1;
  } else if (variance == "bc") {
    s.varianceClasses = c.K;
    s.varianceDim = s.muDim;
  } else {  // mks
    s.varianceClasses = 1;
    s.varianceDim = s.muDim;
  }
  kmcl_bench::fillProblem(s, seed, d.features, d.logits, d.labels, d.mu, d.variance);
  d.gFeatures.resize(d.features.size());
  d.gLogits.resize(d.logits.size());
  d.gMu.resize(d.mu.size());
  d.gVariance.resize(d.variance.size());
  return d;
}

std::string layoutName(const kmcl::Shape& s) {
  return std::string(s.muDim == 1 ? "iso" : "aniso") + " var[B," + (s.varianceClasses == 1 ? "1" : "K") + "," +
         (s.varianceDim == 1 ? "1" : "D") + "]";
}

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double nowMs() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string num(double v, int prec = 3) {
  if (std::isnan(v)) return "";
  char b[64];
  std::snprintf(b, sizeof(b), "%.*g", prec, v);
  return b;
}

std::string jsonNum(double v) { return std::isnan(v) ? "null" : num(v, 6); }

std::string jsonStr(const std::string& s) {
  std::string o = "\"";
  for (char ch : s) {
    if (ch == '"' || ch == '\\') o += '\\';
    o += ch;
  }
  return o + "\"";
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, cpu = false;
  int runs = 20, warmup = 3;
  int64_t maxBatch = 16384;
  std::string csvPath, jsonPath, variance = "mks";
  int64_t onlyB = 0, onlyK = 0, onlyM = 0;
  for (int a = 1; a < argc; ++a) {
    const std::string s = argv[a];
    auto next = [&]() -> std::string {
      if (a + 1 >= argc) throw std::invalid_argument(s + " needs a value");
      return argv[++a];
    };
    if (s == "--quick") quick = true;
    else if (s == "--cpu") cpu = true;
    else if (s == "--runs") runs = std::max(1, std::atoi(next().c_str()));
    else if (s == "--warmup") warmup = std::max(0, std::atoi(next().c_str()));
    else if (s == "--max-batch") maxBatch = std::atoll(next().c_str());
    else if (s == "--csv") csvPath = next();
    else if (s == "--json") jsonPath = next();
    else if (s == "--variance") variance = next();
    else if (s == "--only") {
      const std::string v = next();
      if (std::sscanf(v.c_str(), "%lld,%lld,%lld", reinterpret_cast<long long*>(&onlyB), reinterpret_cast<long long*>(&onlyK),
                      reinterpret_cast<long long*>(&onlyM)) != 3 || onlyB < 2 || onlyK < 1 || onlyM < 1) {
        std::fprintf(stderr, "--only needs B,K,M (e.g. 4096,80,128)\n");
        return 2;
      }
    }
    else {
      std::fprintf(stderr,
                   "usage: kmcl_bench [--quick] [--cpu] [--runs N] [--warmup N] [--max-batch N] [--variance mks|bc|rbf] "
                   "[--only B,K,M] [--csv FILE] [--json FILE]\n");
      return 2;
    }
  }
  if (variance != "mks" && variance != "bc" && variance != "rbf") {
    std::fprintf(stderr, "--variance must be mks, bc or rbf\n");
    return 2;
  }

  const kmcl::CudaInfo info = kmcl::cudaInfo();
  bool useCuda = info.usable;
  std::string cudaWhy = info.usable ? "" : info.reason;
  std::string deviceName;
  int smCount = 0, clockKHz = 0;
  double totalMiB = NAN;
#if defined(KMCL_BENCH_HAS_CUDA)
  if (useCuda) {
    try {
      const kmcl::cuda_internal::DeviceProps p = kmcl::cuda_internal::deviceProps();
      deviceName = p.name;
      smCount = p.smCount;
      clockKHz = p.clockKHz;
      totalMiB = double(p.totalMemory) / (1 << 20);
    } catch (const std::exception& e) {
      useCuda = false;
      cudaWhy = e.what();
    }
  }
#else
  if (useCuda) {
    useCuda = false;
    cudaWhy = "the benchmark was built without the CUDA hooks";
  }
#endif
  const double mufuPerS = double(smCount) * 16.0 * double(clockKHz) * 1e3;
  if (useCuda) {
    std::printf("device: %s, %d SMs, SM clock %.2f GHz, %.0f MiB; special-function throughput %.3g ops/s\n",
                deviceName.c_str(), smCount, clockKHz * 1e-6, totalMiB, mufuPerS);
  } else {
    std::printf("CUDA skipped: %s. Timing the CPU path only (B <= 1024).\n", cudaWhy.c_str());
    cpu = true;
  }
  std::printf("CPU threads: %d; runs %d (median) after %d warm-up; M = 128 uses variance layout %s\n",
              kmcl::cpuThreadCount(0), runs, warmup, variance.c_str());

  std::vector<Config> grid;
  const std::vector<int64_t> Bs = quick ? std::vector<int64_t>{256, 1024} : std::vector<int64_t>{64, 256, 1024, 4096, 16384};
  const std::vector<int64_t> Ks = quick ? std::vector<int64_t>{80} : std::vector<int64_t>{20, 80};
  if (onlyB > 0) {
    grid.push_back(Config{onlyB, onlyK, onlyM, onlyM == 1});
  } else {
    for (int64_t B : Bs) {
      if (B > maxBatch) continue;
      for (int64_t K : Ks)
        for (bool iso : {true, false}) grid.push_back(Config{B, K, iso ? 1 : 128, iso});
    }
  }

  std::printf("\n%6s %3s %4s %-16s %7s %10s | %9s %9s %8s %8s | %8s %8s %7s | %8s | %9s\n", "B", "K", "M", "layout", "rows",
              "triples", "kernel ms", "total ms", "up ms", "down ms", "Gtd/s", "floor ms", "% floor", "peak MiB", "cpu ms");
  std::vector<Row> rows;
  uint64_t seed = 1;
  for (const Config& c : grid) {
    Row row;
    row.c = c;
    ProblemData d = makeProblem(c, variance, seed++);
    row.layout = layoutName(d.shape);
    const kmcl::Problem<float> p = d.problem();
    kmcl::Gradients<float> g = d.gradients();
    const kmcl::Options o;
    {
      // The contrastive work, counted as the CUDA path does (for the CPU-only table too).
      std::vector<int64_t> n(size_t(c.K), 0);
      for (size_t j = 0; j < d.labels.size(); ++j)
        if (d.labels[j] != 0) ++n[j % size_t(c.K)];
      double pairs2 = 0;
      for (int64_t nk : n)
        if (nk >= 2) {
          row.rows += nk;
          pairs2 += double(nk) * double(nk - 1);
        }
      row.triples = 2.0 * double(row.rows) * double(c.B - 1) + pairs2;
    }
#if defined(KMCL_BENCH_HAS_CUDA)
    if (useCuda) {
      try {
        kmcl::releaseDeviceMemory();  // a fresh, right-sized workspace per configuration
        std::vector<double> kernel, total, up, down;
        kmcl::cuda_internal::CallStats st;
        for (int r = 0; r < warmup + runs; ++r) {
          const double t0 = nowMs();
          const kmcl::LossParts lp = kmcl::computeCuda(p, o, &g);
          const double t1 = nowMs();
          st = kmcl::cuda_internal::lastCallStats();
          row.loss = lp.loss;
          if (r < warmup) continue;
          total.push_back(t1 - t0);
          kernel.push_back(st.kernelMs);
          up.push_back(st.uploadMs);
          down.push_back(st.downloadMs);
        }
        row.cuda = true;
        row.kernelMs = median(kernel);
        row.totalMs = median(total);
        row.uploadMs = median(up);
        row.downloadMs = median(down);
        row.rows = st.rows;
        row.triples = st.triples;
        row.tripleDims = st.tripleDims;
        row.mufuOps = st.mufuOps;
        row.gtdPerS = st.tripleDims / (row.kernelMs * 1e-3) * 1e-9;
        row.floorMs = mufuPerS > 0 ? st.mufuOps / mufuPerS * 1e3 : NAN;
        row.pctFloor = 100.0 * row.floorMs / row.kernelMs;
        row.peakMiB = double(st.workspacePeakBytes) / (1 << 20);
        row.kernelConfig = st.config;
      } catch (const std::exception& e) {
        row.note = std::string("CUDA failed: ") + e.what();
      }
    }
#endif
    if (cpu && c.B <= 1024) {
      try {
        std::vector<double> t;
        const int cpuRuns = std::max(3, runs / 4);
        kmcl::computeCpu<float>(p, o, &g);  // warm-up (thread pool start, page faults)
        for (int r = 0; r < cpuRuns; ++r) {
          const double t0 = nowMs();
          const kmcl::LossParts lp = kmcl::computeCpu<float>(p, o, &g);
          t.push_back(nowMs() - t0);
          if (std::isnan(row.loss)) row.loss = lp.loss;
        }
        row.cpuMs = median(t);
      } catch (const std::exception& e) {
        row.note += std::string(" CPU failed: ") + e.what();
      }
    }
    std::printf("%6lld %3lld %4lld %-16s %7lld %10.3g | %9s %9s %8s %8s | %8s %8s %7s | %8s | %9s %s\n", (long long)c.B,
                (long long)c.K, (long long)c.M, row.layout.c_str(), (long long)row.rows, row.triples, num(row.kernelMs).c_str(),
                num(row.totalMs).c_str(), num(row.uploadMs).c_str(), num(row.downloadMs).c_str(), num(row.gtdPerS).c_str(),
                num(row.floorMs).c_str(), num(row.pctFloor, 2).c_str(), num(row.peakMiB, 4).c_str(), num(row.cpuMs).c_str(),
                row.note.c_str());
    std::fflush(stdout);
    rows.push_back(row);
  }

  for (const Row& r : rows) {
    if (r.cuda && r.c.B == 16384 && r.c.K == 80 && r.c.M == 128) {
      std::printf("\n2 GiB target (B = 16384, K = 80, M = 128, %s): workspace peak %.0f MiB -> %s\n", r.layout.c_str(),
                  r.peakMiB, r.peakMiB <= 2048 ? "fits" : "does NOT fit");
    }
  }
  if (!rows.empty() && rows.front().cuda) std::printf("kernel configurations: %s (M = 1), %s (M = 128)\n",
                                                      rows.front().kernelConfig.c_str(),
                                                      [&] {
                                                        for (const Row& r : rows)
                                                          if (!r.c.iso) return r.kernelConfig;
                                                        return std::string();
                                                      }()
                                                          .c_str());

  if (!csvPath.empty()) {
    std::ofstream f(csvPath);
    f << "B,K,M,layout,rows,triples,triple_dims,kernel_ms,total_ms,upload_ms,download_ms,gtd_per_s,mufu_ops,floor_ms,pct_floor,"
         "peak_mib,cpu_ms,loss,kernel_config,note\n";
    for (const Row& r : rows) {
      f << r.c.B << ',' << r.c.K << ',' << r.c.M << ',' << r.layout << ',' << r.rows << ',' << num(r.triples, 6) << ','
        << num(r.tripleDims, 6) << ',' << num(r.kernelMs, 6) << ',' << num(r.totalMs, 6) << ',' << num(r.uploadMs, 6) << ','
        << num(r.downloadMs, 6) << ',' << num(r.gtdPerS, 6) << ',' << num(r.mufuOps, 6) << ',' << num(r.floorMs, 6) << ','
        << num(r.pctFloor, 4) << ',' << num(r.peakMiB, 6) << ',' << num(r.cpuMs, 6) << ',' << num(r.loss, 9) << ",\""
        << r.kernelConfig << "\",\"" << r.note << "\"\n";
    }
  }
  if (!jsonPath.empty()) {
    std::ofstream f(jsonPath);
    f << "{\n  \"device\": " << (useCuda ? jsonStr(deviceName) : "null") << ",\n  \"smCount\": " << smCount
      << ",\n  \"clockKHz\": " << clockKHz << ",\n  \"cudaSkipped\": " << (useCuda ? "null" : jsonStr(cudaWhy))
      << ",\n  \"cpuThreads\": " << kmcl::cpuThreadCount(0) << ",\n  \"runs\": " << runs << ",\n  \"warmup\": " << warmup
      << ",\n  \"variance\": " << jsonStr(variance) << ",\n  \"results\": [\n";
    for (size_t j = 0; j < rows.size(); ++j) {
      const Row& r = rows[j];
      f << "    {\"B\": " << r.c.B << ", \"K\": " << r.c.K << ", \"M\": " << r.c.M << ", \"layout\": " << jsonStr(r.layout)
        << ", \"rows\": " << r.rows << ", \"triples\": " << jsonNum(r.triples) << ", \"tripleDims\": " << jsonNum(r.tripleDims)
        << ", \"kernelMs\": " << jsonNum(r.kernelMs) << ", \"totalMs\": " << jsonNum(r.totalMs)
        << ", \"uploadMs\": " << jsonNum(r.uploadMs) << ", \"downloadMs\": " << jsonNum(r.downloadMs)
        << ", \"gtdPerS\": " << jsonNum(r.gtdPerS) << ", \"mufuOps\": " << jsonNum(r.mufuOps)
        << ", \"mufuPerTripleDim\": " << jsonNum(r.tripleDims > 0 ? r.mufuOps / r.tripleDims : NAN)
        << ", \"floorMs\": " << jsonNum(r.floorMs) << ", \"pctFloor\": " << jsonNum(r.pctFloor)
        << ", \"peakMiB\": " << jsonNum(r.peakMiB) << ", \"cpuMs\": " << jsonNum(r.cpuMs) << ", \"loss\": " << jsonNum(r.loss)
        << ", \"kernelConfig\": " << jsonStr(r.kernelConfig) << ", \"note\": " << jsonStr(r.note) << "}"
        << (j + 1 < rows.size() ? "," : "") << "\n";
    }
    f << "  ]\n}\n";
  }
  return 0;
}
