// ExecuTorch kernels that etlora programs call besides the stock ones.
#pragma once

#include <cstddef>
#include <string>

#include "etlora/status.h"

namespace etlora {

// Registers etlora::cached_attention.out with ExecuTorch's kernel registry.
// Idempotent and thread-safe; Session::open calls it, so only code that runs
// etlora programs through ExecuTorch's own Module needs to call it itself.
Status register_kernels();

// The message of the last etlora kernel failure on this thread ("" if none):
// ExecuTorch reports only an error code, this says which tensor and why.
std::string last_kernel_error();

// Read-only zeros for the LoRA inputs of a site that no bound adapter has.
// One process-wide region, mapped but backed by no memory of its own, so the
// attention kernel can recognise such a site by its address and skip it
// (exact: its update is zero) instead of reading rank x width zeros per token.
// Returns nullptr when `floats` exceeds the region; callers then bind zeros of
// their own, which the kernel multiplies like any adapter.
const float* absent_adapter_rows(size_t floats);
bool is_absent_adapter_rows(const void* data);

}  // namespace etlora
