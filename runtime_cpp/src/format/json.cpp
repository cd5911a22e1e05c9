// The JSON reader behind Bundle::open (json.h).
#include "format/json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>

namespace etlora {

const JsonValue* JsonValue::find(const std::string& key) const {
  if (kind_ != Kind::kObject) return nullptr;
  auto it = object_.find(key);
  return it == object_.end() ? nullptr : &it->second;
}

const char* JsonValue::kind_name(Kind kind) {
  switch (kind) {
    case Kind::kNull: return "null";
    case Kind::kBool: return "a boolean";
    case Kind::kNumber: return "a number";
    case Kind::kString: return "a string";
    case Kind::kArray: return "an array";
    case Kind::kObject: return "an object";
  }
  return "?";
}

class JsonParser {
 public:
  JsonParser(const std::string& text, const std::string& what) : text_(text), what_(what) {}

  StatusOr<JsonValue> parse() {
    JsonValue value;
    if (!parse_value(value, 0)) return error_;
    skip_space();
    if (at_ != text_.size()) return fail("expected the end of the document");
    return value;
  }

 private:
  static constexpr int kMaxDepth = 64;

  Status fail(const std::string& why) {
    error_ = Status(StatusCode::kInvalidArgument,
                    what_ + " at byte " + std::to_string(at_) + ": " + why + " (hint: not valid JSON)");
    return error_;
  }
  bool failed(const std::string& why) {
    fail(why);
    return false;
  }

  void skip_space() {
    while (at_ < text_.size() && (text_[at_] == ' ' || text_[at_] == '\n' || text_[at_] == '\r' || text_[at_] == '\t')) ++at_;
  }

  bool literal(const char* word) {
    const std::string expected(word);
    if (text_.compare(at_, expected.size(), expected) != 0) return failed("expected a value");
    at_ += expected.size();
    return true;
  }

  bool parse_value(JsonValue& value, int depth) {
    if (depth > kMaxDepth) return failed("nesting deeper than " + std::to_string(kMaxDepth));
    skip_space();
    if (at_ >= text_.size()) return failed("unexpected end of the document");
    const char c = text_[at_];
    if (c == '{') return parse_object(value, depth);
    if (c == '[') return parse_array(value, depth);
    if (c == '"') {
      value.kind_ = JsonValue::Kind::kString;
      return parse_string(value.string_);
    }
    if (c == 't' || c == 'f') {
      value.kind_ = JsonValue::Kind::kBool;
      value.boolean_ = c == 't';
      return literal(c == 't' ? "true" : "false");
    }
    if (c == 'n') {
      value.kind_ = JsonValue::Kind::kNull;
      return literal("null");
    }
    return parse_number(value);
  }

  bool parse_number(JsonValue& value) {
    const size_t start = at_;
    if (at_ < text_.size() && text_[at_] == '-') ++at_;
    auto digits = [&] {
      const size_t first = at_;
      while (at_ < text_.size() && text_[at_] >= '0' && text_[at_] <= '9') ++at_;
      return at_ > first;
    };
    if (!digits()) return failed("expected a value");
    if (at_ < text_.size() && text_[at_] == '.') {
      ++at_;
      if (!digits()) return failed("expected digits after '.'");
    }
    if (at_ < text_.size() && (text_[at_] == 'e' || text_[at_] == 'E')) {
      ++at_;
      if (at_ < text_.size() && (text_[at_] == '+' || text_[at_] == '-')) ++at_;
      if (!digits()) return failed("expected an exponent");
    }
    value.kind_ = JsonValue::Kind::kNumber;
    value.number_ = std::strtod(text_.substr(start, at_ - start).c_str(), nullptr);
    if (!std::isfinite(value.number_)) return failed("number out of range");
    return true;
  }

