// The C++ tokenizer on its own: decode(encode(x)) == x, special tokens as one
// id, streamed text equal to the whole. Reads ETLORA_TEST_TOKENIZER (a
// tokenizer/tokenizer.json), else the committed fixture's
// (ETLORA_FIXTURE_TOKENIZER, set by tests/cpp/CMakeLists.txt).
#include <cstdlib>

#include <etlora/tokenizer.h>

#include "test_bundle.h"

int main() {
  const char* path = std::getenv("ETLORA_TEST_TOKENIZER");
#ifdef ETLORA_FIXTURE_TOKENIZER
  if (!path || !*path) path = ETLORA_FIXTURE_TOKENIZER;
#endif
  if (!path || !*path) {
    std::printf("skipped: set ETLORA_TEST_TOKENIZER to a tokenizer.json\n");
    return etlora_test::kSkipped;
  }
  auto loaded = etlora::Tokenizer::load(path);
  EXPECT(loaded.ok(), "%s", loaded.status().message().c_str());
  if (!loaded.ok()) return 1;
  const etlora::Tokenizer& tok = **loaded;

  const std::vector<std::string> samples = {
      "Hello, world!", "It's they've I'm we'll you'd", "  two  spaces  ", "tabs\tand\n\nnewlines\n",
      "digits 1234567890", "punct!?... (x) [y]", "caf\xC3\xA9 \xE6\x97\xA5\xE6\x9C\xAC", "emoji \xF0\x9F\x99\x82",
      "", " ", "\n",
  };
  for (const std::string& text : samples) {
    const auto ids = tok.encode(text);
    auto back = tok.decode(ids);
    EXPECT(back.ok() && *back == text, "round trip of '%s'", text.c_str());
    etlora::TokenTextStream stream(tok);
    std::string streamed;
    for (int64_t id : ids) streamed += *stream.push(id);
    streamed += stream.finish();
    EXPECT(streamed == text, "streamed '%s' gave '%s'", text.c_str(), streamed.c_str());
  }
  for (int64_t id : tok.eos_ids()) {
    auto literal = tok.decode({id});
    EXPECT(literal.ok() && tok.encode("a" + *literal + "b").size() >= 3, "eos %lld", static_cast<long long>(id));
    const auto ids = tok.encode(*literal);
    EXPECT(ids.size() == 1 && ids[0] == id, "eos %lld is not matched as one token", static_cast<long long>(id));
  }
  if (tok.has_chat_template()) {
    const auto chat = tok.encode_chat("hi");
    auto text = tok.decode(chat);
    EXPECT(text.ok() && *text == tok.chat_prefix() + "hi" + tok.chat_suffix(), "chat round trip");
  }
  auto bad = tok.decode({tok.vocab_size()});
  EXPECT(!bad.ok() && etlora_test::contains(bad.status().message(), "expected a token id"), "out-of-range id");
  std::printf("%zu samples, vocab %lld\n%s\n", samples.size(), static_cast<long long>(tok.vocab_size()),
              etlora_test::failures ? "FAILED" : "PASSED");
  return etlora_test::failures ? 1 : 0;
}
