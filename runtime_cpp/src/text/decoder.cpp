// Decoder steps (tokenizer_parts.h): each maps the list of token strings as tokenizers'
// decode_chain does; the result is joined.
#include "text/tokenizer_parts.h"

namespace etlora::text {

namespace {

std::string join(const std::vector<std::string>& tokens, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (i > 0) out += separator;
    out += tokens[i];
  }
  return out;
}

// GPT-2 characters back to bytes; a token with any other character keeps its own bytes.
std::vector<std::string> byte_level(const std::vector<std::string>& tokens) {
  std::string bytes;
  for (const std::string& token : tokens) {
    std::string mapped;
    bool all_mapped = true;
    size_t at = 0;
    while (at < token.size() && all_mapped) {
      int32_t c = 0;
      size_t length = 0;
      const int byte = decode_utf8(token, at, c, length) ? byte_level_byte(c) : -1;
      if (byte < 0) {
        all_mapped = false;
      } else {
        mapped += static_cast<char>(byte);
        at += length;
      }
    }
    bytes += all_mapped ? mapped : token;
  }
  return {utf8_lossy(bytes)};
}

// <0xNN> tokens as raw bytes; a run of them that is not valid UTF-8 becomes one U+FFFD per byte.
std::vector<std::string> byte_fallback(const std::vector<std::string>& tokens) {
  std::vector<std::string> out;
  std::string run;
  const auto flush = [&] {
    if (run.empty()) return;
    if (is_valid_utf8(run)) {
      out.push_back(run);
    } else {
      for (size_t i = 0; i < run.size(); ++i) out.push_back("\xEF\xBF\xBD");
    }
    run.clear();
  };
  const auto hex = [](char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
  };
  for (const std::string& token : tokens) {
    const bool is_byte = token.size() == 6 && token.compare(0, 3, "<0x") == 0 && token[5] == '>' &&
                         hex(token[3]) >= 0 && hex(token[4]) >= 0;
    if (is_byte) {
      run += static_cast<char>(hex(token[3]) * 16 + hex(token[4]));
    } else {
      flush();
      out.push_back(token);
    }
  }
  flush();
  return out;
}

// Characters of `token` as (offset, length) pairs.
std::vector<Span> characters(const std::string& token) {
  std::vector<Span> chars;
  size_t at = 0;
  while (at < token.size()) {
    int32_t c = 0;
    size_t length = 1;
    if (!decode_utf8(token, at, c, length)) length = 1;
    chars.emplace_back(at, length);
    at += length;
  }
  return chars;
}

std::string strip(const std::string& token, const std::string& content, int64_t start, int64_t stop) {
  const std::vector<Span> chars = characters(token);
  const auto is_content = [&](const Span& c) { return token.compare(c.first, c.second, content) == 0; };
  size_t head = 0, tail = 0;
  while (static_cast<int64_t>(head) < start && head < chars.size() && is_content(chars[head])) ++head;
  while (static_cast<int64_t>(tail) < stop && tail < chars.size() && is_content(chars[chars.size() - 1 - tail])) ++tail;
  if (head + tail >= chars.size()) return std::string();  // tokenizers panics here; nothing is left
  const size_t begin = chars[head].first;
  const size_t end = chars[chars.size() - 1 - tail].first + chars[chars.size() - 1 - tail].second;
  return token.substr(begin, end - begin);
}

std::string metaspace(const std::string& token, const std::string& replacement, bool first, PrependScheme scheme) {
  std::string out;
  const bool drop = first && scheme != PrependScheme::kNever;  // tokenizers drops them all in the first token
  size_t at = 0;
  while (at < token.size()) {
    if (!replacement.empty() && token.compare(at, replacement.size(), replacement) == 0) {
      if (!drop) out += ' ';
      at += replacement.size();
    } else {
      out += token[at++];
    }
  }
  return out;
}


}  // namespace

std::string decode_tokens(const std::vector<DecoderStep>* steps, std::vector<std::string> tokens) {
  if (steps == nullptr) return join(tokens, " ");
  for (const DecoderStep& step : *steps) {
    switch (step.kind) {
      case DecoderKind::kByteLevel: tokens = byte_level(tokens); break;
      case DecoderKind::kByteFallback: tokens = byte_fallback(tokens); break;
      case DecoderKind::kFuse: tokens = {join(tokens, "")}; break;
      case DecoderKind::kReplace:
        for (std::string& token : tokens) token = step.pattern.replace_all(token, step.content);
        break;
      case DecoderKind::kStrip:
        for (std::string& token : tokens) token = strip(token, step.content, step.start, step.stop);
        break;
      case DecoderKind::kMetaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          tokens[i] = metaspace(tokens[i], step.replacement, i == 0, step.prepend_scheme);
        }
        break;
    }
  }
  return join(tokens, "");
}

}  // namespace etlora::text
