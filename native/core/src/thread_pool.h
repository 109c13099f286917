// A small persistent thread pool for the CPU path. One job runs at a time (concurrent callers,
// e.g. several AsyncWorkers, queue on a mutex); the calling thread takes part in the work.
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
  void workerLoop();
  void drain();

  std::mutex jobMutex_;  // one job at a time

  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<std::thread> workers_;
  bool stop_ = false;
  uint64_t generation_ = 0;
  int wanted_ = 0;  // workers that take part in the current job
  int active_ = 0;  // workers still inside the current job
  const std::function<void(int64_t)>* task_ = nullptr;
  const std::atomic<bool>* cancel_ = nullptr;  // the caller's CancelScope flag, checked per task
  std::atomic<int64_t> next_{0};
  int64_t count_ = 0;
  std::exception_ptr error_;
};

}  // namespace kmcl
