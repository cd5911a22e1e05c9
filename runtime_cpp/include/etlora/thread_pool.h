// Keeping ExecuTorch's thread-pool workers awake between dispatches.
//
// Decode alternates parallel XNNPACK ops with short serial stretches on the
// calling thread. ExecuTorch's pool (pthreadpool) lets its worker spin for only
// 10-15 us before it sleeps on a futex, and waking it adds about 20 us to the
// next dispatch: 50-90 times per token on SmolLM2 (etlora_pool_wake_bench,
// docs/architecture.md). pthreadpool can borrow its worker threads from an
// executor instead; etlora's executor keeps its threads spinning for a while
// after each task, so the next dispatch finds them awake. Process-wide.
#pragma once

#include "etlora/status.h"

namespace etlora {

struct ThreadPoolOptions {
  // How long an idle worker spins before it sleeps, in microseconds. 0 lets
  // workers sleep at once (ExecuTorch's own behaviour, minus its short spin).
  // Spinning burns its core while the caller works alone; 1 ms covers the
  // serial stretches of a decode step and ends soon after generation stops.
  double worker_spin_us = 1000.0;
};

// Installs etlora's executor on ExecuTorch's thread pool (once; later calls
// update the spin). Session::open calls it with the defaults unless the
// process called it first. A pool of one thread has no worker to keep awake:
// nothing is installed. Results never change, only when workers start.
Status configure_thread_pool(const ThreadPoolOptions& options);

// The options in effect, and whether the executor is installed.
struct ThreadPoolState {
  bool configured = false;  // configure_thread_pool succeeded at least once
  bool installed = false;   // etlora's executor provides the pool's workers
  int worker_threads = 0;   // threads besides the caller
  double worker_spin_us = 0;
};
ThreadPoolState thread_pool_state();

}  // namespace etlora
