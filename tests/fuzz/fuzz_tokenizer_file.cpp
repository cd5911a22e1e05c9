// libFuzzer target: any bytes as tokenizer/etlora_tokenizer.txt; what loads is
// then used to encode and decode, since hostile vocabularies and merges reach
// the BPE loop too.
#include <etlora/tokenizer.h>

#include "fuzz_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = etlora_fuzz::write_scratch(data, size, ".txt");
  auto tokenizer = etlora::Tokenizer::load(path);
  if (!tokenizer.ok()) return 0;
  const std::vector<int64_t> ids = (*tokenizer)->encode("Hello world, <|im_start|> 123 \xc3\xa9\n");
  auto text = (*tokenizer)->decode(ids);
  (void)text;
  auto chat = (*tokenizer)->encode_chat("hi");
  (void)chat;
  return 0;
}
