// tokenizer.json -> TokenizerParts (tokenizer_json.h). Every error names the file and the key
// path (e.g. "pre_tokenizer.pretokenizers[1].behavior"), what was expected and what was found.
#include "text/tokenizer_json.h"

#include <algorithm>
#include <cmath>

#include "format/format_util.h"
#include "format/json.h"

namespace etlora::text {

namespace {

using Kind = JsonValue::Kind;

std::string shown(const std::string& text) {
  return "'" + printable(text.size() > 80 ? text.substr(0, 80) + "..." : text) + "'";
}

class TokenizerJsonReader {
 public:
  explicit TokenizerJsonReader(std::string path) : path_(std::move(path)) {}

  StatusOr<std::unique_ptr<TokenizerParts>> read() {
    auto json = read_json_file(path_, "tokenizer file " + path_, kMaxTokenizerJsonBytes);
    if (!json.ok()) return json.status();
    const JsonValue& root = *json;
    if (!root.is(Kind::kObject)) return fail("", "a JSON object", JsonValue::kind_name(root.kind()));
    auto parts = std::make_unique<TokenizerParts>();
    if (Status s = read_top(root, *parts); !s.ok()) return s;
    return parts;
  }

 private:
  Status fail(const std::string& key, const std::string& expected, const std::string& received,
              const std::string& hint = "damaged or hand-edited tokenizer.json") const {
    return Status(StatusCode::kInvalidArgument, "tokenizer file " + path_ + (key.empty() ? "" : ": " + key) +
                                                    ": expected " + expected + ", got " + received +
                                                    " (hint: " + hint + ")");
  }
  // A component etlora does not run: refused by name.
  Status unsupported(const std::string& key, const std::string& what, const std::string& known) const {
    return fail(key, known, what,
                "etlora's runtime does not run this tokenizer component; tokenize on the host, or export "
                "with --no-tokenizer");
  }

  // Optional members read with a default; a member of the wrong type is an error.
  Status boolean(const JsonValue& object, const std::string& where, const std::string& key, bool fallback,
                 bool& out) const {
    const JsonValue* value = object.find(key);
    if (value == nullptr || value->is(Kind::kNull)) {
      out = fallback;
      return Status();
    }
    if (!value->is(Kind::kBool)) return fail(join(where, key), "true or false", JsonValue::kind_name(value->kind()));
    out = value->boolean();
    return Status();
  }
  Status string(const JsonValue& object, const std::string& where, const std::string& key, std::string& out,
                bool required = true) const {
    const JsonValue* value = object.find(key);
    if (value == nullptr || value->is(Kind::kNull)) {
      if (required) return fail(join(where, key), "a string", "nothing");
      return Status();
    }
    if (!value->is(Kind::kString)) return fail(join(where, key), "a string", JsonValue::kind_name(value->kind()));
    out = value->string();
    return Status();
  }
  Status integer(const JsonValue& value, const std::string& where, int64_t low, int64_t high, int64_t& out) const {
    if (!value.is(Kind::kNumber) || value.number() != std::floor(value.number()) || value.number() < low ||
        value.number() > high) {
      return fail(where, "a whole number in " + std::to_string(low) + ".." + std::to_string(high),
                  value.is(Kind::kNumber) ? json_number_text(value.number()) : JsonValue::kind_name(value.kind()));
    }
    out = static_cast<int64_t>(value.number());
    return Status();
  }
  static std::string join(const std::string& where, const std::string& key) {
    return where.empty() ? key : where + "." + key;
  }
  static std::string index(const std::string& where, size_t i) { return where + "[" + std::to_string(i) + "]"; }

  // The "type" of a component object.
  Status type_of(const JsonValue& value, const std::string& where, std::string& type) const {
    if (!value.is(Kind::kObject)) return fail(where, "an object with a \"type\"", JsonValue::kind_name(value.kind()));
    return string(value, where, "type", type);
  }

