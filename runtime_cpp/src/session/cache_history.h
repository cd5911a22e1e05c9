// What the KV cache of a session holds, position by position: which tokens,
// whether adapters touched them and with which binding. It decides how much of
// a new prompt a prefill can keep (reusable_prefix); Session and HtpSession
// keep one each, since both write K/V rows at the positions a forward names.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

namespace etlora {

class CacheHistory {
 public:
  explicit CacheHistory(int64_t positions) : tokens_(positions, 0) {}

  // A forward is about to write tokens[0, count) at start_pos.. (in range).
  void begin_write(const int64_t* tokens, int64_t count, int64_t start_pos);
  // Positions from `position` on were written with some adapter applied.
  void adapter_touched(int64_t position);
  // A write failed at `position`: nothing from there on holds what history says.
  void written_up_to(int64_t position);
  // The binding changed: every cached position was computed with other adapters.
  void adapters_changed() { stale_from_ = 0; }

  // The token at every position (valid up to the last write's end).
  const int64_t* tokens() const { return tokens_.data(); }

  // How many leading positions a prefill of prompt[0, count) can keep, at most
  // count - 1: positions whose tokens equal the prompt's and whose K/V is exact
  // for it. `activation_starts` are the bound adapters' starts in the prompt
  // (AdapterRegistry::activation_starts); `activated` whether one of them is an
  // activated LoRA, whose start may have moved since its positions were computed.
  int64_t reusable_prefix(const int64_t* prompt, int64_t count, const std::vector<int64_t>& activation_starts,
                          bool activated) const;

 private:
  static constexpr int64_t kNever = std::numeric_limits<int64_t>::max();
  std::vector<int64_t> tokens_;  // the token at each cache position
  int64_t cache_end_ = 0;        // positions [0, cache_end_) hold tokens_' K/V
  int64_t adapter_from_ = kNever;  // first cached position an adapter touched
  // First cached position computed with other adapters or strengths than those bound now.
  int64_t stale_from_ = kNever;
  // Positions from here on may hold K/V computed after other tokens than tokens_'
  // before them: a forward that started past cache_end_ left a gap of older K/V.
  int64_t consistent_end_ = kNever;
};

}  // namespace etlora
