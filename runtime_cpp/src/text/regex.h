// A compiled PCRE2 pattern (UTF mode, Unicode properties for \w \d \s and POSIX classes) and the
// literal-or-regex patterns of tokenizer.json. tokenizers compiles its patterns with Oniguruma;
// the patterns tokenizers ship (GPT-2, Llama 3, Qwen2, o200k) mean the same in both.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <etlora/status.h>

namespace etlora::text {

using Span = std::pair<size_t, size_t>;  // [begin, end) in bytes

class Regex {
 public:
  // `what` names the pattern in errors (e.g. "pre_tokenizer.pretokenizers[0].pattern.Regex").
  static StatusOr<std::shared_ptr<const Regex>> compile(const std::string& pattern, const std::string& what);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Non-overlapping matches left to right in valid UTF-8 `text`; an empty match moves on by one
  // character.
  std::vector<Span> find_all(const std::string& text) const;

 private:
  Regex() = default;
  struct Code;
  Code* code_ = nullptr;
};

// A tokenizer.json pattern: {"String": s} (literal) or {"Regex": r}.
struct Pattern {
  std::string literal;
  std::shared_ptr<const Regex> regex;  // null: the literal
  std::vector<Span> find_all(const std::string& text) const;
  // `text` with every match replaced by `content` (taken literally).
  std::string replace_all(const std::string& text, const std::string& content) const;
};

}  // namespace etlora::text
