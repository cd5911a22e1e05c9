// UTF-8 and Unicode facts the tokenizer needs, with the rules of Rust's standard library where
// Hugging Face `tokenizers` relies on them (char::is_whitespace, char::is_numeric,
// String::from_utf8_lossy). Normalization forms come from utf8proc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace etlora::text {

enum class UnicodeForm { kNfc, kNfd, kNfkc, kNfkd };

// The code point starting at `at` and its length in bytes, or false when the bytes there are not
// a valid UTF-8 sequence (overlong forms, surrogates and values past U+10FFFF are invalid).
bool decode_utf8(const std::string& text, size_t at, int32_t& code_point, size_t& length);
void append_utf8(std::string& out, int32_t code_point);

// Every maximal invalid subsequence replaced by U+FFFD, as String::from_utf8_lossy does.
std::string utf8_lossy(const std::string& bytes);
bool is_valid_utf8(const std::string& bytes);

bool is_white_space(int32_t code_point);  // Unicode White_Space (Rust char::is_whitespace)
bool is_numeric(int32_t code_point);      // Nd, Nl, No (Rust char::is_numeric)
bool is_word_char(int32_t code_point);    // letters, marks, Nd, Nl, Pc (the \w of Rust's regex, nearly)

// `text` (valid UTF-8) in the normalization form.
std::string normalize_unicode(const std::string& text, UnicodeForm form);
// Lowercase per code point, as Rust's char::to_lowercase: utf8proc's simple mapping, and İ as
// i + U+0307 (no context: a final Σ becomes σ, as in tokenizers).
std::string lowercase(const std::string& text);

}  // namespace etlora::text