  Status pattern(const JsonValue& component, const std::string& where, Pattern& out) const {
    const JsonValue* value = component.find("pattern");
    const std::string key = join(where, "pattern");
    if (value == nullptr || !value->is(Kind::kObject) || value->object().size() != 1) {
      return fail(key, "{\"String\": ...} or {\"Regex\": ...}", value ? JsonValue::kind_name(value->kind()) : "nothing");
    }
    const auto& [name, text] = *value->object().begin();
    if (!text.is(Kind::kString)) return fail(key + "." + name, "a string", JsonValue::kind_name(text.kind()));
    if (name == "String") {
      if (text.string().empty()) return fail(key + ".String", "a non-empty string", "''");
      out.literal = text.string();
      return Status();
    }
    if (name != "Regex") return fail(key, "{\"String\": ...} or {\"Regex\": ...}", "'" + printable(name) + "'");
    auto compiled = Regex::compile(text.string(), "tokenizer file " + path_ + ": " + key + ".Regex");
    if (!compiled.ok()) return compiled.status();
    out.regex = *compiled;
    return Status();
  }

  Status prepend_scheme(const JsonValue& component, const std::string& where, PrependScheme& out) const {
    std::string scheme;
    if (Status s = string(component, where, "prepend_scheme", scheme, false); !s.ok()) return s;
    if (scheme.empty()) {  // files before tokenizers 0.19 say add_prefix_space instead
      bool add_prefix_space = true;
      if (Status s = boolean(component, where, "add_prefix_space", true, add_prefix_space); !s.ok()) return s;
      out = add_prefix_space ? PrependScheme::kAlways : PrependScheme::kNever;
      return Status();
    }
    if (scheme == "always") out = PrependScheme::kAlways;
    else if (scheme == "first") out = PrependScheme::kFirst;
    else if (scheme == "never") out = PrependScheme::kNever;
    else return fail(join(where, "prepend_scheme"), "always, first or never", shown(scheme));
    return Status();
  }

  Status one_character(const JsonValue& component, const std::string& where, const std::string& key,
                       std::string& out) const {
    if (Status s = string(component, where, key, out); !s.ok()) return s;
    int32_t c = 0;
    size_t length = 0;
    if (!decode_utf8(out, 0, c, length) || length != out.size()) {
      return fail(join(where, key), "one character", shown(out));
    }
    return Status();
  }

  // --- normalizer ---

  Status normalizer(const JsonValue& value, const std::string& where, std::vector<NormalizerStep>& out) const {
    std::string type;
    if (Status s = type_of(value, where, type); !s.ok()) return s;
    NormalizerStep step;
    if (type == "Sequence") {
      const JsonValue* list = value.find("normalizers");
      if (list == nullptr || !list->is(Kind::kArray)) return fail(join(where, "normalizers"), "an array", "something else");
      for (size_t i = 0; i < list->array().size(); ++i) {
        if (Status s = normalizer(list->array()[i], index(join(where, "normalizers"), i), out); !s.ok()) return s;
      }
      return Status();
    }
    if (type == "NFC" || type == "NFD" || type == "NFKC" || type == "NFKD") {
      step.kind = NormalizerKind::kUnicode;
      step.form = type == "NFC" ? UnicodeForm::kNfc : type == "NFD" ? UnicodeForm::kNfd
                : type == "NFKC" ? UnicodeForm::kNfkc : UnicodeForm::kNfkd;
    } else if (type == "Replace") {
      step.kind = NormalizerKind::kReplace;
      if (Status s = pattern(value, where, step.pattern); !s.ok()) return s;
      if (Status s = string(value, where, "content", step.content); !s.ok()) return s;
    } else if (type == "Prepend") {
      step.kind = NormalizerKind::kPrepend;
      if (Status s = string(value, where, "prepend", step.content); !s.ok()) return s;
    } else if (type == "Lowercase") {
      step.kind = NormalizerKind::kLowercase;
    } else {
      return unsupported(where, "normalizer " + shown(type), "a normalizer of NFC, NFD, NFKC, NFKD, Replace, Prepend, Lowercase, Sequence");
    }
    out.push_back(std::move(step));
    return Status();
  }

