// etlora::choose_backend with faked device facts: every row of the table in htp_probe.h.
// Needs no bundle and no device.
#include <cstdio>
#include <optional>
#include <string>

#include <etlora/htp_probe.h>

namespace {

int failures = 0;

void expect(bool condition, const std::string& what) {
  if (!condition) {
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    ++failures;
  }
}

etlora::HtpFacts usable_device(const std::string& soc) {
  etlora::HtpFacts facts;
  facts.htp_library = {"libQnnHtp.so", true, ""};
  facts.system_library = {"libQnnSystem.so", true, ""};
  facts.dsp_device = "/dev/fastrpc-cdsp";
  facts.soc = soc;
  facts.soc_source = "ETLORA_SOC";
  return facts;
}

void expect_choice(const etlora::StatusOr<etlora::BackendChoice>& choice, etlora::Backend backend,
                   const std::string& reason, const std::string& what) {
  expect(choice.ok(), what + ": ok (got: " + (choice.ok() ? "" : choice.status().message()) + ")");
  if (!choice.ok()) return;
  expect(choice->backend == backend, what + ": backend " + etlora::backend_name(choice->backend));
  expect(choice->reason == reason, what + ": reason '" + choice->reason + "', expected '" + reason + "'");
}

void expect_error(const etlora::StatusOr<etlora::BackendChoice>& choice, const std::string& words,
                  const std::string& what) {
  expect(!choice.ok(), what + ": an error");
  if (choice.ok()) return;
  expect(choice.status().code() == etlora::StatusCode::kIncompatible, what + ": kIncompatible");
  expect(choice.status().message().find(words) != std::string::npos,
         what + ": '" + choice.status().message() + "' names '" + words + "'");
}

}  // namespace

int main() {
  using etlora::Backend;
  using etlora::BackendRequest;
  const etlora::HtpProgramFacts program{"SM8650", "/b/model_htp.pte"};
  const auto auto_ = BackendRequest::kAuto;
  const auto htp = BackendRequest::kHtp;

  // xnnpack requested: the facts are not consulted.
  expect_choice(etlora::choose_backend(BackendRequest::kXnnpack, etlora::HtpFacts{}, program),
                Backend::kXnnpack, "xnnpack requested", "xnnpack requested");
  // No HTP program.
  expect_choice(etlora::choose_backend(auto_, usable_device("SM8650"), std::nullopt), Backend::kXnnpack,
                "no HTP program in the bundle", "no program");
  expect_error(etlora::choose_backend(htp, usable_device("SM8650"), std::nullopt),
               "received: no HTP program in the bundle (hint: export with --backend htp --soc SM8650", "htp, no program");
  // Libraries present, no DSP node.
  etlora::HtpFacts no_node = usable_device("SM8650");
  no_node.dsp_device = "";
  expect_choice(etlora::choose_backend(auto_, no_node, program), Backend::kXnnpack,
                "no Hexagon DSP device node (/dev/fastrpc-cdsp, /dev/fastrpc-cdsp-secure, /dev/adsprpc-smd)",
                "no node");
  // A library missing: dlerror's words kept.
  etlora::HtpFacts no_library = usable_device("SM8650");
  no_library.htp_library = {"libQnnHtp.so", false, "libQnnHtp.so: cannot open shared object file"};
  expect_choice(etlora::choose_backend(auto_, no_library, program), Backend::kXnnpack,
                "libQnnHtp.so not loadable: libQnnHtp.so: cannot open shared object file", "no library");
  // Wrong SoC; the SoC compared without regard to case.
  expect_choice(etlora::choose_backend(auto_, usable_device("SM8550"), program), Backend::kXnnpack,
                "program compiled for SM8650, device is SM8550", "wrong soc");
  expect_error(etlora::choose_backend(htp, usable_device("SM8550"), program), "re-export with --soc SM8550",
               "htp, wrong soc");
  expect_choice(etlora::choose_backend(auto_, usable_device("SM8650"), etlora::HtpProgramFacts{"sm8650", "p"}),
                Backend::kHtp,
                "HTP program for SM8650 (p), libQnnHtp.so and libQnnSystem.so loadable, /dev/fastrpc-cdsp, "
                "SoC SM8650 from ETLORA_SOC",
                "soc case");
  // Unknown SoC: the probe cannot clear the program.
  etlora::HtpFacts unknown = usable_device("");
  unknown.soc_source = "no soc0";
  expect_choice(etlora::choose_backend(auto_, unknown, program), Backend::kXnnpack,
                "device SoC unknown (no soc0), program compiled for SM8650", "unknown soc");
  // Everything present: htp, for auto and htp alike.
  for (BackendRequest request : {auto_, htp}) {
    auto choice = etlora::choose_backend(request, usable_device("SM8650"), program);
    expect(choice.ok() && choice->backend == Backend::kHtp, std::string("htp for ") + etlora::backend_request_name(request));
  }
  // Requests by name; the SoC table.
  expect(etlora::parse_backend_request("htp").ok() && *etlora::parse_backend_request("htp") == htp, "parse htp");
  expect(etlora::parse_backend_request("npu").status().message() ==
             "backend: expected one of auto, xnnpack, htp, received 'npu'",
         "parse npu");
  expect(etlora::soc_name_for_id(519) == "SM8550" && etlora::soc_name_for_id(557) == "SM8650" &&
             etlora::soc_name_for_id(618) == "SM8750" && etlora::soc_name_for_id(577).empty(),
         "soc id table");
  expect(etlora::BackendChoice{Backend::kXnnpack, "why"}.line() == "backend: xnnpack (why)", "line");

  if (failures == 0) std::printf("htp_probe_test: all passed\n");
  return failures == 0 ? 0 : 1;
}
