// Reads adapter .ptd files with ExecuTorch's own FlatTensor reader.
#include <etlora/adapter_file.h>

#include <sys/stat.h>

#include <climits>
#include <cstring>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <sstream>
#include <unordered_map>

#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/extension/data_loader/mmap_data_loader.h>
#include <executorch/extension/flat_tensor/flat_tensor_data_map.h>
#include <executorch/runtime/core/portable_type/half.h>

#include "format/flat_tensor_check.h"
#include "format/format_util.h"

namespace etlora {

using executorch::extension::BufferDataLoader;
using executorch::extension::FlatTensorDataMap;
using executorch::extension::MmapDataLoader;
using executorch::runtime::FreeableBuffer;
using executorch::aten::ScalarType;

struct AdapterFile::Mapping {
  std::unique_ptr<MmapDataLoader> loader;  // owns the file descriptor
  std::optional<FreeableBuffer> whole;     // the file, mapped read-only once
  std::unique_ptr<BufferDataLoader> buffer;  // over `whole`; must outlive data_map
  std::unique_ptr<FlatTensorDataMap> data_map;
  std::vector<FreeableBuffer> buffers;     // views into `whole` (nothing to free)
};

AdapterFile::~AdapterFile() {
  if (mapping_) {
    mapping_->buffers.clear();
    mapping_->data_map.reset();
    mapping_->buffer.reset();
    mapping_->whole.reset();
  }
}

namespace {

constexpr const char* kVersionKey = "etlora.format_version";
constexpr const char* kFingerprintKey = "etlora.foundation_fingerprint";
constexpr const char* kScalingKey = "etlora.scaling";
constexpr const char* kAloraTokensKey = "etlora.alora_invocation_tokens";
constexpr int32_t kMaxAloraTokens = 64;

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Identity of a file on disk: a rewritten file gets a new cache entry.
std::string cache_key(const std::string& canonical, const struct stat& st) {
  std::ostringstream key;
  key << canonical << '|' << st.st_ino << '|' << st.st_size << '|'
      << st.st_mtim.tv_sec << '.' << st.st_mtim.tv_nsec;
  return key.str();
}

std::mutex& cache_mutex() {
  static std::mutex m;
  return m;
}
std::map<std::string, std::weak_ptr<const AdapterFile>>& cache() {
  static std::map<std::string, std::weak_ptr<const AdapterFile>> files;
  return files;
}

}  // namespace

StatusOr<std::shared_ptr<const AdapterFile>> AdapterFile::open(const std::string& path) {
  try {  // no exception leaves the C++ API (an allocation can still fail)
    return open_checked(path);
  } catch (const std::exception& error) {
    return Status(StatusCode::kRuntimeError, "adapter file " + path + ": " + error.what());
  }
}

StatusOr<std::shared_ptr<const AdapterFile>> AdapterFile::open_checked(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return Status(StatusCode::kNotFound,
                  "adapter file " + path + " not found (expected a .ptd file written by etlora)");
  }
  char resolved[PATH_MAX];
  std::string canonical = ::realpath(path.c_str(), resolved) ? resolved : path;
  const std::string key = cache_key(canonical, st);
  std::lock_guard<std::mutex> lock(cache_mutex());
  if (auto cached = cache()[key].lock()) {
    return cached;
  }

  auto loader = MmapDataLoader::from(path.c_str(), MmapDataLoader::MlockConfig::NoMlock);
  if (!loader.ok()) {
    return Status(StatusCode::kRuntimeError,
                  "adapter file " + path + " could not be memory-mapped (" +
                      error_name(loader.error()) + ")");
  }
  // One read-only mapping of the whole file: the bounds check runs on it, and
  // ExecuTorch's reader then reads through a buffer loader over it, so every
  // tensor is a pointer into this mapping (no mmap per tensor: a first open
  // costs a few syscalls, not two per tensor).
  using executorch::runtime::DataLoader;
  auto whole = loader->load(0, static_cast<size_t>(st.st_size),
                            DataLoader::SegmentInfo(DataLoader::SegmentInfo::Type::External));
  if (!whole.ok()) {
    return Status(StatusCode::kRuntimeError, "adapter file " + path + " could not be read (" +
                                                 error_name(whole.error()) + ")");
  }
  // Bounds before trust: ExecuTorch's reader follows the file's offsets unchecked.
  Status checked = check_flat_tensor(whole->data(), whole->size(), "adapter file " + path);
  if (!checked.ok()) return checked;
  std::unique_ptr<AdapterFile> file(new AdapterFile());
  file->path_ = path;
  file->mapping_ = std::make_unique<Mapping>();
  Mapping& m = *file->mapping_;
  m.loader = std::make_unique<MmapDataLoader>(std::move(*loader));
  m.whole.emplace(std::move(*whole));
  m.buffer = std::make_unique<BufferDataLoader>(m.whole->data(), m.whole->size());
  auto data_map = FlatTensorDataMap::load(m.buffer.get());
  if (!data_map.ok()) {
    return Status(StatusCode::kInvalidArgument,
                  "adapter file " + path + ": expected a FlatTensor (.ptd) file, reading it failed with " +
                      error_name(data_map.error()) +
                      "; hint: the file is truncated, damaged or not a .ptd (re-export it)");
  }
  m.data_map = std::make_unique<FlatTensorDataMap>(std::move(*data_map));
  // Say "not an adapter" before complaining about any foundation-looking key.
  if (!m.data_map->get_tensor_layout(kVersionKey).ok()) {
    return Status(StatusCode::kInvalidArgument,
                  "adapter file " + path + ": expected an etlora adapter (entry " + kVersionKey +
                      "), the .ptd has none; hint: a foundation.ptd or another tool's .ptd is "
                      "not an adapter");
  }

