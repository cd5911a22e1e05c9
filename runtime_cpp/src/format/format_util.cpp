#include "format/format_util.h"

#include <cstdio>

#include <executorch/runtime/core/exec_aten/util/scalar_type_util.h>

namespace etlora {

std::string dtype_name(executorch::aten::ScalarType dtype) {
  return executorch::runtime::toString(dtype);
}

std::string error_name(executorch::runtime::Error error) {
  char code[16];
  std::snprintf(code, sizeof(code), "0x%x", static_cast<unsigned>(error));
  return std::string(executorch::runtime::to_string(error)) + " " + code;
}

std::string printable(const std::string& text) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : text) {
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

}  // namespace etlora
