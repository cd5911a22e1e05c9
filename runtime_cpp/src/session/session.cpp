// Session: one ExecuTorch Module running an etlora program. Adapter weights
// are method inputs (bundle-format.md), so switching adapters only re-points
// inputs 2.. of `forward`; the program and the foundation stay loaded.
#include <etlora/session.h>

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cmath>
#include <fstream>
#include <limits>
#include <unordered_map>

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
#include "session/program_constants.h"
#include "format/format_util.h"
#include "session/packed_file_use.h"

namespace etlora {

using executorch::aten::ScalarType;
using executorch::extension::TensorPtr;
using executorch::extension::make_tensor_ptr;
using executorch::extension::module::Module;
using executorch::runtime::EValue;
using executorch::runtime::Error;

namespace {

constexpr size_t kTokensInput = 0;
constexpr size_t kPositionsInput = 1;
constexpr size_t kScalesInput = 2;
constexpr size_t kFirstAdapterInput = 3;

constexpr char kXnnpackBackend[] = "XnnpackBackend";
std::atomic<int64_t> g_open_sessions{0};
std::atomic<int64_t> g_cached_sessions{0};

// VmRSS, RssAnon and RssFile of this process in bytes (0 where unreadable).
struct Rss {
  int64_t total = 0, anon = 0, file = 0;
};
Rss read_rss() {
  Rss rss;
  std::ifstream status("/proc/self/status");
  std::string key;
  int64_t kib = 0;
  while (status >> key) {
    if (key == "VmRSS:" || key == "RssAnon:" || key == "RssFile:") {
      if (!(status >> kib)) break;
      (key == "VmRSS:" ? rss.total : key == "RssAnon:" ? rss.anon : rss.file) = kib * 1024;
    }
    status.ignore(1 << 20, '\n');
  }
  return rss;
}

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
  const Rss rss = read_rss();
  stats.rss_bytes = rss.total;
  stats.rss_anon_bytes = rss.anon;
  stats.rss_file_bytes = rss.file;
  stats.packed_cache_files = packed_files_in_use();
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

// An adapter file opened, checked against the program and turned into the
// 2 * sites method inputs it binds to any slot: checked once, bound many times.
struct OpenAdapter {
  std::shared_ptr<const AdapterFile> file;
  std::vector<TensorPtr> inputs;  // lora_a, lora_b per site; absent sites over absent_rows
  struct stat identity {};        // of the path when opened: a rewritten file is opened again
  uint64_t last_used = 0;
};

namespace {

bool same_file(const struct stat& a, const struct stat& b) {
  return a.st_ino == b.st_ino && a.st_dev == b.st_dev && a.st_size == b.st_size &&
         a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec == b.st_mtim.tv_nsec;
}

}  // namespace

struct Session::Impl {
  // Declared first so it is released last, after the module's delegates.
  std::unique_ptr<PackedFileUse> packed_file;
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
  std::vector<TensorPtr> empty_slot;      // 2 per site, all over absent_rows
  // Adapters this Session has opened and checked, by the path it was given.
  std::unordered_map<std::string, OpenAdapter> open_adapters;
  std::vector<const OpenAdapter*> bound;  // per slot; nullptr = empty slot
  uint64_t use_clock = 0;
  std::vector<float> base_scales;         // strength * scaling per slot (scales: per segment)
  std::vector<int64_t> history;           // the token at each cache position
  int64_t cache_end = 0;                  // positions [0, cache_end) hold history's K/V
  int64_t adapter_from = std::numeric_limits<int64_t>::max();  // first cached position an adapter touched
  // First cached position computed with other adapters or strengths than those bound now.
  int64_t stale_from = std::numeric_limits<int64_t>::max();
  // Positions from here on may hold K/V computed after other tokens than history's
  // before them: a forward that started past cache_end left a gap of older K/V.
  int64_t consistent_end = std::numeric_limits<int64_t>::max();
  size_t max_resident_adapters = 0;           // 0 = no limit
  uint64_t max_resident_adapter_bytes = 0;    // 0 = no limit
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
  install_runtime_log_filter();  // before the pool and the delegate print their info lines
  if (Status registered = register_kernels(); !registered.ok()) return registered;
  if (!thread_pool_state().configured) {
    // Only speed depends on it: a pool that cannot take the executor runs as before.
    if (Status pool = configure_thread_pool({}); !pool.ok()) {
      ET_LOG(Info, "etlora: thread pool left as it is: %s", pool.message().c_str());
    }
  }
  const auto load_start = std::chrono::steady_clock::now();
  const int64_t anon_before = read_rss().anon;
  std::unique_ptr<Session> session(new Session());
  session->program_path_ = program_path;
  Impl& impl = *session->impl_;
  if (!options.packed_cache_path.empty()) {
    if (!options.weight_cache) {
      return Status(StatusCode::kInvalidArgument,
                    "packed cache path " + options.packed_cache_path +
                        " given with the weight cache off; hint: the XNNPACK backend reads and "
                        "writes the packed file only through its weight cache, turn it on");
    }
    auto planned = PackedFileUse::plan(options.packed_cache_path, options.packed_cache_residency);
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
  // The packed file path is honoured only here, per load (the backend ignores
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
  auto names = module.method_names();
  if (!names.ok() || !names->count("etlora_format_version")) {
    return Status(StatusCode::kIncompatible,
                  "program " + program_path +
                      " is not an etlora program: expected constant method etlora_format_version, "
                      "found none; hint: export it with etlora, not with another ExecuTorch tool");
  }
  ProgramInfo& info = session->info_;
  auto version = constant_int(module, program_path, "etlora_format_version");
  if (!version.ok()) return version.status();
  info.format_version = *version;
  if (info.format_version != kFormatVersion) {
    return Status(StatusCode::kIncompatible,
                  "program " + program_path + ": format version expected " +
                      std::to_string(kFormatVersion) + ", got " +
                      std::to_string(info.format_version) +
                      "; hint: use the etlora runtime that matches the exporter");
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
  impl.base_scales.assign(impl.scales.size(), 0.0f);
  impl.history.assign(info.max_seq_len, 0);
  // Absent sites read the process-wide zero region, which the attention kernel skips.
  impl.absent_rows = absent_adapter_rows(largest_site * info.max_rank);
  if (impl.absent_rows == nullptr) {
    impl.zeros.assign(largest_site * info.max_rank, 0.0f);
    impl.absent_rows = impl.zeros.data();
  }
  impl.max_resident_adapters = options.max_resident_adapters;
  impl.max_resident_adapter_bytes = options.max_resident_adapter_bytes;
  impl.scales_input = make_tensor_ptr({static_cast<int32_t>(info.adapter_slots)},
                                      impl.scales.data(), ScalarType::Float);
  impl.empty_slot = lora_inputs(info, nullptr, impl.absent_rows);
  impl.bound.assign(info.adapter_slots, nullptr);
  Status no_adapters = session->bind_all();
  if (!no_adapters.ok()) return no_adapters;
  if (impl.packed_file) session->packed_cache_ = impl.packed_file->settle();
  session->load_anon_bytes_ = read_rss().anon - anon_before;
  session->weight_cache_ = options.weight_cache;
  if (options.weight_cache) ++g_cached_sessions;
  session->packed_cache_.load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();
  return session;
}


StatusOr<OpenAdapter*> Session::open_adapter(const std::string& path) {
  Impl& impl = *impl_;
  struct stat identity {};
  const bool exists = ::stat(path.c_str(), &identity) == 0;
  auto found = impl.open_adapters.find(path);
  if (found != impl.open_adapters.end() && exists && same_file(found->second.identity, identity)) {
    return &found->second;
  }
  auto opened = AdapterFile::open(path);
  if (!opened.ok()) return opened.status();
  if (Status fits = (*opened)->check_for_program(info_, program_path_); !fits.ok()) return fits;
  OpenAdapter adapter;
  adapter.file = *opened;
  adapter.identity = identity;
  adapter.inputs = lora_inputs(info_, adapter.file.get(), impl.absent_rows);
  if (found != impl.open_adapters.end()) {
    // The file at this path changed since it was opened. If a slot still binds
    // the old one, keep it alive under another key until it is unbound.
    // (extract keeps the element where it is, so the slot's pointer stays valid).
    const bool still_bound =
        std::find(impl.bound.begin(), impl.bound.end(), &found->second) != impl.bound.end();
    auto node = impl.open_adapters.extract(found);
    if (still_bound) {
      node.key() = path + "\n(replaced " + std::to_string(++impl.use_clock) + ")";
      impl.open_adapters.insert(std::move(node));
    }
  }
  return &(impl.open_adapters[path] = std::move(adapter));
}

Status Session::set_adapters(const std::vector<AdapterChoice>& adapters) {
  Impl& impl = *impl_;
  if (Status valid = check_adapter_choices(adapters, info_, "program " + program_path_); !valid.ok()) {
    return valid;
  }
  // Open and check everything first so that a bad choice leaves the session unchanged.
  std::vector<OpenAdapter*> chosen;
  std::vector<const AdapterFile*> files;
  for (const AdapterChoice& choice : adapters) {
    auto adapter = open_adapter(choice.path);
    if (!adapter.ok()) return adapter.status();
    const AdapterFile* file = (*adapter)->file.get();
    if (Status once = check_file_not_chosen(file, files, adapters); !once.ok()) return once;
    files.push_back(file);
    chosen.push_back(*adapter);
  }
  // Bind: only slots whose adapter changed get their inputs re-pointed.
  std::vector<const OpenAdapter*> previous = impl.bound;
  const std::vector<float> previous_scales = impl.base_scales;
  bool changed = false;
  for (int64_t slot = 0; slot < info_.adapter_slots; ++slot) {
    const OpenAdapter* adapter = slot < static_cast<int64_t>(chosen.size()) ? chosen[slot] : nullptr;
    const float scale = adapter ? adapters[slot].strength * adapter->file->scaling() : 0.0f;
    changed = changed || adapter != previous[slot] || scale != impl.base_scales[slot];
    impl.base_scales[slot] = scale;
    impl.scales[slot] = impl.base_scales[slot];
    impl.bound[slot] = adapter;
    if (adapter) chosen[slot]->last_used = ++impl.use_clock;
  }
  if (changed) impl.stale_from = 0;  // every cached position was computed with other adapters
  Status bound = bind_slots(previous);
  if (!bound.ok()) {
    // Put the previous adapters back, inputs too: a failure leaves the session as it was.
    const std::vector<const OpenAdapter*> attempted = impl.bound;
    impl.bound = previous;
    impl.base_scales = previous_scales;
    impl.scales = previous_scales;
    (void)bind_slots(attempted);  // re-points the slots that differ; they were bound before
    return bound;
  }
  active_.assign(adapters.begin(), adapters.end());
  close_unused_adapters();
  return Status::ok_status();
}

Status Session::bind_all() {
  std::vector<const OpenAdapter*> nothing_bound(impl_->bound.size(),
                                                reinterpret_cast<const OpenAdapter*>(1));
  if (Error err = impl_->module->set_input("forward", *impl_->scales_input, kScalesInput);
      err != Error::Ok) {
    return Status(StatusCode::kRuntimeError,
                  "program " + program_path_ + ": ExecuTorch refused the adapter scales input (" +
                      error_name(err) + "); hint: the program's input layout differs from its "
                      "constant methods");
  }
  return bind_slots(nothing_bound);
}

Status Session::bind_slots(const std::vector<const OpenAdapter*>& previous) {
  Impl& impl = *impl_;
  const size_t per_slot = 2 * info_.sites.size();
  for (int64_t slot = 0; slot < info_.adapter_slots; ++slot) {
    if (previous[slot] == impl.bound[slot]) continue;
    const std::vector<TensorPtr>& inputs =
        impl.bound[slot] ? impl.bound[slot]->inputs : impl.empty_slot;
    for (size_t k = 0; k < per_slot; ++k) {
      const size_t index = kFirstAdapterInput + slot * per_slot + k;
      if (Error err = impl.module->set_input("forward", *inputs[k], index); err != Error::Ok) {
        return Status(StatusCode::kRuntimeError,
                      "program " + program_path_ + ": ExecuTorch refused adapter input " +
                          std::to_string(index) + " (" + error_name(err) +
                          "); hint: the program's input layout differs from its constant methods");
      }
    }
  }
  return Status::ok_status();
}

void Session::close_unused_adapters() {
  Impl& impl = *impl_;
  auto is_bound = [&](const OpenAdapter* adapter) {
    return std::find(impl.bound.begin(), impl.bound.end(), adapter) != impl.bound.end();
  };
  // Entries kept only because a slot bound a file since replaced on disk.
  for (auto it = impl.open_adapters.begin(); it != impl.open_adapters.end();) {
    const bool stale = it->first.find('\n') != std::string::npos;
    it = stale && !is_bound(&it->second) ? impl.open_adapters.erase(it) : std::next(it);
  }
  auto over_budget = [&] {
    const bool too_many = impl.max_resident_adapters != 0 &&
                          impl.open_adapters.size() > impl.max_resident_adapters;
    const bool too_large = impl.max_resident_adapter_bytes != 0 &&
                           resident_adapter_bytes() > impl.max_resident_adapter_bytes;
    return too_many || too_large;
  };
  while (over_budget()) {
    auto oldest = impl.open_adapters.end();
    for (auto it = impl.open_adapters.begin(); it != impl.open_adapters.end(); ++it) {
      if (is_bound(&it->second)) continue;
      if (oldest == impl.open_adapters.end() || it->second.last_used < oldest->second.last_used) {
        oldest = it;
      }
    }
    if (oldest == impl.open_adapters.end()) return;  // every open adapter is bound
    impl.open_adapters.erase(oldest);  // unmaps the file unless another Session holds it
  }
}

size_t Session::release_unbound_adapters() {
  Impl& impl = *impl_;
  size_t released = 0;
  for (auto it = impl.open_adapters.begin(); it != impl.open_adapters.end();) {
    const bool bound = std::find(impl.bound.begin(), impl.bound.end(), &it->second) != impl.bound.end();
    if (bound) {
      ++it;
    } else {
      it = impl.open_adapters.erase(it);
      ++released;
    }
  }
  return released;
}

uint64_t Session::resident_adapter_bytes() const {
  uint64_t bytes = 0;
  for (const auto& [path, adapter] : impl_->open_adapters) {
    bytes += static_cast<uint64_t>(adapter.identity.st_size);
  }
  return bytes;
}

std::vector<std::string> Session::resident_adapter_paths() const {
  std::vector<std::pair<uint64_t, std::string>> by_use;
  for (const auto& [path, adapter] : impl_->open_adapters) {
    if (path.find('\n') == std::string::npos) by_use.emplace_back(adapter.last_used, path);
  }
  std::sort(by_use.rbegin(), by_use.rend());
  std::vector<std::string> paths;
  for (auto& [used, path] : by_use) paths.push_back(std::move(path));
  return paths;
}

namespace {

constexpr int64_t kNever = std::numeric_limits<int64_t>::max();

// Where an activated LoRA starts among `tokens`: the start of the last
// occurrence of its invocation sequence (PEFT's calculate_alora_offsets), or
// kNever when the sequence is absent. An ordinary adapter starts at 0.
int64_t activation_start(const AdapterFile& file, const int64_t* tokens, int64_t count) {
  const std::vector<int64_t>& invocation = file.alora_invocation_tokens();
  if (invocation.empty()) return 0;
  const int64_t length = static_cast<int64_t>(invocation.size());
  for (int64_t start = count - length; start >= 0; --start) {
    if (std::equal(invocation.begin(), invocation.end(), tokens + start)) return start;
  }
  return kNever;
}

}  // namespace

std::vector<int64_t> Session::activation_starts(const int64_t* tokens, int64_t count) const {
  std::vector<int64_t> starts(info_.adapter_slots, kNever);
  for (int64_t slot = 0; slot < info_.adapter_slots; ++slot) {
    const OpenAdapter* adapter = impl_->bound[slot];
    if (adapter != nullptr && impl_->base_scales[slot] != 0.0f) {
      starts[slot] = activation_start(*adapter->file, tokens, count);
    }
  }
  return starts;
}

int64_t Session::reusable_prefix(const std::vector<int64_t>& prompt) const {
  const Impl& impl = *impl_;
  const int64_t count = static_cast<int64_t>(prompt.size());
  int64_t common = 0;
  const int64_t cached = std::min({count, impl.cache_end, impl.consistent_end});
  while (common < cached && impl.history[common] == prompt[common]) ++common;
  // The foundation's positions (no adapter touched them) before every bound
  // adapter's activation start for this prompt: exact whatever was bound then.
  int64_t foundation = std::min({common, impl.adapter_from, count - 1});
  for (int64_t start : activation_starts(prompt.data(), count)) foundation = std::min(foundation, start);
  // Positions computed with the adapters bound now: exact unless an activated
  // LoRA is bound, whose activation start in this prompt may differ from where
  // it was when they were computed.
  bool activated = false;
  for (const OpenAdapter* adapter : impl.bound) {
    activated = activated || (adapter && !adapter->file->alora_invocation_tokens().empty());
  }
  const int64_t same_adapters = activated ? 0 : std::min({common, impl.stale_from, count - 1});
  return std::max<int64_t>({foundation, same_adapters, 0});
}

StatusOr<std::vector<float>> Session::forward(const std::vector<int64_t>& tokens,
                                              int64_t start_pos) {
  Impl& impl = *impl_;
  const int64_t count = static_cast<int64_t>(tokens.size());
  if (count < 1 || count > info_.max_seq_len) {
    return Status(StatusCode::kInvalidArgument,
                  "tokens: expected 1 to " + std::to_string(info_.max_seq_len) +
                      " tokens (max_seq_len), got " + std::to_string(count));
  }
  if (start_pos < 0 || start_pos + count > info_.max_seq_len) {
    return Status(StatusCode::kInvalidArgument,
                  "start_pos: expected 0 <= start_pos and start_pos + tokens <= " +
                      std::to_string(info_.max_seq_len) + " (max_seq_len), got start_pos " +
                      std::to_string(start_pos) + " with " + std::to_string(count) +
                      " tokens; hint: the KV cache is full, start again from position 0");
  }
  for (int64_t i = 0; i < count; ++i) {
    if (tokens[i] < 0 || tokens[i] >= info_.vocab_size) {
      return Status(StatusCode::kInvalidArgument,
                    "tokens[" + std::to_string(i) + "]: expected an id in [0, " +
                        std::to_string(info_.vocab_size) + "), got " + std::to_string(tokens[i]));
    }
  }
  // The cache now holds what this call writes: positions from end on are stale.
  const int64_t end = start_pos + count;
  std::copy(tokens.begin(), tokens.end(), impl.history.begin() + start_pos);
  if (start_pos > impl.cache_end) {
    impl.consistent_end = std::min(impl.consistent_end, impl.cache_end);  // the gap is never reused
  } else if (start_pos <= impl.consistent_end) {
    impl.consistent_end = kNever;  // written after a consistent prefix: all of [0, end) is
  }
  impl.cache_end = end;
  if (impl.adapter_from >= start_pos) impl.adapter_from = kNever;
  if (impl.stale_from >= start_pos) impl.stale_from = kNever;

  // Activated LoRA: a slot's adapter applies from its activation start on, so
  // the call runs in segments cut at those starts, each slot's scale 0 before.
  const std::vector<int64_t> starts = activation_starts(impl.history.data(), end);
  std::vector<int64_t> cuts = {start_pos, end};
  for (int64_t start : starts) {
    if (start > start_pos && start < end) cuts.push_back(start);
  }
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  StatusOr<std::vector<float>> logits = std::vector<float>();
  for (size_t c = 0; c + 1 < cuts.size(); ++c) {
    bool any_active = false;
    for (int64_t slot = 0; slot < info_.adapter_slots; ++slot) {
      const bool active = starts[slot] <= cuts[c];
      impl.scales[slot] = active ? impl.base_scales[slot] : 0.0f;
      any_active = any_active || active;
    }
    if (any_active) impl.adapter_from = std::min(impl.adapter_from, cuts[c]);
    logits = run_segment(tokens.data() + (cuts[c] - start_pos), cuts[c + 1] - cuts[c], cuts[c]);
    if (!logits.ok()) {
      impl.cache_end = std::min(impl.cache_end, cuts[c]);  // what follows was not written
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
