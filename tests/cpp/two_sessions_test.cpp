// Two sessions of one program, side by side in one process, each with its own
// adapter: they share the foundation (and XNNPACK's weight cache) but must
// never see each other's adapter weights.
#include <etlora/session.h>

#include "test_bundle.h"

int main() {
  std::string bundle;
  std::vector<std::string> adapters;
  if (!etlora_test::bundle_with_adapters(2, bundle, adapters)) return etlora_test::kSkipped;
  const std::vector<int64_t> tokens = {1, 2, 3, 4, 5};
  std::vector<std::vector<float>> alone;
  for (size_t i = 0; i < 2; ++i) {
    auto session = etlora::Session::open(bundle + "/model.pte", bundle + "/foundation.ptd");
    EXPECT(session.ok(), "%s", session.status().message().c_str());
    if (!session.ok()) return 1;
    EXPECT((*session)->set_adapters({{adapters[i], 1.0f}}).ok(), "set_adapters %zu", i);
    alone.push_back(*(*session)->logits(tokens));
  }
  auto first = etlora::Session::open(bundle + "/model.pte", bundle + "/foundation.ptd");
  auto second = etlora::Session::open(bundle + "/model.pte", bundle + "/foundation.ptd");
  if (!first.ok() || !second.ok()) return 1;
  EXPECT((*first)->set_adapters({{adapters[0], 1.0f}}).ok(), "first set_adapters");
  EXPECT((*second)->set_adapters({{adapters[1], 1.0f}}).ok(), "second set_adapters");
  for (int round = 0; round < 2; ++round) {  // interleaved calls
    auto a = (*first)->logits(tokens);
    auto b = (*second)->logits(tokens);
    EXPECT(a.ok() && etlora_test::max_abs_diff(*a, alone[0]) == 0.0f, "first session drifted");
    EXPECT(b.ok() && etlora_test::max_abs_diff(*b, alone[1]) == 0.0f, "second session drifted");
  }
  const float apart = etlora_test::max_abs_diff(alone[0], alone[1]);
  std::printf("adapters differ by %g; side by side each matches its lone run\n", apart);
  // Otherwise "each session matches its lone run" would hold for sessions that ignore adapters.
  EXPECT(apart > 1e-3f, "the two adapters must give different logits, differ by %g", apart);
  std::printf("%s\n", etlora_test::failures ? "FAILED" : "PASSED");
  return etlora_test::failures ? 1 : 0;
}
