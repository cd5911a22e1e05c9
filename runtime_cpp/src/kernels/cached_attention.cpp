// etlora::cached_attention.out: LoRA updates of q/k/v/o, rotary embedding, KV
// cache update and attention of one decoder layer (schema and reference:
// export/attention_op.py).
//
// Why our own kernel: expressed in ATen, the cache update is a functional
// index_put that copies the whole cache at every layer and token, attention
// runs over every cache row under a mask, and RoPE and LoRA are four small
// delegate ops per projection (each a thread-pool round trip, LoRA's dynamic
// operands repacked at every call). Here the call's keys and values are
// updated, rotated and written in place and each query reads only the rows up
// to its own position.
//
// Layouts: query/out [1, T, H, D], key/value [1, T, KV, D], caches
// [1, S, KV, D], input_pos [T] int64, rope_cos/rope_sin [S, D], hidden
// [1, T, E], residual/residual_out [1, T, E], adapter_scales [slots], lora:
// per slot per listed site (0 q, 1 k, 2 v, 3 o) lora_a [1, in, R] and lora_b
// [1, R, out]; query head h reads kv head h / (H / KV). o's update goes into
// residual_out = residual + update, so the graph adds only the foundation o_proj.
// Family features (after lora_sites): query_norm/key_norm [D] or None (per-head
// RMSNorm of q/k after LoRA, before RoPE, eps norm_eps), rotary_dim (leading dims
// rotated; 0 none; tables [S, rotary_dim]), sliding_window (0 none, else a query
// at p reads rows (p - W, p]) and scale (of the scores). A program of format 5
// or older calls the op with 15 arguments: those are a Llama layer's defaults.
//
// The per-row loops (LoRA, rotation, attention of one query row) live in
// attention_rows.cpp, compiled once per vector path; this file checks the
// arguments, splits the work and calls the selected path (kernel_path.h).

#include "etlora/kernels.h"
#include "etlora/kernel_path.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_runtime_context.h>
#include <executorch/runtime/kernel/operator_registry.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>
#include <executorch/runtime/platform/log.h>

#include "kernels/attention_rows.h"
#include "format/format_util.h"

