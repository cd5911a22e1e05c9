// The parts of a Hugging Face tokenizer.json that etlora runs, as plain data (read by
// tokenizer_json.cpp) with the functions that apply them (normalizer.cpp, pre_tokenizer.cpp,
// bpe_model.cpp, added_vocabulary.cpp, decoder.cpp). Each part does what its namesake in
// `tokenizers` does; tests/test_tokenizer.py compares the whole against the library.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "text/regex.h"
#include "text/unicode_text.h"

namespace etlora::text {

// --- normalizer ---------------------------------------------------------------------------------

enum class NormalizerKind { kUnicode, kReplace, kPrepend, kLowercase };

struct NormalizerStep {
  NormalizerKind kind = NormalizerKind::kUnicode;
  UnicodeForm form = UnicodeForm::kNfc;  // kUnicode
  Pattern pattern;                       // kReplace
  std::string content;                   // kReplace: the replacement; kPrepend: what is prepended
};

// The steps applied in order (a Sequence is flattened by the reader).
std::string normalize(const std::vector<NormalizerStep>& steps, const std::string& text);

// --- pre-tokenizer ------------------------------------------------------------------------------

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
enum class PrependScheme { kAlways, kFirst, kNever };
enum class PreTokenizerKind { kByteLevel, kSplit, kDigits, kMetaspace };

struct PreTokenizerStep {
  PreTokenizerKind kind = PreTokenizerKind::kByteLevel;
  bool add_prefix_space = false;  // kByteLevel
  bool use_regex = true;          // kByteLevel: split with the GPT-2 pattern first
  Pattern pattern;                // kSplit (kByteLevel: the GPT-2 pattern)
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;            // kSplit
  bool individual_digits = false; // kDigits
  std::string replacement;        // kMetaspace, one character
  PrependScheme prepend_scheme = PrependScheme::kAlways;
  bool split = true;              // kMetaspace
};

// A piece of input text on its way to the model. `at_origin`: it starts at byte 0 of the
// original input (Metaspace's "first" scheme prepends only there).
struct Piece {
  std::string text;
  bool at_origin = false;
};

std::vector<Piece> pre_tokenize(const std::vector<PreTokenizerStep>& steps, std::vector<Piece> pieces);

// GPT-2's byte -> printable character table (ByteLevel), and the way back (-1: not in the table).
const std::string& byte_level_char(uint8_t byte);
int byte_level_byte(int32_t code_point);
const char* gpt2_split_pattern();

// --- model --------------------------------------------------------------------------------------

struct BpeModel {
  std::unordered_map<std::string, int32_t> vocab;
  // (left id << 32 | right id) -> (rank << 32 | merged id)
  std::unordered_map<uint64_t, uint64_t> merges;
  int32_t unk_id = -1;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
  int32_t byte_tokens[256];  // <0xNN> token of each byte, -1 if none (byte_fallback)

  // Appends the ids of one pre-tokenized word.
  void tokenize(const std::string& word, std::vector<int64_t>& out) const;
};

// --- added tokens ---------------------------------------------------------------------------------

struct AddedToken {
  int64_t id = 0;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// Leftmost-longest literal matching of added tokens (one trie for the raw text, one for the
// normalized pieces), with lstrip/rstrip/single_word as tokenizers applies them.
class AddedTokenMatcher {
 public:
  void add(const std::string& pattern, const AddedToken* token);
  bool empty() const { return nodes_.size() <= 1; }
  struct Found {
    const AddedToken* token;  // null: plain text
    Span span;
  };
  // `text` cut into plain spans and added tokens, covering it in order.
  std::vector<Found> split(const std::string& text) const;

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
    const AddedToken* token = nullptr;
  };
  int32_t child(int32_t node, uint8_t byte) const;
  std::vector<Node> nodes_{Node{}};
};

// --- decoder ------------------------------------------------------------------------------------

enum class DecoderKind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace };

struct DecoderStep {
  DecoderKind kind = DecoderKind::kByteLevel;
  Pattern pattern;           // kReplace
  std::string content;       // kReplace: the replacement; kStrip: the character stripped
  int64_t start = 0, stop = 0;  // kStrip: at most this many from each end
  std::string replacement;   // kMetaspace
  PrependScheme prepend_scheme = PrependScheme::kAlways;
};

// The text of `tokens` (vocabulary strings): each step maps the token list, then the rest is
// joined. Without a decoder (`steps` null) tokens are joined with spaces, as tokenizers does.
std::string decode_tokens(const std::vector<DecoderStep>* steps, std::vector<std::string> tokens);

// --- everything -----------------------------------------------------------------------------------

struct TokenizerParts {
  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  BpeModel model;
  std::vector<AddedToken> added_tokens;
  AddedTokenMatcher raw_matcher, normalized_matcher;
  bool has_decoder = false;
  std::vector<DecoderStep> decoder;
  // The post-processor for one sequence: ids before and after it with add_special_tokens.
  std::vector<int64_t> special_prefix, special_suffix;
  std::vector<std::string> id_to_token;  // every id's string ("" and !present: no token)
  std::vector<bool> present;
  std::vector<bool> is_special;  // added tokens marked special
};

}  // namespace etlora::text
