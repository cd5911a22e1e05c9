// HtpSession (htp_session.h) against the XNNPACK Session of the same bundle.
//
// ETLORA_TEST_BUNDLE: a bundle with at least 2 adapters (skipped without one).
// ETLORA_TEST_HTP_PROGRAM: optional, an HTP-shaped program lowered for XNNPACK
//   (export/htp_program.py lower_htp_shaped) with the bundle's sites, rank,
//   slots and cache_len = max_seq_len, so that it reads the bundle's
//   foundation.ptd and adapter files (tests/test_htp_session.py writes one and
//   runs this test with it). Never a QNN program: on a machine without an HTP
//   QnnBackend crashes the process instead of refusing it.
// Without the program only the refusals are checked.
#include <etlora/htp_session.h>
#include <etlora/session.h>

#include <cstdlib>

#include "test_bundle.h"

using etlora_test::contains;

int main() {
  std::string bundle;
  std::vector<std::string> adapters;
  if (!etlora_test::bundle_with_adapters(2, bundle, adapters)) return etlora_test::kSkipped;
  const std::string foundation = bundle + "/foundation.ptd";

  // The XNNPACK program is refused by name of the constant method it lacks.
  auto cpu_program = etlora::HtpSession::open(bundle + "/model.pte", foundation);
  EXPECT(!cpu_program.ok() && cpu_program.status().code() == etlora::StatusCode::kIncompatible &&
             contains(cpu_program.status().message(), "etlora_program_kind"),
         "model.pte: %s", cpu_program.ok() ? "opened" : cpu_program.status().message().c_str());
  auto missing = etlora::HtpSession::open(bundle + "/missing_htp.pte", foundation);
  EXPECT(!missing.ok() && missing.status().code() == etlora::StatusCode::kNotFound, "missing program");

  const char* htp_program = std::getenv("ETLORA_TEST_HTP_PROGRAM");
  if (htp_program == nullptr || *htp_program == '\0') {
    std::printf("refusals checked; set ETLORA_TEST_HTP_PROGRAM to compare logits\n");
    std::printf("%s\n", etlora_test::failures ? "FAILED" : "PASSED");
    return etlora_test::failures ? 1 : 0;
  }
  auto htp = etlora::HtpSession::open(htp_program, foundation);
  EXPECT(htp.ok(), "%s", htp.status().message().c_str());
  auto cpu = etlora::Session::open(bundle + "/model.pte", foundation);
  EXPECT(cpu.ok(), "%s", cpu.status().message().c_str());
  if (!htp.ok() || !cpu.ok()) return 1;
  const int64_t cache_len = (*htp)->htp_info().cache_len;
  EXPECT(cache_len == (*cpu)->info().max_seq_len, "cache_len %lld", static_cast<long long>(cache_len));

  const std::vector<std::vector<etlora::AdapterChoice>> cases = {
      {}, {{adapters[0], 1.0f}}, {{adapters[0], 1.0f}, {adapters[1], 0.5f}}};
  float worst = 0.0f;
  std::vector<float> previous_first;
  for (const auto& choice : cases) {
    EXPECT((*htp)->set_adapters(choice).ok(), "htp set_adapters");
    EXPECT((*cpu)->set_adapters(choice).ok(), "cpu set_adapters");
    std::vector<int64_t> tokens = {1, 17, 42, 99, 3, 250, 7, 64, 5, 120, 33};  // more than one chunk
    for (int step = 0; step < 5; ++step) {
      const std::vector<int64_t> run = step == 0 ? tokens : std::vector<int64_t>{tokens.back()};
      const int64_t start = static_cast<int64_t>(tokens.size() - run.size());
      auto a = (*htp)->forward(run, start);
      auto b = (*cpu)->forward(run, start);
      EXPECT(a.ok(), "htp forward: %s", a.status().message().c_str());
      EXPECT(b.ok(), "cpu forward: %s", b.status().message().c_str());
      if (!a.ok() || !b.ok()) return 1;
      worst = std::max(worst, etlora_test::max_abs_diff(*a, *b));
      if (step == 0) {
        EXPECT(previous_first.empty() || etlora_test::max_abs_diff(*a, previous_first) > 1e-3f,
               "an adapter choice did not change the logits");
        previous_first = *a;
      }
      tokens.push_back(std::max_element(b->begin(), b->end()) - b->begin());
    }
  }
  std::printf("HtpSession vs Session: max abs diff %g over 3 adapter choices, prefill + 4 decode steps\n",
              worst);
  EXPECT(worst < 1e-4f, "max abs diff %g", worst);

  auto beyond = (*htp)->forward({1}, cache_len);
  EXPECT(!beyond.ok() && contains(beyond.status().message(), "start_pos"), "start_pos beyond the cache");
  auto too_many = (*htp)->set_adapters({{adapters[0], 1.0f}, {adapters[1], 1.0f}, {adapters[0], 1.0f}});
  EXPECT(!too_many.ok() && too_many.code() == etlora::StatusCode::kInvalidArgument, "three adapters");
  std::printf("%s\n", etlora_test::failures ? "FAILED" : "PASSED");
  return etlora_test::failures ? 1 : 0;
}
