// A bundle directory as the runtime reads it (docs/bundle-format.md): the one
// place in C++ that knows manifest.json, the file layout and the cache folder.
// The runner and the Python binding open bundles through it; python/etlora/format/manifest.py
// is its Python twin for the tools, held to the same rules by tests.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "etlora/status.h"

namespace etlora {

struct BundleAdapter {
  std::string name;
  std::string file;   // relative to the bundle
  std::string dtype;  // "fp32" or "fp16"
  int64_t rank = 0;
  std::vector<int64_t> alora_invocation_tokens;  // empty: an ordinary adapter (version 5)
};

// The HTP program beside model.pte (manifest "htp_program", bundle format 4):
// compiled for one Snapdragon SoC, fixed chunk and cache lengths, KV cache owned
// by the host, the same sites, rank and adapter files as model.pte.
struct HtpProgram {
  std::string file;             // relative to the bundle, listed in files
  std::string path;             // dir + "/" + file
  std::string soc;              // e.g. "SM8650"
  std::string qnn_sdk_version;  // the QNN SDK that compiled it, e.g. "2.37.0.250724"
  int64_t chunk_len = 0;        // tokens per call
  int64_t cache_len = 0;        // KV cache rows
  // Foundation data carried inside the program (QNN context binaries); 0 when
  // its weights come from foundation.ptd.
  int64_t foundation_in_context_bytes = 0;
};

class Bundle {
 public:
  // Reads and checks dir/manifest.json: format and version, every path relative
  // and inside the bundle (no "..", no absolute path, no symlink leading out),
  // the foundation's quantization scheme known. Whether each listed file exists
  // and has its size is for the code that opens it (LoadedBundle, AdapterFile).
  static StatusOr<Bundle> open(const std::string& dir);
  // The same checks on manifest text, for a bundle at `dir` (files are not looked at).
  static StatusOr<Bundle> parse(const std::string& manifest_text, const std::string& dir);

  const std::string& dir() const { return dir_; }
  int format_version() const { return format_version_; }
  std::string program_path() const { return dir_ + "/" + program_file_; }
  std::string foundation_path() const { return dir_ + "/" + foundation_file_; }
  // The C++ tokenizer file, or "" when the bundle has no tokenizer.
  std::string tokenizer_path() const { return tokenizer_file_.empty() ? "" : dir_ + "/" + tokenizer_file_; }
  const std::string& foundation_fingerprint() const { return fingerprint_; }
  const std::string& foundation_weights_id() const { return weights_id_; }
  const std::string& quantization_scheme() const { return scheme_; }
  const std::vector<BundleAdapter>& adapters() const { return adapters_; }
  // The HTP program, or nullopt when the bundle has none (versions 1-3, or null).
  const std::optional<HtpProgram>& htp_program() const { return htp_program_; }
  // The size manifest "files" lists for `file` (relative to the bundle), or -1 when unlisted.
  int64_t listed_size(const std::string& file) const {
    auto found = file_sizes_.find(file);
    return found == file_sizes_.end() ? -1 : found->second;
  }
  const std::string& program_file() const { return program_file_; }
  const std::string& foundation_file() const { return foundation_file_; }
  // The adapter file of `name`, or an error listing the names the bundle has.
  StatusOr<std::string> adapter_path(const std::string& name) const;

 private:
  std::string dir_, manifest_path_;
  int format_version_ = 0;
  std::string program_file_, foundation_file_, tokenizer_file_;
  std::string fingerprint_, weights_id_, scheme_ = "fp32";
  std::vector<BundleAdapter> adapters_;
  std::map<std::string, int64_t> file_sizes_;  // manifest "files": path -> size
  std::optional<HtpProgram> htp_program_;
  // (manifest field, path) for every path the manifest lists, checked by parse and open alike.
  std::vector<std::pair<std::string, std::string>> listed_paths_;
};

}  // namespace etlora
