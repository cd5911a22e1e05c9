// The GPT-2 split pattern of Hugging Face's ByteLevel pre-tokenizer, by hand:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// See tokenizer.h for how non-ASCII code points are classified.
#pragma once

#include <string_view>
#include <vector>

namespace etlora {

enum class CharClass { kLetter, kNumber, kSpace, kOther };

// The class of one Unicode code point (the approximation lives here).
CharClass classify(char32_t code_point);

// `text` (UTF-8) cut into pre-tokens; together they are exactly `text`.
std::vector<std::string_view> split_gpt2(std::string_view text);

}  // namespace etlora
