// A loaded etlora program (model.pte + foundation.ptd) ready to run with any
// adapters of the same foundation. See docs/bundle-format.md for the contract.
//
// A Session is not thread-safe: use one per thread, or lock around it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <etlora/adapter_file.h>
#include <etlora/program_info.h>
#include <etlora/packed_cache.h>
#include <etlora/session_adapters.h>
#include <etlora/status.h>

namespace etlora {

// The XNNPACK weight cache. XNNPACK packs each delegated weight once per
// named-data key; with the cache on, every Session of the same foundation.ptd
// (same keys) reuses the packed copy instead of packing its own. The wheel's
// backend has it off by default; Session turns it on per load (SessionOptions).
// The backend exposes no entry or hit counters, so these figures are what can
// be read honestly: the backend's own options, our Sessions, process memory.
struct WeightCacheStats {
  bool default_enabled = false;     // XnnpackBackend's global weight_cache_enabled
  int workspace_sharing_mode = -1;  // 0 disabled, 1 per model, 2 global
  int64_t open_sessions = 0;        // Sessions alive in this process
  int64_t cached_sessions = 0;      // ... of which loaded with the cache on
  int64_t rss_bytes = 0;            // VmRSS of the process
  int64_t rss_anon_bytes = 0;       // RssAnon: heap, packed weights included
  int64_t rss_file_bytes = 0;       // RssFile: mapped files (model.pte, .ptd, packed cache file)
  int64_t packed_cache_files = 0;   // packed cache files live Sessions hold
};

// Reads the figures above. Fails if the XNNPACK backend is not registered.
StatusOr<WeightCacheStats> weight_cache_stats();

// The program's etlora_foundation_weights_id (its fingerprint for programs
// without one), read without loading the foundation or any delegate: names the
// packed cache file before Session::open.
StatusOr<std::string> read_foundation_weights_id(const std::string& program_path);

struct SessionOptions {
  // Share packed foundation weights with other Sessions of the same
  // foundation (XNNPACK option weight_cache_enabled, set for this load only).
  bool weight_cache = true;
  // The packed cache file (packed_cache.h), a full path whose name is
  // packed_cache_file_name(foundation weights id); empty = off. Needs weight_cache. The
  // first start packs and writes it (temp name, renamed when complete); a
  // later start maps it instead of packing. A file that fails the footer
  // check is replaced; one the backend cannot use (locked by another
  // process, unwritable folder) leaves the Session packing into memory, with
  // the reason in packed_cache().note. Never changes the logits.
  std::string packed_cache_path;
  // Where the packed weights live after the load (packed_cache.h): a private
  // copy in memory (default, faster decode where mapped pages read slower) or
  // the file's mapping.
  PackedCacheResidency packed_cache_residency = PackedCacheResidency::kCopy;
  // How many adapter files the Session keeps open (mapped and checked) for a
  // fast switch back; beyond it the least recently bound unbound ones are
  // closed, which unmaps their pages. 0 = keep every adapter ever opened.
  size_t max_resident_adapters = 0;
  // The same in bytes: the open adapter files' sizes together stay within it,
  // closing the least recently bound unbound ones first. The bound adapters
  // are always kept, even above it. 0 = no byte limit. Both limits apply.
  uint64_t max_resident_adapter_bytes = 0;
};

class Session : public SessionAdapters {
 public:
  // Loads the program with its foundation weights (both memory-mapped) and
  // reads the constant methods. No adapter is active until set_adapters().
  static StatusOr<std::unique_ptr<Session>> open(const std::string& program_path,
                                                const std::string& foundation_path,
                                                const SessionOptions& options = {});

  const ProgramInfo& info() const { return info_; }
  const std::string& program_path() const { return program_path_; }

  // set_adapters, active_adapters, resident_adapter_paths / _bytes,
  // release_unbound_adapters, reusable_prefix: SessionAdapters.

  // Runs `tokens` at positions start_pos.. and returns the logits of the last
  // one (vocab_size floats). The KV cache keeps what earlier calls wrote. An
  // activated LoRA applies only from its activation start on (the last
  // occurrence of its invocation tokens among positions 0..start_pos+tokens):
  // the call runs in segments cut there, the slot's scale 0 before the cut.
  StatusOr<std::vector<float>> forward(const std::vector<int64_t>& tokens, int64_t start_pos);

  // forward() from position 0: a fresh prefill.
  StatusOr<std::vector<float>> logits(const std::vector<int64_t>& tokens) {
    return forward(tokens, 0);
  }

  // How many inputs of `forward` ExecuTorch memory-planned. The exporter
  // plans none, so inputs are shared, not copied; a nonzero count still works
  // but copies adapter weights into the arena at every set_adapters().
  size_t memory_planned_inputs() const;

  // How much the process's anonymous memory (RssAnon) grew while this Session
  // loaded: packed weights it did not find in the cache, plus its arenas.
  // Approximate when other threads allocate during the load.
  int64_t load_anon_bytes() const { return load_anon_bytes_; }
  bool weight_cache() const { return weight_cache_; }
  // How this load used the packed cache file, and its load time.
  const PackedCacheInfo& packed_cache() const { return packed_cache_; }

  ~Session();

 private:
  struct Impl;  // ExecuTorch objects, kept out of this header
  Session();
  StatusOr<std::vector<float>> run_segment(const int64_t* tokens, int64_t count, int64_t start_pos);

  std::string program_path_;
  ProgramInfo info_;
  int64_t load_anon_bytes_ = 0;
  bool weight_cache_ = false;
  PackedCacheInfo packed_cache_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace etlora
