// Shared by the fuzz targets: the readers under test take paths (they map or
// stream real files), so each input is written to one scratch file per process.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

namespace etlora_fuzz {

inline std::string write_scratch(const uint8_t* data, size_t size, const char* suffix) {
  static const std::string path = "/tmp/etlora-fuzz-" + std::to_string(::getpid()) + suffix;
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) return path;
  if (size) std::fwrite(data, 1, size, file);
  std::fclose(file);
  return path;
}

}  // namespace etlora_fuzz
