// read_process_memory: the three resident-set lines of /proc/self/status.
#include "platform/process_memory.h"

#include <fstream>
#include <string>

namespace etlora {

ProcessMemory read_process_memory() {
  ProcessMemory memory;
  std::ifstream status("/proc/self/status");
  std::string key;
  int64_t kib = 0;
  while (status >> key) {
    if (key == "VmRSS:" || key == "RssAnon:" || key == "RssFile:") {
      if (!(status >> kib)) break;
      (key == "VmRSS:" ? memory.total : key == "RssAnon:" ? memory.anon : memory.file) = kib * 1024;
    }
    status.ignore(1 << 20, '\n');
  }
  return memory;
}

}  // namespace etlora
