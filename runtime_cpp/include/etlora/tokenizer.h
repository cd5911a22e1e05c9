// A bundle's tokenizer: the model's own Hugging Face tokenizer.json, encoded and decoded as the
// `tokenizers` library does (byte-level BPE with any split regex, SentencePiece-style BPE with
// byte fallback, normalizers, added tokens, the post-processor's special tokens), plus
// etlora_chat.json beside it: the rendered chat template and the ids that stop generation
// (docs/bundle-format.md, "tokenizer/"). Components etlora does not run are refused by name at
// load.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <etlora/status.h>

namespace etlora {

namespace text {
struct TokenizerParts;
}

// The etlora_chat.json version this runtime reads.
constexpr int kChatFileVersion = 1;
// The files of a bundle's tokenizer/ folder.
constexpr const char* kTokenizerJsonName = "tokenizer.json";
constexpr const char* kChatFileName = "etlora_chat.json";

class Tokenizer {
 public:
  // `path` is a tokenizer.json; etlora_chat.json is read from the same folder when it is there
  // (without it: no chat template, no stop ids). tokenizer/etlora_tokenizer.txt (bundles of format
  // <= 6) is refused as the retired line format.
  static StatusOr<std::unique_ptr<Tokenizer>> load(const std::string& path);
  ~Tokenizer();

  // Token ids of `text` (UTF-8; invalid bytes read as U+FFFD). add_special_tokens: the
  // post-processor's tokens around them (bos...), as tokenizers' encode(text, add_special_tokens).
  std::vector<int64_t> encode(const std::string& text, bool add_special_tokens = false) const;

  // The chat template around one user message: encode(chat_prefix + text + chat_suffix) without
  // added special tokens (the template has them). Without a chat template, encode(text).
  std::vector<int64_t> encode_chat(const std::string& user_text) const;

  // What a prompt becomes before generation, for the runner and Session.generate alike: the chat
  // template when `chat` and there is one, else encode(text, add_special_tokens=true).
  std::vector<int64_t> encode_prompt(const std::string& text, bool chat) const;

  // The text of `ids` as tokenizers' decode gives it (invalid UTF-8 shows as U+FFFD). Fails on an
  // id outside the vocabulary or one no token has.
  StatusOr<std::string> decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false) const;

  const std::string& path() const { return path_; }
  int64_t vocab_size() const;
  bool has_chat_template() const { return has_chat_; }
  const std::string& chat_prefix() const { return chat_prefix_; }
  const std::string& chat_suffix() const { return chat_suffix_; }
  const std::vector<int64_t>& eos_ids() const { return eos_ids_; }
  bool is_eos(int64_t id) const;
  int64_t bos_id() const;  // the post-processor's first leading token, -1: none
  bool adds_bos() const { return bos_id() >= 0; }

 private:
  friend class ChatFileReader;
  Tokenizer();
  bool parts_present(int64_t id) const;  // a token has this id
  void encode_plain(const std::string& text, bool at_origin, std::vector<int64_t>& out) const;

  std::string path_;
  std::unique_ptr<text::TokenizerParts> parts_;
  std::vector<int64_t> eos_ids_;
  bool has_chat_ = false;
  std::string chat_prefix_, chat_suffix_;
};

// Turns generated ids into printable text piece by piece: text is released once decoding the
// tokens so far no longer ends in U+FFFD, so a character split across tokens is never cut (a
// token that really decodes to U+FFFD is released after 4 tokens).
class TokenTextStream {
 public:
  explicit TokenTextStream(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  // Text ready to show after this token ("" while a character is incomplete).
  StatusOr<std::string> push(int64_t id);
  // Whatever is still held back (an incomplete character at the very end).
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  std::vector<int64_t> context_;  // the tokens released last: decoders read their neighbours
  std::vector<int64_t> pending_;  // tokens whose text is not released yet
};

}  // namespace etlora
