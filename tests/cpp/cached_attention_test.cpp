// etlora::cached_attention.out, called through ExecuTorch's kernel registry as
// a program would, on every vector path this CPU runs (or on the one named on
// the command line): against a double-precision reference (LoRA on query,
// value and o_proj, RoPE, cache rows, attention, residual) for a prefill large
// enough to take the threaded path and for a decode step after it, and with a
// position past the cache, which must fail without writing anything.
//
// Error bounds are derived, not tuned: every comparison allows the worst-case
// float32 rounding error of the computation it checks (Higham's gamma_n, see
// `gamma`), scaled by the magnitudes involved, which holds for any summation
// order, FMA contraction or vector width. The test prints the worst
// observed/bound ratio; real mistakes (a wrong row, head or rotation) are
// errors of the order of the values themselves, far above these bounds.
#include <cmath>
#include <random>
#include <vector>

#include <executorch/extension/tensor/tensor_ptr.h>
#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/kernel/kernel_runtime_context.h>
#include <executorch/runtime/kernel/operator_registry.h>

#include <etlora/kernel_path.h>
#include <etlora/kernels.h>
#include <etlora/thread_pool.h>

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
  bool output_absent = false;  // bind o_proj's lora_a to the runtime's absent-site zero region
};

// Float32's unit roundoff and Higham's gamma_n = n u / (1 - n u): a float
// computation whose every result passes through at most n roundings (a sum or
// dot product of n terms in any order, with or without FMA) differs from the
// exact result by at most gamma_n times the same computation on absolute
// values (its "magnitude"). Chains of such steps add their n (to first order).
constexpr double kUnitRoundoff = 1.0 / (1 << 24);
double gamma(int64_t roundings) {
  const double nu = double(roundings) * kUnitRoundoff;
  return nu / (1.0 - nu);
}

// An exact (double) result and its magnitude, element by element.
struct Bounded {
  std::vector<double> value, magnitude;
};

// An exact result and the error a correct float32 kernel may make, per element.
struct Expected {
  std::vector<double> value, tolerance;
};

Expected within_gamma(const Bounded& exact, int64_t roundings) {
  Expected expected{exact.value, exact.magnitude};
  for (double& t : expected.tolerance) t *= gamma(roundings);
  return expected;
}

// rows[t] + scale * (hidden[t] @ a) @ b, in double, with its magnitude.
// The kernel's chain per element: in_size roundings for each down-projection
// sum, one for the scale, then kRank additions of one product each.
Bounded with_lora(const std::vector<float>& rows, const std::vector<float>& hidden,
                  const std::vector<float>& a, const std::vector<float>& b, int64_t out_size,
                  int64_t in_size = kHidden) {
  const int64_t tokens = static_cast<int64_t>(hidden.size()) / in_size;
  Bounded result{std::vector<double>(rows.begin(), rows.end()), {}};
  for (float v : rows) result.magnitude.push_back(std::abs(v));
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t r = 0; r < kRank; ++r) {
      double down = 0, down_magnitude = 0;
      for (int64_t i = 0; i < in_size; ++i) {
        const double term = double(hidden[t * in_size + i]) * a[i * kRank + r];
        down += term;
        down_magnitude += std::abs(term);
      }
      for (int64_t o = 0; o < out_size; ++o) {
        result.value[t * out_size + o] += kScale * down * b[r * out_size + o];
        result.magnitude[t * out_size + o] += kScale * down_magnitude * std::abs(b[r * out_size + o]);
      }
    }
  }
  return result;
}
constexpr int64_t lora_roundings(int64_t in_size) { return in_size + kRank + 2; }

