// Small helpers that turn ExecuTorch values into readable message text.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <executorch/runtime/core/error.h>
#include <executorch/runtime/core/exec_aten/exec_aten.h>

namespace etlora {

// The adapter file format version this runtime reads.
constexpr int kAdapterFormatVersion = 1;

// "[1, 64, 16]"
template <typename Int>
std::string shape_text(const std::vector<Int>& sizes) {
  std::string text = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i) text += ", ";
    text += std::to_string(sizes[i]);
  }
  return text + "]";
}

std::string dtype_name(executorch::aten::ScalarType dtype);

// Text read from a file, safe to put in a message: bytes outside printable
// ASCII become \xNN, so a damaged key cannot break a caller's UTF-8 decoding.
std::string printable(const std::string& text);
std::string error_name(executorch::runtime::Error error);

}  // namespace etlora
