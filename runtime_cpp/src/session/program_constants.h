// Reading an etlora program's constant methods (bundle-format.md: etlora_sites,
// etlora_max_rank, ...): what a program says about its inputs, read the same
// way by Session (model.pte) and HtpSession (model_htp.pte).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_set>
#include <vector>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr.h>

#include "etlora/adapter_file.h"

#include "etlora/program_info.h"
#include "etlora/session.h"  // AdapterChoice
#include "etlora/status.h"

namespace etlora {

// The values constant method `name` returns (a list comes back as several
// outputs); the method is unloaded again. `program` names the file in errors.
StatusOr<std::vector<executorch::runtime::EValue>> constant_values(
    executorch::extension::module::Module& module, const std::string& program, const std::string& name);

StatusOr<std::vector<int64_t>> constant_ints(executorch::extension::module::Module& module,
                                             const std::string& program, const std::string& name);
StatusOr<int64_t> constant_int(executorch::extension::module::Module& module, const std::string& program,
                               const std::string& name);
StatusOr<std::vector<std::string>> constant_strings(executorch::extension::module::Module& module,
                                                    const std::string& program, const std::string& name);
StatusOr<std::string> constant_string(executorch::extension::module::Module& module, const std::string& program,
                                      const std::string& name);

// The adapter side of a program's layout, read and checked the same way for
// Session and HtpSession: etlora_foundation_fingerprint, etlora_sites,
// etlora_site_shapes (each in, out in 1 .. 2^31-1), etlora_max_rank (0 only
// without sites), etlora_adapter_slots (0 .. 1024), etlora_vocab_size. Fills
// those fields of `info`; returns the largest site dimension.
StatusOr<int64_t> read_adapter_layout(executorch::extension::module::Module& module, const std::string& program,
                                      ProgramInfo& info);

// One slot's LoRA inputs of forward, the same layout in model.pte and
// model_htp.pte: lora_a [1, in, R] and lora_b [1, R, out] per site, in site
// order, pointing into `file`'s tensors; the sites it lacks (all of them when
// `file` is null: an empty slot) point at `absent`, zeros of at least
// largest site * max_rank floats. ExecuTorch never writes inputs it reads.
std::vector<executorch::extension::TensorPtr> lora_inputs(const ProgramInfo& info, const AdapterFile* file,
                                                          const float* absent);

// The rules on a choice of adapters that both sessions apply before opening
// any file: at most info.adapter_slots of them, each strength finite.
// `program` names the program in errors ("program X", "HTP program X").
Status check_adapter_choices(const std::vector<AdapterChoice>& adapters, const ProgramInfo& info,
                             const std::string& program);

// `file`, opened for adapters[files.size()], is none of `files` (opened for
// the choices before it): the same file twice is an error naming both paths.
Status check_file_not_chosen(const AdapterFile* file, const std::vector<const AdapterFile*>& files,
                             const std::vector<AdapterChoice>& adapters);

// The rules on a forward call both sessions apply: 1 .. limit tokens, each in
// [0, vocab_size), start_pos + tokens <= limit. `limit_label` says what the
// limit is in errors ("max_seq_len", "cache_len of HTP program X").
Status check_forward_tokens(const std::vector<int64_t>& tokens, int64_t start_pos, int64_t limit,
                            const std::string& limit_label, int64_t vocab_size);

// What both sessions do before loading a program: ExecuTorch's info lines
// filtered, etlora's thread pool installed unless the process configured one
// (only speed depends on it: a pool that cannot take the executor runs as before).
void prepare_process_for_programs();

// The program's method names, after checking it is an etlora program (it has
// etlora_format_version); `program` names the file in errors.
StatusOr<std::unordered_set<std::string>> etlora_method_names(executorch::extension::module::Module& module,
                                                              const std::string& program);

// etlora_format_version into info.format_version, which must be in [oldest, newest];
// `label` names the program in errors ("program X", "HTP program X").
Status read_format_version(executorch::extension::module::Module& module, const std::string& program,
                           const std::string& label, int64_t oldest, int64_t newest, ProgramInfo& info);

// A regular file at `path`.
bool is_regular_file(const std::string& path);

}  // namespace etlora
