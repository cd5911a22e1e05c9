// ExecuTorch's log lines through etlora's level filter (include/etlora/logging.h).
#include "etlora/logging.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include <executorch/runtime/platform/platform.h>

namespace etlora {
namespace {

std::atomic<int> g_verbose{-1};  // -1: not decided yet, read ETLORA_LOG on first use

bool verbose() {
  int value = g_verbose.load();
  if (value < 0) {
    const char* setting = std::getenv("ETLORA_LOG");
    value = setting != nullptr && std::strcmp(setting, "info") == 0 ? 1 : 0;
    int expected = -1;
    g_verbose.compare_exchange_strong(expected, value);
    value = g_verbose.load();
  }
  return value == 1;
}

// Close to the stock format, without its timestamp: "<level> executorch:<file>:<line>] <message>".
void emit(et_timestamp_t /*timestamp*/, et_pal_log_level_t level, const char* filename,
          const char* /*function*/, size_t line, const char* message, size_t length) {
  if ((level == kDebug || level == kInfo) && !verbose()) return;
  const char* base = filename ? std::strrchr(filename, '/') : nullptr;
  std::fprintf(stderr, "%c executorch:%s:%zu] %.*s\n", static_cast<char>(level),
               base ? base + 1 : (filename ? filename : "?"), line, static_cast<int>(length), message);
}

}  // namespace

void install_runtime_log_filter() {
  static std::once_flag once;
  std::call_once(once, [] {
    executorch::runtime::register_pal(executorch::runtime::PalImpl::create(emit, __FILE__));
  });
}

void set_runtime_log_verbose(bool on) {
  g_verbose.store(on ? 1 : 0);
  install_runtime_log_filter();
}

}  // namespace etlora