  // --- pre-tokenizer ---

  Status pre_tokenizer(const JsonValue& value, const std::string& where, std::vector<PreTokenizerStep>& out) const {
    std::string type;
    if (Status s = type_of(value, where, type); !s.ok()) return s;
    PreTokenizerStep step;
    if (type == "Sequence") {
      const JsonValue* list = value.find("pretokenizers");
      if (list == nullptr || !list->is(Kind::kArray)) return fail(join(where, "pretokenizers"), "an array", "something else");
      for (size_t i = 0; i < list->array().size(); ++i) {
        if (Status s = pre_tokenizer(list->array()[i], index(join(where, "pretokenizers"), i), out); !s.ok()) return s;
      }
      return Status();
    }
    if (type == "ByteLevel") {
      step.kind = PreTokenizerKind::kByteLevel;
      if (Status s = boolean(value, where, "add_prefix_space", true, step.add_prefix_space); !s.ok()) return s;
      if (Status s = boolean(value, where, "use_regex", true, step.use_regex); !s.ok()) return s;
      if (step.use_regex) {
        auto compiled = Regex::compile(gpt2_split_pattern(), "ByteLevel's GPT-2 pattern");
        if (!compiled.ok()) return compiled.status();
        step.pattern.regex = *compiled;
      }
    } else if (type == "Split") {
      step.kind = PreTokenizerKind::kSplit;
      if (Status s = pattern(value, where, step.pattern); !s.ok()) return s;
      std::string behavior;
      if (Status s = string(value, where, "behavior", behavior); !s.ok()) return s;
      if (behavior == "Removed") step.behavior = SplitBehavior::kRemoved;
      else if (behavior == "Isolated") step.behavior = SplitBehavior::kIsolated;
      else if (behavior == "MergedWithPrevious") step.behavior = SplitBehavior::kMergedWithPrevious;
      else if (behavior == "MergedWithNext") step.behavior = SplitBehavior::kMergedWithNext;
      else if (behavior == "Contiguous") step.behavior = SplitBehavior::kContiguous;
      else return fail(join(where, "behavior"), "Removed, Isolated, MergedWithPrevious, MergedWithNext or Contiguous", shown(behavior));
      if (Status s = boolean(value, where, "invert", false, step.invert); !s.ok()) return s;
    } else if (type == "Digits") {
      step.kind = PreTokenizerKind::kDigits;
      if (Status s = boolean(value, where, "individual_digits", false, step.individual_digits); !s.ok()) return s;
    } else if (type == "Metaspace") {
      step.kind = PreTokenizerKind::kMetaspace;
      if (Status s = one_character(value, where, "replacement", step.replacement); !s.ok()) return s;
      if (Status s = prepend_scheme(value, where, step.prepend_scheme); !s.ok()) return s;
      if (Status s = boolean(value, where, "split", true, step.split); !s.ok()) return s;
    } else {
      return unsupported(where, "pre_tokenizer " + shown(type), "a pre_tokenizer of ByteLevel, Split, Digits, Metaspace, Sequence");
    }
    out.push_back(std::move(step));
    return Status();
  }

  // --- decoder ---

