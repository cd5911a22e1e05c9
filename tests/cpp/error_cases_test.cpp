// The library reports bad input as messages and keeps working afterwards:
// missing files, an adapter for another foundation, a non-adapter .ptd, too
// many adapters, bad tokens. Also checks adapter switching and the KV cache.
#include <fstream>
#include <iterator>

#include <etlora/session.h>

#include "test_bundle.h"

using etlora_test::contains;

namespace {

// A copy of `source` whose fingerprint text is changed to another hex string.
std::string copy_with_other_fingerprint(const std::string& source, const std::string& fingerprint) {
  std::ifstream in(source, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string other = fingerprint;
  other[0] = other[0] == 'f' ? '0' : 'f';
  const size_t at = bytes.find(fingerprint);
  if (at == std::string::npos) return "";
  bytes.replace(at, fingerprint.size(), other);
  const std::string path = "/tmp/etlora_error_cases_other_foundation.ptd";
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

}  // namespace

int main() {
  const std::string bundle = etlora_test::bundle_dir();
  const auto adapters = etlora_test::adapter_files(bundle);
  if (bundle.empty() || adapters.empty()) {
    std::printf("skipped: set ETLORA_TEST_BUNDLE to a bundle with adapters/*.ptd\n");
    return etlora_test::kSkipped;
  }
  const std::string program = bundle + "/model.pte";
  const std::string foundation = bundle + "/foundation.ptd";

  auto missing_program = etlora::Session::open(bundle + "/nope.pte", foundation);
  EXPECT(!missing_program.ok() && contains(missing_program.status().message(), "not found"),
         "%s", missing_program.status().message().c_str());
  auto missing_foundation = etlora::Session::open(program, bundle + "/nope.ptd");
  EXPECT(!missing_foundation.ok() &&
             contains(missing_foundation.status().message(), "foundation file"),
         "%s", missing_foundation.status().message().c_str());

  auto opened = etlora::Session::open(program, foundation);
  EXPECT(opened.ok(), "%s", opened.status().message().c_str());
  if (!opened.ok()) return 1;
  etlora::Session& session = **opened;
  const etlora::ProgramInfo& info = session.info();
  std::printf("program: %zu sites, rank %lld, %lld slot(s), max_seq_len %lld, vocab %lld, "
              "%zu memory-planned inputs\n",
              info.sites.size(), (long long)info.max_rank, (long long)info.adapter_slots,
              (long long)info.max_seq_len, (long long)info.vocab_size,
              session.memory_planned_inputs());
  const auto foundation_only = session.logits({1, 2, 3, 4, 5});
  EXPECT(foundation_only.ok(), "%s", foundation_only.status().message().c_str());

  // Missing adapter file: named, checked before ExecuTorch sees anything.
  auto status = session.set_adapters({{"/nonexistent/adapter.ptd", 1.0f}});
  EXPECT(contains(status.message(), "adapter file /nonexistent/adapter.ptd not found"), "%s",
         status.message().c_str());

  // Adapter for another foundation: both fingerprints and the hint.
  const std::string other = copy_with_other_fingerprint(adapters[0], info.foundation_fingerprint);
  EXPECT(!other.empty(), "fingerprint text not found in %s", adapters[0].c_str());
  status = session.set_adapters({{other, 1.0f}});
  EXPECT(status.code() == etlora::StatusCode::kIncompatible &&
             contains(status.message(), info.foundation_fingerprint) &&
             contains(status.message(), other) &&
             contains(status.message(), "adapter made for another foundation"),
         "%s", status.message().c_str());

  // A .ptd that is not an adapter.
  status = session.set_adapters({{foundation, 1.0f}});
  EXPECT(!status.ok() && contains(status.message(), foundation), "%s", status.message().c_str());

  // More adapters than slots.
  std::vector<etlora::AdapterChoice> too_many(info.adapter_slots + 1, {adapters[0], 1.0f});
  status = session.set_adapters(too_many);
  EXPECT(status.code() == etlora::StatusCode::kInvalidArgument, "%s", status.message().c_str());

  // Bad tokens and positions.
  auto bad = session.forward({}, 0);
  EXPECT(!bad.ok() && contains(bad.status().message(), "got 0"), "%s",
         bad.status().message().c_str());
  bad = session.forward(std::vector<int64_t>(info.max_seq_len + 1, 1), 0);
  EXPECT(!bad.ok(), "too many tokens accepted");
  bad = session.forward({1, 2}, info.max_seq_len - 1);
  EXPECT(!bad.ok() && contains(bad.status().message(), "start_pos"), "%s",
         bad.status().message().c_str());
  bad = session.forward({info.vocab_size}, 0);
  EXPECT(!bad.ok() && contains(bad.status().message(), "tokens[0]"), "%s",
         bad.status().message().c_str());

  // After all that the session still runs, and failed calls changed nothing.
  auto again = session.logits({1, 2, 3, 4, 5});
  EXPECT(again.ok() && etlora_test::max_abs_diff(*again, *foundation_only) == 0.0f,
         "foundation-only logits changed after failed calls");

  // Switching adapters on the loaded program, and back.
  status = session.set_adapters({{adapters[0], 1.0f}});
  EXPECT(status.ok(), "%s", status.message().c_str());
  auto with_adapter = session.logits({1, 2, 3, 4, 5});
  EXPECT(with_adapter.ok(), "%s", with_adapter.status().message().c_str());
  status = session.set_adapters({{adapters[0], 0.0f}});
  auto strength_zero = session.logits({1, 2, 3, 4, 5});
  EXPECT(strength_zero.ok() && etlora_test::max_abs_diff(*strength_zero, *foundation_only) < 1e-5f,
         "strength 0 differs from no adapter");
  status = session.set_adapters({{adapters[0], 1.0f}});
  auto again_adapter = session.logits({1, 2, 3, 4, 5});
  EXPECT(again_adapter.ok() && etlora_test::max_abs_diff(*again_adapter, *with_adapter) == 0.0f,
         "switching back gave other logits");
  const float moved = etlora_test::max_abs_diff(*with_adapter, *foundation_only);
  std::printf("adapter %s moves logits by up to %g\n", adapters[0].c_str(), moved);
  EXPECT(moved > 1e-3f, "the adapter must change the logits, moved them by %g", moved);

  // KV cache: prefill in two steps equals one step.
  auto first = session.forward({1, 2, 3}, 0);
  auto second = session.forward({4, 5}, 3);
  EXPECT(first.ok() && second.ok(), "stepwise forward failed");
  if (second.ok()) {
    const float diff = etlora_test::max_abs_diff(*second, *with_adapter);
    std::printf("two-step prefill vs one-step: max diff %g\n", diff);
    EXPECT(diff < 1e-4f, "two-step prefill differs by %g", diff);
  }
  std::remove(other.c_str());
  std::printf("%s\n", etlora_test::failures ? "FAILED" : "PASSED");
  return etlora_test::failures ? 1 : 0;
}
