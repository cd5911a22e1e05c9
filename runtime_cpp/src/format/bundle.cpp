// Bundle::open: manifest.json read and checked (include/etlora/bundle.h).
//
// The rules are python/etlora/format/manifest.py's, in the same order, so that a manifest
// one side refuses the other refuses too (tests/test_bundle_reader.py):
// format and version, the records and their members, the quantization scheme,
// then every path, then the HTP program listed in files.
#include "etlora/bundle.h"

#include <sys/stat.h>

#include <climits>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "format/json.h"

namespace etlora {
namespace {

using Kind = JsonValue::Kind;

// 4 added htp_program; versions 1-3 have none. 7: tokenizer.runtime_file is the model's tokenizer.json
// (versions 1-6: the retired line format, which Tokenizer::load refuses by name).
constexpr int kReadableVersions[] = {1, 2, 3, 4, 5, 6, 7};
constexpr size_t kMaxAloraTokens = 64;  // adapter_format.py's limit
constexpr double kAloraTokenLimit = 2147483648.0;  // 2^31
constexpr const char* kKnownSchemes[] = {"fp32", "8da4w", "8da8w"};

struct RecordShape {
  const char* name;
  std::set<std::string> required;
  std::set<std::string> optional;
  bool open = false;  // other members allowed (the top level: readers skip what they do not use)
};

const RecordShape kTop{"manifest", {"format", "format_version", "program", "foundation", "files", "adapters"},
                       {"tokenizer", "htp_program"}, /*open=*/true};
const RecordShape kProgram{"program",
                           {"file", "backend", "max_rank", "adapter_slots", "max_seq_len", "sites", "site_dims",
                            "target_modules"},
                           {}};
const RecordShape kFoundation{"foundation", {"file", "fingerprint", "source", "config"},
                              {"weights_id", "quantization"}};
const RecordShape kQuantization{"foundation.quantization", {},
                                {"scheme", "group_size", "embedding_bits", "embedding_group_size", "head_bits",
                                 "quantized_modules", "float_weights"}};
const RecordShape kAdapter{"adapter",
                           {"file", "rank", "alpha", "scaling", "use_rslora", "target_modules", "base_model",
                            "source"},
                           {"dtype", "alora_invocation_tokens"}};
const RecordShape kFile{"files entry", {"size", "sha256"}, {}};
const RecordShape kTokenizer{"tokenizer", {"directory", "runtime_file"}, {}};
const RecordShape kHtpProgram{"htp_program",
                              {"file", "soc", "qnn_sdk_version", "chunk_len", "cache_len",
                               "foundation_in_context_bytes"},
                              {}};
constexpr double kJsonIntegerLimit = 9007199254740992.0;  // 2^53, as python/etlora/format/manifest.py

class ManifestReader {
 public:
  ManifestReader(const std::string& manifest_path) : path_(manifest_path) {}

  Status fail(const std::string& what) {
    return Status(StatusCode::kInvalidArgument, path_ + ": " + what);
  }

  // An object with the record's members: all required present, nothing unknown.
  Status check_record(const JsonValue* value, const RecordShape& shape, const std::string& where) {
    if (value == nullptr || !value->is(Kind::kObject)) {
      return fail("manifest is missing or has unexpected fields (" + where + ": expected an object)");
    }
    for (const std::string& key : shape.required) {
      if (value->find(key) == nullptr) {
        return fail("manifest is missing or has unexpected fields (" + where + " has no '" + key + "')");
      }
    }
    for (const auto& [key, member] : value->object()) {
      if (!shape.open && !shape.required.count(key) && !shape.optional.count(key)) {
        return fail("manifest is missing or has unexpected fields (" + where + " has an unexpected '" + key + "')");
      }
    }
    return Status::ok_status();
  }

  Status string_member(const JsonValue& record, const char* key, const std::string& where, std::string& out,
                       bool allow_null = false) {
    const JsonValue* member = record.find(key);
    if (member == nullptr || (allow_null && member->is(Kind::kNull))) return Status::ok_status();
    if (!member->is(Kind::kString)) {
      return fail(where + "." + key + ": expected a string, got " + JsonValue::kind_name(member->kind()));
    }
    out = member->string();
    return Status::ok_status();
  }

  // A whole number within +-2^53 and >= minimum (python/etlora/format/manifest.py's _json_integer).
  Status integer_member(const JsonValue& record, const char* key, const std::string& where, int64_t minimum,
                        int64_t& out) {
    const JsonValue* member = record.find(key);
    const std::string prefix = where + "." + key + ": expected an integer >= " + std::to_string(minimum) + ", got ";
    if (!member->is(Kind::kNumber)) return fail(prefix + JsonValue::kind_name(member->kind()));
    const double value = member->number();
    if (!std::isfinite(value) || std::floor(value) != value || std::fabs(value) > kJsonIntegerLimit) {
      return fail(prefix + "a number that is not a whole number within 2^53");
    }
    out = static_cast<int64_t>(value);
    if (out < minimum) return fail(prefix + std::to_string(out));
    return Status::ok_status();
  }

