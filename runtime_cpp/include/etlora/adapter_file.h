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
  // True when the file stores float16 and tensors() are float32 copies.
  bool widened_from_fp16() const { return !widened_.empty(); }

  // "<site>.lora_a" / "<site>.lora_b" entries, by key (metadata excluded).
  const std::map<std::string, AdapterTensor>& tensors() const { return tensors_; }

  ~AdapterFile();

 private:
  struct Mapping;  // the ExecuTorch loader, data map and loaded buffers
  AdapterFile() = default;
  static StatusOr<std::shared_ptr<const AdapterFile>> open_checked(const std::string& path);

  std::string path_;
  std::string fingerprint_;
  float scaling_ = 1.0f;
  std::map<std::string, AdapterTensor> tensors_;
  std::vector<std::unique_ptr<float[]>> widened_;  // float32 copies of float16 tensors
  std::unique_ptr<Mapping> mapping_;
};

}  // namespace etlora
