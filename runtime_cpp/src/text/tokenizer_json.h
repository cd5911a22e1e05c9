// Reads a Hugging Face tokenizer.json into TokenizerParts, refusing by name every component
// etlora does not run (docs/bundle-format.md, "tokenizer/").
#pragma once

#include <memory>
#include <string>

#include <etlora/status.h>

#include "text/tokenizer_parts.h"

namespace etlora::text {

// At most this many ids (Gemma 3 has 262,144): the largest id sizes the id -> token table.
constexpr int64_t kMaxTokenizerVocab = int64_t{1} << 22;

StatusOr<std::unique_ptr<TokenizerParts>> read_tokenizer_json(const std::string& path);

}  // namespace etlora::text