  // Relative, '/'-separated, no '..' component, no NUL or backslash (bundle-format.md).
  Status check_inside(const std::string& where, const std::string& path) {
    bool bad = path.empty() || path[0] == '/' || path.find('\\') != std::string::npos ||
               path.find('\0') != std::string::npos;
    std::stringstream parts(path);
    for (std::string part; std::getline(parts, part, '/');) bad = bad || part == "..";
    if (bad) {
      return fail(where + " is '" + path +
                  "', expected a relative path inside the bundle (no '..', not absolute); hint: the "
                  "manifest was edited or is hostile");
    }
    return Status::ok_status();
  }

 private:
  std::string path_;
};

std::string read_file(const std::string& path, bool& ok) {
  std::ifstream in(path, std::ios::binary);
  ok = static_cast<bool>(in);
  if (!ok) return "";
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0 || static_cast<uint64_t>(size) > kMaxJsonBytes) {
    ok = size >= 0;
    return std::string(kMaxJsonBytes + 1, ' ');  // parse_json names the limit
  }
  std::string text(static_cast<size_t>(size), '\0');
  in.seekg(0);
  in.read(text.data(), size);
  ok = static_cast<bool>(in);
  return text;
}

}  // namespace

StatusOr<Bundle> Bundle::parse(const std::string& text, const std::string& dir) {
  const std::string manifest_path = dir + "/manifest.json";
  ManifestReader reader(manifest_path);
  auto parsed = parse_json(text, manifest_path);
  if (!parsed.ok()) return parsed.status();
  const JsonValue& root = *parsed;
  if (!root.is(Kind::kObject)) return reader.fail("expected a JSON object");

  const JsonValue* format = root.find("format");
  if (format == nullptr || !format->is(Kind::kString) || format->string() != "etlora-bundle") {
    return reader.fail("expected format 'etlora-bundle', received " +
                       (format && format->is(Kind::kString) ? "'" + format->string() + "'" : std::string("other")));
  }
  const JsonValue* version = root.find("format_version");
  int version_number = -1;
  if (version != nullptr && version->is(Kind::kNumber) && version->number() == std::floor(version->number()) &&
      std::fabs(version->number()) < 1e6) {
    version_number = static_cast<int>(version->number());
  }
  bool readable = false;
  std::string readable_list;
  for (int known : kReadableVersions) {
    readable = readable || known == version_number;
    readable_list += (readable_list.empty() ? "" : ", ") + std::to_string(known);
  }
  if (!readable) {
    return reader.fail("bundle format version " +
                       (version_number >= 0 ? std::to_string(version_number) : std::string("(not a number)")) +
                       ", this etlora reads versions " + readable_list +
                       " (hint: re-export the bundle with this etlora, or upgrade etlora)");
  }
  if (Status s = reader.check_record(&root, kTop, "manifest"); !s.ok()) return s;
  const JsonValue& program = *root.find("program");
  const JsonValue& foundation = *root.find("foundation");
  if (Status s = reader.check_record(&program, kProgram, "program"); !s.ok()) return s;
  if (Status s = reader.check_record(&foundation, kFoundation, "foundation"); !s.ok()) return s;
  const JsonValue* quantization = foundation.find("quantization");
  if (quantization != nullptr) {
    if (Status s = reader.check_record(quantization, kQuantization, "foundation.quantization"); !s.ok()) return s;
  }

  Bundle bundle;
  bundle.dir_ = dir;
  bundle.manifest_path_ = manifest_path;
  bundle.format_version_ = version_number;
  for (auto [record, key, where, out] :
       {std::tuple{&program, "file", "program", &bundle.program_file_},
        std::tuple{&foundation, "file", "foundation", &bundle.foundation_file_},
        std::tuple{&foundation, "fingerprint", "foundation", &bundle.fingerprint_},
        std::tuple{&foundation, "weights_id", "foundation", &bundle.weights_id_}}) {
    if (Status s = reader.string_member(*record, key, where, *out); !s.ok()) return s;
  }
  if (bundle.weights_id_.empty()) bundle.weights_id_ = bundle.fingerprint_;  // version 1
  if (quantization != nullptr) {
    if (Status s = reader.string_member(*quantization, "scheme", "foundation.quantization", bundle.scheme_); !s.ok()) {
      return s;
    }
  }
  bool known_scheme = false;
  for (const char* scheme : kKnownSchemes) known_scheme = known_scheme || bundle.scheme_ == scheme;
  if (!known_scheme) {
    return reader.fail("foundation quantization scheme '" + bundle.scheme_ +
                       "' is unknown to this etlora (reads fp32, 8da4w, 8da8w; hint: upgrade etlora)");
  }

  const JsonValue& files = *root.find("files");
  if (!files.is(Kind::kObject)) return reader.fail("manifest is missing or has unexpected fields (files: expected an object)");
  for (const auto& [name, record] : files.object()) {
    if (Status s = reader.check_record(&record, kFile, "files['" + name + "']"); !s.ok()) return s;
    int64_t size = 0;
    if (Status s = reader.integer_member(record, "size", "files['" + name + "']", 0, size); !s.ok()) return s;
    bundle.file_sizes_[name] = size;
  }
  const JsonValue& adapters = *root.find("adapters");
  if (!adapters.is(Kind::kObject)) {
    return reader.fail("manifest is missing or has unexpected fields (adapters: expected an object)");
  }
  for (const auto& [name, record] : adapters.object()) {
    const std::string where = "adapters['" + name + "']";
    if (Status s = reader.check_record(&record, kAdapter, where); !s.ok()) return s;
    BundleAdapter adapter;
    adapter.name = name;
    adapter.dtype = "fp32";
    if (Status s = reader.string_member(record, "file", where, adapter.file); !s.ok()) return s;
    if (Status s = reader.string_member(record, "dtype", where, adapter.dtype); !s.ok()) return s;
    // Version 5: an activated LoRA's invocation tokens (the adapter file is what the runtime uses).
    const JsonValue* tokens = record.find("alora_invocation_tokens");
    if (tokens != nullptr && !tokens->is(Kind::kNull)) {
      const std::string at = where + ".alora_invocation_tokens";
      if (!tokens->is(Kind::kArray) || tokens->array().empty() || tokens->array().size() > kMaxAloraTokens) {
        const std::string got = tokens->is(Kind::kArray) ? std::to_string(tokens->array().size()) + " entries"
                                                         : JsonValue::kind_name(tokens->kind());
        return reader.fail(at + ": expected null or an array of 1 to " + std::to_string(kMaxAloraTokens) +
                           " token ids, got " + got);
      }
      for (size_t i = 0; i < tokens->array().size(); ++i) {
        const JsonValue& token = tokens->array()[i];
        const std::string prefix = at + "[" + std::to_string(i) + "]: expected an integer >= 0 and < 2^31, got ";
        if (!token.is(Kind::kNumber)) return reader.fail(prefix + JsonValue::kind_name(token.kind()));
        const double value = token.number();
        if (!std::isfinite(value) || std::floor(value) != value || std::fabs(value) > kJsonIntegerLimit) {
          return reader.fail(prefix + "a number that is not a whole number within 2^53");
        }
        if (value < 0 || value >= kAloraTokenLimit) return reader.fail(prefix + std::to_string(int64_t(value)));
        adapter.alora_invocation_tokens.push_back(static_cast<int64_t>(value));
      }
    }
    if (Status s = reader.integer_member(record, "rank", where, 0, adapter.rank); !s.ok()) return s;
    bundle.adapters_.push_back(std::move(adapter));
  }
  const JsonValue* tokenizer = root.find("tokenizer");
  std::string tokenizer_directory;
  if (tokenizer != nullptr && !tokenizer->is(Kind::kNull)) {
    if (Status s = reader.check_record(tokenizer, kTokenizer, "tokenizer"); !s.ok()) return s;
    if (Status s = reader.string_member(*tokenizer, "directory", "tokenizer", tokenizer_directory); !s.ok()) return s;
    if (Status s = reader.string_member(*tokenizer, "runtime_file", "tokenizer", bundle.tokenizer_file_); !s.ok()) {
      return s;
    }
  }

  const JsonValue* htp = root.find("htp_program");
  if (htp != nullptr && !htp->is(Kind::kNull)) {
    if (Status s = reader.check_record(htp, kHtpProgram, "htp_program"); !s.ok()) return s;
    HtpProgram program;
    for (auto [key, out] : {std::pair{"file", &program.file}, std::pair{"soc", &program.soc},
                            std::pair{"qnn_sdk_version", &program.qnn_sdk_version}}) {
      if (Status s = reader.string_member(*htp, key, "htp_program", *out); !s.ok()) return s;
    }
    for (auto [key, minimum, out] : {std::tuple{"chunk_len", int64_t{1}, &program.chunk_len},
                                     std::tuple{"cache_len", int64_t{1}, &program.cache_len},
                                     std::tuple{"foundation_in_context_bytes", int64_t{0},
                                                &program.foundation_in_context_bytes}}) {
      if (Status s = reader.integer_member(*htp, key, "htp_program", minimum, *out); !s.ok()) return s;
    }
    if (program.chunk_len > program.cache_len) {
      return reader.fail("htp_program.chunk_len: expected at most cache_len (" + std::to_string(program.cache_len) +
                         "), got " + std::to_string(program.chunk_len));
    }
    program.path = dir + "/" + program.file;
    bundle.htp_program_ = std::move(program);
  }

  // Every path a reader opens, in python/etlora/format/manifest.py's order.
  std::vector<std::pair<std::string, std::string>>& paths = bundle.listed_paths_;
  paths = {{"program.file", bundle.program_file_}, {"foundation.file", bundle.foundation_file_}};
  for (const auto& [name, record] : files.object()) paths.emplace_back("files['" + name + "']", name);
  for (const BundleAdapter& adapter : bundle.adapters_) {
    paths.emplace_back("adapters['" + adapter.name + "'].file", adapter.file);
  }
  if (tokenizer != nullptr && !tokenizer->is(Kind::kNull)) {
    paths.emplace_back("tokenizer.directory", tokenizer_directory);
    paths.emplace_back("tokenizer.runtime_file", bundle.tokenizer_file_);
  }
  if (bundle.htp_program_) paths.emplace_back("htp_program.file", bundle.htp_program_->file);
  for (const auto& [where, path] : paths) {
    if (Status s = reader.check_inside(where, path); !s.ok()) return s;
  }
  // Listed in files, so its size and sha256 are checked like model.pte's.
  if (bundle.htp_program_ && files.find(bundle.htp_program_->file) == nullptr) {
    return reader.fail("htp_program.file '" + bundle.htp_program_->file +
                       "' is not listed in files (expected every program file listed with its size and sha256); "
                       "hint: the manifest was edited or is hostile");
  }
  return bundle;
}

