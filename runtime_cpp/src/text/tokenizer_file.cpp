// Reads tokenizer/etlora_tokenizer.txt (docs/bundle-format.md). Every error
// names the file, the line, what was expected there and what was found.
#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <etlora/tokenizer.h>

#include "format/format_util.h"

namespace etlora {

class TokenizerFileReader {
 public:
  explicit TokenizerFileReader(const std::string& path) : path_(path), in_(path, std::ios::binary) {}

  StatusOr<std::unique_ptr<Tokenizer>> read() {
    if (!in_) {
      return Status(StatusCode::kNotFound, "tokenizer file " + path_ +
                                               ": not found or not readable (hint: a bundle keeps it "
                                               "in tokenizer/etlora_tokenizer.txt)");
    }
    in_.seekg(0, std::ios::end);
    file_size_ = static_cast<int64_t>(in_.tellg());
    in_.seekg(0, std::ios::beg);
    std::unique_ptr<Tokenizer> tok(new Tokenizer());
    tok->path_ = path_;
    Status status = read_into(*tok);
    if (!status.ok()) return status;
    return tok;
  }

 private:
  Status read_into(Tokenizer& tok) {
    std::vector<std::string> words;
    if (!next_words(words, "header 'etlora-tokenizer <version>'")) return error_;
    if (words.size() != 2 || words[0] != "etlora-tokenizer") {
      return fail("header 'etlora-tokenizer <version>'", line_);
    }
    if (words[1] != std::to_string(kTokenizerFormatVersion)) {
      return fail("format version " + std::to_string(kTokenizerFormatVersion), "version " + printable(words[1]),
                  "written by a newer etlora? re-export the bundle with this version");
    }
    if (!expect_key("model", words) || words.size() != 3 || words[1] != "byte_level_bpe" ||
        words[2] != "gpt2") {
      return error_.ok() ? fail("'model byte_level_bpe gpt2'", line_) : error_;
    }
    if (!expect_key("bos", words)) return error_;
    if (words.size() == 2 && words[1] == "none") {
      tok.bos_id_ = -1;
    } else if (words.size() == 3 && parse_id(words[1], tok.bos_id_) && (words[2] == "0" || words[2] == "1")) {
      tok.adds_bos_ = words[2] == "1";
    } else {
      return fail("'bos none' or 'bos <id> <0|1>'", line_);
    }
    if (!expect_key("eos", words) || !parse_ids(words, tok.eos_ids_) || tok.eos_ids_.empty()) {
      return error_.ok() ? fail("'eos <id> [<id>...]' with at least one id", line_) : error_;
    }
    if (!expect_key("special", words) || !parse_ids(words, tok.special_ids_)) {
      return error_.ok() ? fail("'special [<id>...]'", line_) : error_;
    }
    if (!expect_key("chat", words)) return error_;
    if (words.size() == 3) {
      tok.has_chat_ = true;
      if (!parse_hex(words[1], tok.chat_prefix_) || !parse_hex(words[2], tok.chat_suffix_)) {
        return fail("'chat <prefix hex> <suffix hex>' ('-' for empty)", line_);
      }
    } else if (!(words.size() == 2 && words[1] == "none")) {
      return fail("'chat none' or 'chat <prefix hex> <suffix hex>'", line_);
    }
    int64_t vocab_size = 0;
    if (!expect_key("vocab", words) || words.size() != 2 || !parse_id(words[1], vocab_size) || vocab_size < 1) {
      return error_.ok() ? fail("'vocab <count>'", line_) : error_;
    }
    if (!count_fits(vocab_size, "vocab")) return error_;
    tok.tokens_.resize(vocab_size);
    tok.present_.assign(vocab_size, true);
    for (int64_t id = 0; id < vocab_size; ++id) {
      const std::string what = "token " + std::to_string(id) + " of " + std::to_string(vocab_size) +
                               " as hex bytes ('-' empty, 'none' unused)";
      if (!next_words(words, what)) return error_;
      if (words.size() == 1 && words[0] == "none") {
        tok.present_[id] = false;
      } else if (words.size() != 1 || !parse_hex(words[0], tok.tokens_[id])) {
        return fail(what, line_);
      }
    }
    int64_t merge_count = 0;
    if (!expect_key("merges", words) || words.size() != 2 || !parse_id(words[1], merge_count)) {
      return error_.ok() ? fail("'merges <count>'", line_) : error_;
    }
    if (!count_fits(merge_count, "merges")) return error_;
    tok.merges_.reserve(static_cast<size_t>(merge_count));
    for (int64_t rank = 0; rank < merge_count; ++rank) {
      const std::string what = "merge " + std::to_string(rank) + " of " + std::to_string(merge_count) +
                               " as '<left id> <right id> <merged id>'";
      if (!next_words(words, what)) return error_;
      int64_t ids[3];
      if (words.size() != 3 || !parse_id(words[0], ids[0]) || !parse_id(words[1], ids[1]) ||
          !parse_id(words[2], ids[2]) || !in_vocab(ids, 3, vocab_size)) {
        return fail(what + " below " + std::to_string(vocab_size), line_);
      }
      const uint64_t key = (static_cast<uint64_t>(ids[0]) << 32) | static_cast<uint64_t>(ids[1]);
      tok.merges_.emplace(key, Tokenizer::Merge{static_cast<int32_t>(rank), static_cast<int32_t>(ids[2])});
    }
    if (!next_words(words, "'end'")) return error_;
    if (words.size() != 1 || words[0] != "end") return fail("'end'", line_);
    return check_ids(tok, vocab_size);
  }

