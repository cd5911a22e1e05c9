// libFuzzer target: any bytes as manifest.json, through the JSON reader and the
// bundle rules (etlora::Bundle::parse; files are not opened).
#include <etlora/bundle.h>

#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto bundle = etlora::Bundle::parse(text, "/nonexistent-bundle");
  if (bundle.ok()) {
    for (const auto& adapter : bundle->adapters()) (void)bundle->adapter_path(adapter.name);
    (void)bundle->tokenizer_path();
  }
  return 0;
}
