// The CUDA emulator's memory checker: see checker.h. Compiled without instrumentation; it defines
// the __tsan_* hooks that the instrumented cuda_emulated.cpp calls (the ThreadSanitizer runtime is
// not linked: these definitions are the whole runtime).
#include "checker.h"

#include <cstdio>
#include <cstring>
#include <iterator>
#include <map>
#include <set>

// The static __shared__ arrays of the emulated kernels live in this section (cuda_emu.h).
extern "C" unsigned char __start_kmcl_emu_shared[] __attribute__((weak));
extern "C" unsigned char __stop_kmcl_emu_shared[] __attribute__((weak));

namespace kmcl_emu_check {
namespace {

// One access, packed: thread (10 bits), barrier epoch (16), linear block (24), launch (12),
// atomic (bit 62), valid (bit 63).
constexpr uint64_t kValid = uint64_t(1) << 63;
constexpr uint64_t kAtomic = uint64_t(1) << 62;

inline uint64_t threadOf(uint64_t a) { return a & 0x3FF; }
inline uint64_t epochOf(uint64_t a) { return (a >> 10) & 0xFFFF; }
inline uint64_t blockOf(uint64_t a) { return (a >> 26) & 0xFFFFFF; }
inline uint64_t launchOf(uint64_t a) { return (a >> 50) & 0xFFF; }

struct Word {
  uint64_t w = 0, r1 = 0, r2 = 0;
};

struct Alloc {
  uintptr_t user = 0;
  size_t bytes = 0, guard = 0;
  std::vector<Word> shadow;            // lazily, one per 4-byte word of the user range
  std::vector<int32_t> regionOfWord;   // empty: not described (all of it is one buffer)
  std::vector<Region> regions;
};

struct State {
  bool active = false;  // inside a block
  std::map<uintptr_t, Alloc> allocs;  // by raw start (user − guard)
  Alloc* lastAlloc = nullptr;
  // launch and block
  std::string kernel;
  uint64_t launch = 0;
  unsigned gridX = 1, gridY = 1, blockX = 1;
  unsigned bx = 0, by = 0;
  uint64_t linearBlock = 0;
  const uint64_t* epoch = nullptr;
  int thread = 0;
  uintptr_t smem = 0;
  size_t smemBytes = 0, smemGuard = 0;
  std::vector<Word> smemShadow;
  std::vector<Word> staticShadow;
  // preemption
  uint64_t rng = 0;
  unsigned permille = 0;
  void (*yield)() = nullptr;
  // findings
  std::vector<std::string> findings;
  std::set<std::string> seen;
  uint64_t count = 0;
};

State& st() {
  static State* s = new State();
  return *s;
}

inline uint64_t current(const State& s, bool atomic) {
  return kValid | (atomic ? kAtomic : 0) | (uint64_t(s.thread) & 0x3FF) | ((*s.epoch & 0xFFFF) << 10) |
         ((s.linearBlock & 0xFFFFFF) << 26) | ((s.launch & 0xFFF) << 50);
}

inline bool sameThread(uint64_t a, uint64_t b) { return threadOf(a) == threadOf(b) && blockOf(a) == blockOf(b); }

// a (earlier) and b (now) are ordered by a kernel boundary or by a barrier of their block.
inline bool ordered(uint64_t a, uint64_t b) {
  return launchOf(a) != launchOf(b) || (blockOf(a) == blockOf(b) && epochOf(a) != epochOf(b));
}

inline bool conflicts(uint64_t prev, uint64_t now) {
  if (!(prev & kValid)) return false;
  if (sameThread(prev, now)) return false;
  if (ordered(prev, now)) return false;
  if ((prev & kAtomic) && (now & kAtomic)) return false;
  return true;
}

std::string who(const State& s, uint64_t a) {
  const uint64_t lin = blockOf(a);
  char buf[96];
  std::snprintf(buf, sizeof(buf), "block (%u,%u) thread %u", unsigned(lin % s.gridX), unsigned(lin / s.gridX),
                unsigned(threadOf(a)));
  return buf;
}

void report(const std::string& key, const std::string& text) {
  State& s = st();
  ++s.count;
  if (s.seen.count(key)) return;
  s.seen.insert(key);
  if (s.findings.size() < 12) s.findings.push_back(text);
}

std::string kernelTag(const State& s) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), " in kernel %s (launch %llu)", s.kernel.c_str(), static_cast<unsigned long long>(s.launch));
  return buf;
}

