// etlora::cached_attention.out, called through ExecuTorch's kernel registry as
// a program would: against a naive double-precision reference (LoRA on query,
// value and o_proj, RoPE, cache rows, attention, residual) for a prefill large enough to take
// the threaded path and for a decode step after it, and with a position past
// the cache, which must fail without writing anything.
#include <cmath>
#include <random>
#include <vector>

#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/kernel/kernel_runtime_context.h>
#include <executorch/runtime/kernel/operator_registry.h>

#include <etlora/kernels.h>

#include "test_bundle.h"

using executorch::aten::ScalarType;
using executorch::extension::make_tensor_ptr;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::KernelRuntimeContext;

namespace {

constexpr int64_t kHeads = 8, kKvHeads = 2, kHeadDim = 64, kCapacity = 96;
constexpr int64_t kRow = kKvHeads * kHeadDim;
constexpr int64_t kHidden = 48, kRank = 4;
constexpr float kScale = 0.75f;

// One adapter slot with LoRA on query (site 0), value (site 2) and o_proj (site 3).
struct Lora {
  std::vector<float> query_a, query_b, value_a, value_b, output_a, output_b;
};

// rows[t] + scale * (hidden[t] @ a) @ b, in double.
std::vector<double> with_lora(const std::vector<float>& rows, const std::vector<float>& hidden,
                              const std::vector<float>& a, const std::vector<float>& b,
                              int64_t out_size, int64_t in_size = kHidden) {
  const int64_t tokens = static_cast<int64_t>(hidden.size()) / in_size;
  std::vector<double> result(rows.begin(), rows.end());
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t r = 0; r < kRank; ++r) {
      double down = 0;
      for (int64_t i = 0; i < in_size; ++i) down += double(hidden[t * in_size + i]) * a[i * kRank + r];
      for (int64_t o = 0; o < out_size; ++o) result[t * out_size + o] += kScale * down * b[r * out_size + o];
    }
  }
  return result;
}

struct Cache {
  std::vector<float> keys = std::vector<float>(kCapacity * kRow, 0.0f);
  std::vector<float> values = std::vector<float>(kCapacity * kRow, 0.0f);
};

// Rotary tables [kCapacity, kHeadDim], rotate-half convention, base 10000.
struct Rope {
  std::vector<float> cos, sin;
  Rope() {
    for (int64_t p = 0; p < kCapacity; ++p) {
      for (int64_t i = 0; i < kHeadDim; ++i) {
        const double angle = p * std::pow(10000.0, -2.0 * (i % (kHeadDim / 2)) / kHeadDim);
        cos.push_back(float(std::cos(angle)));
        sin.push_back(float(std::sin(angle)));
      }
    }
  }
  // x rotated for position p, in double.
  std::vector<double> apply(const double* x, int64_t p) const {
    std::vector<double> out(kHeadDim);
    const int64_t half = kHeadDim / 2;
    for (int64_t i = 0; i < kHeadDim; ++i) {
      const double partner = i < half ? -x[i + half] : x[i - half];
      out[i] = x[i] * double(cos[p * kHeadDim + i]) + partner * double(sin[p * kHeadDim + i]);
    }
    return out;
  }
};
const Rope kRope;

std::vector<float> random_values(size_t count, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::vector<float> values(count);
  for (float& v : values) v = normal(rng);
  return values;
}

// out[t, h, :] over cache rows 0..positions[t] after writing this call's rows.
std::vector<double> reference(const std::vector<double>& query, const Cache& cache,
                              const std::vector<int64_t>& positions) {
  const int64_t tokens = static_cast<int64_t>(positions.size());
  std::vector<double> out(tokens * kHeads * kHeadDim, 0.0);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t h = 0; h < kHeads; ++h) {
      const int64_t kv = h / (kHeads / kKvHeads);
      const std::vector<double> q = kRope.apply(&query[(t * kHeads + h) * kHeadDim], positions[t]);
      std::vector<double> weights(positions[t] + 1);
      double top = -1e300, total = 0;
      for (int64_t j = 0; j <= positions[t]; ++j) {
        double score = 0;
        for (int64_t d = 0; d < kHeadDim; ++d) score += q[d] * cache.keys[j * kRow + kv * kHeadDim + d];
        weights[j] = score / std::sqrt(double(kHeadDim));
        top = std::max(top, weights[j]);
      }
      for (double& w : weights) total += (w = std::exp(w - top));
      for (int64_t j = 0; j <= positions[t]; ++j) {
        for (int64_t d = 0; d < kHeadDim; ++d) {
          out[(t * kHeads + h) * kHeadDim + d] +=
              weights[j] / total * cache.values[j * kRow + kv * kHeadDim + d];
        }
      }
    }
  }
  return out;
}

