// The tokenizer file reader on its own (etlora::Tokenizer::load: src/text/
// tokenizer_file.cpp), on committed fixtures and without any Python: the
// header's values, Hugging Face's ids for the texts the fixture script encoded,
// and the damaged files of tests/fixtures/malformed refused by file and line.
// Fixtures: tests/fixtures/bundles/valid/v5_alora/tokenizer and
// v5_tokenizer_encodings.txt (scripts/dev/make_reader_fixtures.py).
#include <fstream>
#include <sstream>

#include <etlora/tokenizer.h>

#include "reader_fixtures.h"

using etlora::StatusCode;
using etlora_test::expect_error;

namespace {

std::string hex_to_bytes(const std::string& hex) {
  std::string bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) bytes += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return bytes;
}

void fixture_tokenizer(const std::string& bundles) {
  const std::string path = bundles + "/valid/v5_alora/tokenizer/etlora_tokenizer.txt";
  auto loaded = etlora::Tokenizer::load(path);
  EXPECT(loaded.ok(), "%s", loaded.status().message().c_str());
  if (!loaded.ok()) return;
  const etlora::Tokenizer& tokenizer = **loaded;
  // make_tiny_tokenizer: 300 tokens, specials <|endoftext|> <|im_start|> <|im_end|> (ids 0 1 2),
  // bos <|im_start|> not prepended, eos <|im_end|> then <|endoftext|> (the writer adds the usual
  // end-of-turn tokens the vocabulary has), a ChatML template.
  EXPECT(tokenizer.path() == path, "path %s", tokenizer.path().c_str());
  EXPECT(tokenizer.vocab_size() == 300, "vocab %lld", (long long)tokenizer.vocab_size());
  EXPECT(tokenizer.bos_id() == 1 && !tokenizer.adds_bos(), "bos %lld, adds %d", (long long)tokenizer.bos_id(),
         tokenizer.adds_bos());
  EXPECT(tokenizer.eos_ids() == std::vector<int64_t>({2, 0}) && tokenizer.is_eos(0) && !tokenizer.is_eos(1),
         "eos ids: %zu", tokenizer.eos_ids().size());
  EXPECT(tokenizer.has_chat_template() && tokenizer.chat_prefix() == "<|im_start|>user\n" &&
             tokenizer.chat_suffix() == "<|im_end|>\n<|im_start|>assistant\n",
         "chat template '%s' ... '%s'", tokenizer.chat_prefix().c_str(), tokenizer.chat_suffix().c_str());
  auto eos = tokenizer.decode({2});
  EXPECT(eos.ok() && *eos == "<|im_end|>", "token 2");

  // One line per text: the text's bytes in hex, then Hugging Face's ids.
  std::ifstream lines(bundles + "/v5_tokenizer_encodings.txt");
  int texts = 0;
  for (std::string line; std::getline(lines, line); ++texts) {
    std::istringstream fields(line);
    std::string hex;
    fields >> hex;
    const std::string text = hex_to_bytes(hex);
    std::vector<int64_t> expected;
    for (int64_t id; fields >> id;) expected.push_back(id);
    const std::vector<int64_t> ids = tokenizer.encode(text);
    EXPECT(ids == expected, "text %d ('%s'): %zu ids, Hugging Face gives %zu", texts, text.c_str(), ids.size(),
           expected.size());
    auto back = tokenizer.decode(ids);
    EXPECT(back.ok() && *back == text, "text %d does not decode back", texts);
  }
  EXPECT(texts == 9, "v5_tokenizer_encodings.txt: %d texts, expected 9", texts);
}

void malformed_files(const std::string& malformed) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"tokenizer_truncated.txt", ":7: expected 'vocab <count>' with at most 135 entries (the file has 271 bytes), got 300"},
      {"tokenizer_future_version.txt", ":1: expected format version 1, got version 2"},
      {"tokenizer_huge_vocab.txt",
       ":7: expected 'vocab <count>' with at most 51 entries (the file has 102 bytes), got 9999999999"},
  };
  for (const auto& [name, part] : cases) {
    expect_error(etlora::Tokenizer::load(malformed + name).status(), StatusCode::kInvalidArgument,
                 {malformed + name + part}, name);
  }
  expect_error(etlora::Tokenizer::load(malformed + "nope.txt").status(), StatusCode::kNotFound,
               {malformed + "nope.txt: not found or not readable"}, "missing tokenizer file");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string fixtures = etlora_test::fixtures_dir(argc, argv);
  if (fixtures.empty()) return 2;
  fixture_tokenizer(fixtures + "/bundles");
  malformed_files(fixtures + "/malformed/");
  return etlora_test::report("tokenizer_reader_test");
}
