// The zero region behind absent adapter sites (etlora/kernels.h).
#include <sys/mman.h>

#include <cstdint>

#include "etlora/kernels.h"

namespace etlora {
namespace {

// 256 MiB of address space: the largest site of a 8B-class model at rank 256
// fits. Read-only anonymous pages all resolve to the kernel's one zero page.
constexpr size_t kRegionBytes = size_t{256} << 20;

const float* region() {
  static const float* base = [] {
    void* mapped = mmap(nullptr, kRegionBytes, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                        -1, 0);
    return mapped == MAP_FAILED ? nullptr : static_cast<const float*>(mapped);
  }();
  return base;
}

}  // namespace

const float* absent_adapter_rows(size_t floats) {
  if (floats > kRegionBytes / sizeof(float)) return nullptr;
  return region();
}

bool is_absent_adapter_rows(const void* data) {
  const float* base = region();
  if (base == nullptr || data == nullptr) return false;
  const auto address = reinterpret_cast<uintptr_t>(data);
  const auto begin = reinterpret_cast<uintptr_t>(base);
  return address >= begin && address < begin + kRegionBytes;
}

}  // namespace etlora
