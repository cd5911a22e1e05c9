// Constant methods of an etlora program (program_constants.h).
#include "program_constants.h"

#include <sys/stat.h>

#include "format_util.h"

namespace etlora {

using executorch::extension::module::Module;
using executorch::runtime::EValue;

StatusOr<std::vector<EValue>> constant_values(Module& module, const std::string& program, const std::string& name) {
  auto outputs = module.execute(name);
  if (!outputs.ok()) {
    return Status(StatusCode::kIncompatible,
                  "program " + program + " has no readable constant method " + name + " (" +
                      error_name(outputs.error()) +
                      "); hint: the program must be exported by etlora (bundle-format.md)");
  }
  std::vector<EValue> values = std::move(*outputs);
  module.unload_method(name);
  return values;
}

StatusOr<std::vector<int64_t>> constant_ints(Module& module, const std::string& program, const std::string& name) {
  auto values = constant_values(module, program, name);
  if (!values.ok()) return values.status();
  std::vector<int64_t> ints;
  for (const EValue& v : *values) {
    if (!v.isInt()) {
      return Status(StatusCode::kIncompatible, "program " + program + ": constant method " + name +
                                                   " is expected to return ints, got another type");
    }
    ints.push_back(v.toInt());
  }
  return ints;
}

StatusOr<int64_t> constant_int(Module& module, const std::string& program, const std::string& name) {
  auto ints = constant_ints(module, program, name);
  if (!ints.ok()) return ints.status();
  if (ints->size() != 1) {
    return Status(StatusCode::kIncompatible, "program " + program + ": constant method " + name +
                                                 " is expected to return one int, got " +
                                                 std::to_string(ints->size()) + " values");
  }
  return (*ints)[0];
}

StatusOr<std::vector<std::string>> constant_strings(Module& module, const std::string& program,
                                                    const std::string& name) {
  auto values = constant_values(module, program, name);
  if (!values.ok()) return values.status();
  std::vector<std::string> strings;
  for (const EValue& v : *values) {
    if (!v.isString()) {
      return Status(StatusCode::kIncompatible, "program " + program + ": constant method " + name +
                                                   " is expected to return strings, got another type");
    }
    strings.emplace_back(v.toString());
  }
  return strings;
}

StatusOr<std::string> constant_string(Module& module, const std::string& program, const std::string& name) {
  auto strings = constant_strings(module, program, name);
  if (!strings.ok()) return strings.status();
  if (strings->size() != 1) {
    return Status(StatusCode::kIncompatible, "program " + program + ": constant method " + name +
                                                 " is expected to return one string, got " +
                                                 std::to_string(strings->size()) + " values");
  }
  return (*strings)[0];
}

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace etlora
