// Tokenizer (include/etlora/tokenizer.h): the encode pipeline (added tokens, normalizer,
// pre-tokenizer, BPE, post-processor), decoding, and the streaming decoder.
#include <etlora/tokenizer.h>

#include <algorithm>

#include "text/tokenizer_parts.h"

namespace etlora {

using text::Piece;
using text::TokenizerParts;

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

int64_t Tokenizer::vocab_size() const { return static_cast<int64_t>(parts_->id_to_token.size()); }

int64_t Tokenizer::bos_id() const { return parts_->special_prefix.empty() ? -1 : parts_->special_prefix.front(); }

// Text between raw-matched added tokens: normalized, cut at normalized added tokens, pre-tokenized,
// then each word through BPE.
void Tokenizer::encode_plain(const std::string& text, bool at_origin, std::vector<int64_t>& out) const {
  const std::string normalized = text::normalize(parts_->normalizer, text);
  for (const auto& found : parts_->normalized_matcher.split(normalized)) {
    if (found.token != nullptr) {
      out.push_back(found.token->id);
      continue;
    }
    std::vector<Piece> pieces{
        Piece{normalized.substr(found.span.first, found.span.second - found.span.first), at_origin && found.span.first == 0}};
    for (const Piece& piece : text::pre_tokenize(parts_->pre_tokenizer, std::move(pieces))) {
      parts_->model.tokenize(piece.text, out);
    }
  }
}

std::vector<int64_t> Tokenizer::encode(const std::string& input, bool add_special_tokens) const {
  const std::string text = text::is_valid_utf8(input) ? input : text::utf8_lossy(input);
  std::vector<int64_t> ids;
  if (add_special_tokens) ids = parts_->special_prefix;
  for (const auto& found : parts_->raw_matcher.split(text)) {
    if (found.token != nullptr) {
      ids.push_back(found.token->id);
    } else {
      encode_plain(text.substr(found.span.first, found.span.second - found.span.first), found.span.first == 0, ids);
    }
  }
  if (add_special_tokens) ids.insert(ids.end(), parts_->special_suffix.begin(), parts_->special_suffix.end());
  return ids;
}

std::vector<int64_t> Tokenizer::encode_chat(const std::string& user_text) const {
  return encode(chat_prefix_ + user_text + chat_suffix_, false);
}

std::vector<int64_t> Tokenizer::encode_prompt(const std::string& text, bool chat) const {
  if (chat && has_chat_template()) return encode_chat(text);
  return encode(text, true);
}

StatusOr<std::string> Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size() || !parts_->present[id]) {
      return Status(StatusCode::kInvalidArgument,
                    "tokenizer " + path_ + ": expected a token id in 0.." + std::to_string(vocab_size() - 1) +
                        ", got " + std::to_string(id) +
                        (id >= 0 && id < vocab_size() ? " (no token has this id)" : "") +
                        " (hint: the model's vocabulary is larger than the tokenizer's?)");
    }
    if (skip_special_tokens && parts_->is_special[id]) continue;
    tokens.push_back(parts_->id_to_token[id]);
  }
  return text::decode_tokens(parts_->has_decoder ? &parts_->decoder : nullptr, std::move(tokens));
}

bool Tokenizer::is_eos(int64_t id) const {
  return std::find(eos_ids_.begin(), eos_ids_.end(), id) != eos_ids_.end();
}

namespace {

constexpr size_t kMaxHeldTokens = 4;  // the longest UTF-8 character, one byte token per byte

bool ends_with_replacement(const std::string& text) {
  return text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0;
}

// What `all` adds after `before` (normally a prefix of it).
std::string added_text(const std::string& before, const std::string& all) {
  size_t common = 0;
  while (common < before.size() && common < all.size() && before[common] == all[common]) ++common;
  return all.substr(common);
}

}  // namespace

StatusOr<std::string> TokenTextStream::push(int64_t id) {
  std::vector<int64_t> all = context_;
  all.insert(all.end(), pending_.begin(), pending_.end());
  all.push_back(id);
  auto text = tokenizer_.decode(all);
  if (!text.ok()) return text.status();
  pending_.push_back(id);
  if (ends_with_replacement(*text) && pending_.size() < kMaxHeldTokens) return std::string();
  auto before = tokenizer_.decode(context_);
  if (!before.ok()) return before.status();
  context_.swap(pending_);
  pending_.clear();
  return added_text(*before, *text);
}

std::string TokenTextStream::finish() {
  if (pending_.empty()) return std::string();
  std::vector<int64_t> all = context_;
  all.insert(all.end(), pending_.begin(), pending_.end());
  auto text = tokenizer_.decode(all);
  auto before = tokenizer_.decode(context_);
  pending_.clear();
  context_.clear();
  return text.ok() && before.ok() ? added_text(*before, *text) : std::string();
}

}  // namespace etlora
