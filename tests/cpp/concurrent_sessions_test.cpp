// Sessions on several threads at once: each switches adapters and runs while
// the others do, all sharing one foundation, one XNNPACK weight cache and the
// spinning thread-pool executor. Every result must equal the same call made
// alone. Built with -DETLORA_TSAN=ON this is the ThreadSanitizer run.
#include <etlora/session.h>

#include <atomic>
#include <thread>

#include "test_bundle.h"

int main() {
  std::string bundle;
  std::vector<std::string> adapters;
  if (!etlora_test::bundle_with_adapters(2, bundle, adapters)) return etlora_test::kSkipped;
  const std::vector<int64_t> tokens = {1, 2, 3, 4, 5};
  // Choice c: 0 = no adapter, 1 and 2 = the first two adapter files.
  auto bind = [&](etlora::Session& session, int choice) {
    if (choice == 0) return session.set_adapters({});
    return session.set_adapters({{adapters[choice - 1], 1.0f}});
  };
  std::vector<std::vector<float>> expected(3);
  {
    auto session = etlora::Session::open(bundle + "/model.pte", bundle + "/foundation.ptd");
    EXPECT(session.ok(), "%s", session.status().message().c_str());
    if (!session.ok()) return 1;
    for (int choice = 0; choice < 3; ++choice) {
      EXPECT(bind(**session, choice).ok(), "bind %d", choice);
      expected[choice] = *(*session)->logits(tokens);
    }
  }
  EXPECT(etlora_test::max_abs_diff(expected[0], expected[1]) > 1e-4f &&
             etlora_test::max_abs_diff(expected[1], expected[2]) > 1e-4f,
         "each adapter changes the logits (%g, %g)", etlora_test::max_abs_diff(expected[0], expected[1]),
         etlora_test::max_abs_diff(expected[1], expected[2]));

  constexpr int kThreads = 3, kRounds = 12;
  std::atomic<int> mismatches{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto session = etlora::Session::open(bundle + "/model.pte", bundle + "/foundation.ptd");
      if (!session.ok()) {
        ++errors;
        return;
      }
      for (int round = 0; round < kRounds; ++round) {
        const int choice = (t + round) % 3;
        auto logits = bind(**session, choice).ok() ? (*session)->logits(tokens)
                                                   : etlora::StatusOr<std::vector<float>>(etlora::Status(
                                                         etlora::StatusCode::kRuntimeError, "bind"));
        if (!logits.ok()) {
          ++errors;
        } else if (etlora_test::max_abs_diff(*logits, expected[choice]) != 0.0f) {
          ++mismatches;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT(errors == 0, "%d calls failed", errors.load());
  EXPECT(mismatches == 0, "%d of %d results differ from the same call made alone", mismatches.load(),
         kThreads * kRounds);
  std::printf("%d threads x %d rounds of adapter switch + logits: %d mismatches, %d errors\n", kThreads,
              kRounds, mismatches.load(), errors.load());
  std::printf("%s\n", etlora_test::failures ? "FAILED" : "PASSED");
  return etlora_test::failures ? 1 : 0;
}