namespace etlora {
namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::KernelRuntimeContext;
using executorch::runtime::Span;

constexpr const char* kOpName = "etlora::cached_attention.out";

thread_local std::string t_last_error;

std::string shape_string(const Tensor& tensor) {
  return shape_text(std::vector<int64_t>(tensor.sizes().begin(), tensor.sizes().end()));
}

bool fail(KernelRuntimeContext& context, std::string message) {
  t_last_error = std::string(kOpName) + ": " + message;
  ET_LOG(Error, "%s", t_last_error.c_str());
  context.fail(Error::InvalidArgument);
  return false;
}

// The layer's family features (defaults: a Llama layer).
struct LayerFeatures {
  const Tensor* query_norm = nullptr;
  const Tensor* key_norm = nullptr;
  float norm_eps = 0.0f;
  int64_t rotary_dim = -1;  // -1: head_dim
  int64_t sliding_window = 0;
  float scale = 0.0f;  // 0: 1/sqrt(head_dim)
};

bool check_layout(KernelRuntimeContext& context, const Tensor& query, const Tensor& key,
                  const Tensor& value, const Tensor& key_cache, const Tensor& value_cache,
                  const Tensor& input_pos, const Tensor& rope_cos, const Tensor& rope_sin,
                  const LayerFeatures& features) {
  const Tensor* floats[] = {&query, &key, &value, &key_cache, &value_cache};
  const char* names[] = {"query", "key", "value", "key_cache", "value_cache"};
  for (int i = 0; i < 5; ++i) {
    if (floats[i]->scalar_type() != ScalarType::Float || floats[i]->dim() != 4 ||
        floats[i]->size(0) != 1) {
      return fail(context, std::string(names[i]) + ": expected float32 [1, T|S, heads, head_dim], got " +
                               shape_string(*floats[i]));
    }
  }
  const int64_t tokens = query.size(1), heads = query.size(2), head_dim = query.size(3);
  const int64_t kv_heads = key_cache.size(2);
  if (key.size(1) != tokens || value.size(1) != tokens || key.size(2) != kv_heads ||
      value.size(2) != kv_heads || key.size(3) != head_dim || value.size(3) != head_dim ||
      value_cache.sizes() != key_cache.sizes() || key_cache.size(3) != head_dim ||
      kv_heads == 0 || heads % kv_heads != 0) {
    return fail(context, "expected key/value [1, T, kv_heads, head_dim] and caches [1, S, kv_heads, "
                         "head_dim] with heads a multiple of kv_heads; got query " +
                             shape_string(query) + ", key " + shape_string(key) + ", value " +
                             shape_string(value) + ", key_cache " + shape_string(key_cache) +
                             ", value_cache " + shape_string(value_cache));
  }
  if (input_pos.scalar_type() != ScalarType::Long || input_pos.dim() != 1 ||
      input_pos.size(0) != tokens) {
    return fail(context, "input_pos: expected int64 [" + std::to_string(tokens) + "], got " +
                             shape_string(input_pos));
  }
  const int64_t capacity = key_cache.size(1);
  const int64_t rotary_dim = features.rotary_dim;
  if (rotary_dim < 0 || rotary_dim > head_dim || rotary_dim % 2 != 0) {
    return fail(context, "rotary_dim: expected an even number in [0, " + std::to_string(head_dim) +
                             "], got " + std::to_string(rotary_dim));
  }
  for (const Tensor* table : {&rope_cos, &rope_sin}) {
    if (rotary_dim == 0) break;  // a layer without RoPE reads no table
    if (table->scalar_type() != ScalarType::Float || table->dim() != 2 ||
        table->size(0) != capacity || table->size(1) != rotary_dim) {
      return fail(context, std::string(table == &rope_cos ? "rope_cos" : "rope_sin") +
                               ": expected float32 [" + std::to_string(capacity) + ", " +
                               std::to_string(rotary_dim) + "] (max_seq_len, rotary_dim), got " +
                               shape_string(*table));
    }
  }
  for (const Tensor* norm : {features.query_norm, features.key_norm}) {
    if (norm != nullptr && (norm->scalar_type() != ScalarType::Float || norm->dim() != 1 ||
                            norm->size(0) != head_dim)) {
      return fail(context, std::string(norm == features.query_norm ? "query_norm" : "key_norm") +
                               ": expected float32 [" + std::to_string(head_dim) + "], got " +
                               shape_string(*norm));
    }
  }
  if (features.sliding_window < 0) {
    return fail(context, "sliding_window: expected 0 (none) or a window length, got " +
                             std::to_string(features.sliding_window));
  }
  const int64_t* positions = input_pos.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < tokens; ++t) {
    if (positions[t] < 0 || positions[t] >= capacity) {
      return fail(context, "input_pos[" + std::to_string(t) + "] = " + std::to_string(positions[t]) +
                               " is outside the KV cache [0, " + std::to_string(capacity) +
                               ") (hint: the prompt plus generated tokens exceed max_seq_len)");
    }
  }
  return true;
}

// One LoRA site's tensors, checked against the projection they update.
struct LoraSite {
  int site;  // 0 query, 1 key, 2 value, 3 o_proj
  const float* lora_a;
  const float* lora_b;
  int64_t rank;
  float scale;
};

constexpr int kSites = 4;
constexpr int kOutputSite = 3;

