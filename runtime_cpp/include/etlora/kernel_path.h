// Which vector code etlora's own kernels run (today: etlora::cached_attention).
//
// The hot loops are compiled once per instruction set this build targets
// (x86-64: avx512, avx2, portable) and one set is chosen per process. The
// choice is explicit so that tests can run every path the CPU can execute and
// a benchmark figure can name the code that made it; without one, the best
// path the CPU runs is taken ("auto"). The environment variable
// ETLORA_KERNEL_PATH=<name>|auto sets the choice before the first kernel call
// (a runner on a device, a whole test suite forced onto one path).
// Results differ between paths only by float32 rounding (summation order).
#pragma once

#include <string>
#include <vector>

#include "etlora/status.h"

namespace etlora {

// Every path this build compiled, best first; portable is always last.
struct KernelPathInfo {
  std::string name;       // "avx512", "avx2", "portable"
  std::string needs;      // CPU features it uses ("avx512f", "avx2 fma", "")
  bool runnable = false;  // this CPU has those features
};
std::vector<KernelPathInfo> kernel_paths();

// Chooses the path by name, or "auto" for the best runnable one. Refuses a
// name this build does not know or a path this CPU cannot run (the message
// lists those it can); the previous choice then stays.
Status select_kernel_path(const std::string& name);

// The path in effect. The first call settles it from ETLORA_KERNEL_PATH (or
// auto) unless select_kernel_path ran first.
StatusOr<std::string> kernel_path();

}  // namespace etlora