  auto num_keys = m.data_map->get_num_keys();
  if (!num_keys.ok()) {
    return Status(StatusCode::kRuntimeError, "adapter file " + path + ": cannot list its keys");
  }
  bool has_version = false, has_fingerprint = false, has_scaling = false;
  for (uint32_t i = 0; i < *num_keys; ++i) {
    auto key_name = m.data_map->get_key(i);
    if (!key_name.ok()) {
      return Status(StatusCode::kRuntimeError, "adapter file " + path + ": cannot read key " +
                                                   std::to_string(i));
    }
    const std::string name = *key_name;
    if (printable(name) != name) {  // etlora keys are ASCII site and metadata names
      return Status(StatusCode::kInvalidArgument,
                    "adapter file " + path + ": key " + std::to_string(i) + " '" + printable(name) +
                        "' is not printable ASCII; hint: the file is damaged, re-export it");
    }
    auto layout = m.data_map->get_tensor_layout(name);
    auto data = m.data_map->get_data(name);
    if (!layout.ok()) {
      return Status(StatusCode::kInvalidArgument,
                    "adapter file " + path + ": entry " + name + " has no tensor layout (dtype, " +
                        "sizes); hint: not written by etlora, or damaged");
    }
    if (!data.ok()) {
      return Status(StatusCode::kRuntimeError,
                    "adapter file " + path + ": cannot read entry " + name);
    }
    const ScalarType dtype = layout->scalar_type();
    std::vector<int32_t> sizes(layout->sizes().begin(), layout->sizes().end());
    const auto* bytes = static_cast<const char*>(data->data());
    const size_t nbytes = data->size();
    m.buffers.push_back(std::move(*data));

    if (name == kVersionKey || name == kFingerprintKey) {
      if (dtype != ScalarType::Byte) {
        return Status(StatusCode::kInvalidArgument,
                      "adapter file " + path + ": " + name + " is expected to be uint8 text, got " +
                          dtype_name(dtype));
      }
      std::string text(bytes, nbytes);
      if (name == kVersionKey) {
        has_version = true;
        if (text != std::to_string(kAdapterFormatVersion)) {
          return Status(StatusCode::kIncompatible,
                        "adapter file " + path + ": format version expected " +
                            std::to_string(kAdapterFormatVersion) + ", got \"" + printable(text) +
                            "\"; hint: re-export the adapter with this etlora version");
        }
      } else {
        has_fingerprint = true;
        file->fingerprint_ = text;
      }
    } else if (name == kAloraTokensKey) {
      // Activated LoRA (PEFT's alora_invocation_tokens): the session gates the adapter by position.
      const int64_t count = sizes.size() == 1 ? sizes[0] : -1;
      if (dtype != ScalarType::Long || count < 1 || count > kMaxAloraTokens ||
          nbytes < static_cast<size_t>(count) * sizeof(int64_t)) {
        return Status(StatusCode::kInvalidArgument,
                      "adapter file " + path + ": " + name + " is expected to be int64 [n], 1 <= n <= " +
                          std::to_string(kMaxAloraTokens) + ", got " + dtype_name(dtype) + " " +
                          shape_text(sizes) + "; hint: the file is damaged, re-export it");
      }
      for (int64_t i = 0; i < count; ++i) {
        int64_t token = 0;
        std::memcpy(&token, bytes + i * sizeof(int64_t), sizeof(int64_t));
        if (token < 0 || token >= (int64_t{1} << 31)) {
          return Status(StatusCode::kInvalidArgument,
                        "adapter file " + path + ": " + name + "[" + std::to_string(i) +
                            "] is expected to be a token id >= 0 and < 2^31, got " + std::to_string(token) +
                            "; hint: the file is damaged, re-export it");
        }
        file->alora_tokens_.push_back(token);
      }
    } else if (name == kScalingKey) {
      if (dtype != ScalarType::Float || sizes != std::vector<int32_t>{1} || nbytes < sizeof(float)) {
        return Status(StatusCode::kInvalidArgument,
                      "adapter file " + path + ": " + name + " is expected to be float32 [1], got " +
                          dtype_name(dtype) + " " + shape_text(sizes));
      }
      std::memcpy(&file->scaling_, bytes, sizeof(float));
      has_scaling = true;
    } else if (ends_with(name, ".lora_a") || ends_with(name, ".lora_b")) {
      size_t count = 1;
      for (int32_t size : sizes) count *= static_cast<size_t>(size < 0 ? 0 : size);
      const size_t width = dtype == ScalarType::Half ? 2 : 4;
      if (dtype != ScalarType::Float && dtype != ScalarType::Half) {
        return Status(StatusCode::kInvalidArgument,
                      "adapter file " + path + ": " + name + " is expected to be float32 or " +
                          "float16, got " + dtype_name(dtype) + "; hint: re-export the adapter");
      }
      // The program reads these as float arrays: an etlora writer aligns every tensor to 4096.
      if (reinterpret_cast<uintptr_t>(bytes) % width != 0) {
        return Status(StatusCode::kInvalidArgument,
                      "adapter file " + path + ": " + name + " starts at a misaligned offset for " +
                          dtype_name(dtype) + "; hint: the file is damaged or not written by etlora");
      }
      if (nbytes < count * width) {
        return Status(StatusCode::kInvalidArgument,
                      "adapter file " + path + ": " + name + " " + shape_text(sizes) + " needs " +
                          std::to_string(count * width) + " bytes, the file holds " +
                          std::to_string(nbytes) + "; hint: the file is truncated, re-export it");
      }
      const float* values = reinterpret_cast<const float*>(bytes);
      if (dtype == ScalarType::Half) {
        // The program takes float32: widen once here, exactly (every float16 is a float32).
        std::unique_ptr<float[]> copy(new float[count]);
        const auto* halves = reinterpret_cast<const executorch::aten::Half*>(bytes);
        for (size_t i = 0; i < count; ++i) copy[i] = static_cast<float>(halves[i]);
        values = copy.get();
        file->widened_.push_back(std::move(copy));
      }
      file->tensors_[name] = AdapterTensor{values, sizes};
    } else {
      return Status(StatusCode::kInvalidArgument,
                    "adapter file " + path + ": unexpected key " + name +
                        " (expected <site>.lora_a, <site>.lora_b or etlora.* metadata)");
    }
  }
  if (!has_version || !has_fingerprint || !has_scaling) {
    return Status(StatusCode::kInvalidArgument,
                  "adapter file " + path + " has no " +
                      (!has_version ? kVersionKey : !has_fingerprint ? kFingerprintKey : kScalingKey) +
                      " entry: expected an etlora adapter file; hint: a .ptd of another tool, "
                      "or a foundation.ptd, is not an adapter");
  }
  for (const auto& [name, tensor] : file->tensors_) {
    const bool is_a = ends_with(name, ".lora_a");
    const std::string partner = name.substr(0, name.size() - 7) + (is_a ? ".lora_b" : ".lora_a");
    if (!file->tensors_.count(partner)) {
      return Status(StatusCode::kInvalidArgument,
                    "adapter file " + path + " has " + name + " but no " + partner +
                        "; hint: the file is incomplete, re-export it");
    }
  }
  std::shared_ptr<const AdapterFile> shared(file.release());
  cache()[key] = shared;
  return shared;
}

