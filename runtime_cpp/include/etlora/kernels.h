// ExecuTorch kernels that etlora programs call besides the stock ones.
#pragma once

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

}  // namespace etlora
