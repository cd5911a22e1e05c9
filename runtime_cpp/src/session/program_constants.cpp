// Constant methods of an etlora program (program_constants.h).
#include "session/program_constants.h"

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include <executorch/runtime/platform/log.h>

#include "etlora/logging.h"
#include "etlora/thread_pool.h"
#include "format/format_util.h"

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

StatusOr<int64_t> read_adapter_layout(Module& module, const std::string& program, ProgramInfo& info) {
  auto fingerprint = constant_string(module, program, "etlora_foundation_fingerprint");
  auto sites = constant_strings(module, program, "etlora_sites");
  auto shapes = constant_ints(module, program, "etlora_site_shapes");
  auto rank = constant_int(module, program, "etlora_max_rank");
  auto slots = constant_int(module, program, "etlora_adapter_slots");
  auto vocab = constant_int(module, program, "etlora_vocab_size");
  for (const Status* s : {&fingerprint.status(), &sites.status(), &shapes.status(), &rank.status(),
                          &slots.status(), &vocab.status()}) {
    if (!s->ok()) return *s;
  }
  info.foundation_fingerprint = *fingerprint;
  info.sites = *sites;
  info.max_rank = *rank;
  info.adapter_slots = *slots;
  info.vocab_size = *vocab;
  if (shapes->size() != 2 * info.sites.size()) {
    return Status(StatusCode::kIncompatible,
                  "program " + program + ": etlora_site_shapes expected " + std::to_string(2 * info.sites.size()) +
                      " ints (in, out per site), got " + std::to_string(shapes->size()));
  }
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  int64_t largest_site = 0;
  info.site_shapes.clear();
  for (size_t i = 0; i < info.sites.size(); ++i) {
    const int64_t in = (*shapes)[2 * i], out = (*shapes)[2 * i + 1];
    if (in < 1 || out < 1 || in > kInt32Max || out > kInt32Max) {
      return Status(StatusCode::kIncompatible,
                    "program " + program + ": etlora_site_shapes gives site " + info.sites[i] +
                        " the impossible shape (" + std::to_string(in) + ", " + std::to_string(out) + ")");
    }
    info.site_shapes.emplace_back(in, out);
    largest_site = std::max({largest_site, in, out});
  }
  // A foundation-only program (no sites) has rank 0; any program with sites needs a rank.
  const bool rank_ok = info.sites.empty() ? info.max_rank >= 0 : info.max_rank >= 1;
  if (!rank_ok || info.max_rank > kInt32Max || info.adapter_slots < 0 || info.adapter_slots > 1024 ||
      info.vocab_size < 1 || info.vocab_size > kInt32Max || largest_site * info.max_rank > (int64_t{1} << 34)) {
    return Status(StatusCode::kIncompatible,
                  "program " + program + ": constant methods give an impossible layout (max_rank " +
                      std::to_string(info.max_rank) + ", adapter_slots " + std::to_string(info.adapter_slots) +
                      ", vocab_size " + std::to_string(info.vocab_size) + ", largest site " +
                      std::to_string(largest_site) + ")");
  }
  return largest_site;
}

std::vector<executorch::extension::TensorPtr> lora_inputs(const ProgramInfo& info, const AdapterFile* file,
                                                          const float* absent) {
  using executorch::aten::ScalarType;
  const int32_t rank = static_cast<int32_t>(info.max_rank);
  std::vector<executorch::extension::TensorPtr> inputs;
  for (size_t i = 0; i < info.sites.size(); ++i) {
    const auto [in, out] = info.site_shapes[i];
    for (const bool lora_a : {true, false}) {
      const float* data = absent;
      if (file != nullptr) {
        auto tensor = file->tensors().find(info.sites[i] + (lora_a ? ".lora_a" : ".lora_b"));
        if (tensor != file->tensors().end()) data = tensor->second.data;
      }
      std::vector<int32_t> sizes = lora_a ? std::vector<int32_t>{1, int32_t(in), rank}
                                          : std::vector<int32_t>{1, rank, int32_t(out)};
      inputs.push_back(executorch::extension::make_tensor_ptr(std::move(sizes), const_cast<float*>(data),
                                                              ScalarType::Float));
    }
  }
  return inputs;
}