// Checks got against expected element by element; prints the worst
// difference and the worst element's share of its tolerance.
void expect_within(const char* what, const std::vector<float>& got, const Expected& expected) {
  const std::vector<double>& value = expected.value;
  const std::vector<double>& bound = expected.tolerance;
  double worst_diff = 0, worst_ratio = 0;
  size_t worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double diff = std::abs(double(got[i]) - value[i]);
    const double ratio = diff == 0 ? 0 : bound[i] > 0 ? diff / bound[i] : INFINITY;
    worst_diff = std::max(worst_diff, diff);
    if (ratio > worst_ratio) worst_ratio = ratio, worst = i;
  }
  double largest_tolerance = 0, largest_value = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    largest_tolerance = std::max(largest_tolerance, bound[i]);
    largest_value = std::max(largest_value, std::abs(value[i]));
  }
  std::printf("  %s: max |kernel - reference| = %.3g, worst element at %.3f of its bound "
              "(largest bound %.3g, largest value %.3g)\n",
              what, worst_diff, worst_ratio, largest_tolerance, largest_value);
  EXPECT(worst_ratio <= 1.0, "%s: element %zu is %.9g, expected %.9g within %.3g", what, worst,
         got[worst], value[worst], bound[worst]);
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
  // The magnitude of that rotation: |x_i cos_i| + |partner_i sin_i|.
  std::vector<double> apply_magnitude(const double* x, int64_t p) const {
    std::vector<double> out(kHeadDim);
    const int64_t half = kHeadDim / 2;
    for (int64_t i = 0; i < kHeadDim; ++i) {
      const double partner = i < half ? x[i + half] : x[i - half];
      out[i] = std::abs(x[i] * double(cos[p * kHeadDim + i])) +
               std::abs(partner * double(sin[p * kHeadDim + i]));
    }
    return out;
  }
};
const Rope kRope;
// x * cos - partner * sin: two products and one sum.
constexpr int64_t kRotateRoundings = 2;

std::vector<float> random_values(size_t count, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::vector<float> values(count);
  for (float& v : values) v = normal(rng);
  return values;
}

