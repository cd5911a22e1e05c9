// libFuzzer target: any bytes as an adapter .ptd. The bounds check runs on the
// raw bytes; what it accepts goes on to ExecuTorch's FlatTensor reader and
// etlora's key and dtype rules (AdapterFile::open), as in a real load.
#include <etlora/adapter_file.h>

#include "../../runtime_cpp/src/format/flat_tensor_check.h"
#include "fuzz_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const etlora::Status checked = etlora::check_flat_tensor(data, size, "fuzz input");
  const std::string path = etlora_fuzz::write_scratch(data, size, ".ptd");
  auto file = etlora::AdapterFile::open(path);
  // The loader runs the same check first: it may never accept what the check refuses.
  if (!checked.ok() && file.ok()) __builtin_trap();
  if (file.ok()) {
    for (const auto& [key, tensor] : (*file)->tensors()) {
      size_t count = 1;
      for (int32_t extent : tensor.sizes) count *= static_cast<size_t>(extent);
      volatile float sink = 0;
      for (size_t i = 0; i < count; ++i) sink = sink + tensor.data[i];  // every value is readable
    }
  }
  return 0;
}