// Runs the kernel; returns its failure state and fills `out`.
Error call(Cache& cache, std::vector<float>& query, std::vector<float>& key,
           std::vector<float>& value, std::vector<int64_t>& positions, std::vector<float>& hidden,
           std::vector<float>& residual, Lora& lora, std::vector<float>& out,
           std::vector<float>& residual_out) {
  const int32_t tokens = static_cast<int32_t>(positions.size());
  auto q = make_tensor_ptr({1, tokens, int32_t(kHeads), int32_t(kHeadDim)}, query.data(), ScalarType::Float);
  auto k = make_tensor_ptr({1, tokens, int32_t(kKvHeads), int32_t(kHeadDim)}, key.data(), ScalarType::Float);
  auto v = make_tensor_ptr({1, tokens, int32_t(kKvHeads), int32_t(kHeadDim)}, value.data(), ScalarType::Float);
  auto kc = make_tensor_ptr({1, int32_t(kCapacity), int32_t(kKvHeads), int32_t(kHeadDim)}, cache.keys.data(), ScalarType::Float);
  auto vc = make_tensor_ptr({1, int32_t(kCapacity), int32_t(kKvHeads), int32_t(kHeadDim)}, cache.values.data(), ScalarType::Float);
  auto pos = make_tensor_ptr({tokens}, positions.data(), ScalarType::Long);
  auto cos = make_tensor_ptr({int32_t(kCapacity), int32_t(kHeadDim)}, std::vector<float>(kRope.cos));
  auto sin = make_tensor_ptr({int32_t(kCapacity), int32_t(kHeadDim)}, std::vector<float>(kRope.sin));
  auto hidden_tensor = make_tensor_ptr({1, tokens, int32_t(kHidden)}, hidden.data(), ScalarType::Float);
  auto scales = make_tensor_ptr({1}, std::vector<float>{kScale});
  auto qa = make_tensor_ptr({1, int32_t(kHidden), int32_t(kRank)}, lora.query_a.data(), ScalarType::Float);
  auto qb = make_tensor_ptr({1, int32_t(kRank), int32_t(kHeads * kHeadDim)}, lora.query_b.data(), ScalarType::Float);
  auto va = make_tensor_ptr({1, int32_t(kHidden), int32_t(kRank)}, lora.value_a.data(), ScalarType::Float);
  auto vb = make_tensor_ptr({1, int32_t(kRank), int32_t(kRow)}, lora.value_b.data(), ScalarType::Float);
  auto oa = make_tensor_ptr({1, int32_t(kHeads * kHeadDim), int32_t(kRank)}, lora.output_a.data(), ScalarType::Float);
  auto ob = make_tensor_ptr({1, int32_t(kRank), int32_t(kHidden)}, lora.output_b.data(), ScalarType::Float);
  EValue lora_values[] = {EValue(*qa), EValue(*qb), EValue(*va), EValue(*vb), EValue(*oa), EValue(*ob)};
  EValue* lora_wrapped[6];
  for (int i = 0; i < 6; ++i) lora_wrapped[i] = &lora_values[i];
  alignas(executorch::aten::Tensor) unsigned char lora_storage[6 * sizeof(executorch::aten::Tensor)];
  executorch::runtime::BoxedEvalueList<executorch::aten::Tensor> lora_list(
      lora_wrapped, reinterpret_cast<executorch::aten::Tensor*>(lora_storage), 6);
  EValue site_values[] = {EValue(int64_t{0}), EValue(int64_t{2}), EValue(int64_t{3})};
  EValue* site_wrapped[] = {&site_values[0], &site_values[1], &site_values[2]};
  int64_t site_storage[3];
  executorch::runtime::BoxedEvalueList<int64_t> site_list(site_wrapped, site_storage, 3);
  auto residual_tensor = make_tensor_ptr({1, tokens, int32_t(kHidden)}, residual.data(), ScalarType::Float);
  residual_out.assign(residual.size(), 0.0f);
  auto residual_out_tensor = make_tensor_ptr({1, tokens, int32_t(kHidden)}, residual_out.data(), ScalarType::Float);
  out.assign(query.size(), 0.0f);
  auto o = make_tensor_ptr({1, tokens, int32_t(kHeads), int32_t(kHeadDim)}, out.data(), ScalarType::Float);
  EValue args[] = {EValue(*q),   EValue(*k),   EValue(*v),   EValue(*kc),
                   EValue(*vc),  EValue(*pos), EValue(*cos), EValue(*sin),
                   EValue(*hidden_tensor), EValue(*residual_tensor), EValue(*scales),
                   EValue(&lora_list), EValue(&site_list), EValue(*o),
                   EValue(*residual_out_tensor), EValue(*o), EValue(*residual_out_tensor)};
  constexpr int kArgs = sizeof(args) / sizeof(args[0]);
  EValue* stack[kArgs];
  for (int i = 0; i < kArgs; ++i) stack[i] = &args[i];
  auto op = executorch::runtime::get_op_function_from_registry("etlora::cached_attention.out");
  if (!op.ok()) return op.error();
  KernelRuntimeContext context;
  (*op)(context, {stack, kArgs});
  return context.failure_state();
}

double max_diff(const std::vector<float>& out, const std::vector<double>& expected) {
  double diff = 0;
  for (size_t i = 0; i < out.size(); ++i) diff = std::max(diff, std::abs(out[i] - expected[i]));
  return diff;
}

}  // namespace

