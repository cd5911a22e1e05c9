// HtpFacts to and from JSON (htp_facts_json.h), over the bundle reader's JSON parser.
#include <etlora/htp_facts_json.h>

#include <array>
#include <cstdio>
#include <fstream>

#include "format/json.h"

namespace etlora {

namespace {

constexpr size_t kMaxFactsBytes = 64 * 1024;
constexpr size_t kKeyCount = 7;

// The fields of HtpFacts in key order: (name, bool field, string field), one of the two set.
struct FactField {
  const char* name;
  bool* flag;
  std::string* text;
};

std::array<FactField, kKeyCount> fields(HtpFacts& f) {
  return {{{"htp_library_loadable", &f.htp_library.loadable, nullptr},
           {"htp_library_error", nullptr, &f.htp_library.error},
           {"system_library_loadable", &f.system_library.loadable, nullptr},
           {"system_library_error", nullptr, &f.system_library.error},
           {"dsp_device", nullptr, &f.dsp_device},
           {"soc", nullptr, &f.soc},
           {"soc_source", nullptr, &f.soc_source}}};
}

std::string quoted(const std::string& text) {
  std::string out = "\"";
  for (const unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\u%04x", c);
      out += escape;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

}  // namespace

std::string htp_facts_to_json(const HtpFacts& facts) {
  HtpFacts copy = facts;
  std::string out = "{";
  for (const FactField& field : fields(copy)) {
    out += (out.size() > 1 ? ", " : "") + quoted(field.name) + ": " +
           (field.flag ? (*field.flag ? "true" : "false") : quoted(*field.text));
  }
  return out + "}";
}

StatusOr<HtpFacts> htp_facts_from_json(const std::string& text, const std::string& where) {
  using Kind = JsonValue::Kind;
  auto json = parse_json(text, where);
  if (!json.ok()) return json.status();
  if (!json->is(Kind::kObject)) {
    return Status(StatusCode::kInvalidArgument,
                  where + ": expected a JSON object, received " + JsonValue::kind_name(json->kind()));
  }
  HtpFacts facts;
  const std::array<FactField, kKeyCount> known = fields(facts);
  std::string key_list;
  for (const FactField& field : known) key_list += (key_list.empty() ? "" : ", ") + std::string(field.name);
  for (const auto& entry : json->object()) {
    bool listed = false;
    for (const FactField& field : known) listed = listed || entry.first == field.name;
    if (!listed) {
      return Status(StatusCode::kInvalidArgument,
                    where + ": expected only the keys " + key_list + ", received '" + entry.first + "'");
    }
  }
  for (const FactField& field : known) {
    const JsonValue* value = json->find(field.name);
    const Kind kind = field.flag ? Kind::kBool : Kind::kString;
    if (value == nullptr) {
      return Status(StatusCode::kInvalidArgument,
                    where + ": expected a '" + field.name + "' key, received none");
    }
    if (!value->is(kind)) {
      return Status(StatusCode::kInvalidArgument, where + ": '" + field.name + "' expected " +
                                                      JsonValue::kind_name(kind) + ", received " +
                                                      JsonValue::kind_name(value->kind()));
    }
    if (field.flag) {
      *field.flag = value->boolean();
    } else {
      *field.text = value->string();
    }
  }
  return facts;
}

StatusOr<HtpFacts> read_htp_facts_file(const std::string& path, const std::string& where) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    return Status(StatusCode::kNotFound, where + ": cannot be read (expected a JSON file with the seven "
                                                 "device facts; unset the variable to probe the device)");
  }
  std::string text(kMaxFactsBytes + 1, '\0');
  file.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(file.gcount()));
  if (text.size() > kMaxFactsBytes) {
    return Status(StatusCode::kInvalidArgument,
                  where + ": expected at most " + std::to_string(kMaxFactsBytes) + " bytes, received more");
  }
  return htp_facts_from_json(text, where);
}

}  // namespace etlora