  Status decoder(const JsonValue& value, const std::string& where, std::vector<DecoderStep>& out) const {
    std::string type;
    if (Status s = type_of(value, where, type); !s.ok()) return s;
    DecoderStep step;
    if (type == "Sequence") {
      const JsonValue* list = value.find("decoders");
      if (list == nullptr || !list->is(Kind::kArray)) return fail(join(where, "decoders"), "an array", "something else");
      for (size_t i = 0; i < list->array().size(); ++i) {
        if (Status s = decoder(list->array()[i], index(join(where, "decoders"), i), out); !s.ok()) return s;
      }
      return Status();
    }
    if (type == "ByteLevel") {
      step.kind = DecoderKind::kByteLevel;
    } else if (type == "ByteFallback") {
      step.kind = DecoderKind::kByteFallback;
    } else if (type == "Fuse") {
      step.kind = DecoderKind::kFuse;
    } else if (type == "Replace") {
      step.kind = DecoderKind::kReplace;
      if (Status s = pattern(value, where, step.pattern); !s.ok()) return s;
      if (Status s = string(value, where, "content", step.content); !s.ok()) return s;
    } else if (type == "Strip") {
      step.kind = DecoderKind::kStrip;
      if (Status s = one_character(value, where, "content", step.content); !s.ok()) return s;
      for (auto [key, field] : {std::pair{"start", &step.start}, std::pair{"stop", &step.stop}}) {
        const JsonValue* number = value.find(key);
        if (number == nullptr) return fail(join(where, key), "a whole number", "nothing");
        if (Status s = integer(*number, join(where, key), 0, 1 << 20, *field); !s.ok()) return s;
      }
    } else if (type == "Metaspace") {
      step.kind = DecoderKind::kMetaspace;
      if (Status s = one_character(value, where, "replacement", step.replacement); !s.ok()) return s;
      if (Status s = prepend_scheme(value, where, step.prepend_scheme); !s.ok()) return s;
    } else {
      return unsupported(where, "decoder " + shown(type), "a decoder of ByteLevel, ByteFallback, Fuse, Replace, Strip, Metaspace, Sequence");
    }
    out.push_back(std::move(step));
    return Status();
  }

  // --- post-processor: the ids around one sequence ---

  Status special_ids(const JsonValue& pair, const std::string& where, const TokenizerParts& parts,
                     std::vector<int64_t>& out) const {  // Roberta/Bert's ["<s>", 0]
    if (!pair.is(Kind::kArray) || pair.array().size() != 2 || !pair.array()[0].is(Kind::kString)) {
      return fail(where, "[token, id]", JsonValue::kind_name(pair.kind()));
    }
    int64_t id = 0;
    if (Status s = integer(pair.array()[1], index(where, 1), 0, static_cast<int64_t>(parts.id_to_token.size()) - 1, id); !s.ok()) return s;
    out.push_back(id);
    return Status();
  }

