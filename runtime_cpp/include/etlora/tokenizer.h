// A byte-level BPE tokenizer read from a bundle's tokenizer/etlora_tokenizer.txt
// (docs/bundle-format.md). Encodes like Hugging Face's GPT-2-style ByteLevel
// BPE: special tokens matched literally, the GPT-2 split pattern written by hand,
// then merges by rank. Decoding concatenates each token's raw bytes.
//
// Approximation: the split pattern needs Unicode classes (\p{L}, \p{N}, \s).
// ASCII is exact; outside ASCII a small table knows the common whitespace,
// punctuation, symbol, digit and emoji ranges, and every other code point
// counts as a letter. Text in scripts with their own digits or punctuation
// (e.g. Arabic-Indic digits) may split differently from Hugging Face.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <etlora/status.h>

namespace etlora {

// The tokenizer file format version this runtime reads.
constexpr int kTokenizerFormatVersion = 1;

class Tokenizer {
 public:
  static StatusOr<std::unique_ptr<Tokenizer>> load(const std::string& path);

  // Token ids of `text` (UTF-8), no bos/eos added.
  std::vector<int64_t> encode(const std::string& text) const;

  // The chat template around one user message: encode(chat_prefix + text + chat_suffix).
  // Without a chat template in the file, encode(text) (see has_chat_template()).
  std::vector<int64_t> encode_chat(const std::string& user_text) const;

  // What a prompt becomes before generation, for the runner and Session.generate
  // alike: the chat template when `chat` and the file has one, else bos (when
  // the tokenizer prepends it, as Hugging Face's does) + encode(text).
  std::vector<int64_t> encode_prompt(const std::string& text, bool chat) const;

  // The raw bytes of the tokens (may end inside a UTF-8 sequence). Fails on an
  // id outside the vocabulary or one with no token.
  StatusOr<std::string> decode(const std::vector<int64_t>& ids) const;
  StatusOr<std::string> token_bytes(int64_t id) const;

  const std::string& path() const { return path_; }
  int64_t vocab_size() const { return static_cast<int64_t>(tokens_.size()); }
  bool has_chat_template() const { return has_chat_; }
  const std::string& chat_prefix() const { return chat_prefix_; }
  const std::string& chat_suffix() const { return chat_suffix_; }
  const std::vector<int64_t>& eos_ids() const { return eos_ids_; }
  bool is_eos(int64_t id) const;
  int64_t bos_id() const { return bos_id_; }  // -1: none
  bool adds_bos() const { return adds_bos_; }  // Hugging Face prepends bos to plain text

 private:
  friend class TokenizerFileReader;
  struct Merge {
    int32_t rank;
    int32_t merged;
  };
  Tokenizer() = default;
  void encode_piece(const std::string& piece, std::vector<int64_t>& out) const;
  void encode_plain(const std::string& text, std::vector<int64_t>& out) const;

  std::string path_;
  std::vector<std::string> tokens_;  // raw bytes per id
  std::vector<bool> present_;        // false: no token has this id
  std::vector<int64_t> special_ids_; // matched literally in input text, longest first
  std::vector<int64_t> eos_ids_;
  int64_t bos_id_ = -1;
  bool adds_bos_ = false;
  bool has_chat_ = false;
  std::string chat_prefix_, chat_suffix_;
  int32_t byte_ids_[256];  // the token of each single byte, -1 if none
  std::unordered_map<uint64_t, Merge> merges_;  // (left << 32 | right) -> rank, merged id
};

// Turns generated ids into printable text piece by piece: holds back the bytes
// of a UTF-8 character split across tokens until it is complete.
class TokenTextStream {
 public:
  explicit TokenTextStream(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  // Text ready to show after this token ("" while a character is incomplete).
  StatusOr<std::string> push(int64_t id);
  // Whatever is still held back (an incomplete character at the very end).
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  std::string pending_;
};

}  // namespace etlora