int main() {
  const etlora::Status registered = etlora::register_kernels();
  EXPECT(registered.ok(), "%s", registered.message().c_str());
  std::mt19937 rng(7);
  Cache cache;
  std::vector<float> out;

  Lora lora{random_values(kHidden * kRank, rng), random_values(kRank * kHeads * kHeadDim, rng),
            random_values(kHidden * kRank, rng), random_values(kRank * kRow, rng),
            random_values(kHeads * kHeadDim * kRank, rng), random_values(kRank * kHidden, rng)};
  std::vector<float> residual_out;

  // Prefill of 80 tokens: enough work for the thread pool path.
  std::vector<int64_t> positions(80);
  for (int64_t t = 0; t < 80; ++t) positions[t] = t;
  auto query = random_values(80 * kHeads * kHeadDim, rng);
  auto key = random_values(80 * kRow, rng), value = random_values(80 * kRow, rng);
  auto hidden = random_values(80 * kHidden, rng), residual = random_values(80 * kHidden, rng);
  Error err = call(cache, query, key, value, positions, hidden, residual, lora, out, residual_out);
  EXPECT(err == Error::Ok, "prefill failed: %s", etlora::last_kernel_error().c_str());
  const std::vector<double> value_rows = with_lora(value, hidden, lora.value_a, lora.value_b, kRow);
  double key_diff = 0, value_diff = 0;
  for (int64_t t = 0; t < 80; ++t) {
    for (int64_t kv = 0; kv < kKvHeads; ++kv) {
      std::vector<double> row(key.begin() + t * kRow + kv * kHeadDim, key.begin() + t * kRow + (kv + 1) * kHeadDim);
      const std::vector<double> rotated = kRope.apply(row.data(), t);
      for (int64_t d = 0; d < kHeadDim; ++d) {
        key_diff = std::max(key_diff, std::abs(cache.keys[t * kRow + kv * kHeadDim + d] - rotated[d]));
      }
    }
  }
  for (size_t i = 0; i < value_rows.size(); ++i) value_diff = std::max(value_diff, std::abs(cache.values[i] - value_rows[i]));
  EXPECT(key_diff < 1e-5, "cache rows 0..79 hold the rotated keys (max diff %g)", key_diff);
  EXPECT(value_diff < 1e-4, "cache rows 0..79 hold value + its LoRA update (max diff %g)", value_diff);
  double diff = max_diff(out, reference(with_lora(query, hidden, lora.query_a, lora.query_b, kHeads * kHeadDim), cache, positions));
  std::printf("prefill: max |kernel - reference| = %g\n", diff);
  EXPECT(diff < 1e-4, "prefill differs by %g", diff);
  const std::vector<double> expected_residual =
      with_lora(residual, out, lora.output_a, lora.output_b, kHidden, kHeads * kHeadDim);
  std::vector<float> residual_out_copy = residual_out;
  diff = max_diff(residual_out_copy, expected_residual);
  double largest = 0;
  for (double v : expected_residual) largest = std::max(largest, std::abs(v));
  std::printf("prefill residual + o_proj LoRA: max diff %g (largest value %g)\n", diff, largest);
  EXPECT(diff < 1e-5 * largest, "residual_out differs by %g", diff);

  // One decode step at position 80 reads all 81 rows.
  std::vector<int64_t> next = {80};
  auto step_query = random_values(kHeads * kHeadDim, rng);
  auto step_key = random_values(kRow, rng), step_value = random_values(kRow, rng);
  auto step_hidden = random_values(kHidden, rng), step_residual = random_values(kHidden, rng);
  err = call(cache, step_query, step_key, step_value, next, step_hidden, step_residual, lora, out,
             residual_out);
  EXPECT(err == Error::Ok, "decode failed: %s", etlora::last_kernel_error().c_str());
  diff = max_diff(out, reference(with_lora(step_query, step_hidden, lora.query_a, lora.query_b, kHeads * kHeadDim), cache, next));
  std::printf("decode: max |kernel - reference| = %g\n", diff);
  EXPECT(diff < 1e-4, "decode differs by %g", diff);

  // A position past the cache: refused, named, and nothing written.
  const Cache before = cache;
  std::vector<int64_t> outside = {kCapacity};
  err = call(cache, step_query, step_key, step_value, outside, step_hidden, step_residual, lora,
             out, residual_out);
  const std::string message = etlora::last_kernel_error();
  std::printf("past the cache: %s\n", message.c_str());
  EXPECT(err == Error::InvalidArgument, "expected InvalidArgument, got 0x%x", unsigned(err));
  EXPECT(etlora_test::contains(message, "outside the KV cache"), "message names the cause: %s",
         message.c_str());
  EXPECT(cache.keys == before.keys && cache.values == before.values, "cache unchanged");

  std::printf("%s\n", etlora_test::failures ? "FAILED" : "PASSED");
  return etlora_test::failures ? 1 : 0;
}
