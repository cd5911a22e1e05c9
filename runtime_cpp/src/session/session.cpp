// Session: one ExecuTorch Module running an etlora program. Adapter weights
// are method inputs (bundle-format.md), so switching adapters only re-points
// inputs 2.. of `forward`; the program and the foundation stay loaded.
#include <etlora/session.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <limits>

#include <executorch/extension/module/module.h>
#include <executorch/runtime/backend/backend_options_map.h>
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/backend/options.h>
#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/runtime/platform/log.h>

#include "etlora/kernels.h"
#include "etlora/logging.h"
#include "etlora/thread_pool.h"
#include "format/flat_tensor_check.h"
#include "format/format_util.h"
#include "platform/process_memory.h"
#include "session/session_adapters.h"
#include "session/packed_cache_use.h"
#include "session/program_constants.h"

namespace etlora {

using executorch::aten::ScalarType;
using executorch::extension::TensorPtr;
using executorch::extension::make_tensor_ptr;
using executorch::extension::module::Module;
using executorch::runtime::Error;

namespace {

constexpr size_t kTokensInput = 0;
constexpr size_t kPositionsInput = 1;
constexpr size_t kScalesInput = 2;
constexpr size_t kFirstAdapterInput = 3;

constexpr char kXnnpackBackend[] = "XnnpackBackend";
std::atomic<int64_t> g_open_sessions{0};
std::atomic<int64_t> g_cached_sessions{0};

}  // namespace

StatusOr<WeightCacheStats> weight_cache_stats() {
  executorch::runtime::BackendOptions<2> options;
  options.set_option("weight_cache_enabled", false);
  options.set_option("workspace_sharing_mode", -1);
  auto view = options.view();
  if (Error err = executorch::runtime::get_option(kXnnpackBackend, view); err != Error::Ok) {
    return Status(StatusCode::kRuntimeError,
                  std::string("backend ") + kXnnpackBackend + " did not give its options (" +
                      error_name(err) + "); hint: libexecutorch_backend_xnnpack.so must be loaded");
  }
  WeightCacheStats stats;
  options.get_option("weight_cache_enabled", stats.default_enabled);
  options.get_option("workspace_sharing_mode", stats.workspace_sharing_mode);
  stats.open_sessions = g_open_sessions.load();
  stats.cached_sessions = g_cached_sessions.load();
  const ProcessMemory rss = read_process_memory();
  stats.rss_bytes = rss.total;
  stats.rss_anon_bytes = rss.anon;
  stats.rss_file_bytes = rss.file;
  stats.packed_cache_files = packed_cache_files_in_use();
  return stats;
}

namespace {

// etlora_foundation_weights_id (the foundation as stored: fp32 or quantized), or the
// fingerprint for programs exported before it existed (always fp32).
StatusOr<std::string> read_weights_id(Module& module, const std::string& program,
                                      const std::string& fingerprint) {
  auto names = module.method_names();
  if (names.ok() && names->count("etlora_foundation_weights_id") == 0) return fingerprint;
  return constant_string(module, program, "etlora_foundation_weights_id");
}

}  // namespace

StatusOr<std::string> read_foundation_weights_id(const std::string& program_path) {
  if (!is_regular_file(program_path)) {
    return Status(StatusCode::kNotFound, "program file " + program_path +
                                             " not found (expected model.pte of an etlora bundle)");
  }
  Module module(program_path, Module::LoadMode::Mmap);
  auto fingerprint = constant_string(module, program_path, "etlora_foundation_fingerprint");
  if (!fingerprint.ok()) return fingerprint.status();
  return read_weights_id(module, program_path, *fingerprint);
}

struct Session::Impl {
  // Declared first so it is released last, after the module's delegates.
  std::unique_ptr<PackedCacheUse> packed_file;
  std::unique_ptr<Module> module;
  // Input storage. The exporter keeps inputs out of memory planning, so
  // ExecuTorch points the method's inputs at these buffers (no copy): they
  // must stay where they are for the Session's lifetime.
  std::vector<int64_t> tokens;
  std::vector<int64_t> positions;
  std::vector<float> scales;
  const float* absent_rows = nullptr;  // bound to every slot/site without an adapter
  std::vector<float> zeros;  // backs absent_rows when the shared zero region is too small
  TensorPtr scales_input;                 // over `scales`, bound once
  size_t memory_planned_inputs = 0;
};

Session::Session() : impl_(std::make_unique<Impl>()) { ++g_open_sessions; }
Session::~Session() {
  --g_open_sessions;
  if (weight_cache_) --g_cached_sessions;
}

size_t Session::memory_planned_inputs() const { return impl_->memory_planned_inputs; }

StatusOr<std::unique_ptr<Session>> Session::open(const std::string& program_path,
                                                 const std::string& foundation_path,
                                                 const SessionOptions& options) {
  if (!is_regular_file(program_path)) {
    return Status(StatusCode::kNotFound, "program file " + program_path +
                                             " not found (expected model.pte of an etlora bundle)");
  }
  if (!is_regular_file(foundation_path)) {
    return Status(StatusCode::kNotFound,
                  "foundation file " + foundation_path +
                      " not found (expected foundation.ptd beside model.pte)");
  }
  prepare_process_for_programs();
  if (Status registered = register_kernels(); !registered.ok()) return registered;
  const auto load_start = std::chrono::steady_clock::now();
  const int64_t anon_before = read_process_memory().anon;
  std::unique_ptr<Session> session(new Session());
  session->program_path_ = program_path;
  Impl& impl = *session->impl_;
  if (!options.packed_cache_path.empty()) {
    if (!options.weight_cache) {
      return Status(StatusCode::kInvalidArgument,
                    "packed cache path " + options.packed_cache_path +
                        " given with the weight cache off; hint: the XNNPACK backend reads and "
                        "writes the packed cache file only through its weight cache, turn it on");
    }
    auto planned = PackedCacheUse::plan(options.packed_cache_path, options.packed_cache_residency);
    if (!planned.ok()) return planned.status();
    impl.packed_file = std::move(*planned);
  }
  // Bounds before trust: ExecuTorch's FlatTensor reader follows the file's offsets unchecked.
  // XNNPACK's packed blobs carry no tensor layout, so layouts are optional here.
  if (Status checked = check_flat_tensor_file(foundation_path, "foundation file",
                                              /*layouts_required=*/false);
      !checked.ok()) {
    return checked;
  }
  impl.module = std::make_unique<Module>(program_path, std::vector<std::string>{foundation_path},
                                         Module::LoadMode::Mmap);
  Module& module = *impl.module;
  // Per-load XNNPACK options (the Module keeps a copy for load_method).
  // The packed cache file path is honoured only here, per load (the backend ignores
  // a process-wide packed_cache_path for loading).
  executorch::runtime::BackendOptions<2> xnnpack_options;
  executorch::runtime::LoadBackendOptionsMap backend_options;
  Error set = xnnpack_options.set_option("weight_cache_enabled", options.weight_cache);
  if (set == Error::Ok && impl.packed_file && !impl.packed_file->backend_path().empty()) {
    set = xnnpack_options.set_option("packed_cache_path", impl.packed_file->backend_path().c_str());
  }
  if (set == Error::Ok) set = backend_options.set_options(kXnnpackBackend, xnnpack_options.view());
  if (set != Error::Ok) {
    return Status(StatusCode::kRuntimeError, std::string("could not build options for backend ") +
                                                 kXnnpackBackend + " (" + error_name(set) + ")");
  }
  if (Error err = module.load(backend_options); err != Error::Ok) {
    return Status(StatusCode::kRuntimeError,
                  "program " + program_path + " with foundation " + foundation_path +
                      " could not be loaded (" + error_name(err) +
                      "): expected an ExecuTorch program and its foundation.ptd; hint: a truncated "
                      "or damaged file, or files from different exports");
  }

  // Constant methods: the input layout of `forward`.
  auto names = etlora_method_names(module, program_path);
  if (!names.ok()) return names.status();
  ProgramInfo& info = session->info_;
  if (Status version = read_format_version(module, program_path, "program " + program_path, kOldestFormatVersion,
                                             kFormatVersion, info);
      !version.ok()) {
    return version;
  }
  auto largest = read_adapter_layout(module, program_path, info);
  if (!largest.ok()) return largest.status();
  const size_t largest_site = static_cast<size_t>(*largest);
  auto seq_len = constant_int(module, program_path, "etlora_max_seq_len");
  if (!seq_len.ok()) return seq_len.status();
  info.max_seq_len = *seq_len;
  if (info.max_seq_len < 1 || info.max_seq_len > std::numeric_limits<int32_t>::max()) {
    return Status(StatusCode::kIncompatible,
                  "program " + program_path + ": etlora_max_seq_len expected 1 .. 2^31-1, got " +
                      std::to_string(info.max_seq_len));
  }
  auto weights_id = read_weights_id(module, program_path, info.foundation_fingerprint);
  if (!weights_id.ok()) return weights_id.status();
  info.foundation_weights_id = *weights_id;
  if (impl.packed_file) {  // before forward loads: nothing is packed or mapped yet
    Status named = impl.packed_file->check_name(info.foundation_weights_id);
    if (!named.ok()) return named;
  }

  // Load `forward` once; it stays loaded for the Session's lifetime.
  if (Error err = module.load_method("forward"); err != Error::Ok) {
    return Status(StatusCode::kRuntimeError,
                  "program " + program_path + ": method forward could not be loaded with "
                  "foundation " + foundation_path + " (" + error_name(err) +
                      "); hint: foundation.ptd must be the one exported with this model.pte");
  }
  auto meta = module.method_meta("forward");
  const size_t expected_inputs =
      kFirstAdapterInput + 2 * info.sites.size() * static_cast<size_t>(info.adapter_slots);
  if (!meta.ok() || meta->num_inputs() != expected_inputs) {
    return Status(StatusCode::kIncompatible,
                  "program " + program_path + ": forward is expected to take " +
                      std::to_string(expected_inputs) + " inputs (3 + 2 * sites * slots), it takes " +
                      (meta.ok() ? std::to_string(meta->num_inputs()) : std::string("?")));
  }
  for (size_t i = 0; i < expected_inputs; ++i) {
    auto tensor_meta = meta->input_tensor_meta(i);
    if (tensor_meta.ok() && tensor_meta->is_memory_planned()) ++impl.memory_planned_inputs;
  }

  impl.tokens.assign(info.max_seq_len, 0);
  impl.positions.assign(info.max_seq_len, 0);
  impl.scales.assign(std::max<int64_t>(info.adapter_slots, 1), 0.0f);
  // Absent sites read the process-wide zero region, which the attention kernel skips.
  impl.absent_rows = absent_adapter_rows(largest_site * info.max_rank);
  if (impl.absent_rows == nullptr) {
    impl.zeros.assign(largest_site * info.max_rank, 0.0f);
    impl.absent_rows = impl.zeros.data();
  }
  impl.scales_input = make_tensor_ptr({static_cast<int32_t>(info.adapter_slots)},
                                      impl.scales.data(), ScalarType::Float);
  session->adapters_ = std::make_unique<SessionAdapterState>(
      slot_binder(module, kFirstAdapterInput, info.sites.size(), "program " + program_path), session->info_,
      program_path, "program " + program_path, impl.absent_rows,
      ResidencyBudget{options.max_resident_adapters, options.max_resident_adapter_bytes}, info.max_seq_len);
  if (Error err = module.set_input("forward", *impl.scales_input, kScalesInput); err != Error::Ok) {
    return Status(StatusCode::kRuntimeError,
                  "program " + program_path + ": ExecuTorch refused the adapter scales input (" +
                      error_name(err) + "); hint: the program's input layout differs from its "
                      "constant methods");
  }
  Status no_adapters = session->adapters_->registry.bind_empty(session->adapters_->bind);
  if (!no_adapters.ok()) return no_adapters;
  if (impl.packed_file) session->packed_cache_ = impl.packed_file->settle();
  session->load_anon_bytes_ = read_process_memory().anon - anon_before;
  session->weight_cache_ = options.weight_cache;
  if (options.weight_cache) ++g_cached_sessions;
  session->packed_cache_.load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  return session;
}


StatusOr<std::vector<float>> Session::forward(const std::vector<int64_t>& tokens,
                                              int64_t start_pos) {
  Impl& impl = *impl_;
  if (Status valid = check_forward_tokens(tokens, start_pos, info_.max_seq_len, "max_seq_len",
                                          info_.vocab_size);
      !valid.ok()) {
    return valid;
  }
  // The cache now holds what this call writes: positions from end on are stale.
  const int64_t count = static_cast<int64_t>(tokens.size());
  const int64_t end = start_pos + count;
  adapters_->history.begin_write(tokens.data(), count, start_pos);
  // Activated LoRA: a slot's adapter applies from its activation start on, so
  // the call runs in segments cut at those starts, each slot's scale 0 before.
  StatusOr<std::vector<float>> logits = std::vector<float>();
  for (const Segment& segment : adapters_->registry.segments(adapters_->history.tokens(), start_pos, end)) {
    std::copy(segment.scales.begin(), segment.scales.end(), impl.scales.begin());
    if (segment.any_adapter) adapters_->history.adapter_touched(segment.begin);
    logits = run_segment(tokens.data() + (segment.begin - start_pos), segment.end - segment.begin,
                         segment.begin);
    if (!logits.ok()) {
      adapters_->history.written_up_to(segment.begin);  // what follows was not written
      return logits;
    }
  }
  return logits;
}

StatusOr<std::vector<float>> Session::run_segment(const int64_t* tokens, int64_t count, int64_t start_pos) {
  Impl& impl = *impl_;
  for (int64_t i = 0; i < count; ++i) {
    impl.tokens[i] = tokens[i];
    impl.positions[i] = start_pos + i;
  }
  auto tokens_tensor =
      make_tensor_ptr({1, static_cast<int32_t>(count)}, impl.tokens.data(), ScalarType::Long);
  auto positions_tensor =
      make_tensor_ptr({static_cast<int32_t>(count)}, impl.positions.data(), ScalarType::Long);
  for (auto [tensor, index] : {std::pair{&tokens_tensor, kTokensInput},
                               std::pair{&positions_tensor, kPositionsInput}}) {
    if (Error err = impl.module->set_input("forward", **tensor, index); err != Error::Ok) {
      return Status(StatusCode::kRuntimeError,
                    "program " + program_path_ + ": ExecuTorch refused input " +
                        std::to_string(index) + " (" + error_name(err) + ")");
    }
  }
  auto outputs = impl.module->execute("forward");
  if (!outputs.ok()) {
    const std::string kernel_error = last_kernel_error();
    return Status(StatusCode::kRuntimeError,
                  "program " + program_path_ + ": forward failed (" + error_name(outputs.error()) +
                      ")" + (kernel_error.empty() ? "" : ": " + kernel_error));
  }
  if (outputs->empty() || !(*outputs)[0].isTensor()) {
    return Status(StatusCode::kRuntimeError,
                  "program " + program_path_ + ": forward returned no logits tensor");
  }
  const auto& logits = (*outputs)[0].toTensor();
  if (logits.scalar_type() != ScalarType::Float || logits.numel() < info_.vocab_size) {
    return Status(StatusCode::kRuntimeError,
                  "program " + program_path_ + ": logits expected float32 with " +
                      std::to_string(info_.vocab_size) + " values, got " +
                      dtype_name(logits.scalar_type()) + " with " +
                      std::to_string(logits.numel()));
  }
  const float* last = logits.const_data_ptr<float>() + (logits.numel() - info_.vocab_size);
  return std::vector<float>(last, last + info_.vocab_size);
}

}  // namespace etlora