// Where a word lies, for messages: "global 'mu' +12" or "shared +40".
std::string place(const State& s, const Alloc* a, uintptr_t addr, const char* space) {
  char buf[160];
  if (a) {
    const size_t off = addr - a->user;
    if (!a->regionOfWord.empty()) {
      const int32_t r = a->regionOfWord[off / 4];
      if (r >= 0) {
        std::snprintf(buf, sizeof(buf), "global memory, buffer '%s' byte %zu", a->regions[size_t(r)].name.c_str(),
                      off - a->regions[size_t(r)].offset);
        return buf;
      }
    }
    std::snprintf(buf, sizeof(buf), "global memory, allocation byte %zu", off);
    return buf;
  }
  std::snprintf(buf, sizeof(buf), "%s shared memory byte %zu", space,
                static_cast<size_t>(addr - (std::strcmp(space, "dynamic") == 0 ? s.smem : uintptr_t(__start_kmcl_emu_shared))));
  return buf;
}

void checkWord(State& s, Word& w, bool write, bool atomic, uintptr_t addr, const Alloc* a, const char* space) {
  const uint64_t now = current(s, atomic);
  const char* kind = nullptr;
  uint64_t other = 0;
  if (conflicts(w.w, now)) {
    kind = write ? "write after write" : "read after write";
    other = w.w;
  } else if (write && conflicts(w.r1, now)) {
    kind = "write after read";
    other = w.r1;
  } else if (write && conflicts(w.r2, now)) {
    kind = "write after read";
    other = w.r2;
  }
  if (kind) {
    const bool grid = blockOf(other) != blockOf(now);
    const std::string where = place(s, a, addr, space);
    report(s.kernel + "|" + kind + "|" + (a ? "g" : space) + (a && !a->regionOfWord.empty() ? std::to_string(a->regionOfWord[(addr - a->user) / 4]) : ""),
           std::string("race (") + kind + ", " + (grid ? "different blocks, no kernel boundary between" : "same block, no __syncthreads between") +
               ") on " + where + ": " + ((other & kAtomic) ? "atomic " : other == w.w ? "write " : "read ") + "by " + who(s, other) +
               ", then " + (atomic ? "atomic " : write ? "write " : "read ") + "by " + who(s, now) + kernelTag(s));
  }
  if (write) {
    w.w = now;
  } else if (!(w.r1 & kValid) || sameThread(w.r1, now)) {
    w.r1 = now;
  } else {
    w.r2 = w.r1;
    w.r1 = now;
  }
}

Alloc* findAlloc(State& s, uintptr_t addr) {
  if (s.lastAlloc && addr + 1 > s.lastAlloc->user - s.lastAlloc->guard && addr < s.lastAlloc->user + s.lastAlloc->bytes + s.lastAlloc->guard)
    return s.lastAlloc;
  auto it = s.allocs.upper_bound(addr);
  if (it == s.allocs.begin()) return nullptr;
  --it;
  Alloc& a = it->second;
  if (addr >= a.user + a.bytes + a.guard) return nullptr;
  s.lastAlloc = &a;
  return &a;
}

