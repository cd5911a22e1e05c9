// The tokenizer reader on its own (etlora::Tokenizer::load: src/text/tokenizer_json.cpp and
// tokenizer_files.cpp), on committed fixtures and without any Python: the fixture's values,
// Hugging Face's ids for the texts the fixture script encoded, the retired line format of bundles
// <= 6, and the damaged files of tests/fixtures/malformed refused by file and key.
// Fixtures: tests/fixtures/bundles/valid/v7_tokenizer/tokenizer and v7_tokenizer_encodings.txt
// (scripts/dev/make_reader_fixtures.py); tests/fixtures/malformed (make_malformed_fixtures.py).
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
  const std::string path = bundles + "/valid/v7_tokenizer/tokenizer/tokenizer.json";
  auto loaded = etlora::Tokenizer::load(path);
  EXPECT(loaded.ok(), "%s", loaded.status().message().c_str());
  if (!loaded.ok()) return;
  const etlora::Tokenizer& tokenizer = **loaded;
  // make_tiny_tokenizer: 300 tokens, specials <|endoftext|> <|im_start|> <|im_end|> (ids 0 1 2), no
  // bos added to plain text, stop ids <|im_end|> then <|endoftext|>, a ChatML template.
  EXPECT(tokenizer.path() == path, "path %s", tokenizer.path().c_str());
  EXPECT(tokenizer.vocab_size() == 300, "vocab %lld", (long long)tokenizer.vocab_size());
  EXPECT(tokenizer.bos_id() == -1 && !tokenizer.adds_bos(), "bos %lld", (long long)tokenizer.bos_id());
  EXPECT(tokenizer.eos_ids() == std::vector<int64_t>({2, 0}) && tokenizer.is_eos(0) && !tokenizer.is_eos(1),
         "eos ids: %zu", tokenizer.eos_ids().size());
  EXPECT(tokenizer.has_chat_template() && tokenizer.chat_prefix() == "<|im_start|>user\n" &&
             tokenizer.chat_suffix() == "<|im_end|>\n<|im_start|>assistant\n",
         "chat template '%s' ... '%s'", tokenizer.chat_prefix().c_str(), tokenizer.chat_suffix().c_str());
  auto eos = tokenizer.decode({2});
  EXPECT(eos.ok() && *eos == "<|im_end|>", "token 2");
  auto skipped = tokenizer.decode({2, 0}, /*skip_special_tokens=*/true);
  EXPECT(skipped.ok() && skipped->empty(), "special tokens skipped");

  // One line per text: the text's bytes in hex, then Hugging Face's ids.
  std::ifstream lines(bundles + "/v7_tokenizer_encodings.txt");
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
  EXPECT(texts == 9, "v7_tokenizer_encodings.txt: %d texts, expected 9", texts);
}

void retired_line_format(const std::string& bundles) {
  const std::string path = bundles + "/valid/v5_alora/tokenizer/etlora_tokenizer.txt";
  expect_error(etlora::Tokenizer::load(path).status(), StatusCode::kIncompatible,
               {path + ": expected a Hugging Face tokenizer.json (bundle format 7), got the retired line format",
                "hint: re-export the bundle"},
               "v5 line format");
}

void malformed_files(const std::string& malformed) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"tokenizer_truncated.json", " at byte 793: unterminated string"},
      {"tokenizer_huge_id.json", ": model.vocab.'a': expected a whole number in 0..4194303, got 9999999999"},
      {"tokenizer_merge_outside_vocab.json", ": model.merges[0]: expected a merge of two vocab tokens into a vocab token, got 'a' + 'z'"},
      {"tokenizer_unsupported_pre_tokenizer.json",
       ": pre_tokenizer: expected a pre_tokenizer of ByteLevel, Split, Digits, Metaspace, Sequence, got pre_tokenizer 'Whitespace'"},
      {"tokenizer_bad_regex.json", ": pre_tokenizer.pattern.Regex: expected a regex PCRE2 compiles, got '(\\p{L}+' (missing closing parenthesis"},
      {"tokenizer_bos_outside_vocab.json", ": post_processor.special_tokens.<s>.ids[0]: expected a whole number in 0..3, got 70000"},
  };
  for (const auto& [name, part] : cases) {
    expect_error(etlora::Tokenizer::load(malformed + name).status(), StatusCode::kInvalidArgument,
                 {"tokenizer file " + malformed + name + part}, name);
  }
  expect_error(etlora::Tokenizer::load(malformed + "chat_future_version/tokenizer.json").status(),
               StatusCode::kInvalidArgument,
               {"chat file " + malformed + "chat_future_version/etlora_chat.json: format_version: expected 1, got 2"},
               "chat file version");
  expect_error(etlora::Tokenizer::load(malformed + "chat_stop_outside_vocab/tokenizer.json").status(),
               StatusCode::kInvalidArgument,
               {"etlora_chat.json: stop_token_ids[1]: expected an id of a token in tokenizer.json (0..3), got 4"},
               "chat stop id");
  expect_error(etlora::Tokenizer::load(malformed + "nope.json").status(), StatusCode::kNotFound,
               {malformed + "nope.json: not found or not readable"}, "missing tokenizer file");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string fixtures = etlora_test::fixtures_dir(argc, argv);
  if (fixtures.empty()) return 2;
  fixture_tokenizer(fixtures + "/bundles");
  retired_line_format(fixtures + "/bundles");
  malformed_files(fixtures + "/malformed/");
  return etlora_test::report("tokenizer_reader_test");
}
