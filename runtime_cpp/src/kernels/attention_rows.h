// The hot loops of etlora::cached_attention, one table per compiled vector
// path (kernel_path.h says how one is chosen). Internal to the runtime.
#pragma once

#include <cstdint>

#include "etlora/status.h"

namespace etlora {

struct AttentionRowOps {
  // rows[t] += scale * (hidden[t] @ lora_a) @ lora_b for t in [begin, end);
  // lora_a is [in, rank], lora_b [rank, out]; down is scratch of rank floats.
  void (*add_lora)(const float* hidden, int64_t in_size, const float* lora_a, const float* lora_b,
                   int64_t rank, int64_t out_size, float scale, int64_t begin, int64_t end,
                   float* down, float* rows);
  // out = x * cos + rotate_half(x) * sin, rotate_half(x) = [-x[half:], x[:half]].
  void (*rotate)(const float* x, const float* cos, const float* sin, int64_t head_dim, float* out);
  // Softmax attention of one query row over cache rows [0, visible); scores is
  // scratch of visible floats.
  void (*attend_row)(const float* query, const float* key_cache, const float* value_cache,
                     int64_t visible, int64_t row_stride, int64_t head_dim, float scale,
                     float* scores, float* out);
};

// One compiled path: its name, the CPU features it needs, and its loops.
struct CompiledKernelPath {
  const char* name;
  const char* needs;
  bool (*cpu_runs)();
  const AttentionRowOps* ops;
};

// Best first; the portable path is last and always runs.
extern const CompiledKernelPath kCompiledKernelPaths[];
extern const int kCompiledKernelPathCount;

// The selected path's loops (kernel_path.cpp); settles the choice on first use.
StatusOr<const AttentionRowOps*> attention_row_ops();

}  // namespace etlora
