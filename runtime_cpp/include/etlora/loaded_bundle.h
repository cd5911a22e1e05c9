// An opened etlora bundle: the one owner every front end (etlora.load,
// etlora_runner) goes through. open() reads the manifest (etlora::Bundle),
// decides the backend before anything is loaded (choose_backend), checks the
// program and foundation files against the manifest's sizes, opens a Session
// (model.pte) or an HtpSession (model_htp.pte), checks the program's foundation
// fingerprint against the manifest, and later the tokenizer against the
// program's vocabulary. Adapters are chosen by their bundle names.
//
// Like the sessions it holds, a LoadedBundle is not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <etlora/bundle.h>
#include <etlora/generator.h>
#include <etlora/htp_probe.h>
#include <etlora/htp_session.h>
#include <etlora/packed_cache.h>
#include <etlora/program_info.h>
#include <etlora/running_program.h>
#include <etlora/session.h>
#include <etlora/status.h>
#include <etlora/tokenizer.h>

namespace etlora {

struct LoadOptions {
  BackendRequest backend = BackendRequest::kAuto;
  // The device facts choose_backend decides on; unset = probe this device
  // (gather_htp_facts). Facts not probed (a test's) refuse an HTP program that
  // delegates to QnnBackend, decided or not: only a probed device may reach it.
  std::optional<HtpFacts> facts;
  std::string facts_source = "facts";  // where injected facts came from, named in that refusal
  // A decision the caller already made with choose_backend; facts are then not consulted.
  std::optional<BackendChoice> decided;
  // model.pte only (SessionOptions): XNNPACK's weight cache, and the packed
  // cache file in packed_cache_dir ("" = <bundle>/.etlora-cache) when packed_cache.
  bool weight_cache = true;
  bool packed_cache = true;
  std::string packed_cache_dir;
  PackedCacheResidency packed_cache_residency = PackedCacheResidency::kCopy;
  // Either session: how many adapter files stay open (SessionOptions).
  size_t max_resident_adapters = 0;
  uint64_t max_resident_adapter_bytes = 0;
};

// An adapter of the bundle by name, with its strength.
// The tokenizer at `path`, checked against a program's vocabulary (the one
// rule for the bundle's tokenizer and the runner's --tokenizer).
StatusOr<std::unique_ptr<Tokenizer>> load_tokenizer_for(const std::string& path, const ProgramInfo& program);

class LoadedBundle {
 public:
  static StatusOr<std::unique_ptr<LoadedBundle>> open(const std::string& dir, const LoadOptions& options = {});
  // The same over a manifest already read (a front end that reads it first to print the backend).
  static StatusOr<std::unique_ptr<LoadedBundle>> open(Bundle bundle, const LoadOptions& options);
  // The backend decision open() makes, for a front end that prints it before loading.
  static StatusOr<BackendChoice> choose(const Bundle& bundle, const LoadOptions& options);

  const Bundle& bundle() const { return bundle_; }
  const BackendChoice& backend() const { return backend_; }
  // Why the packed cache file is off although asked for ("" when it is not).
  const std::string& packed_cache_warning() const { return packed_cache_warning_; }
  // The session's, whichever runs (HtpSession: max_seq_len is cache_len).
  const ProgramInfo& info() const;
  // The program file that runs (model.pte or model_htp.pte).
  const std::string& program_path() const;
  // The program that runs, and the session kind behind it (exactly one non-null).
  RunningProgram& program() { return *running_; }
  const RunningProgram& program() const { return *running_; }
  const Session* session() const { return running_->session(); }
  const HtpSession* htp_session() const { return running_->htp_session(); }

  // The bundle's tokenizer, loaded on first use and checked against the
  // program's vocabulary; an error when the bundle has none.
  StatusOr<std::shared_ptr<Tokenizer>> tokenizer();

  // Binds the named adapters in order. An unknown name is an error listing the
  // names the bundle has, and the more-than-slots and strength rules are checked
  // first, naming the adapter; a failure leaves the previous adapters active.
  Status set_adapters(const std::vector<NamedAdapter>& adapters);
  // The same with files (the runner's --adapter path.ptd): no name lookup.
  Status set_adapter_files(const std::vector<AdapterChoice>& adapters);
  const std::vector<NamedAdapter>& active_adapters() const { return active_; }

  StatusOr<std::vector<float>> forward(const std::vector<int64_t>& tokens, int64_t start_pos);
  StatusOr<std::vector<float>> logits(const std::vector<int64_t>& tokens) { return forward(tokens, 0); }
  int64_t reusable_prefix(const std::vector<int64_t>& prompt) const;
  StatusOr<GenerationResult> generate(const std::vector<int64_t>& prompt, const GenerationOptions& options,
                                      const TokenCallback& on_token = nullptr);

  // Names (a path when no adapter of the bundle has it) of the adapter files
  // the session holds open, most recently bound first; their sizes together;
  // closing the unbound ones.
  std::vector<std::string> resident_adapters() const;
  uint64_t resident_adapter_bytes() const;
  size_t release_unbound_adapters();

  ~LoadedBundle();

 private:
  explicit LoadedBundle(Bundle bundle);
  Status open_session(const LoadOptions& options);
  Status open_htp_session(const LoadOptions& options);

  Bundle bundle_;
  BackendChoice backend_;
  std::string packed_cache_warning_;
  std::unique_ptr<RunningProgram> running_;
  std::shared_ptr<Tokenizer> tokenizer_;
  std::vector<NamedAdapter> active_;
};

}  // namespace etlora
