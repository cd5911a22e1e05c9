// BPE over one pre-tokenized word (tokenizer_parts.h): characters to ids (byte fallback or unk
// for characters the vocabulary lacks), then merges lowest rank first, leftmost on ties, from a
// priority queue over a linked list of symbols: O(n log n) per word.
#include "text/tokenizer_parts.h"

#include <queue>

namespace etlora::text {

namespace {

struct Symbol {
  int32_t id;
  int32_t prev, next;  // -1 at the ends
  bool alive;
};

struct Candidate {
  uint32_t rank;
  int32_t position;  // index of the left symbol
  int32_t merged;
  bool operator>(const Candidate& other) const {
    return rank != other.rank ? rank > other.rank : position > other.position;
  }
};

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

void BpeModel::tokenize(const std::string& word, std::vector<int64_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges) {
    auto whole = vocab.find(word);
    if (whole != vocab.end()) {
      out.push_back(whole->second);
      return;
    }
  }
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto push = [&](int32_t id) {
    const int32_t index = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, index - 1, -1, true});
    if (index > 0) symbols[index - 1].next = index;
  };
  bool previous_unk = false;
  size_t at = 0;
  std::string character;
  while (at < word.size()) {
    int32_t code_point = 0;
    size_t length = 1;
    if (!decode_utf8(word, at, code_point, length)) length = 1;
    character.assign(word, at, length);
    at += length;
    auto found = vocab.find(character);
    if (found != vocab.end()) {
      push(found->second);
      previous_unk = false;
      continue;
    }
    if (byte_fallback) {
      bool all_bytes = true;
      for (unsigned char byte : character) all_bytes = all_bytes && byte_tokens[byte] >= 0;
      if (all_bytes) {
        for (unsigned char byte : character) push(byte_tokens[byte]);
        previous_unk = false;
        continue;
      }
    }
    if (unk_id >= 0) {
      if (!(fuse_unk && previous_unk)) push(unk_id);
      previous_unk = true;
    }
  }
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  const auto consider = [&](int32_t left) {
    if (left < 0 || symbols[left].next < 0) return;
    auto merge = merges.find(pair_key(symbols[left].id, symbols[symbols[left].next].id));
    if (merge != merges.end()) {
      queue.push({static_cast<uint32_t>(merge->second >> 32), left, static_cast<int32_t>(merge->second & 0xFFFFFFFFu)});
    }
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) consider(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.position];
    if (!left.alive || left.next < 0) continue;
    // The pair may have changed since this candidate was queued: merge only what is still there.
    auto merge = merges.find(pair_key(left.id, symbols[left.next].id));
    if (merge == merges.end() || static_cast<int32_t>(merge->second & 0xFFFFFFFFu) != top.merged) continue;
    Symbol& right = symbols[left.next];
    left.id = top.merged;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.position;
    consider(left.prev);
    consider(top.position);
  }
  for (const Symbol& symbol : symbols) {
    if (symbol.alive) out.push_back(symbol.id);
  }
}

}  // namespace etlora::text
