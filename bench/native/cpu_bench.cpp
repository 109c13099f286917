// kmcl_cpu_bench: the float32 CPU path per instruction set, against its roofline.
//
//   kmcl_cpu_bench [--isa all|baseline|avx2|avx512] [--threads N] [--runs N] [--min-ms MS]
//                  [--config B,K,M,D,Kv,Dv]... [--grid quick|targets|scaling] [--problem DIR]
//                  [--roofline-only] [--json FILE]
//
// For each problem and instruction set (KMCL_CPU_ISA): the median time of kmcl::computeCpu<float>
// with all four gradients (fwd+bwd) and without (forward: ASL, reconstruction, contrastive sweeps
// 1 and 2), after one warm-up call; the gradient pass is their difference. Problems: seeded, as
// kmcl_bench (features in (-1, 1), logits in (-3, 3), mu in (-0.5, 0.5), variance in (1, 3),
// 1 … 5 positive labels per sample, mean 3), or a problem written by
// bench/baselines/torch_cpu.py (--problem DIR: meta.txt and the raw float32 arrays).
//
// The roofline: kmcl::measureCpuOpRates gives, per ISA and on one thread, ns per float element
// for an FMA, a division, the kernels' vector log1p and exp, and a double accumulation in L1.
// The floor of a sweep is its element count times the op mix of its inner loop (counted from
// native/core/src/cpu_simd.inc, below) priced at those rates:
//
//   isotropic, per (anchor row, partner):   forward  1 div + 1 log1p + 2 exp + 14 fma-class
//                                           gradient 1 div + 18 fma-class + 4 accumulations
//     shared variance (Kv = 1):             forward  2 exp + 10 fma-class, plus per (anchor
//                                           sample, partner) 1 div + 1 log1p + 6 fma-class
//                                           gradient 18 fma-class + 4 accumulations
//   anisotropic, variance per dim (Dv = D), per (row, partner, dim):
//                                           forward  1 div + 1/8 log + 12 fma-class (the log of
//                                           a product of 8 dims' factors, one per lane)
//                                           gradient 1 div + 16 fma-class + 2 accumulations
//                                           (row i's own sums are float over 16 partner vectors)
//     shared variance (Kv = 1):             forward  1 div + 4 fma-class, plus per (anchor
//                                           sample, partner, dim) 1/8 log + 9 fma-class
//   anisotropic, one variance per row (Dv = 1), per (row, partner, dim):
//                                           forward  2 fma-class; gradient 5 fma-class +
//                                           1 accumulation (the per-pair scalars left out)
//
// "sweeps fwd %" and "sweeps grad %" compare the same floors (the forward's plus the co-positive
// pass: per (anchor row, co-positive) 2 div + 1 log + 4 fma-class + 2 accumulations) with the time
// spent inside the sweep tasks alone (kmcl::cpuSweepNanos: a class's copies, the pair-term
// table, the BC, S, co-positive and gradient passes), without ASL, reconstruction, setup and
// the pool's waits.
//
// Floors are CPU time (the work of all threads at one thread's rates) and "% floor" = floor / the
// measured process CPU time of that part (CLOCK_PROCESS_CPUTIME_ID: time other programs take on a
// shared machine does not count); the forward part includes ASL and reconstruction, O(B·K·M),
// which the floor leaves out. Wall-clock medians are reported next to it.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "kmcl/kmcl.h"
#include "../../native/bench/bench_data.h"

namespace {

struct Config {
  int64_t B, K, M, D, Kv, Dv;
};


struct Data {
  kmcl::Shape shape;
  std::vector<float> features, logits, labels, mu, variance;
  std::vector<float> g[4];
  double torchLoss = NAN;
  std::string source = "synthetic";
};

Data makeData(const Config& c, uint64_t seed) {
  Data d;
  d.shape = kmcl::Shape{c.B, c.K, c.M, c.D, c.Kv, c.Dv};
  kmcl_bench::fillProblem(d.shape, seed, d.features, d.logits, d.labels, d.mu, d.variance);
  return d;
}

std::vector<float> readFloats(const std::string& path, size_t n) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::vector<float> v(n);
  f.read(reinterpret_cast<char*>(v.data()), std::streamsize(n * sizeof(float)));
  if (size_t(f.gcount()) != n * sizeof(float)) throw std::runtime_error(path + ": expected " + std::to_string(n) + " floats");
  return v;
}

