// This process's resident memory as /proc/self/status reports it.
#pragma once

#include <cstdint>

namespace etlora {

// VmRSS, RssAnon and RssFile in bytes (0 where unreadable, e.g. off Linux).
struct ProcessMemory {
  int64_t total = 0, anon = 0, file = 0;
};
ProcessMemory read_process_memory();

}  // namespace etlora
