// libFuzzer target: any bytes as a tokenizer.json (and, after a line "#etlora_chat#", as the
// etlora_chat.json beside it); what loads is then used to encode, decode and stream, since hostile
// vocabularies, merges, regexes and added tokens reach the encode pipeline too.
#include <unistd.h>

#include <cstdio>
#include <string>
#include <sys/stat.h>

#include <etlora/tokenizer.h>

namespace {

void write(const std::string& path, const char* data, size_t size) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (file == nullptr) return;
  if (size) std::fwrite(data, 1, size, file);
  std::fclose(file);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string folder = "/tmp/etlora-fuzz-tokenizer-" + std::to_string(::getpid());
  ::mkdir(folder.c_str(), 0700);
  const std::string input(reinterpret_cast<const char*>(data), size);
  const std::string separator = "\n#etlora_chat#\n";
  const size_t cut = input.find(separator);
  write(folder + "/tokenizer.json", input.data(), cut == std::string::npos ? input.size() : cut);
  const std::string chat = folder + "/" + etlora::kChatFileName;
  if (cut == std::string::npos) {
    ::unlink(chat.c_str());
  } else {
    write(chat, input.data() + cut + separator.size(), input.size() - cut - separator.size());
  }
  auto tokenizer = etlora::Tokenizer::load(folder + "/tokenizer.json");
  if (!tokenizer.ok()) return 0;
  const etlora::Tokenizer& tok = **tokenizer;
  for (const char* text : {"Hello world, <|im_start|> 123 \xc3\xa9\n", "  \t\xe6\x97\xa5\xe6\x9c\xac 4567 it's",
                           "\xff\xfe broken \xe2\x82", ""}) {
    const std::vector<int64_t> ids = tok.encode(text, true);
    auto decoded = tok.decode(ids);
    (void)decoded;
    etlora::TokenTextStream stream(tok);
    for (int64_t id : ids) (void)stream.push(id);
    (void)stream.finish();
  }
  std::vector<int64_t> every;
  for (int64_t id = 0; id < tok.vocab_size() && id < 512; ++id) every.push_back(id);
  (void)tok.decode(every);
  (void)tok.encode_chat("hi");
  return 0;
}