void access(const void* p, size_t n, bool write, bool atomic) {
  State& s = st();
  const uintptr_t addr = reinterpret_cast<uintptr_t>(p);
  // Dynamic shared memory and its guards.
  if (s.smemBytes && addr + n > s.smem - s.smemGuard && addr < s.smem + s.smemBytes + s.smemGuard) {
    if (addr < s.smem || addr + n > s.smem + s.smemBytes) {
      char buf[200];
      const long long off = static_cast<long long>(addr) - static_cast<long long>(s.smem);
      std::snprintf(buf, sizeof(buf), "out of bounds: %s of %zu bytes at dynamic shared memory byte %lld (of %zu) by %s", write ? "write" : "read",
                    n, off, s.smemBytes, who(s, current(s, false)).c_str());
      report(s.kernel + "|smem-oob", buf + kernelTag(s));
      return;
    }
    for (uintptr_t w = (addr - s.smem) / 4; w <= (addr + n - 1 - s.smem) / 4; ++w) checkWord(s, s.smemShadow[w], write, atomic, s.smem + w * 4, nullptr, "dynamic");
  } else if (__start_kmcl_emu_shared && addr >= uintptr_t(__start_kmcl_emu_shared) && addr < uintptr_t(__stop_kmcl_emu_shared)) {
    const uintptr_t base = uintptr_t(__start_kmcl_emu_shared);
    for (uintptr_t w = (addr - base) / 4; w <= (addr + n - 1 - base) / 4 && w < s.staticShadow.size(); ++w)
      checkWord(s, s.staticShadow[w], write, atomic, base + w * 4, nullptr, "static");
  } else if (Alloc* a = findAlloc(s, addr)) {
    if (addr < a->user || addr + n > a->user + a->bytes) {
      char buf[220];
      const long long off = static_cast<long long>(addr) - static_cast<long long>(a->user);
      std::snprintf(buf, sizeof(buf), "out of bounds: %s of %zu bytes at byte %lld of a %zu-byte device allocation by %s", write ? "write" : "read", n,
                    off, a->bytes, who(s, current(s, false)).c_str());
      report(s.kernel + "|alloc-oob", buf + kernelTag(s));
      return;
    }
    const size_t w0 = (addr - a->user) / 4, w1 = (addr + n - 1 - a->user) / 4;
    if (!a->regionOfWord.empty()) {
      for (size_t w = w0; w <= w1; ++w) {
        if (a->regionOfWord[w] < 0) {
          // The nearest buffer before the gap names the overrun.
          int32_t before = -1;
          for (size_t q = w; q-- > 0;)
            if (a->regionOfWord[q] >= 0) {
              before = a->regionOfWord[q];
              break;
            }
          char buf[260];
          if (before >= 0) {
            const Region& r = a->regions[size_t(before)];
            std::snprintf(buf, sizeof(buf), "guard zone hit: %s of %zu bytes at byte %zu past the end of buffer '%s' (%zu bytes) by %s",
                          write ? "write" : "read", n, (addr - a->user) - (r.offset + r.bytes), r.name.c_str(), r.bytes,
                          who(s, current(s, false)).c_str());
          } else {
            std::snprintf(buf, sizeof(buf), "guard zone hit: %s of %zu bytes at workspace byte %zu, before the first buffer, by %s",
                          write ? "write" : "read", n, addr - a->user, who(s, current(s, false)).c_str());
          }
          report(s.kernel + "|guard|" + std::to_string(before), buf + kernelTag(s));
          return;
        }
      }
    }
    if (a->shadow.empty()) a->shadow.resize((a->bytes + 3) / 4);
    for (size_t w = w0; w <= w1; ++w) checkWord(s, a->shadow[w], write, atomic, a->user + w * 4, a, "global");
  } else {
    return;  // not device memory: thread-private or host data
  }
  if (s.permille && s.yield) {
    s.rng ^= s.rng << 13;
    s.rng ^= s.rng >> 7;
    s.rng ^= s.rng << 17;
    if (s.rng % 1000 < s.permille) s.yield();
  }
}

inline void hook(const void* p, size_t n, bool write) {
  if (!st().active) return;
  access(p, n, write, false);
}

}  // namespace

bool enabled() {
#if defined(KMCL_EMU_CHECKER)
  return true;
#else
  return false;
#endif
}

void addAllocation(const void* user, size_t bytes, size_t guard) {
  State& s = st();
  Alloc a;
  a.user = reinterpret_cast<uintptr_t>(user);
  a.bytes = bytes;
  a.guard = guard;
  s.allocs[a.user - guard] = std::move(a);
  s.lastAlloc = nullptr;
}

void removeAllocation(const void* user) {
  State& s = st();
  for (auto it = s.allocs.begin(); it != s.allocs.end(); ++it) {
    if (it->second.user == reinterpret_cast<uintptr_t>(user)) {
      s.allocs.erase(it);
      break;
    }
  }
  s.lastAlloc = nullptr;
}

void describeBuffers(const void* allocation, const std::vector<Region>& regions) {
  State& s = st();
  for (auto& kv : s.allocs) {
    Alloc& a = kv.second;
    if (a.user != reinterpret_cast<uintptr_t>(allocation)) continue;
    a.regions = regions;
    a.regionOfWord.assign((a.bytes + 3) / 4, -1);
    for (size_t r = 0; r < regions.size(); ++r) {
      const size_t w0 = regions[r].offset / 4, w1 = (regions[r].offset + regions[r].bytes + 3) / 4;
      for (size_t w = w0; w < w1 && w < a.regionOfWord.size(); ++w) a.regionOfWord[w] = static_cast<int32_t>(r);
    }
  }
}

void beginLaunch(const char* kernel, unsigned gridX, unsigned gridY, unsigned blockX) {
  State& s = st();
  ++s.launch;
  s.kernel = kernel;
  s.gridX = gridX;
  s.gridY = gridY;
  s.blockX = blockX;
}

