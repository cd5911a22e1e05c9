#include "format_util.h"

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

}  // namespace etlora