// out[t, h, :] over cache rows 0..positions[t] after writing this call's rows
// (read from the kernel's cache, so only attention itself is checked), and the
// rounding error a correct float32 kernel may make there, element by element:
// - the rotated query carries query_error = lora + rotate roundings (relative to
//   its magnitude); a score is a dot product of kHeadDim terms times the scale,
//   so |score error| <= gamma(query_error + kHeadDim + 1) * score magnitude A_j;
//   subtracting the row maximum adds at most 2 roundings of |A_j| + max A;
//   together at most delta = gamma(query_error + kHeadDim + 3) * 2 max_j A_j;
// - shifting every score by at most delta moves each softmax weight by a factor
//   within [exp(-2 delta), exp(2 delta)]; exp (1 ulp), the running total
//   (visible terms), its inverse and the product add gamma(visible + 3);
// - the weighted sum of visible value rows adds gamma(visible + 1);
// so |error| <= (exp(2 delta) - 1 + gamma(2 visible + 4)) * sum_j w_j |v_jd|.
// Second-order products of these small terms are covered by a factor 1.01.
Expected reference(const Bounded& query, int64_t query_roundings, const Cache& cache,
                   const std::vector<int64_t>& positions) {
  const int64_t tokens = static_cast<int64_t>(positions.size());
  const double scale = 1.0 / std::sqrt(double(kHeadDim));
  Expected out{std::vector<double>(tokens * kHeads * kHeadDim, 0.0),
               std::vector<double>(tokens * kHeads * kHeadDim, 0.0)};
  for (int64_t t = 0; t < tokens; ++t) {
    const int64_t visible = positions[t] + 1;
    for (int64_t h = 0; h < kHeads; ++h) {
      const int64_t kv = h / (kHeads / kKvHeads), row = (t * kHeads + h) * kHeadDim;
      const std::vector<double> q = kRope.apply(&query.value[row], positions[t]);
      const std::vector<double> q_magnitude = kRope.apply_magnitude(&query.magnitude[row], positions[t]);
      std::vector<double> weights(visible);
      double top = -1e300, total = 0, largest_score_magnitude = 0;
      for (int64_t j = 0; j < visible; ++j) {
        double score = 0, score_magnitude = 0;
        for (int64_t d = 0; d < kHeadDim; ++d) {
          const double key = cache.keys[j * kRow + kv * kHeadDim + d];
          score += q[d] * key;
          score_magnitude += q_magnitude[d] * std::abs(key);
        }
        weights[j] = score * scale;
        largest_score_magnitude = std::max(largest_score_magnitude, score_magnitude * scale);
        top = std::max(top, weights[j]);
      }
      for (double& w : weights) total += (w = std::exp(w - top));
      const double delta =
          gamma(query_roundings + kRotateRoundings + kHeadDim + 3) * 2 * largest_score_magnitude;
      const double relative = 1.01 * (std::expm1(2 * delta) + gamma(2 * visible + 4));
      for (int64_t j = 0; j < visible; ++j) {
        for (int64_t d = 0; d < kHeadDim; ++d) {
          const double v = cache.values[j * kRow + kv * kHeadDim + d];
          out.value[row + d] += weights[j] / total * v;
          out.tolerance[row + d] += relative * weights[j] / total * std::abs(v);
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
  float* output_a = lora.output_absent
                        ? const_cast<float*>(etlora::absent_adapter_rows(kHeads * kHeadDim * kRank))
                        : lora.output_a.data();
  auto oa = make_tensor_ptr({1, int32_t(kHeads * kHeadDim), int32_t(kRank)}, output_a, ScalarType::Float);
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

// The whole scenario on the selected path; returns the number of failed checks.
int check_path() {
  const int failures_before = etlora_test::failures;
  std::mt19937 rng(7);
  Cache cache;
  std::vector<float> out, residual_out;
  Lora lora{random_values(kHidden * kRank, rng), random_values(kRank * kHeads * kHeadDim, rng),
            random_values(kHidden * kRank, rng), random_values(kRank * kRow, rng),
            random_values(kHeads * kHeadDim * kRank, rng), random_values(kRank * kHidden, rng)};

  // Prefill of 80 tokens: enough work for the thread pool path.
  std::vector<int64_t> positions(80);
  for (int64_t t = 0; t < 80; ++t) positions[t] = t;
  auto query = random_values(80 * kHeads * kHeadDim, rng);
  auto key = random_values(80 * kRow, rng), value = random_values(80 * kRow, rng);
  auto hidden = random_values(80 * kHidden, rng), residual = random_values(80 * kHidden, rng);
  Error err = call(cache, query, key, value, positions, hidden, residual, lora, out, residual_out);
  EXPECT(err == Error::Ok, "prefill failed: %s", etlora::last_kernel_error().c_str());

  Bounded rotated_keys;
  for (int64_t t = 0; t < 80; ++t) {
    for (int64_t kv = 0; kv < kKvHeads; ++kv) {
      const std::vector<double> row(key.begin() + t * kRow + kv * kHeadDim,
                                    key.begin() + t * kRow + (kv + 1) * kHeadDim);
      for (double v : kRope.apply(row.data(), t)) rotated_keys.value.push_back(v);
      for (double v : kRope.apply_magnitude(row.data(), t)) rotated_keys.magnitude.push_back(v);
    }
  }
  const std::vector<float> key_rows(cache.keys.begin(), cache.keys.begin() + 80 * kRow);
  const std::vector<float> value_rows(cache.values.begin(), cache.values.begin() + 80 * kRow);
  expect_within("prefill cache rows 0..79: rotated keys", key_rows,
                within_gamma(rotated_keys, kRotateRoundings));
  expect_within("prefill cache rows 0..79: value + LoRA", value_rows,
                within_gamma(with_lora(value, hidden, lora.value_a, lora.value_b, kRow),
                             lora_roundings(kHidden)));
  const Bounded prefill_query = with_lora(query, hidden, lora.query_a, lora.query_b, kHeads * kHeadDim);
  expect_within("prefill attention", out,
                reference(prefill_query, lora_roundings(kHidden), cache, positions));
  // The bound has teeth: a kernel that attended one row short of each query's
  // own position would be outside it.
  {
    std::vector<int64_t> one_short(positions);
    for (int64_t& p : one_short) p = std::max<int64_t>(p - 1, 0);
    const Expected wrong = reference(prefill_query, lora_roundings(kHidden), cache, one_short);
    size_t outside = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      outside += std::abs(out[i] - wrong.value[i]) > wrong.tolerance[i];
    }
    std::printf("  one row short: %zu of %zu outputs outside the bound\n", outside, out.size());
    EXPECT(outside > out.size() / 2, "the bound tells a one-row-short attention apart (%zu of %zu)",
           outside, out.size());
  }
  // o_proj's update reads the kernel's own attention output, so only the LoRA step is checked.
  expect_within("prefill residual + o_proj LoRA", residual_out,
                within_gamma(with_lora(residual, out, lora.output_a, lora.output_b, kHidden,
                                       kHeads * kHeadDim),
                             lora_roundings(kHeads * kHeadDim)));

  // One decode step at position 80 reads all 81 rows.
  std::vector<int64_t> next = {80};
  auto step_query = random_values(kHeads * kHeadDim, rng);
  auto step_key = random_values(kRow, rng), step_value = random_values(kRow, rng);
  auto step_hidden = random_values(kHidden, rng), step_residual = random_values(kHidden, rng);
  err = call(cache, step_query, step_key, step_value, next, step_hidden, step_residual, lora, out,
             residual_out);
  EXPECT(err == Error::Ok, "decode failed: %s", etlora::last_kernel_error().c_str());
  expect_within("decode attention", out,
                reference(with_lora(step_query, step_hidden, lora.query_a, lora.query_b, kHeads * kHeadDim),
                          lora_roundings(kHidden), cache, next));

  // A position past the cache: refused, named, and nothing written.
  const Cache before = cache;
  std::vector<int64_t> outside = {kCapacity};
  err = call(cache, step_query, step_key, step_value, outside, step_hidden, step_residual, lora,
             out, residual_out);
  const std::string message = etlora::last_kernel_error();
  std::printf("  past the cache: %s\n", message.c_str());
  EXPECT(err == Error::InvalidArgument, "expected InvalidArgument, got 0x%x", unsigned(err));
  EXPECT(etlora_test::contains(message, "outside the KV cache"), "message names the cause: %s",
         message.c_str());
  EXPECT(cache.keys == before.keys && cache.values == before.values, "cache unchanged");
  // The next successful call leaves no stale message behind.
  err = call(cache, step_query, step_key, step_value, next, step_hidden, step_residual, lora, out,
             residual_out);
  EXPECT(err == Error::Ok && etlora::last_kernel_error().empty(),
         "a successful call clears the last error, got '%s'", etlora::last_kernel_error().c_str());

  // A site bound to the absent-site region is skipped, not multiplied: with NaN in its lora_b
  // the residual passes through bit for bit, and the other sites' updates are unchanged.
  const std::vector<float> decode_out = out;
  Lora without_output = lora;
  without_output.output_absent = true;
  without_output.output_b.assign(without_output.output_b.size(), std::nanf(""));
  err = call(cache, step_query, step_key, step_value, next, step_hidden, step_residual,
             without_output, out, residual_out);
  EXPECT(err == Error::Ok, "absent o_proj site: %s", etlora::last_kernel_error().c_str());
  EXPECT(etlora::is_absent_adapter_rows(etlora::absent_adapter_rows(16)) &&
             !etlora::is_absent_adapter_rows(lora.output_a.data()),
         "absent-site region recognised by address only");
  EXPECT(residual_out == step_residual, "absent o_proj site leaves the residual unchanged");
  EXPECT(out == decode_out, "absent o_proj site leaves attention unchanged");
  return etlora_test::failures - failures_before;
}

}  // namespace

// cached_attention_test [PATH]: PATH runs one vector path (exit 77 when this
// CPU cannot run it); without one, every path of this build that the CPU runs.
int main(int argc, char** argv) {
  // The thread pool as a session runs it (etlora's executor on ExecuTorch's pool), so that the
  // kernel's parallel loops are tested the way they run, and ThreadSanitizer sees the hand-offs.
  const etlora::Status pool = etlora::configure_thread_pool({});
  EXPECT(pool.ok(), "%s", pool.message().c_str());
  const etlora::Status registered = etlora::register_kernels();
  EXPECT(registered.ok(), "%s", registered.message().c_str());
  const std::string wanted = argc > 1 ? argv[1] : "";
  bool known = wanted.empty();
  int ran = 0;
  for (const etlora::KernelPathInfo& path : etlora::kernel_paths()) {
    if (!wanted.empty() && path.name != wanted) continue;
    known = true;
    if (!path.runnable) {
      std::printf("path %s: skipped, this CPU lacks %s\n", path.name.c_str(), path.needs.c_str());
      if (!wanted.empty()) return etlora_test::kSkipped;
      continue;
    }
    const etlora::Status selected = etlora::select_kernel_path(path.name);
    EXPECT(selected.ok(), "%s", selected.message().c_str());
    const auto active = etlora::kernel_path();
    EXPECT(active.ok() && *active == path.name, "kernel path %s is in effect",
           path.name.c_str());
    std::printf("path %s:\n", path.name.c_str());
    const int failed = check_path();
    std::printf("path %s: %s\n", path.name.c_str(), failed ? "FAILED" : "passed");
    ++ran;
  }
  EXPECT(known, "expected a kernel path of this build, got '%s'", wanted.c_str());
  EXPECT(ran > 0, "at least one path ran");
  std::printf("%s\n", etlora_test::failures ? "FAILED" : "PASSED");
  return etlora_test::failures ? 1 : 0;
}
