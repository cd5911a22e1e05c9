// How much an idle gap costs the next dispatch on ExecuTorch's thread pool.
//
// Decode interleaves parallel XNNPACK ops with serial work on the calling
// thread (our attention kernel, the interpreter, delegate set-up). If the
// pool's worker falls asleep during such a gap, the next dispatch waits for
// it to wake. This tool measures that: for each gap it runs a dispatch of two
// 5 us items after the calling thread has been busy alone for the gap, and
// prints the median and 90th percentile of the dispatch time: first with
// ExecuTorch's own workers, then with etlora's executor installed
// (include/etlora/thread_pool.h, default spin), side by side.
//
//   etlora_pool_wake_bench [--json FILE]
//
// A diagnostic benchmark (docs/architecture.md), never a timed test.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <vector>

#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include "etlora/thread_pool.h"

namespace {

using Clock = std::chrono::steady_clock;

void busy_for(double microseconds) {
  const auto end = Clock::now() + std::chrono::duration<double, std::micro>(microseconds);
  while (Clock::now() < end) {
  }
}

struct Timing {
  double median_us, p90_us;
};

}  // namespace

int main(int argc, char** argv) {
  const char* json_path = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      std::fprintf(stderr, "usage: etlora_pool_wake_bench [--json FILE]\n");
      return 2;
    }
  }
  constexpr int kRepeats = 300;
  std::atomic<int64_t> sink{0};
  auto items = [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      busy_for(5);
      sink += i;
    }
  };
  const std::vector<double> gaps = {2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0, 1000.0};
  auto measure = [&]() {
    std::vector<Timing> timings;
    for (double gap : gaps) {
      std::vector<double> times;
      for (int repeat = 0; repeat < kRepeats; ++repeat) {
        busy_for(gap);
        const auto start = Clock::now();
        executorch::extension::parallel_for(0, 2, 1, items);
        times.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
      }
      std::sort(times.begin(), times.end());
      timings.push_back({times[kRepeats / 2], times[kRepeats * 9 / 10]});
    }
    return timings;
  };
  const std::vector<Timing> stock = measure();
  const etlora::Status configured = etlora::configure_thread_pool({});
  if (!configured.ok()) {
    std::fprintf(stderr, "error: %s\n", configured.message().c_str());
    return 1;
  }
  const etlora::ThreadPoolState state = etlora::thread_pool_state();
  const std::vector<Timing> spinning = measure();
  std::printf("pool threads: %lld; dispatch of 2 items x 5 us after the caller worked alone for a gap\n",
              static_cast<long long>(executorch::extension::get_thread_count()));
  std::printf("columns: ExecuTorch's workers | etlora's executor (installed %s, spin %.0f us)\n",
              state.installed ? "yes" : "no", state.worker_spin_us);
  std::printf("%10s %12s %12s | %12s %12s %8s\n", "gap us", "median us", "p90 us", "median us", "p90 us",
              "ratio");
  for (size_t i = 0; i < gaps.size(); ++i) {
    std::printf("%10.1f %12.1f %12.1f | %12.1f %12.1f %8.2f\n", gaps[i], stock[i].median_us,
                stock[i].p90_us, spinning[i].median_us, spinning[i].p90_us,
                spinning[i].median_us / stock[i].median_us);
  }
  if (json_path != nullptr) {
    std::ofstream out(json_path);
    out << "{\"threads\": " << executorch::extension::get_thread_count()
        << ", \"etlora_executor_installed\": " << (state.installed ? "true" : "false")
        << ", \"worker_spin_us\": " << state.worker_spin_us << ", \"rows\": [";
    for (size_t i = 0; i < gaps.size(); ++i) {
      out << (i ? ", " : "") << "{\"gap_us\": " << gaps[i] << ", \"stock_median_us\": "
          << stock[i].median_us << ", \"stock_p90_us\": " << stock[i].p90_us
          << ", \"etlora_median_us\": " << spinning[i].median_us << ", \"etlora_p90_us\": "
          << spinning[i].p90_us << "}";
    }
    out << "]}\n";
    std::printf("wrote %s\n", json_path);
  }
  return 0;
}