Status check_forward_tokens(const std::vector<int64_t>& tokens, int64_t start_pos, int64_t limit,
                            const std::string& limit_label, int64_t vocab_size) {
  const int64_t count = static_cast<int64_t>(tokens.size());
  if (count < 1 || count > limit) {
    return Status(StatusCode::kInvalidArgument, "tokens: expected 1 to " + std::to_string(limit) + " tokens (" +
                                                    limit_label + "), got " + std::to_string(count));
  }
  if (start_pos < 0 || start_pos > limit - count) {
    return Status(StatusCode::kInvalidArgument,
                  "start_pos: expected 0 <= start_pos and start_pos + tokens <= " + std::to_string(limit) + " (" +
                      limit_label + "), got start_pos " + std::to_string(start_pos) + " with " +
                      std::to_string(count) + " tokens; hint: the KV cache is full, start again from position 0");
  }
  for (int64_t i = 0; i < count; ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_size) {
      return Status(StatusCode::kInvalidArgument, "tokens[" + std::to_string(i) + "]: expected an id in [0, " +
                                                      std::to_string(vocab_size) + "), got " +
                                                      std::to_string(tokens[i]));
    }
  }
  return Status::ok_status();
}

void prepare_process_for_programs() {
  install_runtime_log_filter();  // before the pool and the delegate print their info lines
  if (!thread_pool_state().configured) {
    if (Status pool = configure_thread_pool({}); !pool.ok()) {
      ET_LOG(Info, "etlora: thread pool left as it is: %s", pool.message().c_str());
    }
  }
}

StatusOr<std::unordered_set<std::string>> etlora_method_names(executorch::extension::module::Module& module,
                                                              const std::string& program) {
  auto names = module.method_names();
  if (!names.ok() || !names->count("etlora_format_version")) {
    return Status(StatusCode::kIncompatible,
                  "program " + program +
                      " is not an etlora program: expected constant method etlora_format_version, "
                      "found none; hint: export it with etlora, not with another ExecuTorch tool");
  }
  return std::unordered_set<std::string>(names->begin(), names->end());
}

Status read_format_version(executorch::extension::module::Module& module, const std::string& program,
                           const std::string& label, int64_t oldest, int64_t newest, ProgramInfo& info) {
  auto version = constant_int(module, program, "etlora_format_version");
  if (!version.ok()) return version.status();
  info.format_version = *version;
  if (info.format_version < oldest || info.format_version > newest) {
    const std::string expected =
        oldest == newest ? std::to_string(newest) : std::to_string(oldest) + ".." + std::to_string(newest);
    return Status(StatusCode::kIncompatible, label + ": format version expected " + expected + ", got " +
                                                 std::to_string(info.format_version) +
                                                 "; hint: use the etlora runtime that matches the exporter");
  }
  return Status::ok_status();
}

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

Status check_adapter_choices(const std::vector<AdapterChoice>& adapters, const ProgramInfo& info,
                             const std::string& program) {
  if (static_cast<int64_t>(adapters.size()) > info.adapter_slots) {
    return Status(StatusCode::kInvalidArgument,
                  std::to_string(adapters.size()) + " adapters given, " + program + " has " +
                      std::to_string(info.adapter_slots) + " adapter slot(s); hint: export with more adapter slots");
  }
  for (const AdapterChoice& choice : adapters) {
    if (!std::isfinite(choice.strength)) {
      return Status(StatusCode::kInvalidArgument, "adapter " + choice.path +
                                                      ": strength must be a finite number, got " +
                                                      std::to_string(choice.strength));
    }
  }
  return Status::ok_status();
}

Status check_file_not_chosen(const AdapterFile* file, const std::vector<const AdapterFile*>& files,
                             const std::vector<AdapterChoice>& adapters) {
  const size_t index = files.size();
  for (size_t j = 0; j < index; ++j) {
    if (files[j] == file) {
      return Status(StatusCode::kInvalidArgument,
                    "adapter " + adapters[index].path + " is given twice (as " + adapters[j].path +
                        " too); hint: one slot per adapter, add the strengths instead");
    }
  }
  return Status::ok_status();
}

}  // namespace etlora
