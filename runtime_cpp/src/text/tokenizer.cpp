// Encoding (special tokens, GPT-2 split, byte-level BPE) and decoding.
#include <etlora/tokenizer.h>

#include <algorithm>
#include <limits>

#include "text/pretokenize.h"

namespace etlora {

std::vector<int64_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int64_t> ids;
  size_t plain_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    int64_t matched = -1;
    for (int64_t id : special_ids_) {  // longest first
      const std::string& literal = tokens_[id];
      if (!literal.empty() && text.compare(pos, literal.size(), literal) == 0) {
        matched = id;
        break;
      }
    }
    if (matched < 0) {
      ++pos;
      continue;
    }
    encode_plain(text.substr(plain_start, pos - plain_start), ids);
    ids.push_back(matched);
    pos += tokens_[matched].size();
    plain_start = pos;
  }
  encode_plain(text.substr(plain_start), ids);
  return ids;
}

std::vector<int64_t> Tokenizer::encode_prompt(const std::string& text, bool chat) const {
  if (chat && has_chat_template()) return encode_chat(text);
  std::vector<int64_t> ids;
  if (adds_bos_ && bos_id_ >= 0) ids.push_back(bos_id_);
  const std::vector<int64_t> body = encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

std::vector<int64_t> Tokenizer::encode_chat(const std::string& user_text) const {
  return encode(chat_prefix_ + user_text + chat_suffix_);
}

void Tokenizer::encode_plain(const std::string& text, std::vector<int64_t>& out) const {
  for (std::string_view piece : split_gpt2(text)) encode_piece(std::string(piece), out);
}

// Byte-level BPE: start from one symbol per byte, then apply the lowest-rank
// merge present (leftmost on ties) until none applies, as Hugging Face does.
void Tokenizer::encode_piece(const std::string& piece, std::vector<int64_t>& out) const {
  std::vector<int32_t> symbols;
  symbols.reserve(piece.size());
  for (unsigned char byte : piece) {
    if (byte_ids_[byte] >= 0) symbols.push_back(byte_ids_[byte]);  // no token: dropped, like HF
  }
  while (symbols.size() > 1) {
    int32_t best_rank = std::numeric_limits<int32_t>::max();
    size_t best_at = 0;
    int32_t best_merged = -1;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      const uint64_t key = (static_cast<uint64_t>(symbols[i]) << 32) | static_cast<uint32_t>(symbols[i + 1]);
      auto found = merges_.find(key);
      if (found != merges_.end() && found->second.rank < best_rank) {
        best_rank = found->second.rank;
        best_at = i;
        best_merged = found->second.merged;
      }
    }
    if (best_merged < 0) break;
    symbols[best_at] = best_merged;
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best_at) + 1);
  }
  out.insert(out.end(), symbols.begin(), symbols.end());
}

StatusOr<std::string> Tokenizer::token_bytes(int64_t id) const {
  if (id < 0 || id >= vocab_size() || !present_[id]) {
    return Status(StatusCode::kInvalidArgument,
                  "tokenizer " + path_ + ": expected a token id in 0.." + std::to_string(vocab_size() - 1) +
                      ", got " + std::to_string(id) +
                      (id >= 0 && id < vocab_size() ? " (no token has this id)" : "") +
                      " (hint: the model's vocabulary is larger than the tokenizer's?)");
  }
  return tokens_[id];
}

StatusOr<std::string> Tokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string text;
  for (int64_t id : ids) {
    auto bytes = token_bytes(id);
    if (!bytes.ok()) return bytes.status();
    text += *bytes;
  }
  return text;
}

bool Tokenizer::is_eos(int64_t id) const {
  return std::find(eos_ids_.begin(), eos_ids_.end(), id) != eos_ids_.end();
}

namespace {

// How many bytes at the end of `text` are the start of an unfinished UTF-8
// character (0 if it ends on a character boundary or in invalid bytes).
size_t unfinished_tail(const std::string& text) {
  const size_t n = text.size();
  for (size_t back = 1; back <= 3 && back <= n; ++back) {
    const auto byte = static_cast<unsigned char>(text[n - back]);
    if ((byte & 0xC0) == 0x80) continue;  // continuation byte: look further back
    const size_t length = byte >= 0xF0 && byte < 0xF8 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 1;
    return length > back ? back : 0;
  }
  return 0;
}

}  // namespace

StatusOr<std::string> TokenTextStream::push(int64_t id) {
  auto bytes = tokenizer_.token_bytes(id);
  if (!bytes.ok()) return bytes.status();
  pending_ += *bytes;
  const size_t keep = unfinished_tail(pending_);
  std::string ready = pending_.substr(0, pending_.size() - keep);
  pending_.erase(0, pending_.size() - keep);
  return ready;
}

std::string TokenTextStream::finish() {
  std::string rest;
  rest.swap(pending_);
  return rest;
}

}  // namespace etlora
