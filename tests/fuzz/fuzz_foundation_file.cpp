// libFuzzer target: any bytes as a foundation.ptd. What the bounds check
// accepts (layouts optional for blob keys) goes to ExecuTorch's FlatTensor
// reader the way a program load uses it: every key's data, and the layout of
// every entry that is not a blob.
#include <executorch/extension/data_loader/buffer_data_loader.h>
#include <executorch/extension/flat_tensor/flat_tensor_data_map.h>

#include "../../runtime_cpp/src/format/flat_tensor_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!etlora::check_flat_tensor(data, size, "fuzz input", /*layouts_required=*/false).ok()) return 0;
  executorch::extension::BufferDataLoader loader(data, size);
  auto map = executorch::extension::FlatTensorDataMap::load(&loader);
  if (!map.ok()) return 0;
  auto keys = map->get_num_keys();
  if (!keys.ok()) return 0;
  for (uint32_t i = 0; i < *keys; ++i) {
    auto key = map->get_key(i);
    if (!key.ok()) continue;
    const std::string name = *key;
    auto bytes = map->get_data(name.c_str());
    if (bytes.ok() && bytes->size() > 0) {
      volatile uint8_t sink = static_cast<const uint8_t*>(bytes->data())[bytes->size() - 1];
      (void)sink;
    }
    const bool blob = name.size() >= 64 && name.find_first_not_of("0123456789abcdef", name.size() - 64) == std::string::npos;
    if (!blob) (void)map->get_tensor_layout(name.c_str());
  }
  return 0;
}
