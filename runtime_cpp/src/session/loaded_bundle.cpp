// LoadedBundle: the bundle-level checks and the name -> file mapping, over
// whichever session runs (Session or HtpSession, one interface below).
#include <etlora/loaded_bundle.h>

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <executorch/extension/module/module.h>

#include "format/format_util.h"

namespace etlora {

namespace {

constexpr const char* kQnnBackendName = "QnnBackend";  // ExecuTorch's Qualcomm backend id

// The backends forward delegates to, read from the program's header alone (no
// method loaded, no backend initialised).
StatusOr<std::vector<std::string>> program_backends(const std::string& path) {
  using executorch::extension::module::Module;
  Module module(path, Module::LoadMode::Mmap);
  auto meta = module.method_meta("forward");
  if (!meta.ok()) {
    return Status(StatusCode::kIncompatible, "HTP program " + path + ": forward's metadata cannot be read (" +
                                                 error_name(meta.error()) + ")");
  }
  std::vector<std::string> names;
  for (size_t i = 0; i < meta->num_backends(); ++i) {
    auto name = meta->get_backend_name(i);
    if (name.ok()) names.emplace_back(*name);
  }
  return names;
}

std::string joined(const std::vector<std::string>& names, const char* empty) {
  std::string out;
  for (const auto& name : names) out += (out.empty() ? "" : ", ") + name;
  return out.empty() ? empty : out;
}

// A file the manifest lists, present with the size it says.
Status check_listed_file(const Bundle& bundle, const std::string& file) {
  const std::string path = bundle.dir() + "/" + file;
  const int64_t listed = bundle.listed_size(file);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return Status(StatusCode::kNotFound,
                  path + ": missing (manifest lists " + std::to_string(listed) + " bytes)");
  }
  if (listed >= 0 && st.st_size != listed) {
    return Status(StatusCode::kIncompatible, path + ": " + std::to_string(st.st_size) + " bytes, manifest says " +
                                                 std::to_string(listed) +
                                                 " (hint: damaged, or a file from another bundle)");
  }
  return Status::ok_status();
}

std::string strength_text(float strength) {
  if (std::isnan(strength)) return "nan";
  if (std::isinf(strength)) return strength > 0 ? "inf" : "-inf";
  char text[32];
  std::snprintf(text, sizeof text, "%g", strength);
  return text;
}

}  // namespace

LoadedBundle::LoadedBundle(Bundle bundle) : bundle_(std::move(bundle)) {}
LoadedBundle::~LoadedBundle() = default;

StatusOr<std::unique_ptr<LoadedBundle>> LoadedBundle::open(const std::string& dir, const LoadOptions& options) {
  auto read = Bundle::open(dir);
  if (!read.ok()) return read.status();
  return open(std::move(*read), options);
}

StatusOr<std::unique_ptr<LoadedBundle>> LoadedBundle::open(Bundle read, const LoadOptions& options) {
  std::unique_ptr<LoadedBundle> loaded(new LoadedBundle(std::move(read)));
  const Bundle& bundle = loaded->bundle_;
  if (options.decided) {
    loaded->backend_ = *options.decided;
  } else {
    auto choice = choose(bundle, options);
    if (!choice.ok()) return choice.status();
    loaded->backend_ = *choice;
  }
  for (const std::string& file : {bundle.program_file(), bundle.foundation_file()}) {
    if (Status present = check_listed_file(bundle, file); !present.ok()) return present;
  }
  const bool htp = loaded->backend_.backend == Backend::kHtp;
  if (Status opened = htp ? loaded->open_htp_session(options) : loaded->open_session(options); !opened.ok()) {
    return opened;
  }
  const std::string& made_for = loaded->info().foundation_fingerprint;
  if (made_for != bundle.foundation_fingerprint()) {
    return Status(StatusCode::kIncompatible,
                  loaded->program_path() + ": program made for foundation " + made_for.substr(0, 12) +
                      ", manifest says " + bundle.foundation_fingerprint().substr(0, 12) +
                      " (hint: files from different bundles)");
  }
  return loaded;
}