// meta.txt: "B K M D Kv Dv torchLoss"
Data loadData(const std::string& dir) {
  std::ifstream meta(dir + "/meta.txt");
  if (!meta) throw std::runtime_error("cannot open " + dir + "/meta.txt");
  Config c{};
  Data d;
  meta >> c.B >> c.K >> c.M >> c.D >> c.Kv >> c.Dv >> d.torchLoss;
  d.shape = kmcl::Shape{c.B, c.K, c.M, c.D, c.Kv, c.Dv};
  d.features = readFloats(dir + "/features.f32", c.B * c.M);
  d.logits = readFloats(dir + "/logits.f32", c.B * c.K);
  d.labels = readFloats(dir + "/labels.f32", c.B * c.K);
  d.mu = readFloats(dir + "/mu.f32", c.B * c.K * c.D);
  d.variance = readFloats(dir + "/variance.f32", c.B * c.Kv * c.Dv);
  d.source = dir;
  return d;
}

// CPU time of the process (all threads): on a shared machine, time taken by other work does not
// count; the roofline fractions use it.
double cpuMsNow() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) * 1e-6;
}

double msSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? NAN : s / double(v.size());
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Timing {
  double fwdBwdMs = NAN, fwdMs = NAN, fwdBwdCpuMs = NAN, fwdCpuMs = NAN, loss = NAN;
  double fwdBwdSweepMs = NAN, fwdSweepMs = NAN;  // time inside the sweep tasks (kmcl::cpuSweepNanos), mean
  int runs = 0;
};

Timing timeIt(Data& d, int threads, int runs, double minMs) {
  kmcl::Problem<float> p;
  p.shape = d.shape;
  p.features = d.features.data();
  p.logits = d.logits.data();
  p.labels = d.labels.data();
  p.mu = d.mu.data();
  p.variance = d.variance.data();
  d.g[0].resize(d.features.size());
  d.g[1].resize(d.logits.size());
  d.g[2].resize(d.mu.size());
  d.g[3].resize(d.variance.size());
  kmcl::Gradients<float> g{d.g[0].data(), d.g[1].data(), d.g[2].data(), d.g[3].data()};
  kmcl::Options o;
  Timing t;
  t.loss = kmcl::computeCpu<float>(p, o, &g, threads).loss;  // warm-up (and workspace growth)
  kmcl::computeCpu<float>(p, o, nullptr, threads);
  std::vector<double> fb, f, fbc, fc, fbs, fs;
  const auto start = std::chrono::steady_clock::now();
  while (int(fb.size()) < runs || msSince(start) < minMs) {
    auto t0 = std::chrono::steady_clock::now();
    double c0 = cpuMsNow();
    int64_t s0 = kmcl::cpuSweepNanos();
    kmcl::computeCpu<float>(p, o, &g, threads);
    fb.push_back(msSince(t0));
    fbc.push_back(cpuMsNow() - c0);
    fbs.push_back(double(kmcl::cpuSweepNanos() - s0) * 1e-6);
    t0 = std::chrono::steady_clock::now();
    c0 = cpuMsNow();
    s0 = kmcl::cpuSweepNanos();
    kmcl::computeCpu<float>(p, o, nullptr, threads);
    f.push_back(msSince(t0));
    fc.push_back(cpuMsNow() - c0);
    fs.push_back(double(kmcl::cpuSweepNanos() - s0) * 1e-6);
    if (fb.size() >= 2000) break;
  }
  t.fwdBwdMs = median(fb);
  t.fwdMs = median(f);
  // CPU time as the mean, not the median: the process clock counts a thread that is still running
  // on another core (a pool worker that spins between parallel regions) only at scheduler ticks,
  // so single short calls under-count it; over many calls the mean is right.
  t.fwdBwdCpuMs = mean(fbc);
  t.fwdCpuMs = mean(fc);
  t.fwdBwdSweepMs = mean(fbs);
  t.fwdSweepMs = mean(fs);
  t.runs = int(fb.size());
  return t;
}

