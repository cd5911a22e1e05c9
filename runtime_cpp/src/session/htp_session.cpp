// HtpSession: one ExecuTorch Module running an HTP-shaped etlora program, the
// KV cache on the host (bundle-format.md "model_htp.pte"; Python twin:
// export/htp_model.py HostKVCache). Every input of `forward` is a buffer this
// session owns and binds once at open (the exporter keeps inputs out of memory
// planning, so ExecuTorch reads them in place); a run only rewrites their
// contents, and set_adapters re-points the LoRA inputs.
#include <etlora/htp_session.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/runtime/platform/log.h>

#include "etlora/adapter_file.h"
#include "etlora/logging.h"
#include "etlora/thread_pool.h"
#include "format/flat_tensor_check.h"
#include "format/format_util.h"
#include "session/session_adapters.h"
#include "session/program_constants.h"

namespace etlora {

using executorch::aten::ScalarType;
using executorch::extension::TensorPtr;
using executorch::extension::make_tensor_ptr;
using executorch::extension::module::Module;
using executorch::runtime::EValue;
using executorch::runtime::Error;

namespace {

// forward's inputs (bundle-format.md, "model_htp.pte").
constexpr size_t kTokensInput = 0;
constexpr size_t kPositionsInput = 1;
constexpr size_t kMaskInput = 2;
constexpr size_t kKCacheInput = 3;
constexpr size_t kVCacheInput = 4;
constexpr size_t kScalesInput = 5;
constexpr size_t kSlidingMaskInput = 6;  // format 2, etlora_sliding_window > 0 only; the adapter
                                         // inputs follow the fixed ones
constexpr size_t kOutputs = 3;  // logits, new_k, new_v

// A buffer larger than this many elements is refused as an impossible layout
// (and so is any product that would overflow on the way).
constexpr int64_t kMaxElements = int64_t{1} << 34;

// a * b * ..., or -1 when a factor is negative or the product passes kMaxElements.
int64_t checked_elements(std::initializer_list<int64_t> factors) {
  int64_t product = 1;
  for (int64_t f : factors) {
    if (f < 0 || __builtin_mul_overflow(product, f, &product) || product > kMaxElements) return -1;
  }
  return product;
}

// One tensor of forward's signature against what the constant methods imply.
Status check_tensor(const std::string& program, const char* side, size_t index, const char* name,
                    const executorch::runtime::Result<executorch::runtime::TensorInfo>& meta,
                    ScalarType dtype, const std::vector<int64_t>& sizes) {
  const std::string what = "program " + program + ": forward " + side + " " + std::to_string(index) +
                           " (" + name + ")";
  if (!meta.ok()) {
    return Status(StatusCode::kIncompatible, what + " is expected to be a " + dtype_name(dtype) +
                                                 " tensor " + shape_text(sizes) + ", it is not a tensor");
  }
  std::vector<int64_t> received(meta->sizes().begin(), meta->sizes().end());
  if (meta->scalar_type() != dtype || received != sizes) {
    return Status(StatusCode::kIncompatible,
                  what + " expected " + dtype_name(dtype) + " " + shape_text(sizes) + ", got " +
                      dtype_name(meta->scalar_type()) + " " + shape_text(received) +
                      "; hint: the program's signature differs from its constant methods "
                      "(etlora_chunk_len, etlora_cache_len, etlora_sites, ...): re-export it");
  }
  return Status::ok_status();
}

}  // namespace

struct HtpSession::Impl {
  std::unique_ptr<Module> module;
  // Input buffers (bound once; ExecuTorch reads them in place).
  std::vector<int64_t> tokens;     // [1, T]
  std::vector<int64_t> positions;  // [T]
  std::vector<float> mask;         // [1, T, C + T]
  std::vector<float> sliding_mask;  // [1, T, C + T], empty without sliding-window layers
  std::vector<float> k_cache;      // [L, kv_heads, C, head_dim]
  std::vector<float> v_cache;
  std::vector<float> scales;       // [S]
  std::vector<float> zeros;        // backs the LoRA inputs of absent sites and empty slots
  std::vector<TensorPtr> fixed_inputs;  // tokens, positions, mask, k, v, scales[, sliding mask]
};

HtpSession::HtpSession() : impl_(std::make_unique<Impl>()) {}
HtpSession::~HtpSession() = default;

StatusOr<std::unique_ptr<HtpSession>> HtpSession::open(const std::string& program_path,
                                                       const std::string& foundation_path,
                                                       const HtpSessionOptions& options) {
  try {  // no exception leaves the C++ API (an allocation can still fail)
    return open_unguarded(program_path, foundation_path, options);
  } catch (const std::exception& error) {
    return Status(StatusCode::kRuntimeError, "HTP program " + program_path + ": " + error.what());
  }
}

StatusOr<std::unique_ptr<HtpSession>> HtpSession::open_unguarded(
    const std::string& program_path, const std::string& foundation_path, const HtpSessionOptions& options) {
  if (!is_regular_file(program_path)) {
    return Status(StatusCode::kNotFound,
                  "HTP program file " + program_path +
                      " not found (expected model_htp.pte of an etlora bundle)");
  }
  if (!foundation_path.empty()) {
    if (!is_regular_file(foundation_path)) {
      return Status(StatusCode::kNotFound,
                    "foundation file " + foundation_path +
                        " not found (expected foundation.ptd beside the program)");
    }
    // Bounds before trust: ExecuTorch's FlatTensor reader follows the file's offsets unchecked.
    if (Status checked = check_flat_tensor_file(foundation_path, "foundation file",
                                                /*layouts_required=*/false);
        !checked.ok()) {
      return checked;
    }
  }
  prepare_process_for_programs();
  std::unique_ptr<HtpSession> session(new HtpSession());
  session->program_path_ = program_path;
  Impl& impl = *session->impl_;
  impl.module = foundation_path.empty()
                    ? std::make_unique<Module>(program_path, Module::LoadMode::Mmap)
                    : std::make_unique<Module>(program_path, std::vector<std::string>{foundation_path},
                                               Module::LoadMode::Mmap);
  Module& module = *impl.module;
  const std::string with_foundation =
      foundation_path.empty() ? std::string(" (no foundation file)") : " with foundation " + foundation_path;
  if (Error err = module.load(); err != Error::Ok) {
    return Status(StatusCode::kRuntimeError,
                  "HTP program " + program_path + with_foundation + " could not be loaded (" +
                      error_name(err) + "): expected an ExecuTorch program; hint: a truncated or "
                      "damaged file, or files from different exports");
  }

  // Constant methods: what kind of program, and the layout of forward.
  auto names = etlora_method_names(module, program_path);
  if (!names.ok()) return names.status();
  if (!names->count("etlora_program_kind")) {
    return Status(StatusCode::kIncompatible,
                  "program " + program_path +
                      " is not an HTP-shaped program: expected constant method etlora_program_kind "
                      "returning \"htp\", found none; hint: this is the XNNPACK program (model.pte), "
                      "run it with Session; HtpSession runs model_htp.pte");
  }
  auto kind = constant_string(module, program_path, "etlora_program_kind");
  if (!kind.ok()) return kind.status();
  if (*kind != "htp") {
    return Status(StatusCode::kIncompatible,
                  "program " + program_path + ": etlora_program_kind expected \"htp\", got \"" +
                      printable(*kind) + "\"; hint: HtpSession runs model_htp.pte only");
  }
  ProgramInfo& info = session->info_;
  HtpProgramInfo& htp = session->htp_;
  if (Status version =
          read_format_version(module, program_path, "HTP program " + program_path, kOldestHtpFormatVersion,
                              kHtpFormatVersion, info);
      !version.ok()) {
    return version;
  }
  auto largest = read_adapter_layout(module, program_path, info);
  if (!largest.ok()) return largest.status();
  const int64_t largest_site = *largest;
  auto chunk = constant_int(module, program_path, "etlora_chunk_len");
  auto cache = constant_int(module, program_path, "etlora_cache_len");
  for (const Status* s : {&chunk.status(), &cache.status()}) {
    if (!s->ok()) return *s;
  }
  info.foundation_weights_id = info.foundation_fingerprint;  // an HTP program is built from the float foundation
  if (names->count("etlora_foundation_weights_id")) {
    auto weights_id = constant_string(module, program_path, "etlora_foundation_weights_id");
    if (!weights_id.ok()) return weights_id.status();
    info.foundation_weights_id = *weights_id;
  }
  htp.chunk_len = *chunk;
  htp.cache_len = *cache;
  if (info.format_version >= 2) {  // format 1 had no sliding-window layers
    auto window = constant_int(module, program_path, "etlora_sliding_window");
    if (!window.ok()) return window.status();
    htp.sliding_window = *window;
  }
  info.max_seq_len = htp.cache_len;  // the cache bounds every position
  const int64_t int32_max = std::numeric_limits<int32_t>::max();
  if (htp.chunk_len < 1 || htp.chunk_len > int32_max || htp.cache_len < 1 || htp.cache_len > int32_max ||
      htp.sliding_window < 0 ||
      checked_elements({htp.chunk_len, htp.cache_len + htp.chunk_len}) < 0 ||
      checked_elements({htp.chunk_len, info.vocab_size}) < 0) {
    return Status(StatusCode::kIncompatible,
                  "program " + program_path + ": constant methods give an impossible layout (chunk_len " +
                      std::to_string(htp.chunk_len) + ", cache_len " + std::to_string(htp.cache_len) +
                      ", sliding_window " + std::to_string(htp.sliding_window) + ", vocab_size " +
                      std::to_string(info.vocab_size) + ")");
  }
  const size_t first_adapter_input = htp.sliding_window > 0 ? kSlidingMaskInput + 1 : kSlidingMaskInput;

  // forward: loaded once, for the session's lifetime; its signature checked against the above.
  if (Error err = module.load_method("forward"); err != Error::Ok) {
    return Status(StatusCode::kRuntimeError,
                  "HTP program " + program_path + ": method forward could not be loaded" +
                      with_foundation + " (" + error_name(err) +
                      "); hint: foundation.ptd must be the one exported with this program");
  }
  auto meta = module.method_meta("forward");
  const size_t site_count = info.sites.size();
  const size_t expected_inputs =
      first_adapter_input + 2 * site_count * static_cast<size_t>(info.adapter_slots);
  if (!meta.ok() || meta->num_inputs() != expected_inputs || meta->num_outputs() != kOutputs) {
    return Status(StatusCode::kIncompatible,
                  "HTP program " + program_path + ": forward is expected to take " +
                      std::to_string(expected_inputs) + " inputs (" + std::to_string(first_adapter_input) +
                      " + 2 * sites * slots) and return " +
                      std::to_string(kOutputs) + " outputs, it takes " +
                      (meta.ok() ? std::to_string(meta->num_inputs()) : std::string("?")) +
                      " and returns " + (meta.ok() ? std::to_string(meta->num_outputs()) : std::string("?")));
  }
  const int64_t T = htp.chunk_len, C = htp.cache_len, V = info.vocab_size;
  // L, kv_heads and head_dim are in no constant method: the cache input's shape says them.
  auto k_meta = meta->input_tensor_meta(kKCacheInput);
  if (!k_meta.ok() || k_meta->sizes().size() != 4 || k_meta->sizes()[2] != C ||
      k_meta->sizes()[0] < 1 || k_meta->sizes()[1] < 1 || k_meta->sizes()[3] < 1) {
    std::vector<int64_t> got;
    if (k_meta.ok()) got.assign(k_meta->sizes().begin(), k_meta->sizes().end());
    return Status(StatusCode::kIncompatible,
                  "HTP program " + program_path + ": forward input 3 (k_cache) expected " +
                      "[layers, kv_heads, " + std::to_string(C) + " (etlora_cache_len), head_dim], got " +
                      (k_meta.ok() ? shape_text(got) : std::string("no tensor")));
  }
  htp.num_layers = k_meta->sizes()[0];
  htp.kv_heads = k_meta->sizes()[1];
  htp.head_dim = k_meta->sizes()[3];
  const int64_t L = htp.num_layers, H = htp.kv_heads, D = htp.head_dim;
  const int64_t cache_elements = checked_elements({L, H, C, D});
  if (cache_elements < 0 || checked_elements({L, H, T, D}) < 0) {
    return Status(StatusCode::kIncompatible,
                  "HTP program " + program_path + ": a KV cache of " + shape_text(std::vector<int64_t>{L, H, C, D}) +
                      " floats is larger than this runtime allows");
  }
  const std::vector<int64_t> cache_shape{L, H, C, D};
  const std::vector<int64_t> rows_shape{L, H, T, D};
  struct Expected {
    const char* side;
    size_t index;
    const char* name;
    ScalarType dtype;
    std::vector<int64_t> sizes;
  };
  std::vector<Expected> expected{
      {"input", kTokensInput, "tokens", ScalarType::Long, {1, T}},
      {"input", kPositionsInput, "input_pos", ScalarType::Long, {T}},
      {"input", kMaskInput, "attention_mask", ScalarType::Float, {1, T, C + T}},
      {"input", kKCacheInput, "k_cache", ScalarType::Float, cache_shape},
      {"input", kVCacheInput, "v_cache", ScalarType::Float, cache_shape},
      {"input", kScalesInput, "adapter_scales", ScalarType::Float, {info.adapter_slots}},
  };
  if (htp.sliding_window > 0) {
    expected.push_back({"input", kSlidingMaskInput, "sliding_mask", ScalarType::Float, {1, T, C + T}});
  }
  for (int64_t slot = 0; slot < info.adapter_slots; ++slot) {
    for (size_t i = 0; i < site_count; ++i) {
      const auto [in, out] = info.site_shapes[i];
      const size_t index = first_adapter_input + 2 * (slot * site_count + i);
      expected.push_back({"input", index, "lora_a", ScalarType::Float, {1, in, info.max_rank}});
      expected.push_back({"input", index + 1, "lora_b", ScalarType::Float, {1, info.max_rank, out}});
    }
  }
  for (const Expected& e : expected) {
    Status checked = check_tensor(program_path, e.side, e.index, e.name, meta->input_tensor_meta(e.index),
                                  e.dtype, e.sizes);
    if (!checked.ok()) return checked;
  }
  for (const Expected& e : std::vector<Expected>{{"output", 0, "logits", ScalarType::Float, {1, T, V}},
                                                 {"output", 1, "new_k", ScalarType::Float, rows_shape},
                                                 {"output", 2, "new_v", ScalarType::Float, rows_shape}}) {
    Status checked = check_tensor(program_path, e.side, e.index, e.name, meta->output_tensor_meta(e.index),
                                  e.dtype, e.sizes);
    if (!checked.ok()) return checked;
  }
  for (size_t i = 0; i < expected_inputs; ++i) {
    auto tensor_meta = meta->input_tensor_meta(i);
    if (tensor_meta.ok() && tensor_meta->is_memory_planned()) {
      // Still correct (ExecuTorch copies the input each run), only slower: say so once.
      ET_LOG(Info, "etlora: HTP program input %zu is memory-planned; it is copied at each run", i);
    }
  }

  // The buffers, and every input bound to them once.
  impl.tokens.assign(T, 0);
  impl.positions.assign(T, 0);
  impl.mask.assign(T * (C + T), 0.0f);
  impl.k_cache.assign(cache_elements, 0.0f);
  impl.v_cache.assign(cache_elements, 0.0f);
  impl.scales.assign(std::max<int64_t>(info.adapter_slots, 1), 0.0f);
  impl.zeros.assign(std::max<int64_t>(largest_site * info.max_rank, 1), 0.0f);
  auto i32 = [](int64_t v) { return static_cast<int32_t>(v); };
  const std::vector<int32_t> cache_sizes{i32(L), i32(H), i32(C), i32(D)};
  impl.fixed_inputs = {
      make_tensor_ptr({1, i32(T)}, impl.tokens.data(), ScalarType::Long),
      make_tensor_ptr({i32(T)}, impl.positions.data(), ScalarType::Long),
      make_tensor_ptr({1, i32(T), i32(C + T)}, impl.mask.data(), ScalarType::Float),
      make_tensor_ptr(cache_sizes, impl.k_cache.data(), ScalarType::Float),
      make_tensor_ptr(cache_sizes, impl.v_cache.data(), ScalarType::Float),
      make_tensor_ptr({i32(info.adapter_slots)}, impl.scales.data(), ScalarType::Float),
  };
  if (htp.sliding_window > 0) {
    impl.sliding_mask.assign(T * (C + T), 0.0f);
    impl.fixed_inputs.push_back(make_tensor_ptr({1, i32(T), i32(C + T)}, impl.sliding_mask.data(), ScalarType::Float));
  }
  for (size_t index = 0; index < impl.fixed_inputs.size(); ++index) {
    if (Error err = module.set_input("forward", *impl.fixed_inputs[index], index); err != Error::Ok) {
      return Status(StatusCode::kRuntimeError,
                    "HTP program " + program_path + ": ExecuTorch refused input " + std::to_string(index) +
                        " (" + error_name(err) + ")");
    }
  }
  const std::string label = "HTP program " + program_path;
  session->adapters_ = std::make_unique<SessionAdapterState>(
      slot_binder(module, first_adapter_input, site_count, label), info, program_path, label, impl.zeros.data(),
      ResidencyBudget{options.max_resident_adapters, options.max_resident_adapter_bytes}, C);
  Status no_adapters = session->adapters_->registry.bind_empty(session->adapters_->bind);
  if (!no_adapters.ok()) return no_adapters;
  return session;
}

StatusOr<std::vector<float>> HtpSession::forward(const std::vector<int64_t>& tokens, int64_t start_pos) {
  try {
    return forward_unguarded(tokens, start_pos);
  } catch (const std::exception& error) {
    return Status(StatusCode::kRuntimeError, "HTP program " + program_path_ + ": forward: " + error.what());
  }
}

StatusOr<std::vector<float>> HtpSession::forward_unguarded(const std::vector<int64_t>& tokens,
                                                           int64_t start_pos) {
  Impl& impl = *impl_;
  if (Status valid = check_forward_tokens(tokens, start_pos, htp_.cache_len,
                                          "cache_len of HTP program " + program_path_, info_.vocab_size);
      !valid.ok()) {
    return valid;
  }
  const int64_t count = static_cast<int64_t>(tokens.size());
  const int64_t end = start_pos + count;
  adapters_->history.begin_write(tokens.data(), count, start_pos);
  // Each segment (AdapterRegistry::segments: an activated LoRA's slot at scale
  // 0 before its activation start) runs as its own chunks of T; a cut inside
  // a chunk makes a shorter, padded one. The mask keeps it exact either way.
  std::vector<float> logits;
  last_chunks_ = 0;
  for (const Segment& segment : adapters_->registry.segments(adapters_->history.tokens(), start_pos, end)) {
    std::copy(segment.scales.begin(), segment.scales.end(), impl.scales.begin());
    if (segment.any_adapter) adapters_->history.adapter_touched(segment.begin);
    for (int64_t at = segment.begin; at < segment.end; at += htp_.chunk_len) {
      const int64_t n = std::min(htp_.chunk_len, segment.end - at);
      const bool last = at + n == end;
      if (Status ran = run_chunk(tokens.data() + (at - start_pos), n, at, last, &logits); !ran.ok()) {
        adapters_->history.written_up_to(at);  // what follows was not written
        return ran;
      }
      ++last_chunks_;
    }
  }
  return logits;
}

Status HtpSession::run_chunk(const int64_t* tokens, int64_t count, int64_t start, bool want_logits,
                             std::vector<float>* logits) {
  Impl& impl = *impl_;
  const int64_t T = htp_.chunk_len, C = htp_.cache_len, V = info_.vocab_size;
  const int64_t width = C + T;
  // Padding is token 0 at positions clamped into the RoPE table; no real token sees its rows.
  for (int64_t i = 0; i < T; ++i) {
    impl.tokens[i] = i < count ? tokens[i] : 0;
    impl.positions[i] = std::min(start + i, C - 1);
  }
  // Additive mask: cache rows 0 .. start-1 visible to every query, the rest of
  // the cache not; within the chunk, query i sees rows 0 .. i (causal). The
  // sliding mask also hides, from query i (position start + i), every position
  // at or before start + i - W: cache rows below it, and chunk rows i - W and before.
  const float hidden = -std::numeric_limits<float>::infinity();
  const int64_t W = htp_.sliding_window;
  for (int64_t i = 0; i < T; ++i) {
    float* row = impl.mask.data() + i * width;
    std::fill(row, row + start, 0.0f);
    std::fill(row + start, row + C, hidden);
    std::fill(row + C, row + C + i + 1, 0.0f);
    std::fill(row + C + i + 1, row + width, hidden);
    if (W > 0) {
      float* sliding = impl.sliding_mask.data() + i * width;
      std::copy(row, row + width, sliding);
      const int64_t oldest = start + i - W + 1;  // the first position query i still sees
      std::fill(sliding, sliding + std::clamp<int64_t>(oldest, 0, start), hidden);
      std::fill(sliding + C, sliding + C + std::clamp<int64_t>(oldest - start, 0, i + 1), hidden);
    }
  }
  auto outputs = impl.module->execute("forward");
  if (!outputs.ok()) {
    return Status(StatusCode::kRuntimeError,
                  "HTP program " + program_path_ + ": forward failed (" + error_name(outputs.error()) +
                      ") on a chunk of " + std::to_string(count) + " token(s) at position " +
                      std::to_string(start) + " (chunk_len " + std::to_string(T) + ", cache_len " +
                      std::to_string(C) + ")");
  }
  const int64_t L = htp_.num_layers, H = htp_.kv_heads, D = htp_.head_dim;
  const int64_t expected[kOutputs] = {T * V, L * H * T * D, L * H * T * D};
  static const char* const kNames[kOutputs] = {"logits", "new_k", "new_v"};
  if (outputs->size() != kOutputs) {
    return Status(StatusCode::kRuntimeError, "HTP program " + program_path_ + ": forward returned " +
                                                 std::to_string(outputs->size()) + " outputs, expected 3");
  }
  for (size_t k = 0; k < kOutputs; ++k) {
    const EValue& value = (*outputs)[k];
    if (!value.isTensor() || value.toTensor().scalar_type() != ScalarType::Float ||
        value.toTensor().numel() != expected[k]) {
      return Status(StatusCode::kRuntimeError,
                    "HTP program " + program_path_ + ": forward output " + std::to_string(k) + " (" +
                        kNames[k] + ") expected float32 with " + std::to_string(expected[k]) +
                        " values, got " +
                        (value.isTensor() ? dtype_name(value.toTensor().scalar_type()) + " with " +
                                                std::to_string(value.toTensor().numel())
                                          : std::string("no tensor")));
    }
  }
  // Only the real tokens' rows enter the cache: new [L, H, T, D] -> cache [L, H, C, D] at `start`.
  const float* new_rows[2] = {(*outputs)[1].toTensor().const_data_ptr<float>(),
                              (*outputs)[2].toTensor().const_data_ptr<float>()};
  float* caches[2] = {impl.k_cache.data(), impl.v_cache.data()};
  for (int c = 0; c < 2; ++c) {
    for (int64_t lh = 0; lh < L * H; ++lh) {
      std::memcpy(caches[c] + (lh * C + start) * D, new_rows[c] + lh * T * D,
                  static_cast<size_t>(count * D) * sizeof(float));
    }
  }
  if (want_logits) {
    const float* row = (*outputs)[0].toTensor().const_data_ptr<float>() + (count - 1) * V;
    logits->assign(row, row + V);
  }
  return Status::ok_status();
}

}  // namespace etlora