StatusOr<BackendChoice> LoadedBundle::choose(const Bundle& bundle, const LoadOptions& options) {
  // Decided before anything is loaded: QnnBackend crashes on a program it
  // cannot run, so only a program the probe cleared may ever reach it.
  std::optional<HtpProgramFacts> htp_program;
  if (bundle.htp_program()) htp_program = HtpProgramFacts{bundle.htp_program()->soc, bundle.htp_program()->path};
  return choose_backend(options.backend, options.facts ? *options.facts : gather_htp_facts(), htp_program);
}

Status LoadedBundle::open_session(const LoadOptions& options) {
  SessionOptions session_options;
  session_options.weight_cache = options.weight_cache;
  session_options.packed_cache_residency = options.packed_cache_residency;
  session_options.max_resident_adapters = options.max_resident_adapters;
  session_options.max_resident_adapter_bytes = options.max_resident_adapter_bytes;
  if (options.packed_cache && options.weight_cache) {
    // An optimisation, never a reason to fail: an unusable folder turns it off with one warning.
    auto path = packed_cache_path(bundle_.dir(), options.packed_cache_dir, bundle_.foundation_weights_id());
    if (path.ok()) {
      session_options.packed_cache_path = *path;
    } else {
      packed_cache_warning_ = "packed cache off: " + path.status().message();
    }
  }
  auto session = Session::open(bundle_.program_path(), bundle_.foundation_path(), session_options);
  if (!session.ok()) return session.status();
  running_ = running_program(std::move(*session));
  return Status::ok_status();
}

Status LoadedBundle::open_htp_session(const LoadOptions& options) {
  const HtpProgram& htp = *bundle_.htp_program();  // choose_backend says htp only with one
  if (options.facts) {
    // Facts not probed (a test's): a stand-in program only, never a QNN payload.
    auto backends = program_backends(htp.path);
    if (!backends.ok()) return backends.status();
    if (std::find(backends->begin(), backends->end(), kQnnBackendName) != backends->end()) {
      return Status(StatusCode::kIncompatible,
                    options.facts_source + ": expected a stand-in HTP program with faked device facts, received " +
                        htp.path + ", which delegates to " + joined(*backends, "none") +
                        " (hint: the facts were not probed, so a QNN program is never run under them; unset " +
                        options.facts_source + " on a device)");
    }
  }
  const std::string foundation = htp.foundation_in_context_bytes == 0 ? bundle_.foundation_path() : "";
  auto session = HtpSession::open(htp.path, foundation,
                                  HtpSessionOptions{options.max_resident_adapters, options.max_resident_adapter_bytes});
  if (!session.ok()) return session.status();
  const HtpProgramInfo& info = (*session)->htp_info();
  if (info.chunk_len != htp.chunk_len || info.cache_len != htp.cache_len) {
    return Status(StatusCode::kIncompatible,
                  htp.path + ": chunk_len " + std::to_string(info.chunk_len) + ", cache_len " +
                      std::to_string(info.cache_len) + "; manifest htp_program says " + std::to_string(htp.chunk_len) +
                      ", " + std::to_string(htp.cache_len) + " (hint: files from different exports)");
  }
  running_ = running_program(std::move(*session));
  return Status::ok_status();
}

const ProgramInfo& LoadedBundle::info() const { return running_->info(); }
const std::string& LoadedBundle::program_path() const { return running_->program_path(); }

StatusOr<std::unique_ptr<Tokenizer>> load_tokenizer_for(const std::string& path, const ProgramInfo& program) {
  auto loaded = Tokenizer::load(path);
  if (!loaded.ok()) return loaded.status();
  if ((*loaded)->vocab_size() > program.vocab_size) {
    return Status(StatusCode::kIncompatible,
                  "tokenizer " + path + " has " + std::to_string((*loaded)->vocab_size()) +
                      " tokens, the program's vocabulary " + std::to_string(program.vocab_size) +
                      " (hint: tokenizer from another model?)");
  }
  return loaded;
}