// n_k, the positive samples of each class.
std::vector<int64_t> positivesPerClass(const Data& d) {
  const int64_t B = d.shape.batch, K = d.shape.classes;
  std::vector<int64_t> n(size_t(K), 0);
  for (int64_t i = 0; i < B; ++i)
    for (int64_t k = 0; k < K; ++k) n[size_t(k)] += d.labels[i * K + k] != 0 ? 1 : 0;
  return n;
}

// Anchor rows of the contrastive sweeps: Σ_k n_k over classes with at least two positives.
int64_t anchorRows(const Data& d) {
  int64_t rows = 0;
  for (int64_t n : positivesPerClass(d))
    if (n >= 2) rows += n;
  return rows;
}

// Co-positive entries of the contrastive sweeps: Σ_k n_k (n_k − 1) over the same classes.
double coPositives(const Data& d) {
  double total = 0;
  for (int64_t n : positivesPerClass(d))
    if (n >= 2) total += double(n) * double(n - 1);
  return total;
}

// Samples with at least one positive label (the shared-variance pair terms are computed for them).
int64_t labelledSamples(const Data& d) {
  const int64_t B = d.shape.batch, K = d.shape.classes;
  int64_t n = 0;
  for (int64_t i = 0; i < B; ++i)
    for (int64_t k = 0; k < K; ++k)
      if (d.labels[i * K + k] != 0) {
        ++n;
        break;
      }
  return n;
}

std::vector<Config> grid(const std::string& name) {
  if (name == "quick") return {{256, 20, 128, 1, 20, 1}, {128, 20, 64, 64, 20, 64}};
  if (name == "targets")
    return {{256, 20, 128, 1, 20, 1},   {128, 20, 64, 64, 20, 64},  {1024, 20, 128, 1, 20, 1},
            {1024, 80, 64, 64, 80, 64}, {1024, 80, 64, 64, 1, 64},  {1024, 20, 128, 1, 1, 1}};
  if (name == "scaling") {
    std::vector<Config> v;
    for (int64_t B : {512, 1024, 2048, 4096, 8192}) v.push_back({B, 20, 128, 1, 20, 1});
    for (int64_t B : {512, 1024, 2048, 4096, 8192}) v.push_back({B, 80, 64, 64, 80, 64});
    return v;
  }
  throw std::invalid_argument("--grid must be quick, targets or scaling");
}

std::string layout(const kmcl::Shape& s) {
  return std::string(s.muDim == 1 ? "iso" : "aniso") + " var[B," + (s.varianceClasses == 1 ? "1" : "K") + "," +
         (s.varianceDim == 1 ? "1" : "D") + "]";
}

}  // namespace

