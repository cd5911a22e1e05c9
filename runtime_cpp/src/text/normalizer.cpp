// Normalizer steps (tokenizer_parts.h): Unicode forms, Replace, Prepend, Lowercase.
#include "text/tokenizer_parts.h"

namespace etlora::text {

std::string normalize(const std::vector<NormalizerStep>& steps, const std::string& text) {
  std::string out = text;
  for (const NormalizerStep& step : steps) {
    switch (step.kind) {
      case NormalizerKind::kUnicode: out = normalize_unicode(out, step.form); break;
      case NormalizerKind::kReplace: out = step.pattern.replace_all(out, step.content); break;
      case NormalizerKind::kPrepend:
        if (!out.empty()) out.insert(0, step.content);  // tokenizers leaves empty text alone
        break;
      case NormalizerKind::kLowercase: out = lowercase(out); break;
    }
  }
  return out;
}

}  // namespace etlora::text
