// libFuzzer target: any bytes as an XNNPACK packed-weight file; the footer and
// index checks run before the runtime maps such a file.
#include <etlora/packed_cache.h>

#include "fuzz_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = etlora_fuzz::write_scratch(data, size, ".bin");
  etlora::PackedFileCheck check = etlora::check_packed_cache_file(path);
  (void)check;
  return 0;
}