  static void append_utf8(std::string& out, uint32_t code) {
    if (code < 0x80) {
      out += static_cast<char>(code);
    } else if (code < 0x800) {
      out += static_cast<char>(0xC0 | (code >> 6));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else if (code < 0x10000) {
      out += static_cast<char>(0xE0 | (code >> 12));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (code >> 18));
      out += static_cast<char>(0x80 | ((code >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (code & 0x3F));
    }
  }

  bool hex4(uint32_t& code) {
    if (at_ + 4 > text_.size()) return failed("expected 4 hex digits after \\u");
    code = 0;
    for (int i = 0; i < 4; ++i) {
      const char h = text_[at_++];
      const int digit = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
      if (digit < 0) return failed("expected 4 hex digits after \\u");
      code = code * 16 + static_cast<uint32_t>(digit);
    }
    return true;
  }

  bool parse_string(std::string& out) {
    ++at_;  // opening quote
    out.clear();
    while (true) {
      if (at_ >= text_.size()) return failed("unterminated string");
      const unsigned char c = static_cast<unsigned char>(text_[at_++]);
      if (c == '"') return true;
      if (c < 0x20) return failed("control character in a string");
      if (c != '\\') {
        out += static_cast<char>(c);
        continue;
      }
      if (at_ >= text_.size()) return failed("unterminated escape");
      const char e = text_[at_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t code = 0;
          if (!hex4(code)) return false;
          if (code >= 0xD800 && code < 0xDC00) {  // a surrogate pair
            uint32_t low = 0;
            if (text_.compare(at_, 2, "\\u") != 0) return failed("lone high surrogate");
            at_ += 2;
            if (!hex4(low) || low < 0xDC00 || low >= 0xE000) return failed("bad low surrogate");
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
          } else if (code >= 0xDC00 && code < 0xE000) {
            return failed("lone low surrogate");
          }
          append_utf8(out, code);
          break;
        }
        default: return failed("unknown escape");
      }
    }
  }

  bool parse_array(JsonValue& value, int depth) {
    ++at_;
    value.kind_ = JsonValue::Kind::kArray;
    skip_space();
    if (at_ < text_.size() && text_[at_] == ']') {
      ++at_;
      return true;
    }
    while (true) {
      value.array_.emplace_back();
      if (!parse_value(value.array_.back(), depth + 1)) return false;
      skip_space();
      if (at_ < text_.size() && text_[at_] == ',') {
        ++at_;
        continue;
      }
      if (at_ < text_.size() && text_[at_] == ']') {
        ++at_;
        return true;
      }
      return failed("expected ',' or ']'");
    }
  }

  bool parse_object(JsonValue& value, int depth) {
    ++at_;
    value.kind_ = JsonValue::Kind::kObject;
    skip_space();
    if (at_ < text_.size() && text_[at_] == '}') {
      ++at_;
      return true;
    }
    while (true) {
      skip_space();
      if (at_ >= text_.size() || text_[at_] != '"') return failed("expected a member name");
      std::string key;
      if (!parse_string(key)) return false;
      skip_space();
      if (at_ >= text_.size() || text_[at_] != ':') return failed("expected ':'");
      ++at_;
      JsonValue member;
      if (!parse_value(member, depth + 1)) return false;
      if (!value.object_.emplace(std::move(key), std::move(member)).second) return failed("duplicate member name");
      skip_space();
      if (at_ < text_.size() && text_[at_] == ',') {
        ++at_;
        continue;
      }
      if (at_ < text_.size() && text_[at_] == '}') {
        ++at_;
        return true;
      }
      return failed("expected ',' or '}'");
    }
  }

  const std::string& text_;
  const std::string& what_;
  size_t at_ = 0;
  Status error_;
};

StatusOr<JsonValue> parse_json(const std::string& text, const std::string& what, size_t max_bytes) {
  if (text.size() > max_bytes) {
    return Status(StatusCode::kInvalidArgument, what + ": " + std::to_string(text.size()) +
                                                    " bytes, more than the " + std::to_string(max_bytes) +
                                                    " a " + (max_bytes == kMaxJsonBytes ? "manifest" : "file of its kind") +
                                                    " may have");
  }
  return JsonParser(text, what).parse();
}

StatusOr<JsonValue> read_json_file(const std::string& path, const std::string& what, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Status(StatusCode::kNotFound, what + ": not found or not readable");
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0) return Status(StatusCode::kNotFound, what + ": not a readable file");
  if (static_cast<uint64_t>(size) > max_bytes) {
    return Status(StatusCode::kInvalidArgument, what + ": expected at most " + std::to_string(max_bytes) +
                                                    " bytes, got " + std::to_string(size) +
                                                    " (hint: damaged or not the file it should be)");
  }
  std::string text(static_cast<size_t>(size), '\0');
  in.seekg(0);
  in.read(text.data(), size);
  if (!in) return Status(StatusCode::kNotFound, what + ": read failed");
  return parse_json(text, what, max_bytes);
}

std::string json_number_text(double number) {
  if (number == std::floor(number) && std::fabs(number) < 1e15) return std::to_string(static_cast<long long>(number));
  char text[32];
  std::snprintf(text, sizeof(text), "%g", number);
  return text;
}

}  // namespace etlora
