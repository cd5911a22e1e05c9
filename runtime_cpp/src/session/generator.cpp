#include <etlora/generator.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

namespace etlora {
namespace {

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

Status check_options(int64_t max_seq_len, const std::vector<int64_t>& prompt, const GenerationOptions& options) {
  const auto invalid = [](const std::string& message) { return Status(StatusCode::kInvalidArgument, message); };
  if (prompt.empty()) return invalid("generate: expected at least one prompt token, got none");
  if (static_cast<int64_t>(prompt.size()) > max_seq_len) {
    return invalid("generate: expected a prompt of at most " + std::to_string(max_seq_len) +
                   " tokens (the program's max_seq_len), got " + std::to_string(prompt.size()) +
                   " (hint: shorten the prompt, or export with a larger --max-seq-len)");
  }
  if (options.max_new_tokens < 0) {
    return invalid("generate: expected max_new_tokens >= 0, got " + std::to_string(options.max_new_tokens));
  }
  if (!(options.temperature >= 0.0f) || !std::isfinite(options.temperature)) {
    return invalid("generate: expected temperature >= 0 (0 = greedy), got " + std::to_string(options.temperature));
  }
  if (!(options.top_p > 0.0f && options.top_p <= 1.0f)) {
    return invalid("generate: expected top_p in (0, 1], got " + std::to_string(options.top_p));
  }
  return Status();
}

}  // namespace

int64_t pick_token(const std::vector<float>& logits, float temperature, float top_p, std::mt19937_64& random) {
  if (temperature <= 0.0f) {
    return std::max_element(logits.begin(), logits.end()) - logits.begin();
  }
  // Softmax of logits / temperature, largest first.
  const float top = *std::max_element(logits.begin(), logits.end());
  std::vector<double> probs(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) probs[i] = std::exp((logits[i] - top) / temperature);
  std::vector<int64_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return probs[a] > probs[b]; });
  const double total = std::accumulate(probs.begin(), probs.end(), 0.0);
  // Nucleus: the fewest most likely tokens whose mass reaches top_p.
  size_t kept = 0;
  double mass = 0;
  while (kept < order.size() && (kept == 0 || mass < top_p * total)) mass += probs[order[kept++]];
  double target = std::uniform_real_distribution<double>(0.0, mass)(random);
  for (size_t i = 0; i < kept; ++i) {
    target -= probs[order[i]];
    if (target < 0) return order[i];
  }
  return order[kept - 1];
}

namespace {

// The loop over either session kind: its forward, cache length and exact prefix.
template <class AnySession>
StatusOr<GenerationResult> generate_on(AnySession& session, const std::vector<int64_t>& prompt,
                                       const GenerationOptions& options, const TokenCallback& on_token) {
  const ForwardModel model{[&](const std::vector<int64_t>& tokens, int64_t start) {
                             return session.forward(tokens, start);
                           },
                           session.info().max_seq_len,
                           [&](const std::vector<int64_t>& tokens) { return session.reusable_prefix(tokens); }};
  return generate(model, prompt, options, on_token);
}

}  // namespace

StatusOr<GenerationResult> generate(Session& session, const std::vector<int64_t>& prompt,
                                    const GenerationOptions& options, const TokenCallback& on_token) {
  return generate_on(session, prompt, options, on_token);
}

StatusOr<GenerationResult> generate(HtpSession& session, const std::vector<int64_t>& prompt,
                                    const GenerationOptions& options, const TokenCallback& on_token) {
  return generate_on(session, prompt, options, on_token);
}

StatusOr<GenerationResult> generate(const ForwardModel& model, const std::vector<int64_t>& prompt,
                                    const GenerationOptions& options, const TokenCallback& on_token) {
  const int64_t max_seq_len = model.max_seq_len;
  if (Status status = check_options(max_seq_len, prompt, options); !status.ok()) return status;
  const auto is_eos = [&](int64_t id) {
    return std::find(options.eos_ids.begin(), options.eos_ids.end(), id) != options.eos_ids.end();
  };
  GenerationResult result;
  GenerationStats& stats = result.stats;
  stats.prompt_tokens = static_cast<int64_t>(prompt.size());
  stats.stop_reason = "max_new_tokens";
  if (options.max_new_tokens == 0) return result;

  std::mt19937_64 random(options.seed);
  auto start = std::chrono::steady_clock::now();
  const int64_t reused = options.reuse_prefix && model.reusable_prefix ? model.reusable_prefix(prompt) : 0;
  stats.reused_tokens = reused;
  auto logits = reused > 0 ? model.forward(std::vector<int64_t>(prompt.begin() + reused, prompt.end()), reused)
                           : model.forward(prompt, 0);
  if (!logits.ok()) return logits.status();
  int64_t token = pick_token(*logits, options.temperature, options.top_p, random);
  stats.prefill_seconds = seconds_since(start);
  int64_t position = stats.prompt_tokens;  // where the picked token goes

  while (true) {
    if (is_eos(token)) {
      stats.stop_reason = "eos";
      break;
    }
    result.tokens.push_back(token);
    stats.generated_tokens += 1;
    if (on_token && !on_token(token)) {
      stats.stop_reason = "callback";
      break;
    }
    if (stats.generated_tokens >= options.max_new_tokens) break;
    if (position >= max_seq_len) {
      stats.stop_reason = "max_seq_len";
      break;
    }
    start = std::chrono::steady_clock::now();
    logits = model.forward({token}, position);
    if (!logits.ok()) return logits.status();
    token = pick_token(*logits, options.temperature, options.top_p, random);
    stats.decode_seconds += seconds_since(start);
    stats.decode_steps += 1;
    position += 1;
  }
  return result;
}

}  // namespace etlora
