// The CUDA emulator's memory checker (checker.cpp): a race detector for shared and global memory,
// guard zones around and inside device allocations, and seeded random preemption.
//
// How accesses are seen: cuda_emulated.cpp (the CUDA sources compiled for the CPU) is compiled with
// -fsanitize=thread *without* linking the ThreadSanitizer runtime (KMCL_EMU_CHECKER=1): the compiler
// then calls __tsan_read4(addr), __tsan_write8(addr), … around every load and store, and
// checker.cpp, compiled without instrumentation, defines those hooks. They ignore everything
// outside a kernel and every address outside the tracked ranges (device allocations, the block's
// dynamic shared memory, the static __shared__ arrays), so host code and thread-private data cost
// one comparison.
//
// Race rule (block scope and grid scope): two accesses to the same 4-byte word from different
// threads, at least one a write, race unless a __syncthreads of their block separates them (same
// block, different barrier epoch) or a kernel boundary does (different launch). Two atomics never
// race with each other; an atomic and a plain access do. Warp shuffles do not order memory.
// Per word the checker keeps the last write and the last two reads from different threads.
//
// Guard zones: any kernel access to a byte of a device allocation that lies outside every buffer
// the host declared (emuDescribeBuffers: the workspace sub-buffers and the gaps between them), or
// to the guard bytes the emulator puts before and after each cudaMalloc block and the dynamic
// shared memory, is reported with the buffer it is next to.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kmcl_emu_check {

// True when this build instruments the emulated kernels (the hooks are live).
bool enabled();

// Device allocations (with guard bytes before and after the user range).
void addAllocation(const void* user, size_t bytes, size_t guard);
void removeAllocation(const void* user);
// Named buffers inside an allocation; bytes of the allocation outside all of them are guard zones.
struct Region {
  size_t offset;
  size_t bytes;
  std::string name;
};
void describeBuffers(const void* allocation, const std::vector<Region>& regions);

// Kernel execution: one launch, one block at a time; the emulator sets the current thread.
void beginLaunch(const char* kernel, unsigned gridX, unsigned gridY, unsigned blockX);
void beginBlock(unsigned bx, unsigned by, const void* smem, size_t smemBytes, size_t smemGuard, const uint64_t* barrierEpoch);
void setThread(int tid);
void endBlock();
void endLaunch();
// The emulator's current block, stored where other translation units can see it (so that the
// compiler treats it as escaped memory across the hook calls that may switch threads).
void publishBlock(void* block);
// An atomic read-modify-write of bytes at addr by the current thread (atomics are not instrumented).
void atomicAccess(const void* addr, size_t bytes);

// Random preemption at instrumented accesses: with probability permille/1000 the hook calls yield
// (the emulator switches to another thread of the block). seed 0: never.
void setPreemption(uint64_t seed, unsigned permille, void (*yield)());

// A finding of the emulator itself (e.g. lanes that met at different shuffles).
void reportFinding(const std::string& text);

// Races and guard-zone hits found since the last call (at most 12 described, then a count).
std::vector<std::string> takeFindings();
uint64_t findingCount();

}  // namespace kmcl_emu_check
