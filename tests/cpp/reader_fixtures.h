// Shared bits of the reader tests: where the committed fixtures are
// (tests/fixtures, passed as argv[1] by tests/cpp/CMakeLists.txt) and the
// values scripts/dev/make_reader_fixtures.py wrote into them.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include <etlora/status.h>

#include "test_bundle.h"

namespace etlora_test {

// The foundation every fixture adapter is made for, and another one.
inline const std::string kFixtureFingerprint = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
inline const std::string kOtherFingerprint(64, 'f');

// tests/fixtures from argv[1], or "" after printing the usage (the caller then fails).
inline std::string fixtures_dir(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s TESTS_FIXTURES_DIR (the repository's tests/fixtures)\n", argv[0]);
    return "";
  }
  return argv[1];
}

// True (counting a failure otherwise) when `status` is an error of `code` whose
// message holds every one of `parts`; `what` names the case in the report.
inline bool expect_error(const etlora::Status& status, etlora::StatusCode code, const std::vector<std::string>& parts,
                         const std::string& what) {
  bool good = !status.ok() && status.code() == code;
  for (const std::string& part : parts) good = good && contains(status.message(), part);
  EXPECT(good, "%s: expected an error (code %d) containing every expected part, got code %d: %s", what.c_str(),
         static_cast<int>(code), static_cast<int>(status.code()),
         status.ok() ? "(ok)" : status.message().c_str());
  return good;
}

// What a test prints last; 0 when nothing failed.
inline int report(const char* name) {
  std::printf("%s: %s (%d failure(s))\n", name, failures ? "FAILED" : "PASSED", failures);
  return failures ? 1 : 0;
}

}  // namespace etlora_test
