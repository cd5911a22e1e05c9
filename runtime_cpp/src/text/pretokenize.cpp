#include "text/pretokenize.h"

#include <cstdint>

namespace etlora {
namespace {

struct Range {
  char32_t first, last;
};

bool in(char32_t c, std::initializer_list<Range> ranges) {
  for (const Range& r : ranges) {
    if (c >= r.first && c <= r.last) return true;
  }
  return false;
}

// One code point at text[pos]: its value and byte length. A byte that does not
// start a valid sequence counts as one code point of its own (class other).
struct CodePoint {
  char32_t value;
  size_t length;
};

constexpr char32_t kInvalid = 0xFFFFFFFF;

CodePoint code_point_at(std::string_view text, size_t pos) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[i]); };
  const uint8_t lead = byte(pos);
  if (lead < 0x80) return {lead, 1};
  size_t length = lead >= 0xF0 && lead < 0xF8 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 0;
  if (length == 0 || pos + length > text.size()) return {kInvalid, 1};
  char32_t value = lead & (0x7F >> length);
  for (size_t i = 1; i < length; ++i) {
    if ((byte(pos + i) & 0xC0) != 0x80) return {kInvalid, 1};
    value = (value << 6) | (byte(pos + i) & 0x3F);
  }
  return {value, length};
}

}  // namespace

CharClass classify(char32_t c) {
  if (c < 0x80) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return CharClass::kLetter;
    if (c >= '0' && c <= '9') return CharClass::kNumber;
    if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return CharClass::kSpace;
    return CharClass::kOther;
  }
  if (c == kInvalid) return CharClass::kOther;
  // Unicode White_Space outside ASCII.
  if (in(c, {{0x85, 0x85}, {0xA0, 0xA0}, {0x1680, 0x1680}, {0x2000, 0x200A}, {0x2028, 0x2029},
             {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000}})) {
    return CharClass::kSpace;
  }
  // Digits and number-like characters in the ranges below.
  if (in(c, {{0xB2, 0xB3}, {0xB9, 0xB9}, {0xBC, 0xBE}, {0x2070, 0x2070}, {0x2074, 0x2079},
             {0x2080, 0x2089}, {0x2150, 0x2189}, {0x2460, 0x249B}, {0x3007, 0x3007},
             {0x3021, 0x3029}, {0xFF10, 0xFF19}})) {
    return CharClass::kNumber;
  }
  // Letters inside otherwise punctuation/symbol ranges.
  if (in(c, {{0xAA, 0xAA}, {0xB5, 0xB5}, {0xBA, 0xBA}, {0x2071, 0x2071}, {0x207F, 0x207F},
             {0x2090, 0x209C}, {0x3005, 0x3006}})) {
    return CharClass::kLetter;
  }
  // Controls, Latin-1 punctuation and symbols, combining marks, general
  // punctuation, super/subscript signs, currency, symbols and arrows, CJK
  // punctuation, variation selectors, fullwidth punctuation, emoji.
  if (in(c, {{0x80, 0xBF}, {0xD7, 0xD7}, {0xF7, 0xF7}, {0x0300, 0x036F}, {0x2010, 0x2027},
             {0x2030, 0x205E}, {0x2060, 0x206F}, {0x200B, 0x200F}, {0x207A, 0x207E},
             {0x208A, 0x208E}, {0x20A0, 0x20FF}, {0x2100, 0x214F}, {0x2190, 0x245F},
             {0x249C, 0x24E9}, {0x2500, 0x2BFF}, {0x3001, 0x3004}, {0x3008, 0x3020},
             {0x3030, 0x3030}, {0xFE00, 0xFE0F}, {0xFE30, 0xFE4F}, {0xFF01, 0xFF0F},
             {0xFF1A, 0xFF20}, {0xFF3B, 0xFF40}, {0xFF5B, 0xFF65}, {0x1F000, 0x1FAFF},
             {0xE0000, 0xE007F}})) {
    return CharClass::kOther;
  }
  return CharClass::kLetter;
}

std::vector<std::string_view> split_gpt2(std::string_view text) {
  std::vector<std::string_view> pieces;
  const auto class_at = [&](size_t pos) { return classify(code_point_at(text, pos).value); };
  // End of the run of `kind` code points starting at pos.
  const auto run_end = [&](size_t pos, CharClass kind) {
    while (pos < text.size() && class_at(pos) == kind) pos += code_point_at(text, pos).length;
    return pos;
  };
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t start = pos;
    const std::string_view rest = text.substr(pos);
    // 's 't 'm 'd 're 've 'll (case-sensitive, as in GPT-2)
    if (rest[0] == '\'' && rest.size() >= 2) {
      const char a = rest[1];
      const char b = rest.size() >= 3 ? rest[2] : '\0';
      size_t length = 0;
      if (a == 's' || a == 't' || a == 'm' || a == 'd') length = 2;
      else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) length = 3;
      if (length) {
        pieces.push_back(rest.substr(0, length));
        pos += length;
        continue;
      }
    }
    const CharClass here = class_at(pos);
    // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": an optional ASCII space, then a run.
    const bool leading_space = rest[0] == ' ' && rest.size() >= 2 && class_at(pos + 1) != CharClass::kSpace;
    if (here != CharClass::kSpace || leading_space) {
      const size_t run_start = leading_space ? pos + 1 : pos;
      pos = run_end(run_start, class_at(run_start));
      pieces.push_back(text.substr(start, pos - start));
      continue;
    }
    // Whitespace: "\s+(?!\S)" leaves the last space for the next word; else "\s+".
    const size_t end = run_end(pos, CharClass::kSpace);
    if (end < text.size()) {
      size_t last = pos;  // start of the run's last code point
      for (size_t p = pos; p < end; p += code_point_at(text, p).length) last = p;
      if (last > pos) {
        pieces.push_back(text.substr(pos, last - pos));
        pos = last;
        continue;
      }
    }
    pieces.push_back(text.substr(pos, end - pos));
    pos = end;
  }
  return pieces;
}

}  // namespace etlora
