// Added tokens cut out of the text before the model sees it (tokenizer_parts.h): a byte trie
// gives the leftmost-longest match; lstrip/rstrip take the whitespace beside a match into it and
// single_word refuses matches inside a word, as tokenizers' AddedVocabulary does.
#include "text/tokenizer_parts.h"

#include <algorithm>

namespace etlora::text {

int32_t AddedTokenMatcher::child(int32_t node, uint8_t byte) const {
  const auto& children = nodes_[node].children;
  auto found = std::lower_bound(children.begin(), children.end(), std::make_pair(byte, int32_t{-1}));
  return found != children.end() && found->first == byte ? found->second : -1;
}

void AddedTokenMatcher::add(const std::string& pattern, const AddedToken* token) {
  if (pattern.empty()) return;
  int32_t node = 0;
  for (unsigned char byte : pattern) {
    int32_t next = child(node, byte);
    if (next < 0) {
      next = static_cast<int32_t>(nodes_.size());
      nodes_.emplace_back();
      auto& children = nodes_[node].children;
      children.insert(std::lower_bound(children.begin(), children.end(), std::make_pair(byte, int32_t{-1})),
                      {byte, next});
    }
    node = next;
  }
  if (nodes_[node].token == nullptr) nodes_[node].token = token;  // the first token of a content wins
}

namespace {

// The code point that ends just before `end` (or -1).
int32_t code_point_before(const std::string& text, size_t end) {
  if (end == 0) return -1;
  size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80 && end - start < 4) --start;
  int32_t c = 0;
  size_t length = 0;
  return decode_utf8(text, start, c, length) && start + length == end ? c : -1;
}

int32_t code_point_at(const std::string& text, size_t at) {
  int32_t c = 0;
  size_t length = 0;
  return decode_utf8(text, at, c, length) ? c : -1;
}

// Where the run of whitespace that ends at `end` starts.
size_t white_space_start(const std::string& text, size_t end, size_t floor) {
  while (end > floor) {
    const int32_t c = code_point_before(text, end);
    if (c < 0 || !is_white_space(c)) break;
    std::string encoded;
    append_utf8(encoded, c);
    end -= encoded.size();
  }
  return end;
}

size_t white_space_end(const std::string& text, size_t at) {
  while (at < text.size()) {
    int32_t c = 0;
    size_t length = 0;
    if (!decode_utf8(text, at, c, length) || !is_white_space(c)) break;
    at += length;
  }
  return at;
}

}  // namespace

std::vector<AddedTokenMatcher::Found> AddedTokenMatcher::split(const std::string& text) const {
  std::vector<Found> out;
  size_t plain_start = 0;  // end of the last match (after rstrip)
  size_t at = 0;
  while (at < text.size()) {
    // The longest token starting at `at`.
    const AddedToken* token = nullptr;
    size_t match_end = 0;
    int32_t node = 0;
    for (size_t i = at; i < text.size(); ++i) {
      node = child(node, static_cast<uint8_t>(text[i]));
      if (node < 0) break;
      if (nodes_[node].token != nullptr) {
        token = nodes_[node].token;
        match_end = i + 1;
      }
    }
    if (token == nullptr) {
      ++at;
      continue;
    }
    size_t start = at, stop = match_end;
    if (token->single_word) {
      const int32_t before = code_point_before(text, start);
      const int32_t after = stop < text.size() ? code_point_at(text, stop) : -1;
      if ((before >= 0 && is_word_char(before)) || (after >= 0 && is_word_char(after))) {
        at = match_end;  // a refused match is still consumed by the search
        continue;
      }
    }
    if (token->lstrip) start = std::max(white_space_start(text, start, 0), plain_start);
    if (token->rstrip) stop = white_space_end(text, stop);
    if (start > plain_start) out.push_back({nullptr, {plain_start, start}});
    out.push_back({token, {start, stop}});
    plain_start = stop;
    at = match_end;  // the next search starts after the match itself, as aho-corasick's does
  }
  if (plain_start < text.size()) out.push_back({nullptr, {plain_start, text.size()}});
  return out;
}

}  // namespace etlora::text
