// Tokenizer::load: tokenizer.json through tokenizer_json.cpp, then etlora_chat.json beside it
// (stop ids and the rendered chat template, docs/bundle-format.md). The retired line format of
// bundles <= 6 is recognised and refused with the way out.
#include <etlora/tokenizer.h>

#include <cmath>
#include <fstream>

#include "format/format_util.h"
#include "format/json.h"
#include "text/tokenizer_json.h"

namespace etlora {

namespace {

using Kind = JsonValue::Kind;

std::string folder_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

bool is_line_format(const std::string& path) {
  const std::string retired = "etlora_tokenizer.txt";
  if (path.size() >= retired.size() && path.compare(path.size() - retired.size(), retired.size(), retired) == 0) return true;
  std::ifstream in(path, std::ios::binary);
  char head[17] = {};
  in.read(head, 16);
  return std::string(head, static_cast<size_t>(in.gcount())) == "etlora-tokenizer";
}

}  // namespace

class ChatFileReader {
 public:
  ChatFileReader(std::string path, Tokenizer& tokenizer) : path_(std::move(path)), tokenizer_(tokenizer) {}

  Status read() {
    auto json = read_json_file(path_, "chat file " + path_, kMaxJsonBytes);
    if (!json.ok()) return json.status();
    const JsonValue& root = *json;
    if (!root.is(Kind::kObject)) return fail("", "a JSON object", JsonValue::kind_name(root.kind()));
    for (const auto& [key, value] : root.object()) {
      if (key != "format" && key != "format_version" && key != "stop_token_ids" && key != "single_user_turn") {
        return fail(printable(key), "only format, format_version, stop_token_ids, single_user_turn", "this member",
                    "written by a newer etlora? re-export the bundle with this version");
      }
    }
    const JsonValue* format = root.find("format");
    if (format == nullptr || !format->is(Kind::kString) || format->string() != "etlora-chat") {
      return fail("format", "\"etlora-chat\"", format ? JsonValue::kind_name(format->kind()) : "nothing");
    }
    const JsonValue* version = root.find("format_version");
    if (version == nullptr || !version->is(Kind::kNumber) || version->number() != kChatFileVersion) {
      return fail("format_version", std::to_string(kChatFileVersion),
                  version && version->is(Kind::kNumber) ? json_number_text(version->number()) : "something else",
                  "written by a newer etlora? re-export the bundle with this version");
    }
    const JsonValue* stops = root.find("stop_token_ids");
    if (stops == nullptr || !stops->is(Kind::kArray) || stops->array().empty()) {
      return fail("stop_token_ids", "an array of at least one token id", stops ? JsonValue::kind_name(stops->kind()) : "nothing");
    }
    const int64_t vocab = tokenizer_.vocab_size();
    for (size_t i = 0; i < stops->array().size(); ++i) {
      const JsonValue& id = stops->array()[i];
      if (!id.is(Kind::kNumber) || id.number() != std::floor(id.number()) || id.number() < 0 ||
          id.number() >= static_cast<double>(vocab) || !tokenizer_.parts_present(static_cast<int64_t>(id.number()))) {
        return fail("stop_token_ids[" + std::to_string(i) + "]", "an id of a token in tokenizer.json (0.." + std::to_string(vocab - 1) + ")",
                    id.is(Kind::kNumber) ? json_number_text(id.number()) : JsonValue::kind_name(id.kind()));
      }
      tokenizer_.eos_ids_.push_back(static_cast<int64_t>(id.number()));
    }
    const JsonValue* turn = root.find("single_user_turn");
    if (turn == nullptr) return fail("single_user_turn", "an object or null", "nothing");
    if (turn->is(Kind::kNull)) return Status();
    const JsonValue* prefix = turn->find("prefix");
    const JsonValue* suffix = turn->find("suffix");
    if (!turn->is(Kind::kObject) || turn->object().size() != 2 || prefix == nullptr || suffix == nullptr ||
        !prefix->is(Kind::kString) || !suffix->is(Kind::kString)) {
      return fail("single_user_turn", "{\"prefix\": string, \"suffix\": string}", JsonValue::kind_name(turn->kind()));
    }
    tokenizer_.has_chat_ = true;
    tokenizer_.chat_prefix_ = prefix->string();
    tokenizer_.chat_suffix_ = suffix->string();
    return Status();
  }

 private:
  Status fail(const std::string& key, const std::string& expected, const std::string& received,
              const std::string& hint = "damaged or hand-edited file; re-export the bundle") const {
    return Status(StatusCode::kInvalidArgument, "chat file " + path_ + (key.empty() ? "" : ": " + key) +
                                                    ": expected " + expected + ", got " + received + " (hint: " + hint + ")");
  }

  std::string path_;
  Tokenizer& tokenizer_;
};

bool Tokenizer::parts_present(int64_t id) const { return id >= 0 && id < vocab_size() && parts_->present[id]; }

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::load(const std::string& path) {
  try {  // no exception leaves the C++ API (an allocation can still fail)
    if (is_line_format(path)) {
      return Status(StatusCode::kIncompatible,
                    "tokenizer file " + path + ": expected a Hugging Face tokenizer.json (bundle format 7), got "
                    "the retired line format of bundles <= 6 (tokenizer/etlora_tokenizer.txt) (hint: re-export the "
                    "bundle with this etlora; token ids still work without a tokenizer)");
    }
    auto parts = text::read_tokenizer_json(path);
    if (!parts.ok()) return parts.status();
    std::unique_ptr<Tokenizer> tokenizer(new Tokenizer());
    tokenizer->path_ = path;
    tokenizer->parts_ = std::move(*parts);
    const std::string chat_path = folder_of(path) + "/" + kChatFileName;
    if (std::ifstream(chat_path).good()) {
      if (Status s = ChatFileReader(chat_path, *tokenizer).read(); !s.ok()) return s;
    }
    return tokenizer;
  } catch (const std::exception& error) {
    return Status(StatusCode::kRuntimeError, "tokenizer file " + path + ": " + error.what());
  }
}

}  // namespace etlora