  Status post_processor(const JsonValue& value, const std::string& where, TokenizerParts& parts) const {
    std::string type;
    if (Status s = type_of(value, where, type); !s.ok()) return s;
    const int64_t last_id = static_cast<int64_t>(parts.id_to_token.size()) - 1;
    if (type == "Sequence") {
      const JsonValue* list = value.find("processors");
      if (list == nullptr || !list->is(Kind::kArray)) return fail(join(where, "processors"), "an array", "something else");
      for (size_t i = 0; i < list->array().size(); ++i) {
        if (Status s = post_processor(list->array()[i], index(join(where, "processors"), i), parts); !s.ok()) return s;
      }
      return Status();
    }
    if (type == "ByteLevel") return Status();  // offsets only
    std::vector<int64_t> before, after;
    if (type == "RobertaProcessing" || type == "BertProcessing") {
      const JsonValue* cls = value.find("cls");
      const JsonValue* sep = value.find("sep");
      if (cls == nullptr || sep == nullptr) return fail(where, "cls and sep", "a member missing");
      if (Status s = special_ids(*cls, join(where, "cls"), parts, before); !s.ok()) return s;
      if (Status s = special_ids(*sep, join(where, "sep"), parts, after); !s.ok()) return s;
    } else if (type == "TemplateProcessing") {
      const JsonValue* single = value.find("single");
      const JsonValue* specials = value.find("special_tokens");
      const std::string single_key = join(where, "single");
      if (single == nullptr || !single->is(Kind::kArray)) return fail(single_key, "an array", "something else");
      if (specials == nullptr || !specials->is(Kind::kObject)) return fail(join(where, "special_tokens"), "an object", "something else");
      bool seen_sequence = false;
      for (size_t i = 0; i < single->array().size(); ++i) {
        const JsonValue& piece = single->array()[i];
        const std::string key = index(single_key, i);
        if (!piece.is(Kind::kObject) || piece.object().size() != 1) return fail(key, "{\"SpecialToken\": ...} or {\"Sequence\": ...}", "something else");
        const auto& [name, body] = *piece.object().begin();
        std::string id;
        if (Status s = string(body, key + "." + name, "id", id); !s.ok()) return s;
        if (name == "Sequence") {
          if (id != "A" || seen_sequence) return fail(key, "sequence A once", "sequence " + shown(id));
          seen_sequence = true;
        } else if (name == "SpecialToken") {
          const JsonValue* special = specials->find(id);
          const JsonValue* ids = special ? special->find("ids") : nullptr;
          if (ids == nullptr || !ids->is(Kind::kArray)) return fail(join(where, "special_tokens") + "." + printable(id) + ".ids", "an array of ids", "nothing");
          for (size_t k = 0; k < ids->array().size(); ++k) {
            int64_t token = 0;
            if (Status s = integer(ids->array()[k], index(join(where, "special_tokens") + "." + printable(id) + ".ids", k), 0, last_id, token); !s.ok()) return s;
            (seen_sequence ? after : before).push_back(token);
          }
        } else {
          return fail(key, "{\"SpecialToken\": ...} or {\"Sequence\": ...}", shown(name));
        }
      }
      if (!seen_sequence) return fail(single_key, "sequence A once", "none");
    } else {
      return unsupported(where, "post_processor " + shown(type), "a post_processor of TemplateProcessing, ByteLevel, RobertaProcessing, BertProcessing, Sequence");
    }
    // A later processor wraps what the earlier ones produced.
    parts.special_prefix.insert(parts.special_prefix.begin(), before.begin(), before.end());
    parts.special_suffix.insert(parts.special_suffix.end(), after.begin(), after.end());
    return Status();
  }

  // --- model ---

  Status model(const JsonValue& value, TokenizerParts& parts, std::vector<std::pair<int64_t, const std::string*>>& ids) const {
    std::string type;
    if (Status s = type_of(value, "model", type); !s.ok()) return s;
    if (type != "BPE") return unsupported("model", "model " + shown(type), "model BPE");
    BpeModel& bpe = parts.model;
    const JsonValue* dropout = value.find("dropout");
    if (dropout != nullptr && !dropout->is(Kind::kNull) && !(dropout->is(Kind::kNumber) && dropout->number() == 0)) {
      return unsupported("model.dropout", "BPE dropout (random merges)", "no dropout");
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      std::string affix;
      if (Status s = string(value, "model", key, affix, false); !s.ok()) return s;
      if (!affix.empty()) return unsupported(std::string("model.") + key, "BPE " + std::string(key) + " " + shown(affix), "none");
    }
    if (Status s = boolean(value, "model", "fuse_unk", false, bpe.fuse_unk); !s.ok()) return s;
    if (Status s = boolean(value, "model", "byte_fallback", false, bpe.byte_fallback); !s.ok()) return s;
    if (Status s = boolean(value, "model", "ignore_merges", false, bpe.ignore_merges); !s.ok()) return s;
    const JsonValue* vocab = value.find("vocab");
    if (vocab == nullptr || !vocab->is(Kind::kObject)) return fail("model.vocab", "an object of token: id", vocab ? JsonValue::kind_name(vocab->kind()) : "nothing");
    bpe.vocab.reserve(vocab->object().size());
    for (const auto& [token, id_value] : vocab->object()) {
      int64_t id = 0;
      if (Status s = integer(id_value, "model.vocab." + shown(token), 0, kMaxTokenizerVocab - 1, id); !s.ok()) return s;
      bpe.vocab.emplace(token, static_cast<int32_t>(id));
      ids.emplace_back(id, &token);
    }
    std::string unk;
    if (Status s = string(value, "model", "unk_token", unk, false); !s.ok()) return s;
    if (!unk.empty()) {
      auto found = bpe.vocab.find(unk);
      if (found == bpe.vocab.end()) return fail("model.unk_token", "a token of the vocab", shown(unk));
      bpe.unk_id = found->second;
    }
    std::fill(std::begin(bpe.byte_tokens), std::end(bpe.byte_tokens), -1);
    static const char kHex[] = "0123456789ABCDEF";
    for (int byte = 0; byte < 256; ++byte) {
      const std::string name = std::string("<0x") + kHex[byte >> 4] + kHex[byte & 15] + ">";
      auto found = bpe.vocab.find(name);
      if (found != bpe.vocab.end()) bpe.byte_tokens[byte] = found->second;
    }
    return merges(value, bpe);
  }

