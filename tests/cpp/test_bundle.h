// Shared bits of the ctest programs: where the bundle is, and checks that
// report instead of aborting.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <dirent.h>
#include <string>
#include <vector>

namespace etlora_test {

constexpr int kSkipped = 77;  // SKIP_RETURN_CODE in tests/cpp/CMakeLists.txt
inline int failures = 0;

#define EXPECT(cond, ...)                                                   \
  do {                                                                      \
    if (!(cond)) {                                                          \
      std::fprintf(stderr, "FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                    \
      std::fprintf(stderr, "\n");                                           \
      ++etlora_test::failures;                                              \
    }                                                                       \
  } while (0)

// The bundle directory, or "" (the caller then exits kSkipped).
inline std::string bundle_dir() {
  const char* dir = std::getenv("ETLORA_TEST_BUNDLE");
  return dir ? dir : "";
}

// adapters/*.ptd of the bundle, sorted.
inline std::vector<std::string> adapter_files(const std::string& bundle) {
  std::vector<std::string> files;
  const std::string folder = bundle + "/adapters";
  if (DIR* dir = opendir(folder.c_str())) {
    while (dirent* entry = readdir(dir)) {
      std::string name = entry->d_name;
      if (name.size() > 4 && name.substr(name.size() - 4) == ".ptd") files.push_back(folder + "/" + name);
    }
    closedir(dir);
  }
  std::sort(files.begin(), files.end());
  return files;
}

// The test bundle and its adapter files when it has at least `count` adapters;
// false (after saying why) when the caller should exit kSkipped.
inline bool bundle_with_adapters(size_t count, std::string& bundle, std::vector<std::string>& adapters) {
  bundle = bundle_dir();
  adapters = adapter_files(bundle);
  if (!bundle.empty() && adapters.size() >= count) return true;
  std::printf("skipped: set ETLORA_TEST_BUNDLE to a bundle with %zu adapters\n", count);
  return false;
}

inline float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  float worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::fabs(a[i] - b[i]));
  return worst;
}

inline bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace etlora_test
