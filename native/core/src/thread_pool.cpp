#include "thread_pool.h"

#include "kmcl/kmcl.h"

namespace kmcl {

namespace {
thread_local const std::atomic<bool>* currentCancel = nullptr;
bool isSet(const std::atomic<bool>* flag) { return flag && flag->load(std::memory_order_relaxed); }
}  // namespace

CancelScope::CancelScope(const std::atomic<bool>* flag) : previous_(currentCancel) { currentCancel = flag; }
CancelScope::~CancelScope() { currentCancel = previous_; }
const std::atomic<bool>* CancelScope::current() { return currentCancel; }

ThreadPool& ThreadPool::instance() {
  // Leaked on purpose: joining threads from a static destructor at process exit can deadlock
  // inside a Node addon; the OS reclaims the threads.
  static ThreadPool* pool = new ThreadPool();
  return *pool;
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::ensureWorkers(int n) {
  while (static_cast<int>(workers_.size()) < n) {
    const int index = static_cast<int>(workers_.size());
    workers_.emplace_back([this, index] {
      uint64_t seen = 0;
      for (;;) {
        {
          std::unique_lock<std::mutex> lock(mutex_);
          wake_.wait(lock, [&] { return stop_ || (generation_ != seen && index < wanted_); });
          if (stop_) return;
          seen = generation_;
        }
        drain();
        {
          std::lock_guard<std::mutex> lock(mutex_);
          if (--active_ == 0) done_.notify_all();
        }
      }
    });
  }
}

void ThreadPool::drain() {
  for (;;) {
    const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= count_) return;
    try {
      if (isSet(cancel_)) throw Cancelled();
      (*task_)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      next_.store(count_, std::memory_order_relaxed);  // stop handing out work
    }
  }
}

void ThreadPool::run(int threads, int64_t count, const std::function<void(int64_t)>& task) {
  const std::atomic<bool>* cancel = CancelScope::current();
  if (isSet(cancel)) throw Cancelled();
  if (count <= 0) return;
  if (threads <= 1 || count == 1) {
    for (int64_t i = 0; i < count; ++i) {
      if (isSet(cancel)) throw Cancelled();
      task(i);
    }
    return;
  }
  std::lock_guard<std::mutex> job(jobMutex_);
  const int helpers = static_cast<int>(std::min<int64_t>(threads, count)) - 1;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ensureWorkers(helpers);
    task_ = &task;
    cancel_ = cancel;
    count_ = count;
    next_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    wanted_ = helpers;
    active_ = helpers;
    ++generation_;
  }
  wake_.notify_all();
  drain();
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return active_ == 0; });
    task_ = nullptr;
    error = error_;
    error_ = nullptr;
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace kmcl
