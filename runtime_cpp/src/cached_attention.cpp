// etlora::cached_attention.out: rotary embedding, KV cache update and
// attention of one decoder layer (schema and reference: export/attention_op.py).
//
// Why our own kernel: expressed in ATen, the cache update is a functional
// index_put that copies the whole cache at every layer and token, attention
// runs over every cache row under a mask, and RoPE is four small delegate ops
// per projection. Here the call's keys and values are rotated and written in
// place and each query reads only the rows up to its own position.
//
// Layouts: query/out [1, T, H, D], key/value [1, T, KV, D], caches
// [1, S, KV, D], input_pos [T] int64, rope_cos/rope_sin [S, D]; query head h
// reads kv head h / (H / KV).

#include "etlora/kernels.h"

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

#include "format_util.h"

namespace etlora {
namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::KernelRuntimeContext;
using executorch::runtime::Span;

constexpr const char* kOpName = "etlora::cached_attention.out";

// Hot loops compiled for the host's vector width where the compiler can pick
// at load time (x86 ifunc); a plain build elsewhere.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ETLORA_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define ETLORA_VECTOR_CLONES
#endif

ETLORA_VECTOR_CLONES
float dot(const float* a, const float* b, int64_t n) {
  float lanes[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int l = 0; l < 16; ++l) lanes[l] += a[i + l] * b[i + l];
  }
  float sum = 0.0f;
  for (int l = 0; l < 16; ++l) sum += lanes[l];
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

ETLORA_VECTOR_CLONES
void add_scaled(float* out, const float* row, float weight, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] += weight * row[i];
}

// out = x * cos + rotate_half(x) * sin, rotate_half(x) = [-x[half:], x[:half]].
ETLORA_VECTOR_CLONES
void rotate(const float* x, const float* cos, const float* sin, int64_t head_dim, float* out) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) out[i] = x[i] * cos[i] - x[i + half] * sin[i];
  for (int64_t i = half; i < head_dim; ++i) out[i] = x[i] * cos[i] + x[i - half] * sin[i];
}

// One query row of one head against cache rows [0, visible).
void attend_row(const float* query, const float* key_cache, const float* value_cache,
                int64_t visible, int64_t row_stride, int64_t head_dim, float scale,
                float* scores, float* out) {
  float max_score = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < visible; ++j) {
    scores[j] = dot(query, key_cache + j * row_stride, head_dim) * scale;
    max_score = std::max(max_score, scores[j]);
  }
  float total = 0.0f;
  for (int64_t j = 0; j < visible; ++j) {
    scores[j] = std::exp(scores[j] - max_score);
    total += scores[j];
  }
  std::fill(out, out + head_dim, 0.0f);
  const float inverse = 1.0f / total;
  for (int64_t j = 0; j < visible; ++j) {
    add_scaled(out, value_cache + j * row_stride, scores[j] * inverse, head_dim);
  }
}

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

void cached_attention_out(KernelRuntimeContext& context, Span<EValue*> stack) {
  if (stack.size() < 9) {
    fail(context, "expected 9 arguments, got " + std::to_string(stack.size()));
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
  Tensor& out = stack[8]->toTensor();
  if (!check_layout(context, query, key, value, key_cache, value_cache, input_pos, rope_cos,
                    rope_sin)) {
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
  const float* cos_table = rope_cos.const_data_ptr<float>();
  const float* sin_table = rope_sin.const_data_ptr<float>();
  for (int64_t t = 0; t < tokens; ++t) {
    const float* cos = cos_table + positions[t] * head_dim;
    const float* sin = sin_table + positions[t] * head_dim;
    for (int64_t kv = 0; kv < kv_heads; ++kv) {
      rotate(key.const_data_ptr<float>() + t * row_stride + kv * head_dim, cos, sin, head_dim,
             keys + positions[t] * row_stride + kv * head_dim);
    }
    std::memcpy(values + positions[t] * row_stride, value.const_data_ptr<float>() + t * row_stride,
                row_stride * sizeof(float));
  }

  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const int64_t groups = heads / kv_heads;
  const float* queries = query.const_data_ptr<float>();
  float* result = out.mutable_data_ptr<float>();
  auto run_rows = [&](int64_t begin, int64_t end) {
    std::vector<float> scores(capacity), rotated_query(head_dim);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / heads, h = item % heads, kv = h / groups;
      const int64_t offset = (t * heads + h) * head_dim;
      rotate(queries + offset, cos_table + positions[t] * head_dim,
             sin_table + positions[t] * head_dim, head_dim, rotated_query.data());
      attend_row(rotated_query.data(), keys + kv * head_dim, values + kv * head_dim,
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
  return Status();
}

}  // namespace etlora