  Status merges(const JsonValue& value, BpeModel& bpe) const {
    const JsonValue* list = value.find("merges");
    if (list == nullptr || list->is(Kind::kNull)) return Status();
    if (!list->is(Kind::kArray)) return fail("model.merges", "an array", JsonValue::kind_name(list->kind()));
    bpe.merges.reserve(list->array().size());
    std::string left, right;
    for (size_t rank = 0; rank < list->array().size(); ++rank) {
      const JsonValue& merge = list->array()[rank];
      const std::string key = index("model.merges", rank);
      if (merge.is(Kind::kString)) {  // "left right"
        const std::string& text = merge.string();
        const size_t space = text.find(' ');
        if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
          return fail(key, "\"left right\" (one space)", shown(text));
        }
        left = text.substr(0, space);
        right = text.substr(space + 1);
      } else if (merge.is(Kind::kArray) && merge.array().size() == 2 && merge.array()[0].is(Kind::kString) &&
                 merge.array()[1].is(Kind::kString)) {  // ["left", "right"]
        left = merge.array()[0].string();
        right = merge.array()[1].string();
      } else {
        return fail(key, "\"left right\" or [left, right]", JsonValue::kind_name(merge.kind()));
      }
      auto a = bpe.vocab.find(left), b = bpe.vocab.find(right), merged = bpe.vocab.find(left + right);
      if (a == bpe.vocab.end() || b == bpe.vocab.end() || merged == bpe.vocab.end()) {
        return fail(key, "a merge of two vocab tokens into a vocab token", shown(left) + " + " + shown(right));
      }
      const uint64_t pair = (static_cast<uint64_t>(static_cast<uint32_t>(a->second)) << 32) | static_cast<uint32_t>(b->second);
      bpe.merges.emplace(pair, (static_cast<uint64_t>(rank) << 32) | static_cast<uint32_t>(merged->second));
    }
    return Status();
  }

  // --- added tokens ---

