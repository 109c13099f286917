// A small persistent thread pool for the CPU path. One job runs at a time (concurrent callers,
// e.g. several AsyncWorkers, queue on a mutex); the calling thread takes part in the work.
//
// Waiting spins briefly before it sleeps: a worker that finished a job polls for the next one for
// up to kSpinMicros, and the caller polls for the workers' completion as long, before either
// blocks on a condition variable. One call of the loss runs several parallel regions a few
// microseconds apart; a futex sleep and wake-up per region cost about 29 us on the 2-core build
// VM (measured), more than a small problem's whole region. An idle pool sleeps (no CPU) once the
// spin has run out.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kmcl {

class ThreadPool {
 public:
  static ThreadPool& instance();

  // Runs task(0) ... task(count - 1) on up to `threads` threads (the caller included) and returns
  // when all are done. Tasks are claimed dynamically; callers keep results independent of which
  // thread runs which task. The first exception thrown by a task is rethrown here.
  void run(int threads, int64_t count, const std::function<void(int64_t)>& task);

  ~ThreadPool();

 private:
  ThreadPool() = default;
  void ensureWorkers(int n);
  void workerLoop(int index);
  void drain();

  std::mutex jobMutex_;  // one job at a time

  // Microseconds a waiting thread polls before it sleeps.
  static constexpr int kSpinMicros = 50;

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<std::thread> workers_;
  std::atomic<bool> stop_{false};
  // The job's generation and how many workers take part in it, in one word (generation << 16 |
  // wanted) so that a spinning worker reads both at once. Written under mutex_ (so a sleeper never
  // misses a change), read by spinning threads without it.
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> active_{0};  // workers still inside the current job
  const std::function<void(int64_t)>* task_ = nullptr;
  const std::atomic<bool>* cancel_ = nullptr;  // the caller's CancelScope flag, checked per task
  std::atomic<int64_t> next_{0};
  int64_t count_ = 0;
  std::exception_ptr error_;
};

}  // namespace kmcl