void beginBlock(unsigned bx, unsigned by, const void* smem, size_t smemBytes, size_t smemGuard, const uint64_t* barrierEpoch) {
  State& s = st();
  s.bx = bx;
  s.by = by;
  s.linearBlock = uint64_t(by) * s.gridX + bx;
  s.smem = reinterpret_cast<uintptr_t>(smem);
  s.smemBytes = smemBytes;
  s.smemGuard = smemGuard;
  s.smemShadow.assign((smemBytes + 3) / 4, Word{});
  if (__start_kmcl_emu_shared) s.staticShadow.assign((size_t(__stop_kmcl_emu_shared - __start_kmcl_emu_shared) + 3) / 4, Word{});
  s.epoch = barrierEpoch;
  s.thread = 0;
  s.active = enabled();
}

void setThread(int tid) { st().thread = tid; }

void* volatile gPublishedBlock = nullptr;
void publishBlock(void* block) { gPublishedBlock = block; }

void endBlock() { st().active = false; }

void endLaunch() { st().active = false; }

void atomicAccess(const void* addr, size_t bytes) {
  if (!st().active) return;
  access(addr, bytes, true, true);
}

void setPreemption(uint64_t seed, unsigned permille, void (*yield)()) {
  State& s = st();
  s.rng = seed ? seed * 0x9E3779B97F4A7C15ull | 1 : 0;
  s.permille = seed ? permille : 0;
  s.yield = yield;
}

std::vector<std::string> takeFindings() {
  State& s = st();
  std::vector<std::string> out;
  out.swap(s.findings);
  if (s.count > out.size()) out.push_back(std::to_string(s.count - out.size()) + " more accesses of the same kinds");
  s.seen.clear();
  s.count = 0;
  return out;
}

uint64_t findingCount() { return st().count; }

void reportFinding(const std::string& text) { report(text, text); }

}  // namespace kmcl_emu_check

// ---- the hooks the instrumented translation unit calls (the ThreadSanitizer ABI) ----
// Only in checker builds: with another sanitizer on (the ASan/UBSan build) the compiler declares
// these names itself, and nothing calls them.
#if defined(KMCL_EMU_CHECKER)
extern "C" {
using kmcl_emu_check::hook;
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_read1(void* p) { hook(p, 1, false); }
void __tsan_read2(void* p) { hook(p, 2, false); }
void __tsan_read4(void* p) { hook(p, 4, false); }
void __tsan_read8(void* p) { hook(p, 8, false); }
void __tsan_read16(void* p) { hook(p, 16, false); }
void __tsan_write1(void* p) { hook(p, 1, true); }
void __tsan_write2(void* p) { hook(p, 2, true); }
void __tsan_write4(void* p) { hook(p, 4, true); }
void __tsan_write8(void* p) { hook(p, 8, true); }
void __tsan_write16(void* p) { hook(p, 16, true); }
void __tsan_unaligned_read2(const void* p) { hook(p, 2, false); }
void __tsan_unaligned_read4(const void* p) { hook(p, 4, false); }
void __tsan_unaligned_read8(const void* p) { hook(p, 8, false); }
void __tsan_unaligned_read16(const void* p) { hook(p, 16, false); }
void __tsan_unaligned_write2(void* p) { hook(p, 2, true); }
void __tsan_unaligned_write4(void* p) { hook(p, 4, true); }
void __tsan_unaligned_write8(void* p) { hook(p, 8, true); }
void __tsan_unaligned_write16(void* p) { hook(p, 16, true); }
void __tsan_read_range(void* p, unsigned long n) {
  if (n) hook(p, n, false);
}
void __tsan_write_range(void* p, unsigned long n) {
  if (n) hook(p, n, true);
}
// Atomics of the host code in the instrumented file (std::call_once, guard variables): plain ones.
unsigned char __tsan_atomic8_load(const volatile unsigned char* a, int mo) { return __atomic_load_n(a, mo == 0 ? __ATOMIC_RELAXED : __ATOMIC_SEQ_CST); }
unsigned short __tsan_atomic16_load(const volatile unsigned short* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }
unsigned __tsan_atomic32_load(const volatile unsigned* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }
unsigned long long __tsan_atomic64_load(const volatile unsigned long long* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }
void __tsan_atomic8_store(volatile unsigned char* a, unsigned char v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); }
void __tsan_atomic32_store(volatile unsigned* a, unsigned v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); }
void __tsan_atomic64_store(volatile unsigned long long* a, unsigned long long v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); }
void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
}
#endif  // KMCL_EMU_CHECKER