  Status added_tokens(const JsonValue& root, TokenizerParts& parts, std::vector<std::pair<int64_t, const std::string*>>& ids) const {
    const JsonValue* list = root.find("added_tokens");
    if (list == nullptr || list->is(Kind::kNull)) return Status();
    if (!list->is(Kind::kArray)) return fail("added_tokens", "an array", JsonValue::kind_name(list->kind()));
    for (size_t i = 0; i < list->array().size(); ++i) {
      const JsonValue& entry = list->array()[i];
      const std::string where = index("added_tokens", i);
      if (!entry.is(Kind::kObject)) return fail(where, "an object", JsonValue::kind_name(entry.kind()));
      AddedToken token;
      const JsonValue* id = entry.find("id");
      if (id == nullptr) return fail(join(where, "id"), "a whole number", "nothing");
      if (Status s = integer(*id, join(where, "id"), 0, kMaxTokenizerVocab - 1, token.id); !s.ok()) return s;
      if (Status s = string(entry, where, "content", token.content); !s.ok()) return s;
      if (Status s = boolean(entry, where, "special", false, token.special); !s.ok()) return s;
      if (Status s = boolean(entry, where, "single_word", false, token.single_word); !s.ok()) return s;
      if (Status s = boolean(entry, where, "lstrip", false, token.lstrip); !s.ok()) return s;
      if (Status s = boolean(entry, where, "rstrip", false, token.rstrip); !s.ok()) return s;
      if (Status s = boolean(entry, where, "normalized", !token.special, token.normalized); !s.ok()) return s;
      parts.added_tokens.push_back(std::move(token));
    }
    for (const AddedToken& token : parts.added_tokens) ids.emplace_back(token.id, &token.content);
    return Status();
  }

  Status read_top(const JsonValue& root, TokenizerParts& parts) const {
    const JsonValue* truncation = root.find("truncation");
    if (truncation != nullptr && !truncation->is(Kind::kNull)) {
      return unsupported("truncation", "truncation settings", "truncation null");
    }
    const JsonValue* model_value = root.find("model");
    if (model_value == nullptr) return fail("model", "an object", "nothing");
    std::vector<std::pair<int64_t, const std::string*>> ids;  // every (id, token string)
    if (Status s = model(*model_value, parts, ids); !s.ok()) return s;
    if (Status s = added_tokens(root, parts, ids); !s.ok()) return s;
    if (ids.empty()) return fail("model.vocab", "at least one token", "none");
    // id -> token: added tokens over the model's, as tokenizers looks them up.
    int64_t size = 0;
    for (const auto& entry : ids) size = std::max(size, entry.first + 1);
    parts.id_to_token.assign(static_cast<size_t>(size), std::string());
    parts.present.assign(static_cast<size_t>(size), false);
    parts.is_special.assign(static_cast<size_t>(size), false);
    for (const auto& [id, token] : ids) {
      parts.id_to_token[id] = *token;
      parts.present[id] = true;
    }
    if (const JsonValue* value = root.find("normalizer"); value != nullptr && !value->is(Kind::kNull)) {
      if (Status s = normalizer(*value, "normalizer", parts.normalizer); !s.ok()) return s;
    }
    if (const JsonValue* value = root.find("pre_tokenizer"); value != nullptr && !value->is(Kind::kNull)) {
      if (Status s = pre_tokenizer(*value, "pre_tokenizer", parts.pre_tokenizer); !s.ok()) return s;
    }
    if (const JsonValue* value = root.find("decoder"); value != nullptr && !value->is(Kind::kNull)) {
      parts.has_decoder = true;
      if (Status s = decoder(*value, "decoder", parts.decoder); !s.ok()) return s;
    }
    if (const JsonValue* value = root.find("post_processor"); value != nullptr && !value->is(Kind::kNull)) {
      if (Status s = post_processor(*value, "post_processor", parts); !s.ok()) return s;
    }
    // Added tokens: non-normalized ones match the raw text; normalized ones match the normalized
    // pieces, as their normalized content.
    for (const AddedToken& token : parts.added_tokens) {
      if (token.special) parts.is_special[token.id] = true;
      if (token.normalized) {
        // tokenizers keeps (and decodes) a normalized token as its normalized content.
        parts.id_to_token[token.id] = normalize(parts.normalizer, token.content);
        parts.normalized_matcher.add(parts.id_to_token[token.id], &token);
      } else {
        parts.raw_matcher.add(token.content, &token);
      }
    }
    return Status();
  }

  std::string path_;
};

}  // namespace

StatusOr<std::unique_ptr<TokenizerParts>> read_tokenizer_json(const std::string& path) {
  return TokenizerJsonReader(path).read();
}

}  // namespace etlora::text
