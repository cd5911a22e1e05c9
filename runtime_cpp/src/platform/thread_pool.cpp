// etlora's executor for ExecuTorch's thread pool (include/etlora/thread_pool.h).
//
// pthreadpool's public executor interface: for each parallel call the pool
// asks the executor to run its worker loop on a borrowed thread; the loop
// returns the thread once it has idled for the pool's own short spin. Our
// threads then keep spinning (worker_spin_us) before sleeping, so the next
// call's task starts at once instead of waiting for a futex wake-up. The
// executorch wheel ships no pthreadpool header, so the declarations we use
// are written out here as pthreadpool.h declares them; the 1.5.1 wheel's
// libexecutorch_threadpool.so exports this generation of the API
// (pthreadpool_create_v2, pthreadpool_update_executor).
#include "etlora/thread_pool.h"

#include "etlora/logging.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

typedef struct pthreadpool* pthreadpool_t;

extern "C" {
struct pthreadpool_executor {
  int (*num_threads)(void* executor_context);
  void (*schedule)(void* executor_context, void* context, void (*task)(void* context));
};
bool pthreadpool_update_executor(pthreadpool_t threadpool, struct pthreadpool_executor* executor,
                                 void* executor_context);
size_t pthreadpool_get_threads_count(pthreadpool_t threadpool);
}

namespace executorch {
namespace extension {
namespace threadpool {
pthreadpool_t get_pthreadpool();
}  // namespace threadpool
}  // namespace extension
}  // namespace executorch

namespace etlora {
namespace {

using Clock = std::chrono::steady_clock;

class SpinningExecutor {
 public:
  SpinningExecutor(int workers, double spin_us) {
    set_spin(spin_us);
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { run(); });
  }

  void set_spin(double microseconds) { spin_ns_.store(static_cast<int64_t>(microseconds * 1000.0)); }
  int workers() const { return static_cast<int>(threads_.size()); }

  static int num_threads(void* self) { return static_cast<SpinningExecutor*>(self)->workers(); }
  static void schedule(void* self, void* context, void (*task)(void*)) {
    static_cast<SpinningExecutor*>(self)->push({context, task});
  }

 private:
  struct Task {
    void* context;
    void (*run)(void*);
  };

  void push(Task task) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(task);
      queued_.fetch_add(1, std::memory_order_release);
    }
    if (sleepers_.load(std::memory_order_acquire) > 0) wake_.notify_one();
  }

  bool pop(Task& task) {
    if (queued_.load(std::memory_order_acquire) == 0) return false;
    std::lock_guard<std::mutex> lock(mutex_);
    if (queue_.empty()) return false;
    task = queue_.front();
    queue_.pop_front();
    queued_.fetch_sub(1, std::memory_order_release);
    return true;
  }

  void run() {
    Task task{};
    auto idle_since = Clock::now();
    while (true) {
      if (pop(task)) {
        task.run(task.context);
        idle_since = Clock::now();
        continue;
      }
      const auto spin = std::chrono::nanoseconds(spin_ns_.load(std::memory_order_relaxed));
      if (Clock::now() - idle_since < spin) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        asm volatile("yield");
#endif
        continue;
      }
      std::unique_lock<std::mutex> lock(mutex_);
      sleepers_.fetch_add(1, std::memory_order_acq_rel);
      wake_.wait(lock, [this] { return !queue_.empty(); });
      sleepers_.fetch_sub(1, std::memory_order_acq_rel);
      idle_since = Clock::now();
    }
  }

  std::atomic<int64_t> spin_ns_{0};
  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Task> queue_;
  std::atomic<int> queued_{0};
  std::atomic<int> sleepers_{0};
};

std::mutex g_mutex;
// Lives as long as the process: the pool may hand it work until exit.
SpinningExecutor* g_executor = nullptr;
pthreadpool_executor g_table{&SpinningExecutor::num_threads, &SpinningExecutor::schedule};
double g_spin_us = 0;
bool g_configured = false;

}  // namespace

Status configure_thread_pool(const ThreadPoolOptions& options) {
  install_runtime_log_filter();  // creating the pool probes the CPU, which logs at info level
  if (!(options.worker_spin_us >= 0) || options.worker_spin_us > 1e6) {
    return Status(StatusCode::kInvalidArgument,
                  "worker_spin_us: expected 0 to 1000000 microseconds, got " +
                      std::to_string(options.worker_spin_us));
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_executor != nullptr) {
    g_executor->set_spin(options.worker_spin_us);
  } else if (!g_configured) {
    pthreadpool_t pool = executorch::extension::threadpool::get_pthreadpool();
    if (pool == nullptr) {
      return Status(StatusCode::kRuntimeError, "ExecuTorch's thread pool is not available");
    }
    // A one-thread pool has no worker to keep awake: nothing to install.
    const size_t threads = pthreadpool_get_threads_count(pool);
    if (threads > 1) {
      g_executor = new SpinningExecutor(static_cast<int>(threads) - 1, options.worker_spin_us);
      pthreadpool_update_executor(pool, &g_table, g_executor);
    }
  }
  g_spin_us = options.worker_spin_us;
  g_configured = true;
  return Status();
}

ThreadPoolState thread_pool_state() {
  std::lock_guard<std::mutex> lock(g_mutex);
  ThreadPoolState state;
  state.configured = g_configured;
  state.installed = g_executor != nullptr;
  state.worker_threads = g_executor ? g_executor->workers() : 0;
  state.worker_spin_us = g_spin_us;
  return state;
}

}  // namespace etlora