StatusOr<std::shared_ptr<Tokenizer>> LoadedBundle::tokenizer() {
  if (tokenizer_) return tokenizer_;
  const std::string path = bundle_.tokenizer_path();
  if (path.empty()) {
    return Status(StatusCode::kIncompatible,
                  bundle_.dir() + ": bundle has no tokenizer (exported from a checkpoint without one)");
  }
  auto loaded = load_tokenizer_for(path, info());
  if (!loaded.ok()) return loaded.status();
  tokenizer_ = std::move(*loaded);
  return tokenizer_;
}

Status LoadedBundle::set_adapters(const std::vector<NamedAdapter>& adapters) {
  const int64_t slots = info().adapter_slots;
  if (static_cast<int64_t>(adapters.size()) > slots) {
    std::vector<std::string> names;
    for (const NamedAdapter& adapter : adapters) names.push_back(adapter.name);
    return Status(StatusCode::kInvalidArgument,
                  std::to_string(adapters.size()) + " adapters requested (" + joined(names, "") +
                      "), this program has " + std::to_string(slots) +
                      " adapter slot(s) (hint: export with --adapter-slots " + std::to_string(adapters.size()) + ")");
  }
  std::vector<AdapterChoice> choices;
  for (const NamedAdapter& adapter : adapters) {
    auto path = bundle_.adapter_path(adapter.name);
    if (!path.ok()) return path.status();
    if (!std::isfinite(adapter.strength)) {
      return Status(StatusCode::kInvalidArgument, "adapter '" + adapter.name +
                                                      "': strength must be a finite number, got " +
                                                      strength_text(adapter.strength));
    }
    choices.push_back({*path, adapter.strength});
  }
  if (Status bound = running_->set_adapters(choices); !bound.ok()) {
    // Name the adapter whose file the session refused.
    for (size_t i = 0; i < choices.size(); ++i) {
      if (bound.message().find(choices[i].path) != std::string::npos) {
        return Status(bound.code(), "adapter '" + adapters[i].name + "': " + bound.message());
      }
    }
    return bound;
  }
  active_ = adapters;
  return Status::ok_status();
}

Status LoadedBundle::set_adapter_files(const std::vector<AdapterChoice>& adapters) {
  if (Status bound = running_->set_adapters(adapters); !bound.ok()) return bound;
  active_.clear();
  for (const AdapterChoice& choice : adapters) active_.push_back({choice.path, choice.strength});
  return Status::ok_status();
}

StatusOr<std::vector<float>> LoadedBundle::forward(const std::vector<int64_t>& tokens, int64_t start_pos) {
  return running_->forward(tokens, start_pos);
}

int64_t LoadedBundle::reusable_prefix(const std::vector<int64_t>& prompt) const {
  return running_->reusable_prefix(prompt);
}

StatusOr<GenerationResult> LoadedBundle::generate(const std::vector<int64_t>& prompt,
                                                  const GenerationOptions& options, const TokenCallback& on_token) {
  return running_->generate(prompt, options, on_token);
}

std::vector<std::string> LoadedBundle::resident_adapters() const {
  std::vector<std::string> names = running_->resident_adapter_paths();
  for (std::string& entry : names) {
    for (const BundleAdapter& adapter : bundle_.adapters()) {
      auto path = bundle_.adapter_path(adapter.name);
      if (path.ok() && *path == entry) {
        entry = adapter.name;
        break;
      }
    }
  }
  return names;
}

uint64_t LoadedBundle::resident_adapter_bytes() const { return running_->resident_adapter_bytes(); }

size_t LoadedBundle::release_unbound_adapters() { return running_->release_unbound_adapters(); }

}  // namespace etlora
