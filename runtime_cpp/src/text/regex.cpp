// PCRE2 behind Regex (regex.h): compiled once per pattern, JIT when the library has it, match data
// per call so that one Tokenizer serves several threads.
#include "text/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace etlora::text {

struct Regex::Code {
  pcre2_code* code = nullptr;
};

Regex::~Regex() {
  if (code_ != nullptr) {
    pcre2_code_free(code_->code);
    delete code_;
  }
}

StatusOr<std::shared_ptr<const Regex>> Regex::compile(const std::string& pattern, const std::string& what) {
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return Status(StatusCode::kInvalidArgument,
                  what + ": expected a regex PCRE2 compiles, got '" + pattern + "' (" +
                      reinterpret_cast<const char*>(message) + " at offset " + std::to_string(offset) +
                      ") (hint: a pattern this runtime cannot run; tokenize on the host)");
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // failure just means the interpreter
  std::shared_ptr<Regex> regex(new Regex());
  regex->code_ = new Code{code};
  return std::shared_ptr<const Regex>(std::move(regex));
}

std::vector<Span> Regex::find_all(const std::string& text) const {
  std::vector<Span> spans;
  pcre2_match_data* data = pcre2_match_data_create_from_pattern(code_->code, nullptr);
  if (data == nullptr) return spans;
  size_t at = 0;
  while (at <= text.size()) {
    const int found = pcre2_match(code_->code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), at,
                                  PCRE2_NO_UTF_CHECK, data, nullptr);
    // No further match; an error (PCRE2's match limit, far beyond what split patterns need on
    // 200k-character inputs) ends the search too, and the rest stays one piece.
    if (found < 0) break;
    const PCRE2_SIZE* vector = pcre2_get_ovector_pointer(data);
    const size_t begin = vector[0], end = vector[1];
    if (end < begin) break;  // \K tricks; tokenizer patterns have none
    spans.emplace_back(begin, end);
    if (end > begin) {
      at = end;
      continue;
    }
    // An empty match: the next search starts one character later, so that the loop ends.
    if (begin >= text.size()) break;
    at = begin + 1;
    while (at < text.size() && (static_cast<unsigned char>(text[at]) & 0xC0) == 0x80) ++at;
  }
  pcre2_match_data_free(data);
  return spans;
}

std::vector<Span> Pattern::find_all(const std::string& text) const {
  if (regex) return regex->find_all(text);
  std::vector<Span> spans;
  if (literal.empty()) return spans;
  size_t at = 0;
  while ((at = text.find(literal, at)) != std::string::npos) {
    spans.emplace_back(at, at + literal.size());
    at += literal.size();
  }
  return spans;
}

std::string Pattern::replace_all(const std::string& text, const std::string& content) const {
  std::string out;
  size_t kept = 0;
  for (const Span& span : find_all(text)) {
    out.append(text, kept, span.first - kept);
    out += content;
    kept = span.second;
  }
  out.append(text, kept, std::string::npos);
  return out;
}

}  // namespace etlora::text
