// Text generation over a Session: one prefill of the prompt from position 0,
// then one forward per new token (the program's KV cache keeps the past).
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <etlora/htp_session.h>
#include <etlora/session.h>
#include <etlora/status.h>

namespace etlora {

struct GenerationOptions {
  int64_t max_new_tokens = 128;
  float temperature = 0.0f;  // 0: greedy (argmax, first index on ties)
  float top_p = 1.0f;        // nucleus sampling when temperature > 0
  uint64_t seed = 0;         // std::mt19937_64 seed: same seed, same tokens
  std::vector<int64_t> eos_ids;  // stop (without emitting) when one of these is picked
  // Keep the KV cache's leading positions that are exact for this prompt
  // (Session::reusable_prefix: the foundation's K/V before every active
  // adapter's activation start) and prefill only the rest.
  bool reuse_prefix = false;
};

struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t reused_tokens = 0;     // prompt positions kept from the KV cache (not prefilled)
  int64_t generated_tokens = 0;  // tokens handed to on_token (eos not counted)
  int64_t decode_steps = 0;      // forward calls after the prefill
  double prefill_seconds = 0;    // the prompt's forward + first pick
  double decode_seconds = 0;     // every later forward + pick
  std::string stop_reason;       // "eos", "max_new_tokens", "max_seq_len" or "callback"

  double prefill_tokens_per_second() const { return prefill_seconds > 0 ? prompt_tokens / prefill_seconds : 0; }
  double decode_tokens_per_second() const { return decode_seconds > 0 ? decode_steps / decode_seconds : 0; }
};

// Called with each new token; return false to stop generating.
using TokenCallback = std::function<bool(int64_t token)>;

struct GenerationResult {
  std::vector<int64_t> tokens;  // the generated ids, eos excluded
  GenerationStats stats;
};

// Generates up to max_new_tokens after `prompt` (1..max_seq_len ids). Stops at
// an eos id, at max_new_tokens, when the KV cache is full, or when on_token
// says so. Fails on an empty or too long prompt or a bad option value.
StatusOr<GenerationResult> generate(Session& session, const std::vector<int64_t>& prompt,
                                    const GenerationOptions& options, const TokenCallback& on_token = nullptr);
// The same loop over the HTP-shaped program (its KV cache on the host).
StatusOr<GenerationResult> generate(HtpSession& session, const std::vector<int64_t>& prompt,
                                    const GenerationOptions& options, const TokenCallback& on_token = nullptr);

// What the loop needs of a model: forward() with Session::forward's contract
// (append at start_pos, logits of the last token) and the cache length.
struct ForwardModel {
  std::function<StatusOr<std::vector<float>>(const std::vector<int64_t>&, int64_t)> forward;
  int64_t max_seq_len = 0;
  // Leading prompt positions the cache already holds exactly; none when unset.
  std::function<int64_t(const std::vector<int64_t>&)> reusable_prefix;
};
StatusOr<GenerationResult> generate(const ForwardModel& model, const std::vector<int64_t>& prompt,
                                    const GenerationOptions& options, const TokenCallback& on_token = nullptr);

// One pick from logits: argmax when temperature is 0, else top-p sampling.
// Exposed for tests; `random` is advanced only when sampling.
int64_t pick_token(const std::vector<float>& logits, float temperature, float top_p, std::mt19937_64& random);

}  // namespace etlora