  Status check_ids(Tokenizer& tok, int64_t vocab_size) {
    std::vector<int64_t> all = tok.eos_ids_;
    all.insert(all.end(), tok.special_ids_.begin(), tok.special_ids_.end());
    if (tok.bos_id_ >= 0) all.push_back(tok.bos_id_);
    for (int64_t id : all) {
      if (id >= vocab_size || !tok.present_[id]) {
        return fail_at(0, "bos/eos/special ids of tokens in the vocab (0.." + std::to_string(vocab_size - 1) + ")",
                       "id " + std::to_string(id), "damaged file");
      }
    }
    std::fill(std::begin(tok.byte_ids_), std::end(tok.byte_ids_), -1);
    for (int64_t id = vocab_size - 1; id >= 0; --id) {  // lowest id wins
      if (tok.present_[id] && tok.tokens_[id].size() == 1) {
        tok.byte_ids_[static_cast<uint8_t>(tok.tokens_[id][0])] = static_cast<int32_t>(id);
      }
    }
    for (int64_t id : tok.special_ids_) {  // specials are matched whole, never as bytes
      if (tok.tokens_[id].size() == 1 && tok.byte_ids_[static_cast<uint8_t>(tok.tokens_[id][0])] == id) {
        tok.byte_ids_[static_cast<uint8_t>(tok.tokens_[id][0])] = -1;
      }
    }
    // Longest first, so that one special token that starts another never hides it.
    std::stable_sort(tok.special_ids_.begin(), tok.special_ids_.end(), [&](int64_t a, int64_t b) {
      return tok.tokens_[a].size() > tok.tokens_[b].size();
    });
    return Status();
  }

  // Bounds before trust: a count sizes memory only if the file can hold that many
  // lines (two bytes each at least) and it is below a sane limit.
  bool count_fits(int64_t count, const char* key) {
    constexpr int64_t kMaxCount = int64_t{1} << 24;
    if (count <= kMaxCount && count <= file_size_ / 2) return true;
    error_ = fail_at(line_, std::string("'") + key + " <count>' with at most " +
                                std::to_string(std::min(kMaxCount, file_size_ / 2)) +
                                " entries (the file has " + std::to_string(file_size_) + " bytes)",
                     std::to_string(count), "damaged or hand-edited file; re-export the bundle");
    return false;
  }

  // The next line split on spaces. false (error_ set) at end of file.
  bool next_words(std::vector<std::string>& words, const std::string& expected) {
    std::string line;
    if (!std::getline(in_, line)) {
      error_ = fail_at(line_ + 1, expected, "end of file", "the file is truncated; re-export the bundle");
      return false;
    }
    ++line_;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    words.clear();
    std::istringstream split(line);
    for (std::string word; split >> word;) words.push_back(word);
    text_ = line;
    return true;
  }

  bool expect_key(const std::string& key, std::vector<std::string>& words) {
    if (!next_words(words, "'" + key + " ...'")) return false;
    if (words.empty() || words[0] != key) {
      error_ = fail("'" + key + " ...'", line_);
      return false;
    }
    return true;
  }

  static bool parse_id(const std::string& text, int64_t& value) {
    if (text.empty() || text.size() > 10) return false;
    for (char c : text) {
      if (c < '0' || c > '9') return false;
    }
    value = std::strtoll(text.c_str(), nullptr, 10);
    return true;
  }

  static bool parse_ids(const std::vector<std::string>& words, std::vector<int64_t>& ids) {
    for (size_t i = 1; i < words.size(); ++i) {
      int64_t id = 0;
      if (!parse_id(words[i], id)) return false;
      ids.push_back(id);
    }
    return true;
  }

  static bool parse_hex(const std::string& text, std::string& bytes) {
    bytes.clear();
    if (text == "-") return true;
    if (text.empty() || text.size() % 2) return false;
    const auto nibble = [](char c) {
      return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    };
    for (size_t i = 0; i < text.size(); i += 2) {
      const int high = nibble(text[i]), low = nibble(text[i + 1]);
      if (high < 0 || low < 0) return false;
      bytes.push_back(static_cast<char>(high * 16 + low));
    }
    return true;
  }

  static bool in_vocab(const int64_t* ids, int n, int64_t vocab_size) {
    for (int i = 0; i < n; ++i) {
      if (ids[i] >= vocab_size) return false;
    }
    return true;
  }

  Status fail(const std::string& expected, int line) {
    std::string shown = printable(text_.size() > 60 ? text_.substr(0, 60) + "..." : text_);
    return fail_at(line, expected, "'" + shown + "'", "damaged or hand-edited file; re-export the bundle");
  }
  Status fail(const std::string& expected, const std::string& received, const std::string& hint) {
    return fail_at(line_, expected, received, hint);
  }
  Status fail_at(int line, const std::string& expected, const std::string& received, const std::string& hint) {
    const std::string where = line > 0 ? ":" + std::to_string(line) : "";
    return Status(StatusCode::kInvalidArgument, "tokenizer file " + path_ + where + ": expected " +
                                                    expected + ", got " + received + " (hint: " + hint + ")");
  }

  std::string path_;
  std::ifstream in_;
  int line_ = 0;
  int64_t file_size_ = 0;
  std::string text_;
  Status error_;
};

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::load(const std::string& path) {
  try {  // no exception leaves the C++ API (an allocation can still fail)
    return TokenizerFileReader(path).read();
  } catch (const std::exception& error) {
    return Status(StatusCode::kRuntimeError, "tokenizer file " + path + ": " + error.what());
  }
}

}  // namespace etlora