bool collect_lora(KernelRuntimeContext& context, const Tensor& hidden, const Tensor& residual,
                  const Tensor& scales, executorch::aten::ArrayRef<Tensor> lora,
                  executorch::aten::ArrayRef<int64_t> lora_sites, const int64_t in_sizes[kSites],
                  const int64_t out_sizes[kSites], int64_t tokens, std::vector<LoraSite>& sites) {
  if (hidden.scalar_type() != ScalarType::Float || hidden.dim() != 3 || hidden.size(0) != 1 ||
      hidden.size(1) != tokens) {
    return fail(context, "hidden: expected float32 [1, " + std::to_string(tokens) +
                             ", hidden_size], got " + shape_string(hidden));
  }
  if (residual.scalar_type() != ScalarType::Float || residual.sizes() != hidden.sizes()) {
    return fail(context, "residual: expected float32 " + shape_string(hidden) + " like hidden, got " +
                             shape_string(residual));
  }
  if (scales.scalar_type() != ScalarType::Float || scales.dim() != 1) {
    return fail(context, "adapter_scales: expected float32 [slots], got " + shape_string(scales));
  }
  const int64_t slots = scales.size(0), listed = static_cast<int64_t>(lora_sites.size());
  if (static_cast<int64_t>(lora.size()) != 2 * slots * listed) {
    return fail(context, "lora: expected " + std::to_string(2 * slots * listed) +
                             " tensors (2 per slot per listed site), got " +
                             std::to_string(lora.size()));
  }
  const float* scale_values = scales.const_data_ptr<float>();
  for (int64_t slot = 0; slot < slots; ++slot) {
    for (int64_t position = 0; position < listed; ++position) {
      const int64_t site = lora_sites[position];
      if (site < 0 || site >= kSites) {
        return fail(context, "lora_sites: expected 0 (query), 1 (key), 2 (value) or 3 (o_proj), got " +
                                 std::to_string(site));
      }
      const Tensor& lora_a = lora[2 * (slot * listed + position)];
      const Tensor& lora_b = lora[2 * (slot * listed + position) + 1];
      const int64_t rank = lora_a.dim() == 3 ? lora_a.size(2) : -1;
      if (lora_a.scalar_type() != ScalarType::Float || lora_b.scalar_type() != ScalarType::Float ||
          lora_a.dim() != 3 || lora_b.dim() != 3 || lora_a.size(1) != in_sizes[site] ||
          lora_b.size(1) != rank || lora_b.size(2) != out_sizes[site]) {
        return fail(context, "lora slot " + std::to_string(slot) + " site " + std::to_string(site) +
                                 ": expected float32 lora_a [1, " + std::to_string(in_sizes[site]) +
                                 ", R] and lora_b [1, R, " + std::to_string(out_sizes[site]) +
                                 "], got " + shape_string(lora_a) + " and " + shape_string(lora_b));
      }
      // A site the slot's adapter lacks is bound to the zero region: its update is exactly zero.
      if (scale_values[slot] != 0.0f && !is_absent_adapter_rows(lora_a.const_data_ptr<float>())) {
        sites.push_back({static_cast<int>(site), lora_a.const_data_ptr<float>(),
                         lora_b.const_data_ptr<float>(), rank, scale_values[slot]});
      }
    }
  }
  return true;
}

// q/k rows RMS-normalized per head in place: x * rsqrt(mean(x^2) + eps) * weight.
void normalize_heads(float* rows, int64_t count, int64_t head_dim, const float* weight, float eps) {
  for (int64_t row = 0; row < count; ++row) {
    float* x = rows + row * head_dim;
    float squares = 0.0f;
    for (int64_t d = 0; d < head_dim; ++d) squares += x[d] * x[d];
    const float inverse = 1.0f / std::sqrt(squares / static_cast<float>(head_dim) + eps);
    for (int64_t d = 0; d < head_dim; ++d) x[d] = weight[d] * (x[d] * inverse);
  }
}

// Arguments: 13 inputs (+ 6 family features since format 6) and the two outputs, which the
// emitter may follow with the returned values again.
constexpr size_t kLlamaArgs = 15;
constexpr size_t kFamilyArgs = 21;

bool has_features(Span<EValue*> stack) { return stack.size() >= kFamilyArgs; }

bool read_features(KernelRuntimeContext& context, Span<EValue*> stack, LayerFeatures& features) {
  if (!has_features(stack)) return true;
  EValue** f = stack.data() + 13;
  for (int i = 0; i < 2; ++i) {
    if (!f[i]->isNone() && !f[i]->isTensor()) {
      return fail(context, std::string(i == 0 ? "query_norm" : "key_norm") +
                               ": expected a tensor or None");
    }
  }
  if (!f[2]->isDouble() || !f[3]->isInt() || !f[4]->isInt() || !f[5]->isDouble()) {
    return fail(context, "expected norm_eps (float), rotary_dim (int), sliding_window (int) and "
                         "scale (float) after lora_sites");
  }
  features.query_norm = f[0]->isTensor() ? &f[0]->toTensor() : nullptr;
  features.key_norm = f[1]->isTensor() ? &f[1]->toTensor() : nullptr;
  features.norm_eps = static_cast<float>(f[2]->toDouble());
  features.rotary_dim = f[3]->toInt();
  features.sliding_window = f[4]->toInt();
  features.scale = static_cast<float>(f[5]->toDouble());
  return true;
}

