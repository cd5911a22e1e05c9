// An adapter .ptd file (bundle-format.md, "adapters/<name>.ptd"), memory-mapped.
// Tensors are handed out as pointers into the mapping (float32 files) or into
// float32 copies made at open (float16 files, which halve the download but not
// the memory), so the AdapterFile must outlive every method input that points
// into it (Session keeps shared_ptrs).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <etlora/program_info.h>
#include <etlora/status.h>

namespace etlora {

// One tensor of the file as float32, read-only, in the mapping or a widened copy.
struct AdapterTensor {
  const float* data = nullptr;
  std::vector<int32_t> sizes;
};

class AdapterFile {
 public:
  // Maps the file and reads its metadata. Does not compare it to a program.
  // Files are cached by canonical path: opening the same file twice in a
  // process returns the same mapping while someone still holds it.
  static StatusOr<std::shared_ptr<const AdapterFile>> open(const std::string& path);

  const std::string& path() const { return path_; }
  const std::string& foundation_fingerprint() const { return fingerprint_; }
  float scaling() const { return scaling_; }
  // Activated LoRA (PEFT's alora_invocation_tokens): the adapter applies only
  // from the start of the last occurrence of these tokens on; empty for an
  // ordinary adapter, which applies to every position.
  const std::vector<int64_t>& alora_invocation_tokens() const { return alora_tokens_; }
  // True when the file stores float16 and tensors() are float32 copies.
  bool widened_from_fp16() const { return !widened_.empty(); }

  // "<site>.lora_a" / "<site>.lora_b" entries, by key (metadata excluded);
  // open() guarantees every lora_a has its lora_b and the reverse.
  const std::map<std::string, AdapterTensor>& tensors() const { return tensors_; }

  // The one check of an adapter against a program, in this order: the same
  // foundation fingerprint, every site a slot of the program, every tensor
  // [1, in, rank] / [1, rank, out] at the program's rank. Python's
  // adapter_format.check_adapter_for_program applies the same rules in the same
  // order (bundle-format.md, "Adapter against program"). Session checks a file
  // once, when it first opens it; binding it later checks nothing again.
  Status check_for_program(const ProgramInfo& program, const std::string& program_path) const;

  // Bytes of float32 weights the runtime reads from this file (mapped pages,
  // or widened copies for fp16 files): what keeping it open costs at most.
  int64_t tensor_bytes() const;

  ~AdapterFile();

 private:
  struct Mapping;  // the ExecuTorch loader, data map and loaded buffers
  AdapterFile() = default;
  static StatusOr<std::shared_ptr<const AdapterFile>> open_checked(const std::string& path);

  std::string path_;
  std::string fingerprint_;
  float scaling_ = 1.0f;
  std::vector<int64_t> alora_tokens_;
  std::map<std::string, AdapterTensor> tensors_;
  std::vector<std::unique_ptr<float[]>> widened_;  // float32 copies of float16 tensors
  std::unique_ptr<Mapping> mapping_;
};

}  // namespace etlora
