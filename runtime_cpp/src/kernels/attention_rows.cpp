// The attention kernel's hot loops, compiled once per vector path.
//
// Each loop body is written once, as an always-inline function in plain C++;
// each path is a set of thin wrappers with a `target` attribute, into which the
// compiler inlines the body and vectorizes it for that instruction set. The
// bodies stay in this one translation unit on purpose: compiling whole files
// with -mavx512f could leave AVX-512 copies of shared inline functions (std::
// templates) that the linker might pick for every caller, which would crash a
// CPU without AVX-512. Here only the wrappers carry the attribute.
#include "kernels/attention_rows.h"

#include <algorithm>
#include <cmath>
#include <limits>

#if defined(__aarch64__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace etlora {
namespace {

#if defined(__GNUC__)
#define ETLORA_INLINE_BODY inline __attribute__((always_inline))
#else
#define ETLORA_INLINE_BODY inline
#endif

// 16 partial sums: a fixed summation order that vectorizes at any width up to
// 512 bits (the result still differs between paths by FMA contraction).
ETLORA_INLINE_BODY float dot(const float* a, const float* b, int64_t n) {
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

ETLORA_INLINE_BODY void add_scaled(float* out, const float* row, float weight, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] += weight * row[i];
}

ETLORA_INLINE_BODY void add_lora_body(const float* hidden, int64_t in_size, const float* lora_a,
                                      const float* lora_b, int64_t rank, int64_t out_size,
                                      float scale, int64_t begin, int64_t end, float* down,
                                      float* rows) {
  for (int64_t t = begin; t < end; ++t) {
    for (int64_t r = 0; r < rank; ++r) down[r] = 0.0f;
    const float* x = hidden + t * in_size;
    for (int64_t i = 0; i < in_size; ++i) add_scaled(down, lora_a + i * rank, x[i], rank);
    for (int64_t r = 0; r < rank; ++r) {
      // Ranks padded up to the program's are zero columns of lora_a: skip their lora_b rows.
      if (down[r] == 0.0f) continue;
      add_scaled(rows + t * out_size, lora_b + r * out_size, scale * down[r], out_size);
    }
  }
}

ETLORA_INLINE_BODY void rotate_body(const float* x, const float* cos, const float* sin,
                                    int64_t head_dim, float* out) {
  const int64_t half = head_dim / 2;
  for (int64_t i = 0; i < half; ++i) out[i] = x[i] * cos[i] - x[i + half] * sin[i];
  for (int64_t i = half; i < head_dim; ++i) out[i] = x[i] * cos[i] + x[i - half] * sin[i];
}

ETLORA_INLINE_BODY void attend_row_body(const float* query, const float* key_cache,
                                        const float* value_cache, int64_t visible,
                                        int64_t row_stride, int64_t head_dim, float scale,
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
  for (int64_t d = 0; d < head_dim; ++d) out[d] = 0.0f;
  const float inverse = 1.0f / total;
  for (int64_t j = 0; j < visible; ++j) {
    add_scaled(out, value_cache + j * row_stride, scores[j] * inverse, head_dim);
  }
}

// One path: wrappers compiled with TARGET (empty for portable) and their table.
#define ETLORA_ROW_OPS(path, TARGET)                                                             \
  TARGET void path##_add_lora(const float* hidden, int64_t in_size, const float* lora_a,        \
                              const float* lora_b, int64_t rank, int64_t out_size, float scale, \
                              int64_t begin, int64_t end, float* down, float* rows) {           \
    add_lora_body(hidden, in_size, lora_a, lora_b, rank, out_size, scale, begin, end, down,     \
                  rows);                                                                        \
  }                                                                                             \
  TARGET void path##_rotate(const float* x, const float* cos, const float* sin,                 \
                            int64_t head_dim, float* out) {                                     \
    rotate_body(x, cos, sin, head_dim, out);                                                    \
  }                                                                                             \
  TARGET void path##_attend_row(const float* query, const float* key_cache,                     \
                                const float* value_cache, int64_t visible, int64_t row_stride,  \
                                int64_t head_dim, float scale, float* scores, float* out) {     \
    attend_row_body(query, key_cache, value_cache, visible, row_stride, head_dim, scale,        \
                    scores, out);                                                               \
  }                                                                                             \
  const AttentionRowOps path##_ops = {path##_add_lora, path##_rotate, path##_attend_row};

#if defined(__aarch64__) && defined(__GNUC__) && !defined(__clang__)
// On 64-bit ARM, NEON (Advanced SIMD) is part of the base ISA, so the compiler
// vectorizes every path with it; the portable path is kept scalar so that it
// stays a distinct, simplest reference on the CPU it runs on.
#define ETLORA_PORTABLE_TARGET __attribute__((optimize("no-tree-vectorize")))
#else
#define ETLORA_PORTABLE_TARGET
#endif
ETLORA_ROW_OPS(portable, ETLORA_PORTABLE_TARGET)
bool portable_runs() { return true; }

#if defined(__aarch64__)
#define ETLORA_ARM_PATHS 1
ETLORA_ROW_OPS(neon, )
// AT_HWCAP's ASIMD bit: every ARMv8-A Linux CPU has it, but say so rather than assume.
bool neon_runs() { return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0; }
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define ETLORA_X86_PATHS 1
ETLORA_ROW_OPS(avx512, __attribute__((target("avx512f,avx2,fma"))))
ETLORA_ROW_OPS(avx2, __attribute__((target("avx2,fma"))))
// __builtin_cpu_supports also checks that the OS saves the wide registers.
bool avx512_runs() { return __builtin_cpu_supports("avx512f"); }
bool avx2_runs() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
#endif

}  // namespace

const CompiledKernelPath kCompiledKernelPaths[] = {
#if defined(ETLORA_ARM_PATHS)
    {"neon", "asimd", neon_runs, &neon_ops},
#endif
#if defined(ETLORA_X86_PATHS)
    {"avx512", "avx512f", avx512_runs, &avx512_ops},
    {"avx2", "avx2 fma", avx2_runs, &avx2_ops},
#endif
    {"portable", "", portable_runs, &portable_ops},
};
const int kCompiledKernelPathCount =
    static_cast<int>(sizeof(kCompiledKernelPaths) / sizeof(kCompiledKernelPaths[0]));

}  // namespace etlora