StatusOr<Bundle> Bundle::open(const std::string& dir) {
  const std::string manifest_path = dir + "/manifest.json";
  bool ok = false;
  const std::string text = read_file(manifest_path, ok);
  if (!ok) {
    return Status(StatusCode::kNotFound, dir + ": not an etlora bundle (manifest.json not found)");
  }
  auto bundle = parse(text, dir);
  if (!bundle.ok()) return bundle;
  // No listed file may resolve (through a symlink) outside the bundle.
  char root_buffer[PATH_MAX];
  if (::realpath(dir.c_str(), root_buffer) == nullptr) {
    return Status(StatusCode::kNotFound, dir + ": bundle directory cannot be resolved");
  }
  const std::string root = std::string(root_buffer) + "/";
  // Each folder resolved once and one lstat per file (a realpath per file would
  // lstat every component): a bundle of a hundred adapters opens as one does.
  std::unordered_map<std::string, std::string> folders;  // listed folder -> resolved, "" if unresolvable
  std::unordered_set<std::string> seen;  // files keys and adapters[].file name the same paths
  for (const auto& [where, path] : bundle->listed_paths_) {
    if (!seen.insert(path).second) continue;
    const size_t slash = path.rfind('/');
    const std::string folder = slash == std::string::npos ? "" : path.substr(0, slash);
    auto found = folders.find(folder);
    if (found == folders.end()) {
      char folder_buffer[PATH_MAX];
      const std::string full = folder.empty() ? dir : dir + "/" + folder;
      found = folders.emplace(folder, ::realpath(full.c_str(), folder_buffer) ? folder_buffer : "").first;
    }
    if (found->second.empty()) continue;  // a missing folder: the file check names the file
    std::string resolved = found->second + "/" + path.substr(slash == std::string::npos ? 0 : slash + 1);
    struct stat info {};
    if (::lstat(resolved.c_str(), &info) != 0) continue;  // missing: reported by the file check
    if (S_ISLNK(info.st_mode)) {
      char link_buffer[PATH_MAX];
      if (::realpath(resolved.c_str(), link_buffer) == nullptr) continue;  // dangling: as missing
      resolved = link_buffer;
    }
    if (resolved.rfind(root, 0) != 0) {
      return Status(StatusCode::kInvalidArgument,
                    manifest_path + ": " + where + " '" + path + "' resolves to " + resolved +
                        ", outside the bundle " + root_buffer + " (a symlink leading out); hint: copy the file into the bundle");
    }
  }
  return bundle;
}

StatusOr<std::string> Bundle::adapter_path(const std::string& name) const {
  std::string names;
  for (const BundleAdapter& adapter : adapters_) {
    if (adapter.name == name) return dir_ + "/" + adapter.file;
    names += (names.empty() ? "" : ", ") + adapter.name;
  }
  return Status(StatusCode::kNotFound,
                dir_ + ": no adapter named '" + name + "' (bundle has: " + (names.empty() ? "none" : names) + ")");
}

}  // namespace etlora