int main(int argc, char** argv) {
  std::string isaArg = "all", jsonPath, gridName, problemDir;
  int threads = 2, runs = 5;
  double minMs = 300;
  bool rooflineOnly = false;
  std::vector<Config> configs;
  try {
    for (int a = 1; a < argc; ++a) {
      const std::string s = argv[a];
      auto next = [&]() -> std::string {
        if (a + 1 >= argc) throw std::invalid_argument(s + " needs a value");
        return argv[++a];
      };
      if (s == "--isa") isaArg = next();
      else if (s == "--threads") threads = std::max(1, std::atoi(next().c_str()));
      else if (s == "--runs") runs = std::max(1, std::atoi(next().c_str()));
      else if (s == "--min-ms") minMs = std::atof(next().c_str());
      else if (s == "--json") jsonPath = next();
      else if (s == "--grid") gridName = next();
      else if (s == "--problem") problemDir = next();
      else if (s == "--roofline-only") rooflineOnly = true;
      else if (s == "--config") {
        Config c{};
        if (std::sscanf(next().c_str(), "%ld,%ld,%ld,%ld,%ld,%ld", &c.B, &c.K, &c.M, &c.D, &c.Kv, &c.Dv) != 6)
          throw std::invalid_argument("--config wants B,K,M,D,Kv,Dv");
        configs.push_back(c);
      } else {
        throw std::invalid_argument("unknown argument " + s);
      }
    }
    if (!gridName.empty()) {
      const auto g = grid(gridName);
      configs.insert(configs.end(), g.begin(), g.end());
    }
    if (configs.empty() && problemDir.empty() && !rooflineOnly) configs = grid("quick");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kmcl_cpu_bench: %s\n", e.what());
    return 2;
  }

  const kmcl::CpuIsaInfo info = kmcl::cpuIsaInfo();
  std::vector<std::string> isas;
  if (isaArg == "all") isas = info.available;
  else isas = {isaArg};
  std::string compiled;
  for (const auto& c : info.compiled) compiled += " " + c;
  std::printf("kmcl_cpu_bench: threads %d; ISAs compiled:%s; auto picks %s\n", threads, compiled.c_str(), info.best.c_str());

  std::vector<kmcl::CpuOpRates> rates;
  std::printf("\nroofline (one thread, ns per float element):\n| ISA | lanes | fma | div | log1p | exp | accumulate (double, L1) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const std::string& isa : isas) {
    try {
      const kmcl::CpuOpRates r = kmcl::measureCpuOpRates(isa);
      rates.push_back(r);
      std::printf("| %s | %d | %.4f | %.4f | %.4f | %.4f | %.4f |\n", isa.c_str(), r.lanes, r.fma, r.div, r.log1p, r.exp, r.accum);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "kmcl_cpu_bench: %s\n", e.what());
      return 2;
    }
  }
  std::fflush(stdout);
  if (rooflineOnly) return 0;

  std::vector<Data> problems;
  if (!problemDir.empty()) problems.push_back(loadData(problemDir));
  for (const Config& c : configs) problems.push_back(makeData(c, 1234 + uint64_t(c.B) * 7 + uint64_t(c.K)));

  std::string json = "{\"threads\": " + std::to_string(threads) + ", \"rows\": [";
  bool firstRow = true;
  std::printf("\n| layout | B | K | M | ISA | fwd+bwd ms | fwd ms | grad ms | CPU ms fwd+bwd | ns/elem (CPU) | fwd %% floor | grad %% floor | sweeps fwd %% | sweeps grad %% | runs | loss |\n");
  std::printf("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (Data& d : problems) {
    const bool iso = d.shape.muDim == 1;
    const double rows = double(anchorRows(d));
    const double pairs = rows * double(d.shape.batch - 1);
    const double elems = iso ? pairs : pairs * double(d.shape.muDim);
    for (size_t r = 0; r < isas.size(); ++r) {
      if (setenv("KMCL_CPU_ISA", isas[r].c_str(), 1) != 0) return 2;
      const Timing t = timeIt(d, threads, runs, minMs);
      const kmcl::CpuOpRates& q = rates[r];
      // The op mixes of the comment at the top; floors in CPU time (one thread's rates, all
      // threads' work), compared with CPU time.
      const bool shared = d.shape.varianceClasses == 1, vdim = d.shape.varianceDim > 1;
      const double tableElems = double(labelledSamples(d)) * double(d.shape.batch) * double(iso ? 1 : d.shape.muDim);
      double fwdFloorNs, gradFloorNs, tableNs = 0;
      if (iso) {
        fwdFloorNs = shared ? 2 * q.exp + 10 * q.fma : q.div + q.log1p + 2 * q.exp + 14 * q.fma;
        gradFloorNs = shared ? 18 * q.fma + 4 * q.accum : q.div + 18 * q.fma + 4 * q.accum;
        if (shared) tableNs = q.div + q.log1p + 6 * q.fma;
      } else if (vdim) {
        fwdFloorNs = shared ? q.div + 4 * q.fma : q.div + q.log1p / 8 + 12 * q.fma;
        gradFloorNs = q.div + 16 * q.fma + 2 * q.accum;
        if (shared) tableNs = q.log1p / 8 + 9 * q.fma;
      } else {
        fwdFloorNs = 2 * q.fma;
        gradFloorNs = 5 * q.fma + q.accum;
      }
      // The co-positive pass (sweep 2), per (anchor row, co-positive): J (a division), x in
      // double (4 fma-class), log(x + logEps), q (a division), 2 accumulations.
      const double copNs = 2 * q.div + q.log1p + 4 * q.fma + 2 * q.accum;
      const double fwdFloorMs = (elems * fwdFloorNs + tableElems * tableNs) * 1e-6;
      const double sweepFwdFloorMs = fwdFloorMs + coPositives(d) * copNs * 1e-6;
      const double sweepGradMs = t.fwdBwdSweepMs - t.fwdSweepMs;
      const double gradFloorMs = elems * gradFloorNs * 1e-6;
      const double gradMs = t.fwdBwdMs - t.fwdMs;
      const double gradCpuMs = t.fwdBwdCpuMs - t.fwdCpuMs;
      const double nsPer = t.fwdBwdCpuMs * 1e6 / elems;
      std::printf("| %s | %ld | %ld | %ld | %s | %.3f | %.3f | %.3f | %.3f | %.3f | %.0f%% | %.0f%% | %.0f%% | %.0f%% | %d | %.7g |\n",
                  layout(d.shape).c_str(), long(d.shape.batch), long(d.shape.classes), long(d.shape.dim), isas[r].c_str(), t.fwdBwdMs,
                  t.fwdMs, gradMs, t.fwdBwdCpuMs, nsPer, 100 * fwdFloorMs / t.fwdCpuMs, 100 * gradFloorMs / gradCpuMs,
                  100 * sweepFwdFloorMs / t.fwdSweepMs, 100 * gradFloorMs / sweepGradMs, t.runs, t.loss);
      std::fflush(stdout);
      char buf[1024];
      std::snprintf(buf, sizeof buf,
                    "%s{\"layout\": \"%s\", \"B\": %ld, \"K\": %ld, \"M\": %ld, \"D\": %ld, \"Kv\": %ld, \"Dv\": %ld, \"isa\": \"%s\", "
                    "\"fwdBwdMs\": %.6g, \"fwdMs\": %.6g, \"gradMs\": %.6g, \"anchorRows\": %.0f, \"pairs\": %.0f, \"elements\": %.0f, "
                    "\"fwdBwdCpuMs\": %.6g, \"fwdCpuMs\": %.6g, \"nsPerElementCpu\": %.6g, \"fwdFloorCpuMs\": %.6g, \"gradFloorCpuMs\": %.6g, \"fwdSweepMs\": %.6g, \"fwdBwdSweepMs\": %.6g, \"fwdSweepFloorMs\": %.6g, \"runs\": %d, \"loss\": %.9g, \"torchLoss\": %.9g, "
                    "\"source\": \"%s\"}",
                    firstRow ? "" : ", ", layout(d.shape).c_str(), long(d.shape.batch), long(d.shape.classes), long(d.shape.dim),
                    long(d.shape.muDim), long(d.shape.varianceClasses), long(d.shape.varianceDim), isas[r].c_str(), t.fwdBwdMs, t.fwdMs,
                    gradMs, rows, pairs, elems, t.fwdBwdCpuMs, t.fwdCpuMs, nsPer, fwdFloorMs, gradFloorMs, t.fwdSweepMs, t.fwdBwdSweepMs, sweepFwdFloorMs, t.runs, t.loss, d.torchLoss, d.source.c_str());
      json += buf;
      firstRow = false;
    }
  }
  unsetenv("KMCL_CPU_ISA");
  json += "], \"rates\": [";
  for (size_t r = 0; r < rates.size(); ++r) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "%s{\"isa\": \"%s\", \"lanes\": %d, \"fma\": %.6g, \"div\": %.6g, \"log1p\": %.6g, \"exp\": %.6g, \"accum\": %.6g}",
                  r ? ", " : "", rates[r].isa.c_str(), rates[r].lanes, rates[r].fma, rates[r].div, rates[r].log1p, rates[r].exp,
                  rates[r].accum);
    json += buf;
  }
  json += "]}\n";
  if (!jsonPath.empty()) {
    std::ofstream f(jsonPath);
    f << json;
  }
  return 0;
}
