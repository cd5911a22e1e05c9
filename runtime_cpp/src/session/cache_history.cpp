// CacheHistory: the bookkeeping behind reusable_prefix.
#include "session/cache_history.h"

#include <algorithm>

namespace etlora {

void CacheHistory::begin_write(const int64_t* tokens, int64_t count, int64_t start_pos) {
  std::copy(tokens, tokens + count, tokens_.begin() + start_pos);
  if (start_pos > cache_end_) {
    consistent_end_ = std::min(consistent_end_, cache_end_);  // the gap is never reused
  } else if (start_pos <= consistent_end_) {
    consistent_end_ = kNever;  // written after a consistent prefix: all of [0, end) is
  }
  cache_end_ = start_pos + count;
  if (adapter_from_ >= start_pos) adapter_from_ = kNever;
  if (stale_from_ >= start_pos) stale_from_ = kNever;
}

void CacheHistory::adapter_touched(int64_t position) { adapter_from_ = std::min(adapter_from_, position); }

void CacheHistory::written_up_to(int64_t position) { cache_end_ = std::min(cache_end_, position); }

int64_t CacheHistory::reusable_prefix(const int64_t* prompt, int64_t count,
                                      const std::vector<int64_t>& activation_starts, bool activated) const {
  int64_t common = 0;
  const int64_t cached = std::min({count, cache_end_, consistent_end_});
  while (common < cached && tokens_[common] == prompt[common]) ++common;
  // The foundation's positions (no adapter touched them) before every bound
  // adapter's activation start for this prompt: exact whatever was bound then.
  int64_t foundation = std::min({common, adapter_from_, count - 1});
  for (int64_t start : activation_starts) foundation = std::min(foundation, start);
  // Positions computed with the adapters bound now: exact unless an activated
  // LoRA is bound, whose activation start in this prompt may differ from where
  // it was when they were computed.
  const int64_t same_adapters = activated ? 0 : std::min({common, stale_from_, count - 1});
  return std::max<int64_t>({foundation, same_adapters, 0});
}

}  // namespace etlora
