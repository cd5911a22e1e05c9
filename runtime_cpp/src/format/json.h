// A small JSON reader for manifest.json: a value tree, bounds before trust.
//
// Limits (input size, nesting depth, string length) are checked while parsing;
// errors carry the byte offset. Numbers are kept as double (manifest integers
// are sizes and counts far below 2^53).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "etlora/status.h"

namespace etlora {

class JsonValue {
 public:
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };

  Kind kind() const { return kind_; }
  bool is(Kind kind) const { return kind_ == kind; }
  bool boolean() const { return boolean_; }
  double number() const { return number_; }
  const std::string& string() const { return string_; }
  const std::vector<JsonValue>& array() const { return array_; }
  const std::map<std::string, JsonValue>& object() const { return object_; }
  // The member `key` of an object, or nullptr.
  const JsonValue* find(const std::string& key) const;

  static const char* kind_name(Kind kind);

 private:
  friend class JsonParser;
  Kind kind_ = Kind::kNull;
  bool boolean_ = false;
  double number_ = 0;
  std::string string_;
  std::vector<JsonValue> array_;
  std::map<std::string, JsonValue> object_;
};

constexpr size_t kMaxJsonBytes = size_t{16} << 20;  // manifest.json and small files
// A tokenizer.json holds the whole vocabulary and merges (Gemma 3's: 33 MB).
constexpr size_t kMaxTokenizerJsonBytes = size_t{96} << 20;

// Parses `text` (at most `max_bytes`, nesting at most 64); `what` names the
// source in errors ("manifest.json at byte 120: expected ',' or '}'").
StatusOr<JsonValue> parse_json(const std::string& text, const std::string& what,
                               size_t max_bytes = kMaxJsonBytes);

// Reads and parses the file at `path`, refusing one larger than `max_bytes` before reading it;
// `what` names it in errors ("tokenizer file DIR/tokenizer.json").
StatusOr<JsonValue> read_json_file(const std::string& path, const std::string& what, size_t max_bytes);

// A number as messages show it: whole numbers without a fraction ("70000", "2.5").
std::string json_number_text(double number);

}  // namespace etlora