void cached_attention_out(KernelRuntimeContext& context, Span<EValue*> stack) {
  t_last_error.clear();  // a message describes this call's failure, never an earlier one
  if (stack.size() < kLlamaArgs || !stack[11]->isTensorList() || !stack[12]->isIntList()) {
    fail(context, "expected " + std::to_string(kFamilyArgs) + " arguments (or " +
                      std::to_string(kLlamaArgs) +
                      " from a format-5 program; lora a tensor list, lora_sites an int list), got " +
                      std::to_string(stack.size()));
    return;
  }
  LayerFeatures features;
  if (!read_features(context, stack, features)) return;
  const size_t outputs = has_features(stack) ? kFamilyArgs - 2 : kLlamaArgs - 2;
  const Tensor& query = stack[0]->toTensor();
  const Tensor& key = stack[1]->toTensor();
  const Tensor& value = stack[2]->toTensor();
  Tensor& key_cache = stack[3]->toTensor();
  Tensor& value_cache = stack[4]->toTensor();
  const Tensor& input_pos = stack[5]->toTensor();
  const Tensor& rope_cos = stack[6]->toTensor();
  const Tensor& rope_sin = stack[7]->toTensor();
  const Tensor& hidden = stack[8]->toTensor();
  const Tensor& residual = stack[9]->toTensor();
  const Tensor& adapter_scales = stack[10]->toTensor();
  Tensor& out = stack[outputs]->toTensor();
  Tensor& residual_out = stack[outputs + 1]->toTensor();
  if (features.rotary_dim < 0) features.rotary_dim = query.dim() == 4 ? query.size(3) : 0;
  if (!check_layout(context, query, key, value, key_cache, value_cache, input_pos, rope_cos,
                    rope_sin, features)) {
    return;
  }
  auto row_ops = attention_row_ops();
  if (!row_ops.ok()) {
    fail(context, row_ops.status().message());
    return;
  }
  const AttentionRowOps& ops = **row_ops;
  const int64_t attention_width = query.size(2) * query.size(3);
  const int64_t hidden_size = hidden.dim() == 3 ? hidden.size(2) : 0;
  const int64_t in_sizes[kSites] = {hidden_size, hidden_size, hidden_size, attention_width};
  const int64_t out_sizes[kSites] = {attention_width, key.size(2) * key.size(3),
                                     value.size(2) * value.size(3), hidden_size};
  std::vector<LoraSite> lora_sites;
  if (!collect_lora(context, hidden, residual, adapter_scales, stack[11]->toTensorList(),
                    stack[12]->toIntList(), in_sizes, out_sizes, query.size(1), lora_sites)) {
    return;
  }
  if (executorch::runtime::resize_tensor(residual_out, residual.sizes()) != Error::Ok) {
    fail(context, "residual_out: cannot hold " + shape_string(residual) + ", planned " +
                      shape_string(residual_out));
    return;
  }
  if (executorch::runtime::resize_tensor(out, query.sizes()) != Error::Ok) {
    fail(context, "out: cannot hold " + shape_string(query) + ", planned " + shape_string(out));
    return;
  }

  const int64_t tokens = query.size(1), heads = query.size(2), head_dim = query.size(3);
  const int64_t kv_heads = key_cache.size(2), capacity = key_cache.size(1);
  const int64_t row_stride = kv_heads * head_dim;  // floats between consecutive cache positions
  const int64_t* positions = input_pos.const_data_ptr<int64_t>();
  float* keys = key_cache.mutable_data_ptr<float>();
  float* values = value_cache.mutable_data_ptr<float>();
  // The projections with their LoRA updates (copies: the delegate's outputs stay as they are).
  const float* projections[3] = {query.const_data_ptr<float>(), key.const_data_ptr<float>(),
                                 value.const_data_ptr<float>()};
  std::vector<float> updated[3];
  auto apply_lora = [&](const LoraSite& site, const float* inputs, float* rows) {
    auto update = [&](int64_t begin, int64_t end) {
      std::vector<float> down(site.rank);
      ops.add_lora(inputs, in_sizes[site.site], site.lora_a, site.lora_b, site.rank,
                   out_sizes[site.site], site.scale, begin, end, down.data(), rows);
    };
    const int64_t work_per_token = (in_sizes[site.site] + out_sizes[site.site]) * site.rank;
    if (tokens * work_per_token < (int64_t{1} << 18)) {
      update(0, tokens);
    } else {
      executorch::extension::parallel_for(0, tokens, 1, update);
    }
  };
  for (const LoraSite& site : lora_sites) {
    if (site.site == kOutputSite) continue;
    std::vector<float>& rows = updated[site.site];
    if (rows.empty()) {
      rows.assign(projections[site.site], projections[site.site] + tokens * out_sizes[site.site]);
    }
    apply_lora(site, hidden.const_data_ptr<float>(), rows.data());
  }
  // q and k are normalized per head after their LoRA updates (copies again: never the delegate's).
  const Tensor* norms[2] = {features.query_norm, features.key_norm};
  const int64_t norm_heads[2] = {heads, kv_heads};
  for (int site = 0; site < 2; ++site) {
    if (norms[site] == nullptr) continue;
    std::vector<float>& rows = updated[site];
    if (rows.empty()) {
      rows.assign(projections[site], projections[site] + tokens * out_sizes[site]);
    }
    normalize_heads(rows.data(), tokens * norm_heads[site], head_dim,
                    norms[site]->const_data_ptr<float>(), features.norm_eps);
  }
  for (int site = 0; site < 3; ++site) {
    if (!updated[site].empty()) projections[site] = updated[site].data();
  }
  // RoPE on the leading rotary_dim dims of each head; the rest pass through.
  const int64_t rotary_dim = features.rotary_dim;
  const float* cos_table = rotary_dim > 0 ? rope_cos.const_data_ptr<float>() : nullptr;
  const float* sin_table = rotary_dim > 0 ? rope_sin.const_data_ptr<float>() : nullptr;
  auto rotate_head = [&](const float* x, int64_t position, float* rotated) {
    if (rotary_dim > 0) {
      ops.rotate(x, cos_table + position * rotary_dim, sin_table + position * rotary_dim,
                 rotary_dim, rotated);
    }
    std::memcpy(rotated + rotary_dim, x + rotary_dim, (head_dim - rotary_dim) * sizeof(float));
  };
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t kv = 0; kv < kv_heads; ++kv) {
      rotate_head(projections[1] + t * row_stride + kv * head_dim, positions[t],
                  keys + positions[t] * row_stride + kv * head_dim);
    }
    std::memcpy(values + positions[t] * row_stride, projections[2] + t * row_stride,
                row_stride * sizeof(float));
  }

  const float scale =
      features.scale != 0.0f ? features.scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
  const int64_t window = features.sliding_window;
  const int64_t groups = heads / kv_heads;
  const float* queries = projections[0];
  float* result = out.mutable_data_ptr<float>();
  auto run_rows = [&](int64_t begin, int64_t end) {
    std::vector<float> scores(capacity), rotated_query(head_dim);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / heads, h = item % heads, kv = h / groups;
      const int64_t offset = (t * heads + h) * head_dim;
      rotate_head(queries + offset, positions[t], rotated_query.data());
      // A sliding-window layer reads the last `window` rows up to the query's own position.
      const int64_t first = window > 0 ? std::max<int64_t>(0, positions[t] + 1 - window) : 0;
      ops.attend_row(rotated_query.data(), keys + first * row_stride + kv * head_dim,
                     values + first * row_stride + kv * head_dim, positions[t] + 1 - first,
                     row_stride, head_dim, scale, scores.data(), result + offset);
    }
  };
  // Below about a quarter million multiply-adds (a decode step) waking the thread pool costs
  // more than it saves.
  const int64_t items = tokens * heads;
  const int64_t visible =
      window > 0 ? std::min<int64_t>(window, positions[tokens - 1] + 1) : positions[tokens - 1] + 1;
  const int64_t work_per_item = std::max<int64_t>(1, visible * head_dim * 2);
  constexpr int64_t kParallelWork = int64_t{1} << 18;
  if (items * work_per_item < kParallelWork) {
    run_rows(0, items);
  } else {
    const int64_t grain = std::max<int64_t>(1, (kParallelWork / 8) / work_per_item);
    executorch::extension::parallel_for(0, items, grain, run_rows);
  }

  std::memcpy(residual_out.mutable_data_ptr<float>(), residual.const_data_ptr<float>(),
              residual.nbytes());
  for (const LoraSite& site : lora_sites) {
    if (site.site == kOutputSite) apply_lora(site, result, residual_out.mutable_data_ptr<float>());
  }
}

}  // namespace

std::string last_kernel_error() { return t_last_error; }

Status register_kernels() {
  static std::once_flag once;
  static Error result = Error::Ok;
  std::call_once(once, [] {
    static const executorch::runtime::Kernel kernel(kOpName, cached_attention_out);
    result = executorch::runtime::register_kernel(kernel);
  });
  if (result != Error::Ok) {
    return Status(StatusCode::kRuntimeError, std::string("could not register kernel ") + kOpName +
                                                 " (" + error_name(result) + ")");
  }
  // A bad ETLORA_KERNEL_PATH is reported when a session opens, not at the first token.
  if (auto path = kernel_path(); !path.ok()) return path.status();
  return Status();
}

}  // namespace etlora
