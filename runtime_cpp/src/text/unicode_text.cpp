// UTF-8 decoding, lossy repair, classification and normalization (unicode_text.h).
#include "text/unicode_text.h"

#include <cstdlib>
#include <memory>

#include <utf8proc.h>

namespace etlora::text {

bool decode_utf8(const std::string& text, size_t at, int32_t& code_point, size_t& length) {
  const size_t n = text.size();
  if (at >= n) return false;
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char first = byte(at);
  if (first < 0x80) {
    code_point = first;
    length = 1;
    return true;
  }
  // The second byte's range depends on the first (Unicode table 3-7): no overlongs, no surrogates.
  unsigned char low = 0x80, high = 0xBF;
  int32_t value = 0;
  if (first >= 0xC2 && first <= 0xDF) {
    length = 2;
    value = first & 0x1F;
  } else if (first >= 0xE0 && first <= 0xEF) {
    length = 3;
    value = first & 0x0F;
    if (first == 0xE0) low = 0xA0;
    if (first == 0xED) high = 0x9F;
  } else if (first >= 0xF0 && first <= 0xF4) {
    length = 4;
    value = first & 0x07;
    if (first == 0xF0) low = 0x90;
    if (first == 0xF4) high = 0x8F;
  } else {
    return false;
  }
  for (size_t i = 1; i < length; ++i) {
    if (at + i >= n) return false;
    const unsigned char next = byte(at + i);
    if (next < (i == 1 ? low : 0x80) || next > (i == 1 ? high : 0xBF)) return false;
    value = (value << 6) | (next & 0x3F);
  }
  code_point = value;
  return true;
}

void append_utf8(std::string& out, int32_t code_point) {
  const auto c = static_cast<uint32_t>(code_point);
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

namespace {

// How many bytes from `at` form the longest prefix of a valid sequence (a "maximal subpart"),
// at least 1: the bytes one U+FFFD replaces.
size_t invalid_run(const std::string& text, size_t at) {
  const unsigned char first = static_cast<unsigned char>(text[at]);
  size_t length = 0;
  unsigned char low = 0x80, high = 0xBF;
  if (first >= 0xC2 && first <= 0xDF) {
    length = 2;
  } else if (first >= 0xE0 && first <= 0xEF) {
    length = 3;
    if (first == 0xE0) low = 0xA0;
    if (first == 0xED) high = 0x9F;
  } else if (first >= 0xF0 && first <= 0xF4) {
    length = 4;
    if (first == 0xF0) low = 0x90;
    if (first == 0xF4) high = 0x8F;
  } else {
    return 1;
  }
  size_t i = 1;
  for (; i < length && at + i < text.size(); ++i) {
    const unsigned char next = static_cast<unsigned char>(text[at + i]);
    if (next < (i == 1 ? low : 0x80) || next > (i == 1 ? high : 0xBF)) break;
  }
  return i;
}

}  // namespace

std::string utf8_lossy(const std::string& bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t at = 0;
  while (at < bytes.size()) {
    int32_t code_point = 0;
    size_t length = 0;
    if (decode_utf8(bytes, at, code_point, length)) {
      out.append(bytes, at, length);
      at += length;
    } else {
      out += "\xEF\xBF\xBD";
      at += invalid_run(bytes, at);
    }
  }
  return out;
}

bool is_valid_utf8(const std::string& bytes) {
  size_t at = 0;
  while (at < bytes.size()) {
    int32_t code_point = 0;
    size_t length = 0;
    if (!decode_utf8(bytes, at, code_point, length)) return false;
    at += length;
  }
  return true;
}

bool is_white_space(int32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

bool is_numeric(int32_t c) {
  const utf8proc_category_t category = utf8proc_category(c);
  return category == UTF8PROC_CATEGORY_ND || category == UTF8PROC_CATEGORY_NL || category == UTF8PROC_CATEGORY_NO;
}

bool is_word_char(int32_t c) {
  switch (utf8proc_category(c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

std::string normalize_unicode(const std::string& text, UnicodeForm form) {
  if (text.empty()) return text;
  int options = UTF8PROC_STABLE;
  switch (form) {
    case UnicodeForm::kNfc: options |= UTF8PROC_COMPOSE; break;
    case UnicodeForm::kNfd: options |= UTF8PROC_DECOMPOSE; break;
    case UnicodeForm::kNfkc: options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    case UnicodeForm::kNfkd: options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  }
  utf8proc_uint8_t* mapped = nullptr;
  const utf8proc_ssize_t length = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                               static_cast<utf8proc_ssize_t>(text.size()), &mapped,
                                               static_cast<utf8proc_option_t>(options));
  if (length < 0) return text;  // only invalid UTF-8 fails, and callers pass valid text
  std::unique_ptr<utf8proc_uint8_t, decltype(&std::free)> owned(mapped, &std::free);
  return std::string(reinterpret_cast<const char*>(mapped), static_cast<size_t>(length));
}

std::string lowercase(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  size_t at = 0;
  while (at < text.size()) {
    int32_t c = 0;
    size_t length = 0;
    if (!decode_utf8(text, at, c, length)) {
      out += text[at++];
      continue;
    }
    if (c == 0x130) {  // İ lowercases to i + combining dot above (SpecialCasing)
      out += "i\xCC\x87";
    } else {
      append_utf8(out, utf8proc_tolower(c));
    }
    at += length;
  }
  return out;
}

}  // namespace etlora::text