int64_t AdapterFile::tensor_bytes() const {
  int64_t total = 0;
  for (const auto& [name, tensor] : tensors_) {
    int64_t count = 1;
    for (int32_t size : tensor.sizes) count *= size;
    total += count * static_cast<int64_t>(sizeof(float));
  }
  return total;
}

Status AdapterFile::check_for_program(const ProgramInfo& program,
                                      const std::string& program_path) const {
  if (fingerprint_ != program.foundation_fingerprint) {
    return Status(StatusCode::kIncompatible,
                  "adapter file " + path_ + " is for foundation " + printable(fingerprint_) +
                      ", program " + program_path + " has foundation " +
                      program.foundation_fingerprint + "; hint: adapter made for another foundation");
  }
  std::unordered_map<std::string, size_t> site_index;
  for (size_t i = 0; i < program.sites.size(); ++i) site_index.emplace(program.sites[i], i);
  for (const auto& [key, tensor] : tensors_) {
    const bool is_a = ends_with(key, ".lora_a");
    const std::string site = key.substr(0, key.size() - 7);
    const auto found = site_index.find(site);
    if (found == site_index.end()) {
      return Status(StatusCode::kIncompatible,
                    "adapter file " + path_ + " targets " + site + ", program " + program_path +
                        " has no slot for it; hint: export the program with target modules "
                        "that include this layer");
    }
    const auto [in, out] = program.site_shapes[found->second];
    const int64_t rank = program.max_rank;
    const std::vector<int64_t> expected =
        is_a ? std::vector<int64_t>{1, in, rank} : std::vector<int64_t>{1, rank, out};
    const std::vector<int64_t> received(tensor.sizes.begin(), tensor.sizes.end());
    if (received != expected) {
      return Status(StatusCode::kIncompatible,
                    "adapter file " + path_ + ": key " + key + " expected shape " +
                        shape_text(expected) + ", got " + shape_text(received) +
                        "; hint: the adapter rank must be padded to the program's max rank " +
                        std::to_string(rank) + " (re-export the adapter for this program)");
    }
  }
  return Status::ok_status();
}

}  // namespace etlora
