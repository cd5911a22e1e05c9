// Pre-tokenizer steps (tokenizer_parts.h): ByteLevel, Split, Digits, Metaspace, and the split
// behaviors they share, with the semantics of tokenizers' NormalizedString::split.
#include "text/tokenizer_parts.h"

#include <algorithm>

namespace etlora::text {

namespace {

struct Cut {
  Span span;
  bool is_match;
};

// `matches` (sorted, non-overlapping) and the text between them, covering [0, size).
std::vector<Cut> cover(const std::vector<Span>& matches, size_t size) {
  std::vector<Cut> cuts;
  size_t at = 0;
  for (const Span& match : matches) {
    if (match.first > at) cuts.push_back({{at, match.first}, false});
    cuts.push_back({match, true});
    at = match.second;
  }
  if (at < size) cuts.push_back({{at, size}, false});
  return cuts;
}

// Which spans become pieces under `behavior` (tokenizers' rules, empty spans dropped later).
std::vector<Span> apply_behavior(const std::vector<Cut>& cuts, SplitBehavior behavior) {
  std::vector<Span> out;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Cut& cut : cuts) {
        if (!cut.is_match) out.push_back(cut.span);
      }
      break;
    case SplitBehavior::kIsolated:
      for (const Cut& cut : cuts) out.push_back(cut.span);
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Cut& cut : cuts) {
        if (cut.is_match && !previous_match && !out.empty()) {
          out.back().second = cut.span.second;
        } else {
          out.push_back(cut.span);
        }
        previous_match = cut.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      for (auto cut = cuts.rbegin(); cut != cuts.rend(); ++cut) {
        if (cut->is_match && !previous_match && !out.empty()) {
          out.back().first = cut->span.first;
        } else {
          out.push_back(cut->span);
        }
        previous_match = cut->is_match;
      }
      std::reverse(out.begin(), out.end());
      break;
    case SplitBehavior::kContiguous:
      for (const Cut& cut : cuts) {
        if (cut.is_match == previous_match && !out.empty()) {
          out.back().second = cut.span.second;
        } else {
          out.push_back(cut.span);
        }
        previous_match = cut.is_match;
      }
      break;
  }
  return out;
}

void split_into(const Piece& piece, const std::vector<Span>& matches, SplitBehavior behavior, bool invert,
                std::vector<Piece>& out) {
  std::vector<Cut> cuts = cover(matches, piece.text.size());
  if (invert) {
    for (Cut& cut : cuts) cut.is_match = !cut.is_match;
  }
  for (const Span& span : apply_behavior(cuts, behavior)) {
    if (span.second > span.first) {
      out.push_back({piece.text.substr(span.first, span.second - span.first), piece.at_origin && span.first == 0});
    }
  }
}

// Each character for which `test` holds, as its own match (tokenizers' char patterns).
template <typename Test>
std::vector<Span> char_matches(const std::string& text, Test test) {
  std::vector<Span> spans;
  size_t at = 0;
  while (at < text.size()) {
    int32_t c = 0;
    size_t length = 1;
    const bool valid = decode_utf8(text, at, c, length);
    if (!valid) length = 1;
    if (valid && test(c)) spans.emplace_back(at, at + length);
    at += length;
  }
  return spans;
}

std::string to_byte_level(const std::string& text) {
  std::string out;
  out.reserve(text.size() * 2);
  for (unsigned char byte : text) out += byte_level_char(byte);
  return out;
}

void apply(const PreTokenizerStep& step, const Piece& piece, std::vector<Piece>& out) {
  switch (step.kind) {
    case PreTokenizerKind::kByteLevel: {
      Piece prefixed = piece;
      if (step.add_prefix_space && (prefixed.text.empty() || prefixed.text[0] != ' ')) prefixed.text.insert(0, " ");
      std::vector<Piece> parts;
      if (step.use_regex) {
        split_into(prefixed, step.pattern.find_all(prefixed.text), SplitBehavior::kIsolated, false, parts);
      } else if (!prefixed.text.empty()) {
        parts.push_back(prefixed);
      }
      for (Piece& part : parts) out.push_back({to_byte_level(part.text), part.at_origin});
      return;
    }
    case PreTokenizerKind::kSplit:
      split_into(piece, step.pattern.find_all(piece.text), step.behavior, step.invert, out);
      return;
    case PreTokenizerKind::kDigits:
      split_into(piece, char_matches(piece.text, is_numeric),
                 step.individual_digits ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, false, out);
      return;
    case PreTokenizerKind::kMetaspace: {
      Piece replaced{std::string(), piece.at_origin};
      for (char c : piece.text) {
        if (c == ' ') {
          replaced.text += step.replacement;
        } else {
          replaced.text += c;
        }
      }
      const bool starts_with_replacement = replaced.text.compare(0, step.replacement.size(), step.replacement) == 0;
      if (!starts_with_replacement && (step.prepend_scheme == PrependScheme::kAlways ||
                                       (step.prepend_scheme == PrependScheme::kFirst && piece.at_origin))) {
        replaced.text.insert(0, step.replacement);
      }
      if (!step.split) {
        if (!replaced.text.empty()) out.push_back(replaced);
        return;
      }
      std::vector<Span> matches;
      for (size_t at = replaced.text.find(step.replacement); at != std::string::npos;
           at = replaced.text.find(step.replacement, at + step.replacement.size())) {
        matches.emplace_back(at, at + step.replacement.size());
      }
      split_into(replaced, matches, SplitBehavior::kMergedWithNext, false, out);
      return;
    }
  }
}

struct ByteLevelTable {
  std::string chars[256];
  int bytes[0x200];
  ByteLevelTable() {
    std::fill(std::begin(bytes), std::end(bytes), -1);
    // Printable Latin-1 bytes stand for themselves; the others take 256, 257, ... in byte order.
    int next = 256;
    for (int byte = 0; byte < 256; ++byte) {
      const bool printable = (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) || (byte >= 0xAE && byte <= 0xFF);
      const int code_point = printable ? byte : next++;
      append_utf8(chars[byte], code_point);
      bytes[code_point] = byte;
    }
  }
};

const ByteLevelTable& table() {
  static const ByteLevelTable instance;
  return instance;
}

}  // namespace

const std::string& byte_level_char(uint8_t byte) { return table().chars[byte]; }

int byte_level_byte(int32_t code_point) {
  return code_point >= 0 && code_point < 0x200 ? table().bytes[code_point] : -1;
}

const char* gpt2_split_pattern() {
  return "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
}

std::vector<Piece> pre_tokenize(const std::vector<PreTokenizerStep>& steps, std::vector<Piece> pieces) {
  for (const PreTokenizerStep& step : steps) {
    std::vector<Piece> next;
    next.reserve(pieces.size());
    for (const Piece& piece : pieces) apply(step, piece, next);
    pieces.swap(next);
  }
  return pieces;
}

}  // namespace etlora::text
