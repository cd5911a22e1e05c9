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

bool check_layout(KernelRuntimeContext& context, const Tensor& query, const Tensor& key,
                  const Tensor& value, const Tensor& key_cache, const Tensor& value_cache,
                  const Tensor& input_pos, const Tensor& rope_cos, const Tensor& rope_sin) {
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
  for (const Tensor* table : {&rope_cos, &rope_sin}) {
    if (table->scalar_type() != ScalarType::Float || table->dim() != 2 ||
        table->size(0) != capacity || table->size(1) != head_dim || head_dim % 2 != 0) {
      return fail(context, std::string(table == &rope_cos ? "rope_cos" : "rope_sin") +
                               ": expected float32 [" + std::to_string(capacity) + ", " +
                               std::to_string(head_dim) + "] with an even head_dim, got " +
                               shape_string(*table));
    }
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

void cached_attention_out(KernelRuntimeContext& context, Span<EValue*> stack) {
  t_last_error.clear();  // a message describes this call's failure, never an earlier one
  if (stack.size() < 15 || !stack[11]->isTensorList() || !stack[12]->isIntList()) {
    fail(context, "expected 15 arguments (lora a tensor list, lora_sites an int list), got " +
                      std::to_string(stack.size()));
    return;
  }
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
  Tensor& out = stack[13]->toTensor();
  Tensor& residual_out = stack[14]->toTensor();
  if (!check_layout(context, query, key, value, key_cache, value_cache, input_pos, rope_cos,
                    rope_sin)) {
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
  for (int site = 0; site < 3; ++site) {
    if (!updated[site].empty()) projections[site] = updated[site].data();
  }
  const float* cos_table = rope_cos.const_data_ptr<float>();
  const float* sin_table = rope_sin.const_data_ptr<float>();
  for (int64_t t = 0; t < tokens; ++t) {
    const float* cos = cos_table + positions[t] * head_dim;
    const float* sin = sin_table + positions[t] * head_dim;
    for (int64_t kv = 0; kv < kv_heads; ++kv) {
      ops.rotate(projections[1] + t * row_stride + kv * head_dim, cos, sin, head_dim,
             keys + positions[t] * row_stride + kv * head_dim);
    }
    std::memcpy(values + positions[t] * row_stride, projections[2] + t * row_stride,
                row_stride * sizeof(float));
  }

  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const int64_t groups = heads / kv_heads;
  const float* queries = projections[0];
  float* result = out.mutable_data_ptr<float>();
  auto run_rows = [&](int64_t begin, int64_t end) {
    std::vector<float> scores(capacity), rotated_query(head_dim);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / heads, h = item % heads, kv = h / groups;
      const int64_t offset = (t * heads + h) * head_dim;
      ops.rotate(queries + offset, cos_table + positions[t] * head_dim,
             sin_table + positions[t] * head_dim, head_dim, rotated_query.data());
      ops.attend_row(rotated_query.data(), keys + kv * head_dim, values + kv * head_dim,
                 positions[t] + 1, row_stride, head_dim, scale, scores.data(), result + offset);
    }
  };
  // Below about a quarter million multiply-adds (a decode step) waking the thread pool costs
  // more than it saves.
  const int64_t items = tokens * heads;
  const int64_t visible = positions[tokens - 1] + 1;
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
